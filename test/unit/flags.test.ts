/**
 * The one flag resolver (src/lib/flags.ts): the command line first (even empty), then a
 * non-empty environment variable, then the default; the same rule for every command, and
 * --pin-root's default written once.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { RUN_FLAGS } from '../../src/config.js';
import { ConfigError, DEFAULT_PIN_ROOT, PIN_ROOT_FLAG, resolveFlags } from '../../src/lib/flags.js';
import { tsFiles } from './source-files.js';

const FLAGS = {
  'pin-root': PIN_ROOT_FLAG['pin-root'],
  name: { env: 'X_NAME', help: 'no default' },
};

describe('resolveFlags', () => {
  it('takes the command line first, even an empty value', () => {
    expect(resolveFlags(['--pin-root', '/a'], FLAGS, { PIN_ROOT: '/b' }).get('pin-root')).toBe('/a');
    expect(resolveFlags(['--name='], FLAGS, { X_NAME: 'env' }).get('name')).toBe('');
  });

  it('then a non-empty environment variable; an empty one counts as unset', () => {
    expect(resolveFlags([], FLAGS, { PIN_ROOT: '/b' }).get('pin-root')).toBe('/b');
    expect(resolveFlags([], FLAGS, { PIN_ROOT: '' }).get('pin-root')).toBe(DEFAULT_PIN_ROOT);
    expect(resolveFlags([], FLAGS, { X_NAME: '' }).get('name')).toBeUndefined();
  });

  it('then the default, or undefined without one', () => {
    expect(resolveFlags([], FLAGS, {}).get('pin-root')).toBe('/sys/fs/bpf');
    expect(resolveFlags([], FLAGS, {}).get('name')).toBeUndefined();
  });

  it('reads booleans and --help, and refuses an unknown flag or a positional with a ConfigError', () => {
    const f = resolveFlags(['--json', '-h'], FLAGS, {}, ['json']);
    expect([f.flag('json'), f.help, resolveFlags([], FLAGS, {}, ['json']).flag('json')]).toEqual([true, true, false]);
    expect(() => resolveFlags(['--nope'], FLAGS, {})).toThrow(ConfigError);
    expect(() => resolveFlags(['stray'], FLAGS, {})).toThrow(ConfigError);
  });
});

describe('every command resolves its flags through lib/flags.ts', () => {
  it('run declares --pin-root with the shared spec', () => {
    expect(RUN_FLAGS['pin-root']).toBe(PIN_ROOT_FLAG['pin-root']);
  });

  it("no command reads a flag's environment variable itself, and /sys/fs/bpf is written once", () => {
    const commands = [
      'src/cli/status.ts',
      'src/cli/uninstall.ts',
      'src/cli/run.ts',
      'src/cni/cli.ts',
      'src/config.ts',
      'harness/cli/demo.ts',
      'harness/cli/bench.ts',
    ];
    const envReads = commands.flatMap((f) =>
      [...readFileSync(f, 'utf8').matchAll(/process\.env(?:\.(?:PIN_ROOT|DEMO_\w+|BENCH_\w+|CNI_\w+)|\[FLAGS)/g)].map((m) => `${f}: ${m[0]}`),
    );
    expect(envReads).toEqual([]);
    const pinRootLiterals = [...tsFiles('src'), ...tsFiles('harness')].filter((f) => /['"`]\/sys\/fs\/bpf['"`]/.test(readFileSync(f, 'utf8')));
    expect(pinRootLiterals).toEqual(['src/lib/flags.ts']);
  });
});
