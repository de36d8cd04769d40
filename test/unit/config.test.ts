import { describe, expect, it } from 'vitest';
import { ConfigError, parseRunConfig } from '../../src/config.js';
import { systemRunner, CommandError } from '../../src/host/runner.js';

describe('run configuration', () => {
  it('takes flags over environment over defaults, frozen', () => {
    const cfg = parseRunConfig(['--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.10, 10.0.0.11'], { LOG_LEVEL: 'debug', ZTUNNEL_IP: '10.9.9.9' });
    expect(cfg).toMatchObject({ ztunnelIp: '10.0.0.2', enroll: ['10.0.0.10', '10.0.0.11'], logLevel: 'debug', pinRoot: '/sys/fs/bpf', mode: 'auto', resyncSeconds: 10 });
    expect(Object.isFrozen(cfg)).toBe(true);
  });

  it.each([
    [['--ztunnel-ip', 'x'], /ztunnel-ip.*not an IP/],
    [[], /ztunnel-ip.*required/],
    [['--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.1,nope'], /enroll.*"nope"/],
    [['--ztunnel-ip', '10.0.0.2', '--mode', 'bogus'], /mode.*not one of/],
    [['--ztunnel-ip', '10.0.0.2', '--resync-interval', '0'], /resync-interval/],
    [['--ztunnel-ip', '10.0.0.2', '--what'], /Unknown option/],
    [['--ztunnel-ip', '10.0.0.2', '--log-level', 'loud'], /log-level/],
  ])('rejects %j with one clear line', (argv, msg) => {
    expect(() => parseRunConfig(argv, {})).toThrow(ConfigError);
    expect(() => parseRunConfig(argv, {})).toThrow(msg);
  });
});

describe('the CLI', () => {
  const cli = (args: string[]) => systemRunner.run([process.execPath, 'dist/cli/main.js', ...args]);

  it('exits 2 with one line for a bad flag', async () => {
    const err = await cli(['run', '--ztunnel-ip', 'nope']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as CommandError).exitCode).toBe(2);
    expect((err as CommandError).stderr).toBe('ambient-redirect run: --ztunnel-ip: "nope" is not an IP address\n');
  });

  it('exits 2 for an unknown command and prints help for --help', async () => {
    const err = (await cli(['frobnicate']).catch((e: unknown) => e)) as CommandError;
    expect(err.exitCode).toBe(2);
    expect(await cli(['--help'])).toMatch(/commands:[\s\S]*run[\s\S]*demo/);
    expect(await cli(['run', '--help'])).toContain('--ztunnel-ip');
  });
});
