/**
 * Pod identity on IP reuse (issue 15, item 5), the pure core: each enrolled pod's entries
 * stay on the sandbox they were first placed on; an IP moves to another sandbox only on
 * evidence for that pod's UID; a terminating pod whose sandbox is gone loses its entries.
 */
import { describe, expect, it } from 'vitest';
import { desiredState, placeBySandbox, type EnrolledRef, type SandboxBinding } from '../../src/core/desired.js';
import type { PodInfo } from '../../src/bpf/codec.js';
import type { HostNet, Link } from '../../src/host/netinfo.js';

const link = (ifindex: number, name: string, peerNetnsId: number): Link => ({ ifindex, name, mac: '02:00:00:00:00:01', peerIfindex: 2, peerNetnsId });

/** A node whose routes send each IP to the named veth. */
function node(links: Link[], routes: Record<string, string>): HostNet {
  return { links: new Map(links.map((l) => [l.ifindex, l])), hostRoutes: new Map(Object.entries(routes)), netnsById: new Map() };
}

const X = '10.244.1.7';
const ref = (over: Partial<EnrolledRef> = {}): EnrolledRef => ({ uid: 'old-uid', terminating: false, ips: [X], announced: null, ...over });
const enrolled = (r: EnrolledRef) => new Map([[X, r]]);
const NONE = new Map<string, SandboxBinding>();
const NO_ENTRIES = new Map<string, PodInfo>();

/** Pass 1: the pod placed on vethA (ifindex 10, peer netns 1); returns its bindings. */
function firstPass(r = ref()) {
  const p = placeBySandbox(enrolled(r), node([link(10, 'vethA', 1)], { [X]: 'vethA' }), NONE, NO_ENTRIES);
  expect([...p.links]).toEqual([[X, link(10, 'vethA', 1)]]);
  expect(p.bindings.get('old-uid')).toEqual({ ifindex: 10, name: 'vethA', peerNetnsId: 1, announced: r.announced, ips: X });
  return p.bindings;
}
/** The pod's sandbox deleted, its IP handed to a new sandbox (vethB, peer netns 2). */
const reused = node([link(11, 'vethB', 2)], { [X]: 'vethB' });

