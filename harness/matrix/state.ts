/**
 * The map states the data-path tests run programs under, and how to write one into a
 * loaded object's maps. Shared by the in-kernel harness (test/model/harness.ts) and the
 * kernel matrix's in-VM runner, so both put exactly the same entries in the maps.
 */
import * as codec from '../../src/bpf/codec.js';
import * as ffi from '../../src/bpf/ffi.js';
import type { BpfObject } from '../../src/bpf/object.js';
import { SlotAllocator } from '../../src/core/slots.js';

export interface MapState {
  pods: readonly { ip: string; ifindex: number; mac?: string; flags: number }[];
  /** null: the slot is all zero (no ztunnel ever written). */
  ztunnel: { ifindex: number; peerIfindex: number; mac: string; flags: number } | null;
  /** The cluster's DNS servers (dns_servers). */
  dnsServers: readonly string[];
  /** Flows the node opened (host_flows); in_redirect adds more as it runs. */
  hostFlows?: readonly { flow: codec.HostFlowKey; ifindex: number }[];
  /** Fill the pods map up to max_entries with unrelated entries (one batch update). */
  fillPods?: boolean;
}

/** The filler entries of a full pods map: fd99::/64 addresses, on veth ifindex 999. */
export const FILLER_IFINDEX = 999;

export function fillerPods(count: number): { key: Buffer; ip: string }[] {
  const out: { key: Buffer; ip: string }[] = [];
  for (let i = 0; i < count; i++) {
    const ip = `fd99::${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}`;
    out.push({ key: codec.encodeAddrKey(ip), ip });
  }
  return out;
}

/**
 * Each object's counters slots, handed out as the agent does (src/core/slots.ts): one per
 * veth a state's pods name or a harness hooks (recordVeths), kept from one state to the
 * next (never given back), so a veth's counts compare across states.
 */
const objectSlots = new WeakMap<BpfObject, { slots: SlotAllocator; veths: Set<number> }>();

function slotsFor(obj: BpfObject, veths: Iterable<number>): ReadonlyMap<number, number> {
  let o = objectSlots.get(obj);
  if (!o) {
    o = { slots: new SlotAllocator(obj.map('counters').maxEntries - 1), veths: new Set() };
    objectSlots.set(obj, o);
  }
  for (const v of veths) o.veths.add(v);
  const { slots, fresh } = o.slots.assign(o.veths);
  const counters = obj.map('counters');
  for (const f of fresh) counters.update(codec.encodeU32Key(f.slot), Buffer.alloc(counters.bufferSize));
  return slots;
}

/** Gives veths slots (veth_slots) as the agent does for the veths it hooks, pods entries or not. */
export function recordVeths(obj: BpfObject, veths: Iterable<number>): void {
  const slots = slotsFor(obj, veths);
  const vethSlots = obj.map('veth_slots');
  for (const [ifindex, slot] of slots) vethSlots.update(codec.encodeU32Key(ifindex), codec.encodeVethSlot(slot));
}

/** A veth's counters slot in `obj` (0: none, its frames count in slot 0). */
export function slotOf(obj: BpfObject, ifindex: number): number {
  return objectSlots.get(obj)?.slots.slotOf(ifindex) ?? 0;
}

/** Makes the object's pods, dns_servers, host_flows(4), veth_slots and ztunnel maps hold exactly `s` (counters stay). */
export function applyMapState(obj: BpfObject, s: MapState): void {
  const pods = obj.map('pods');
  for (const k of pods.keys()) pods.delete(k);
  const dns = obj.map('dns_servers');
  for (const k of dns.keys()) dns.delete(k);
  for (const name of ['host_flows', 'host_flows4']) {
    const flows = obj.map(name);
    for (const k of flows.keys()) flows.delete(k);
  }
  const vethSlots = obj.map('veth_slots');
  for (const k of vethSlots.keys()) vethSlots.delete(k);
  const slots = slotsFor(obj, [...s.pods.map((p) => p.ifindex), ...(s.fillPods ? [FILLER_IFINDEX] : [])]);
  for (const [ifindex, slot] of slots) vethSlots.update(codec.encodeU32Key(ifindex), codec.encodeVethSlot(slot));
  for (const p of s.pods)
    pods.update(
      codec.encodeAddrKey(p.ip),
      codec.encodePodInfo({ ifindex: p.ifindex, mac: p.mac ?? '00:00:00:00:00:00', flags: p.flags, slot: slots.get(p.ifindex) ?? 0 }),
    );
  if (s.fillPods) {
    const filler = fillerPods(pods.maxEntries - s.pods.length);
    const value = codec.encodePodInfo({ ifindex: FILLER_IFINDEX, mac: '00:00:00:00:00:00', flags: 1, slot: slots.get(FILLER_IFINDEX) ?? 0 });
    const n = ffi.mapUpdateBatch(pods.fd, 'pods', Buffer.concat(filler.map((f) => f.key)), Buffer.concat(filler.map(() => value)), filler.length);
    if (n !== filler.length) throw new Error(`batch update wrote ${n} of ${filler.length}`);
  }
  for (const ip of s.dnsServers) dns.update(codec.encodeAddrKey(ip), codec.encodeDnsInfo());
  for (const f of s.hostFlows ?? []) {
    const { map, key } = codec.encodeHostFlow(f.flow);
    obj.map(map).update(key, codec.encodeHostFlowInfo({ ifindex: f.ifindex }));
  }
  const zt = s.ztunnel ?? { ifindex: 0, peerIfindex: 0, mac: '00:00:00:00:00:00', flags: 0 };
  obj.map('ztunnel').update(codec.encodeSlot(0), codec.encodeZtunnelInfo({ ...zt, netnsCookie: 0n }));
}
