/**
 * Mode and tunnel selection as tables over injected kernel facts: a 4.19 kernel, this
 * machine's 6.18, a kernel whose probes fail, and probes that contradict the release.
 */
import { describe, expect, it } from 'vitest';
import { KernelFactsError, selectMode, selectTunnel, type BpfProbes, type KernelFacts, type RequestedMode } from '../../src/capture/select.js';

const ALL: BpfProbes = { schedCls: true, redirect: true, skLookupTcp: true, skAssign: true, redirectPeer: true };
/** What libbpf's probes answer on a real 4.19 kernel. */
const PROBES_4_19: BpfProbes = { schedCls: true, redirect: true, skLookupTcp: false, skAssign: false, redirectPeer: false };
/** 5.4: past the floor, no sk_assign, no redirect_peer. */
const PROBES_5_4: BpfProbes = { schedCls: true, redirect: true, skLookupTcp: true, skAssign: false, redirectPeer: false };

const kernel = (release: string, probes: BpfProbes | null, extra: Partial<KernelFacts> = {}): KernelFacts => ({ release, probes, geneve: true, ...extra });

const THIS_MACHINE = kernel('6.18.44-fc-v657', ALL, { geneve: false });
const RHEL8 = kernel('4.18.0-553.el8_10.x86_64', PROBES_4_19);
const DEBIAN_4_19 = kernel('4.19.0-27-amd64', PROBES_4_19);
const UBUNTU_5_4 = kernel('5.4.0-200-generic', PROBES_5_4);
const EPERM = kernel('6.1.0-30-amd64', null, { probeError: 'libbpf_probe_bpf_prog_type(type 3) failed: EPERM' });

