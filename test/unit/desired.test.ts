import { describe, expect, it } from 'vitest';
import { PodFlags } from '../../src/bpf/codec.js';
import { desiredState, diffHooks, diffPods } from '../../src/core/desired.js';
import { overrideFlags } from '../../src/core/values.js';
import type { HostNet, Link } from '../../src/host/netinfo.js';

const link = (ifindex: number, name: string, extra: Partial<Link> = {}): Link => ({
  ifindex,
  name,
  mac: `02:00:00:00:00:${ifindex.toString(16).padStart(2, '0')}`,
  ...extra,
});

function net(): HostNet {
  const links = [
    link(1, 'lo'),
    link(5, 'vpod0', { peerIfindex: 2, peerNetnsId: 1 }),
    link(6, 'vpod1', { peerIfindex: 2, peerNetnsId: 2 }),
    link(7, 'vzt', { peerIfindex: 2, peerNetnsId: 3 }),
  ];
  return {
    links: new Map(links.map((l) => [l.ifindex, l])),
    hostRoutes: new Map([
      ['10.0.0.10', 'vpod0'],
      ['10.0.0.11', 'vpod1'],
      ['10.0.0.2', 'vzt'],
    ]),
    netnsById: new Map([[3, 'zt']]),
  };
}

describe('desired state', () => {
  const zt = { hostLink: link(7, 'vzt'), peer: link(2, 'eth0', { mac: '0a:00:00:00:00:02' }), netns: 'zt' };

  it('programs each enrolled pod on the veth its route names', () => {
    const d = desiredState(['10.0.0.10'], net(), zt);
    expect([...d.pods]).toEqual([['10.0.0.10', { ifindex: 5, mac: '00:00:00:00:00:00', flags: PodFlags.ENROLLED }]]);
    expect([...d.hooks]).toEqual([5]);
    expect(d.ztunnel).toMatchObject({ ifindex: 7, peerIfindex: 2, mac: '0a:00:00:00:00:02', flags: 1 });
    expect(d.unplaced).toEqual([]);
  });

  it('adds the flags a pod’s annotations ask for to its entry', () => {
    const ref = { uid: 'u', terminating: false, ips: ['10.0.0.10'], announced: null, flags: overrideFlags({ bypassInbound: true, dnsCapture: false }) };
    const d = desiredState(['10.0.0.10'], net(), zt, undefined, new Map([['10.0.0.10', ref]]));
    expect(d.pods.get('10.0.0.10')?.flags).toBe(PodFlags.ENROLLED | PodFlags.BYPASS_INBOUND | PodFlags.NO_DNS_CAPTURE);
    expect(overrideFlags({ bypassInbound: false, dnsCapture: true })).toBe(PodFlags.DNS_CAPTURE);
    expect(overrideFlags({ bypassInbound: false, dnsCapture: null })).toBe(0);
  });

  it('reports enrolled pods without a route instead of guessing', () => {
    const d = desiredState(['10.0.0.10', '10.0.0.99'], net(), zt);
    expect(d.unplaced).toEqual(['10.0.0.99']);
    expect(d.pods.has('10.0.0.99')).toBe(false);
  });

  it('keeps pods enrolled with an empty ztunnel slot when ztunnel is gone (fail closed)', () => {
    const d = desiredState(['10.0.0.10'], net(), null);
    expect(d.ztunnel).toBeNull();
    expect(d.pods.size).toBe(1);
  });
});

describe('diffs', () => {
  const p = (ifindex: number) => ({ ifindex, mac: '00:00:00:00:00:00', flags: 1 });

  it('upserts new and changed entries, deletes stale ones, leaves equal ones', () => {
    const desired = new Map([
      ['a', p(1)],
      ['b', p(2)],
      ['c', p(3)],
    ]);
    const actual = new Map([
      ['a', p(1)],
      ['b', p(9)],
      ['d', p(4)],
    ]);
    const d = diffPods(desired, actual);
    expect([...d.upserts.keys()].sort()).toEqual(['b', 'c']);
    expect(d.deletes).toEqual(['d']);
  });

  it('is empty when the kernel already holds the desired state', () => {
    const m = new Map([['a', p(1)]]);
    expect(diffPods(m, new Map(m))).toEqual({ upserts: new Map(), deletes: [] });
    expect(diffHooks(new Set([1, 2]), new Set([2, 3]))).toEqual({ attach: [1], detach: [3] });
  });

  it('rewrites an entry whose counters slot differs; no slot and slot 0 are the same', () => {
    const d = diffPods(
      new Map([
        ['a', { ...p(1), slot: 4 }],
        ['b', { ...p(2), slot: 0 }],
      ]),
      new Map([
        ['a', { ...p(1), slot: 3 }],
        ['b', p(2)],
      ]),
    );
    expect([...d.upserts.keys()]).toEqual(['a']);
  });

  it('with the veths’ slots, writes each entry with its veth’s (0 for a veth without one), copying only those written', () => {
    const desired = new Map([
      ['a', p(1)],
      ['b', p(2)],
      ['c', p(3)],
    ]);
    const actual = new Map([
      ['a', { ...p(1), slot: 7 }],
      ['b', { ...p(2), slot: 5 }],
      ['c', { ...p(3), slot: 9 }],
    ]);
    const d = diffPods(
      desired,
      actual,
      new Map([
        [p(1).ifindex, 7],
        [p(2).ifindex, 6],
      ]),
    );
    expect(d.upserts).toEqual(
      new Map([
        ['b', { ...p(2), slot: 6 }],
        ['c', { ...p(3), slot: 0 }],
      ]),
    );
    expect(desired.get('b')!.slot).toBeUndefined();
  });
});
