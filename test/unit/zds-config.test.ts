/** --ztunnel-mode, --zds-socket and --host-proc: defaults, environment, and bad values (src/config.ts). */
import { describe, expect, it } from 'vitest';
import { ConfigError, parseRunConfig } from '../../src/config.js';

const kube = ['--kubeconfig', '/k', '--node-name', 'n'];

describe('the ztunnel mode flags', () => {
  it('inpod by default, on ztunnel’s default socket, the host’s /proc', () => {
    expect(parseRunConfig(kube, {})).toMatchObject({ ztunnelMode: 'inpod', zdsSocket: '/var/run/ztunnel/ztunnel.sock', hostProc: '/proc' });
  });

  it('from the environment, the flag winning over it', () => {
    expect(parseRunConfig(kube, { ZTUNNEL_MODE: 'node', ZDS_SOCKET: '/run/z.sock', HOST_PROC: '/host/proc' })).toMatchObject({
      ztunnelMode: 'node',
      zdsSocket: '/run/z.sock',
      hostProc: '/host/proc',
    });
    expect(parseRunConfig([...kube, '--ztunnel-mode', 'inpod'], { ZTUNNEL_MODE: 'node' }).ztunnelMode).toBe('inpod');
  });

  it.each([
    [[...kube, '--ztunnel-mode', 'shared'], /--ztunnel-mode: "shared" is not one of node, inpod/],
    [[...kube, '--zds-socket', 'ztunnel.sock'], /--zds-socket: "ztunnel.sock" is not an absolute path/],
    [[...kube, '--host-proc', 'proc'], /--host-proc: "proc" is not an absolute path/],
    [['--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.5'], /--enroll serves the node-level ztunnel only/],
  ])('rejects %j with one clear line', (argv, msg) => {
    expect(() => parseRunConfig(argv, {})).toThrow(ConfigError);
    expect(() => parseRunConfig(argv, {})).toThrow(msg);
  });

  it('static membership with node mode', () => {
    expect(parseRunConfig(['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.5'], {}).membership).toEqual({
      kind: 'static',
      enroll: ['10.0.0.5'],
    });
  });
});
