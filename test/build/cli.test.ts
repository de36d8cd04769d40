/** The built CLI (dist/src/cli/main.js): exit codes and the one line on stderr for bad input. */
import { describe, expect, it } from 'vitest';
import { CommandError, systemRunner } from '../../src/host/runner.js';

describe('the CLI', () => {
  const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
    systemRunner.run([
      'env',
      '-i',
      `PATH=${process.env.PATH}`,
      ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
      process.execPath,
      'dist/src/cli/main.js',
      ...args,
    ]);

  it('exits 2 with one line for a bad flag', async () => {
    const err = await cli(['run', '--ztunnel-ip', 'nope']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as CommandError).exitCode).toBe(2);
    expect((err as CommandError).stderr).toBe('ambient-redirect run: --ztunnel-ip: "nope" is not an IP address\n');
  });

  it('exits 2 with one line for a bad environment value, and without any membership source', async () => {
    const bad = (await cli(['run'], { KUBECONFIG: '/k', NODE_NAME: 'n', BACKOFF_MAX: 'x' }).catch((e: unknown) => e)) as CommandError;
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toBe('ambient-redirect run: --backoff-max: "x" is not a number of seconds in 0.1..600\n');
    const none = (await cli(['run']).catch((e: unknown) => e)) as CommandError;
    expect(none.exitCode).toBe(2);
    expect(none.stderr.trim().split('\n')).toHaveLength(1);
    expect(none.stderr).toMatch(/no membership source/);
  });

  it('exits 2 for an unknown command and prints help for --help', async () => {
    const err = (await cli(['frobnicate']).catch((e: unknown) => e)) as CommandError;
    expect(err.exitCode).toBe(2);
    expect(await cli(['--help'])).toMatch(/commands:[\s\S]*run[\s\S]*demo/);
    const help = await cli(['run', '--help']);
    for (const flag of ['--ztunnel-ip', '--kubeconfig', '--node-name', '--ztunnel-namespace', '--ztunnel-selector', '--health-address', '--max-delete-share'])
      expect(help).toContain(flag);
  });
});

describe('the bench parts run on their own', () => {
  // Each part's own entry point loads its modules and parses its flags before it touches
  // the machine; a bad flag exits 2 with one line. An import cycle with traffic.ts's
  // top-level import of report.js shows here as exit 13 (an await that never settles).
  it.each([
    ['traffic', 'traffic bench: --rounds: "0" is not an integer in 1..50\n'],
    ['inpod', 'inpod bench: --rounds: "0" is not an integer in 1..100\n'],
    ['hooks', 'hooks bench: --rounds: "0" is not an integer in 1..50\n'],
  ])('%s exits 2 with one line for a bad --rounds', async (part, line) => {
    const err = (await systemRunner.run([process.execPath, `dist/harness/bench/${part}.js`, '--rounds', '0']).catch((e: unknown) => e)) as CommandError;
    expect(err).toBeInstanceOf(CommandError);
    expect(err.exitCode).toBe(2);
    expect(err.stderr).toBe(line);
  });
});
