/**
 * The map states the data-path tests run programs under, and how to write one into a
 * loaded object's maps. Shared by the in-kernel harness (test/model/harness.ts) and the
 * kernel matrix's in-VM runner, so both put exactly the same entries in the maps.
 */
import * as codec from '../../src/bpf/codec.js';
import * as ffi from '../../src/bpf/ffi.js';
import type { BpfObject } from '../../src/bpf/object.js';

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

/** Makes the object's pods, dns_servers, host_flows(4) and ztunnel maps hold exactly `s` (counters stay). */
export function applyMapState(obj: BpfObject, s: MapState): void {
  const pods = obj.map('pods');
  for (const k of pods.keys()) pods.delete(k);
  const dns = obj.map('dns_servers');
  for (const k of dns.keys()) dns.delete(k);
  for (const name of ['host_flows', 'host_flows4']) {
    const flows = obj.map(name);
    for (const k of flows.keys()) flows.delete(k);
  }
  for (const p of s.pods)
    pods.update(codec.encodeAddrKey(p.ip), codec.encodePodInfo({ ifindex: p.ifindex, mac: p.mac ?? '00:00:00:00:00:00', flags: p.flags }));
  if (s.fillPods) {
    const filler = fillerPods(pods.maxEntries - s.pods.length);
    const value = codec.encodePodInfo({ ifindex: FILLER_IFINDEX, mac: '00:00:00:00:00:00', flags: 1 });
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