describe('selectMode', () => {
  const table: { name: string; requested: RequestedMode; facts: KernelFacts; mode: 'ebpf' | 'iptables'; fallback: boolean; reason: RegExp }[] = [
    {
      name: 'auto on this kernel',
      requested: 'auto',
      facts: THIS_MACHINE,
      mode: 'ebpf',
      fallback: false,
      reason: /^auto: kernel 6\.18\.44-fc-v657 passes the BPF feature probes$/,
    },
    { name: 'ebpf on this kernel', requested: 'ebpf', facts: THIS_MACHINE, mode: 'ebpf', fallback: false, reason: /^ebpf mode requested: kernel 6\.18/ },
    { name: 'iptables on this kernel', requested: 'iptables', facts: THIS_MACHINE, mode: 'iptables', fallback: false, reason: /^iptables mode requested$/ },
    {
      name: 'auto on a simulated 4.19',
      requested: 'auto',
      facts: DEBIAN_4_19,
      mode: 'iptables',
      fallback: false,
      reason: /^auto: kernel 4\.19\.0-27-amd64 is older than 4\.20, the floor of ebpf mode$/,
    },
    { name: 'auto on RHEL 8 (4.18)', requested: 'auto', facts: RHEL8, mode: 'iptables', fallback: false, reason: /older than 4\.20/ },
    {
      name: 'ebpf on 4.19 falls back',
      requested: 'ebpf',
      facts: DEBIAN_4_19,
      mode: 'iptables',
      fallback: true,
      reason: /^ebpf mode requested but kernel 4\.19\.0-27-amd64 is older than 4\.20, the floor of ebpf mode: falling back to iptables mode$/,
    },
    { name: 'auto on 5.4 (no redirect_peer) is still ebpf', requested: 'auto', facts: UBUNTU_5_4, mode: 'ebpf', fallback: false, reason: /passes/ },
    {
      name: 'ebpf with failing probes falls back and says why',
      requested: 'ebpf',
      facts: EPERM,
      mode: 'iptables',
      fallback: true,
      reason: /^ebpf mode requested but the BPF feature probes failed \(libbpf_probe_bpf_prog_type\(type 3\) failed: EPERM\): falling back to iptables mode$/,
    },
    {
      name: 'auto with failing probes',
      requested: 'auto',
      facts: EPERM,
      mode: 'iptables',
      fallback: false,
      reason: /^auto: the BPF feature probes failed .*EPERM/,
    },
    { name: 'iptables needs no probe', requested: 'iptables', facts: kernel('4.19.0', { ...ALL }), mode: 'iptables', fallback: false, reason: /requested/ },
  ];
  for (const row of table) {
    it(row.name, () => {
      const got = selectMode(row.requested, row.facts);
      expect({ mode: got.mode, fallback: got.fallback }).toEqual({ mode: row.mode, fallback: row.fallback });
      expect(got.reason).toMatch(row.reason);
    });
  }

  const contradictions: { name: string; facts: KernelFacts; message: RegExp }[] = [
    {
      name: 'release 4.19 but redirect_peer probed',
      facts: kernel('4.19.0-27-amd64', { ...PROBES_4_19, redirectPeer: true }),
      message: /older than 5\.10 but the probe says bpf_redirect_peer exists/,
    },
    {
      name: 'release 4.19 but sk_lookup_tcp probed',
      facts: kernel('4.19.0-27-amd64', { ...PROBES_4_19, skLookupTcp: true }),
      message: /older than 4\.20 but the probe says bpf_sk_lookup_tcp exists/,
    },
    {
      name: 'release 5.4 but sk_assign probed',
      facts: kernel('5.4.0', { ...PROBES_5_4, skAssign: true }),
      message: /older than 5\.7 but the probe says bpf_sk_assign/,
    },
    {
      name: 'release 6.x but SCHED_CLS unsupported',
      facts: kernel('6.1.0-30-amd64', { ...ALL, schedCls: false }),
      message: /kernel 6\.1\.0-30-amd64 should offer BPF_PROG_TYPE_SCHED_CLS but the probe says no/,
    },
    { name: 'release 6.x but bpf_redirect missing', facts: kernel('6.12.0', { ...ALL, redirect: false }), message: /should offer bpf_redirect but/ },
  ];
  for (const row of contradictions) {
    for (const requested of ['auto', 'ebpf'] as const) {
      it(`${row.name} is an error (${requested})`, () => {
        expect(() => selectMode(requested, row.facts)).toThrow(KernelFactsError);
        expect(() => selectMode(requested, row.facts)).toThrow(row.message);
      });
    }
  }

  it('an unparsable release leaves the decision to the probes', () => {
    expect(selectMode('auto', kernel('custom', ALL)).mode).toBe('ebpf');
    expect(selectMode('auto', kernel('custom', PROBES_4_19)).mode).toBe('iptables');
  });
});

describe('selectTunnel', () => {
  const table: { requested: 'geneve' | 'vxlan' | 'auto'; geneve: boolean | null; tunnel: 'geneve' | 'vxlan'; reason: RegExp }[] = [
    { requested: 'auto', geneve: true, tunnel: 'geneve', reason: /has a Geneve driver/ },
    { requested: 'auto', geneve: false, tunnel: 'vxlan', reason: /has no Geneve driver: VXLAN instead/ },
    { requested: 'auto', geneve: null, tunnel: 'geneve', reason: /could not tell/ },
    { requested: 'vxlan', geneve: true, tunnel: 'vxlan', reason: /VXLAN requested/ },
    { requested: 'geneve', geneve: true, tunnel: 'geneve', reason: /Geneve requested/ },
  ];
  for (const row of table) {
    it(`${row.requested} with geneve=${row.geneve} → ${row.tunnel}`, () => {
      const got = selectTunnel(row.requested, { release: '6.18.44', geneve: row.geneve });
      expect(got.tunnel).toBe(row.tunnel);
      expect(got.reason).toMatch(row.reason);
    });
  }
  it('geneve asked for on a kernel without it is an error', () => {
    expect(() => selectTunnel('geneve', { release: '6.18.44', geneve: false })).toThrow(/no Geneve driver.*--tunnel vxlan/);
  });
});
