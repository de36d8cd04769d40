import { describe, expect, it } from 'vitest';
import { AUTO_HOOK, hookConflict, selectHook } from '../../src/core/modes.js';
import { ConfigError, parseRunConfig } from '../../src/config.js';

describe('selectHook: the pods’ outbound hook', () => {
  it('auto picks tc (the TC/XDP benchmark’s verdict), and says why in one line', () => {
    const s = selectHook('auto', { ztunnelMode: 'node', mode: 'ebpf' });
    expect(s.hook).toBe('tc');
    expect(AUTO_HOOK.hook).toBe('tc');
    expect(s.reason).toMatch(/^auto: tc /);
    expect(s.reason).not.toContain('\n');
  });

  it('tc and xdp are honoured in the node topology’s ebpf mode', () => {
    expect(selectHook('xdp', { ztunnelMode: 'node', mode: 'ebpf' })).toEqual({ hook: 'xdp', reason: 'xdp requested' });
    expect(selectHook('tc', { ztunnelMode: 'node', mode: 'ebpf' })).toEqual({ hook: 'tc', reason: 'tc requested' });
  });

  it('xdp below the XDP hook’s floor (5.2: the verifier limit xdp_out needs) falls back to tc, loudly', () => {
    expect(selectHook('xdp', { ztunnelMode: 'node', mode: 'ebpf', release: '4.20.17' })).toMatchObject({
      hook: 'tc',
      fallback: true,
      reason: expect.stringContaining('older than 5.2'),
    });
    expect(selectHook('xdp', { ztunnelMode: 'node', mode: 'ebpf', release: '5.1.0' }).hook).toBe('tc');
    expect(selectHook('xdp', { ztunnelMode: 'node', mode: 'ebpf', release: '5.2.0' })).toEqual({ hook: 'xdp', reason: 'xdp requested' });
    expect(selectHook('xdp', { ztunnelMode: 'node', mode: 'ebpf', release: '6.18.44-fc-v782' }).hook).toBe('xdp');
    expect(selectHook('tc', { ztunnelMode: 'node', mode: 'ebpf', release: '4.20.0' }).hook).toBe('tc');
  });

  it('no hook where the capture has none: the in-pod capture, iptables mode (a fallback included)', () => {
    for (const requested of ['tc', 'xdp', 'auto'] as const) {
      expect(selectHook(requested, { ztunnelMode: 'inpod', mode: 'ebpf' }).hook).toBeNull();
      expect(selectHook(requested, { ztunnelMode: 'node', mode: 'iptables' })).toMatchObject({ hook: null, reason: expect.stringContaining('iptables') });
    }
  });

  it('refuses xdp with flags that leave it nothing to choose', () => {
    expect(hookConflict('xdp', { ztunnelMode: 'inpod', mode: 'auto' })).toContain('--ztunnel-mode node');
    expect(hookConflict('xdp', { ztunnelMode: 'node', mode: 'iptables' })).toContain('--mode ebpf');
    expect(hookConflict('xdp', { ztunnelMode: 'node', mode: 'auto' })).toBeNull();
    expect(hookConflict('tc', { ztunnelMode: 'inpod', mode: 'iptables' })).toBeNull();
  });
});

describe('--hook', () => {
  const node = ['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.10'];
  it('defaults to auto; flag over $REDIRECT_HOOK', () => {
    expect(parseRunConfig(node, {}).hook).toBe('auto');
    expect(parseRunConfig(node, { REDIRECT_HOOK: 'xdp' }).hook).toBe('xdp');
    expect(parseRunConfig([...node, '--hook', 'tc'], { REDIRECT_HOOK: 'xdp' }).hook).toBe('tc');
    expect(parseRunConfig(node, {}).xdpObjectPath).toMatch(/build\/xdp\.bpf\.o$/);
  });

  it('a bad value, or xdp where there is no host-veth hook, is one clear ConfigError', () => {
    expect(() => parseRunConfig([...node, '--hook', 'XDP'], {})).toThrow(new ConfigError('--hook: "XDP" is not one of tc, xdp, auto'));
    expect(() => parseRunConfig([...node, '--hook', 'xdp', '--mode', 'iptables'], {})).toThrow(/--hook xdp needs --mode ebpf/);
    expect(() => parseRunConfig(['--kubeconfig', '/k', '--node-name', 'n', '--hook', 'xdp'], {})).toThrow(/--hook xdp needs --ztunnel-mode node/);
    // tc (and auto) with the in-pod capture is accepted and logged as not applying.
    expect(parseRunConfig(['--kubeconfig', '/k', '--node-name', 'n', '--hook', 'tc'], {}).hook).toBe('tc');
  });
});