describe('placeBySandbox', () => {
  it('a deleted pod’s IP handed to a new sandbox before the API shows the delete is not placed there', () => {
    const p = placeBySandbox(enrolled(ref()), reused, firstPass(), NO_ENTRIES);
    expect(p.links.size).toBe(0);
    expect(p.refused).toEqual([{ ip: X, uid: 'old-uid', reason: expect.stringMatching(/sandbox \(veth ifindex 10 vethA\) is gone/) }]);
    // And it stays so, pass after pass: the binding is kept.
    const again = placeBySandbox(enrolled(ref()), reused, p.bindings, NO_ENTRIES);
    expect(again.links.size).toBe(0);
    const d = desiredState([X], reused, null, again);
    expect(d.pods.size).toBe(0);
    expect(d.hooks.size).toBe(0);
    expect(d.refused).toHaveLength(1);
  });

  it('the API then shows the pod terminating: its entries are dropped for good', () => {
    const p = placeBySandbox(enrolled(ref({ terminating: true })), reused, firstPass(), NO_ENTRIES);
    expect(p.links.size).toBe(0);
    expect(p.refused[0]!.reason).toBe('terminating and its sandbox is gone');
    // Even with an announcement (a terminating pod gets no new sandbox).
    expect(placeBySandbox(enrolled(ref({ terminating: true, announced: 'c2' })), reused, p.bindings, NO_ENTRIES).links.size).toBe(0);
  });

  it('a terminating pod whose sandbox still exists keeps its entries (its grace period is captured)', () => {
    const b = firstPass();
    const p = placeBySandbox(enrolled(ref({ terminating: true })), node([link(10, 'vethA', 1)], { [X]: 'vethA' }), b, NO_ENTRIES);
    expect([...p.links.keys()]).toEqual([X]);
  });

  it('moves on evidence for the UID: a new CNI announcement, or other IPs in the API', () => {
    const b = firstPass(ref({ announced: 'c1' }));
    // The same announcement is no evidence.
    expect(placeBySandbox(enrolled(ref({ announced: 'c1' })), reused, b, NO_ENTRIES).links.size).toBe(0);
    const announced = placeBySandbox(enrolled(ref({ announced: 'c2' })), reused, b, NO_ENTRIES);
    expect([...announced.links]).toEqual([[X, link(11, 'vethB', 2)]]);
    expect(announced.bindings.get('old-uid')).toMatchObject({ ifindex: 11, name: 'vethB', announced: 'c2' });
    // The API shows the pod with another set of IPs (a new sandbox got them from IPAM).
    const Y = '10.244.1.8';
    const moved = placeBySandbox(new Map([[Y, ref({ ips: [Y] })]]), node([link(12, 'vethC', 3)], { [Y]: 'vethC' }), b, NO_ENTRIES);
    expect([...moved.links.keys()]).toEqual([Y]);
  });

  it('a veth recreated under its name into the same netns is the same sandbox (drift repair)', () => {
    const p = placeBySandbox(enrolled(ref()), node([link(20, 'vethA', 1)], { [X]: 'vethA' }), firstPass(), NO_ENTRIES);
    expect([...p.links]).toEqual([[X, link(20, 'vethA', 1)]]);
    expect(p.bindings.get('old-uid')!.ifindex).toBe(20);
    // Same name into another netns: another sandbox.
    expect(placeBySandbox(enrolled(ref()), node([link(21, 'vethA', 9)], { [X]: 'vethA' }), firstPass(), NO_ENTRIES).links.size).toBe(0);
  });

  it('while the sandbox exists, an IP routed elsewhere is refused, not moved', () => {
    const p = placeBySandbox(enrolled(ref()), node([link(10, 'vethA', 1), link(11, 'vethB', 2)], { [X]: 'vethB' }), firstPass(), NO_ENTRIES);
    expect(p.links.size).toBe(0);
    expect(p.refused[0]!.reason).toMatch(/routes to vethB, not the pod's sandbox vethA/);
  });

  it('after an agent restart, a pinned entry on another veth than the route’s is the pod’s old sandbox', () => {
    const pinned = new Map<string, PodInfo>([[X, { ifindex: 10, mac: '00:00:00:00:00:00', flags: 1 }]]);
    const p = placeBySandbox(enrolled(ref()), reused, NONE, pinned);
    expect(p.links.size).toBe(0);
    expect(p.refused).toHaveLength(1);
    // iptables mode's entries name no veth (ifindex 0): nothing to learn from them.
    const ipset = placeBySandbox(enrolled(ref()), reused, NONE, new Map([[X, { ifindex: 0, mac: '00:00:00:00:00:00', flags: 1 }]]));
    expect([...ipset.links.keys()]).toEqual([X]);
    // An entry on the route's veth is simply adopted.
    const same = placeBySandbox(enrolled(ref()), reused, NONE, new Map([[X, { ifindex: 11, mac: '00:00:00:00:00:00', flags: 1 }]]));
    expect([...same.links.keys()]).toEqual([X]);
  });

  it('no route yet: unplaced, no binding; a dual-stack pod is bound once, both IPs on its veth', () => {
    const p = placeBySandbox(enrolled(ref()), node([], {}), NONE, NO_ENTRIES);
    expect(p.unplaced).toEqual([X]);
    expect(p.bindings.size).toBe(0);
    const V6 = 'fd00::7';
    const dual = ref({ ips: [X, V6] });
    const d = placeBySandbox(
      new Map([
        [X, dual],
        [V6, dual],
      ]),
      node([link(10, 'vethA', 1)], { [X]: 'vethA', [V6]: 'vethA' }),
      NONE,
      NO_ENTRIES,
    );
    expect([...d.links.keys()].sort()).toEqual([X, V6].sort());
    expect(d.bindings.size).toBe(1);
  });

  it('forgets the bindings of pods no longer enrolled', () => {
    const p = placeBySandbox(new Map(), reused, firstPass(), NO_ENTRIES);
    expect(p.bindings.size).toBe(0);
  });
});
