/**
 * Pure codec for the keys and values the programs and the controller share. Offsets and
 * sizes come from the generated layouts (never from a hand-made copy of the C structs);
 * byte orders are the ones the shared header documents field by field.
 */
import { isIP } from 'node:net';
import { constants, layouts } from './layout.generated.js';

type Layout = { readonly size: number; readonly fields: Readonly<Record<string, { readonly offset: number; readonly size: number }>> };

// The map values as plain data, and their flags, belong to the core (src/core/values.ts);
// test/unit/layout.test.ts checks the flags against the generated constants.
export { PodFlags, ZtunnelFlags } from '../core/values.js';
export type { PodInfo, ZtunnelInfo } from '../core/values.js';
import type { PodInfo, ZtunnelInfo } from '../core/values.js';

/** A flow the node opened to an enrolled pod (key of host_flows), seen from the pod. */
export interface HostFlowKey {
  pod: string;
  peer: string;
  podPort: number;
  peerPort: number;
  /** 6 (TCP) or 17 (UDP). */
  proto: number;
}

export interface PodCounters {
  redirectedPackets: bigint;
  redirectedBytes: bigint;
  droppedPackets: bigint;
  droppedBytes: bigint;
  passedPackets: bigint;
  passedBytes: bigint;
}

export class CodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CodecError';
  }
}

function field(l: Layout, name: string): { offset: number; size: number } {
  const f = l.fields[name];
  if (!f) throw new CodecError(`layout has no field ${name}`);
  return f;
}

// --- addresses ---------------------------------------------------------------------------

function parseV4(ip: string): Buffer {
  return Buffer.from(ip.split('.').map((o) => Number(o)));
}

function parseV6(ip: string): Buffer {
  let text = ip;
  const out = Buffer.alloc(16);
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const b = parseV4(v4[1]!);
    text = text.slice(0, -v4[1]!.length) + `${b.readUInt16BE(0).toString(16)}:${b.readUInt16BE(2).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const headGroups = head ? head.split(':') : [];
  const tailGroups = tail ? tail.split(':') : [];
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0'), ...tailGroups];
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

/** 16 bytes, network order; IPv4 as ::ffff:a.b.c.d. Throws CodecError on anything else. */
export function encodeAddr(ip: string): Buffer {
  const family = isIP(ip);
  if (family === 4) {
    const out = Buffer.alloc(16);
    out[10] = 0xff;
    out[11] = 0xff;
    parseV4(ip).copy(out, 12);
    return out;
  }
  if (family === 6) return parseV6(ip);
  throw new CodecError(`not an IP address: ${JSON.stringify(ip)}`);
}

const V4_MAPPED = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** Inverse of encodeAddr: IPv4-mapped addresses come back as dotted quads. */
export function decodeAddr(buf: Buffer): string {
  if (buf.length !== 16) throw new CodecError(`address must be 16 bytes, got ${buf.length}`);
  if (buf.subarray(0, 12).equals(V4_MAPPED)) return [...buf.subarray(12)].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(buf.readUInt16BE(i).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

function encodeMac(mac: string): Buffer {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new CodecError(`not a MAC address: ${JSON.stringify(mac)}`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

function decodeMac(buf: Buffer): string {
  return [...buf].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

function u32(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new CodecError(`${what} out of range: ${value}`);
  return value;
}

function u16(value: number, what: string): number {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff) throw new CodecError(`${what} out of range: ${value}`);
  return value;
}

// --- keys ------------------------------------------------------------------------------

/** Key of the pods and dns_servers maps. */
export const ADDR_KEY_SIZE = layouts.addr_key.size;

export function encodeAddrKey(ip: string): Buffer {
  const key = Buffer.alloc(ADDR_KEY_SIZE);
  encodeAddr(ip).copy(key, field(layouts.addr_key, 'addr').offset);
  return key;
}

export function decodeAddrKey(buf: Buffer): string {
  const f = field(layouts.addr_key, 'addr');
  return decodeAddr(buf.subarray(f.offset, f.offset + f.size));
}

/** Key of the counters map and of array slots: a host-order u32. */
export function encodeU32Key(n: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(u32(n, 'key'));
  return key;
}

export function decodeU32Key(buf: Buffer): number {
  return buf.readUInt32LE(0);
}

// --- pods map ----------------------------------------------------------------------------

export const POD_INFO_SIZE = layouts.pod_info.size;

export function encodePodInfo(v: PodInfo): Buffer {
  const l = layouts.pod_info;
  const buf = Buffer.alloc(l.size);
  buf.writeUInt32LE(u32(v.ifindex, 'ifindex'), field(l, 'ifindex').offset);
  encodeMac(v.mac).copy(buf, field(l, 'mac').offset);
  buf.writeUInt16LE(u16(v.flags, 'flags'), field(l, 'flags').offset);
  return buf;
}

export function decodePodInfo(buf: Buffer): PodInfo {
  const l = layouts.pod_info;
  const mac = field(l, 'mac');
  return {
    ifindex: buf.readUInt32LE(field(l, 'ifindex').offset),
    mac: decodeMac(buf.subarray(mac.offset, mac.offset + mac.size)),
    flags: buf.readUInt16LE(field(l, 'flags').offset),
  };
}

// --- ztunnel map -------------------------------------------------------------------------

export const ZTUNNEL_SLOT = 0;
export const ZTUNNEL_INFO_SIZE = layouts.ztunnel_info.size;

export const encodeSlot = encodeU32Key;

export function encodeZtunnelInfo(v: ZtunnelInfo): Buffer {
  const l = layouts.ztunnel_info;
  const buf = Buffer.alloc(l.size);
  buf.writeUInt32LE(u32(v.ifindex, 'ifindex'), field(l, 'ifindex').offset);
  buf.writeUInt32LE(u32(v.peerIfindex, 'peer_ifindex'), field(l, 'peer_ifindex').offset);
  encodeMac(v.mac).copy(buf, field(l, 'mac').offset);
  buf.writeUInt16LE(u16(v.flags, 'flags'), field(l, 'flags').offset);
  buf.writeBigUInt64LE(v.netnsCookie, field(l, 'netns_cookie').offset);
  return buf;
}

export function decodeZtunnelInfo(buf: Buffer): ZtunnelInfo {
  const l = layouts.ztunnel_info;
  const mac = field(l, 'mac');
  return {
    ifindex: buf.readUInt32LE(field(l, 'ifindex').offset),
    peerIfindex: buf.readUInt32LE(field(l, 'peer_ifindex').offset),
    mac: decodeMac(buf.subarray(mac.offset, mac.offset + mac.size)),
    flags: buf.readUInt16LE(field(l, 'flags').offset),
    netnsCookie: buf.readBigUInt64LE(field(l, 'netns_cookie').offset),
  };
}

// --- dns_servers map ---------------------------------------------------------------------

export const DNS_INFO_SIZE = layouts.dns_info.size;

/** The value of a dns_servers entry: all zero (the key says it all). */
export function encodeDnsInfo(): Buffer {
  return Buffer.alloc(DNS_INFO_SIZE);
}

// --- host_flows map (written by in_redirect) ----------------------------------------------

export const HOST_FLOW_KEY_SIZE = layouts.host_flow_key.size;
export const HOST_FLOW_INFO_SIZE = layouts.host_flow_info.size;

export function encodeHostFlowKey(k: HostFlowKey): Buffer {
  const l = layouts.host_flow_key;
  const buf = Buffer.alloc(l.size);
  encodeAddr(k.pod).copy(buf, field(l, 'pod').offset);
  encodeAddr(k.peer).copy(buf, field(l, 'peer').offset);
  buf.writeUInt16BE(u16(k.podPort, 'pod_port'), field(l, 'pod_port').offset);
  buf.writeUInt16BE(u16(k.peerPort, 'peer_port'), field(l, 'peer_port').offset);
  if (k.proto !== 6 && k.proto !== 17) throw new CodecError(`host flow protocol must be 6 or 17: ${k.proto}`);
  buf.writeUInt8(k.proto, field(l, 'proto').offset);
  return buf;
}

export function decodeHostFlowKey(buf: Buffer): HostFlowKey {
  const l = layouts.host_flow_key;
  const addr = (name: 'pod' | 'peer') => {
    const f = field(l, name);
    return decodeAddr(buf.subarray(f.offset, f.offset + f.size));
  };
  return {
    pod: addr('pod'),
    peer: addr('peer'),
    podPort: buf.readUInt16BE(field(l, 'pod_port').offset),
    peerPort: buf.readUInt16BE(field(l, 'peer_port').offset),
    proto: buf.readUInt8(field(l, 'proto').offset),
  };
}

export function encodeHostFlowInfo(v: { ifindex: number }): Buffer {
  const buf = Buffer.alloc(HOST_FLOW_INFO_SIZE);
  buf.writeUInt32LE(u32(v.ifindex, 'ifindex'), field(layouts.host_flow_info, 'ifindex').offset);
  return buf;
}

export function decodeHostFlowInfo(buf: Buffer): { ifindex: number } {
  return { ifindex: buf.readUInt32LE(field(layouts.host_flow_info, 'ifindex').offset) };
}

// --- counters map (per CPU) ----------------------------------------------------------------

export const POD_COUNTERS_SIZE = layouts.pod_counters.size;

const counterFields = {
  redirectedPackets: 'redirected_packets',
  redirectedBytes: 'redirected_bytes',
  droppedPackets: 'dropped_packets',
  droppedBytes: 'dropped_bytes',
  passedPackets: 'passed_packets',
  passedBytes: 'passed_bytes',
} as const satisfies Record<keyof PodCounters, keyof typeof layouts.pod_counters.fields>;

export function zeroCounters(): PodCounters {
  return { redirectedPackets: 0n, redirectedBytes: 0n, droppedPackets: 0n, droppedBytes: 0n, passedPackets: 0n, passedBytes: 0n };
}

/**
 * Sums a per-CPU value as the kernel returns it: one struct per possible CPU, each
 * rounded up to 8 bytes.
 */
export function decodePodCountersPerCpu(buf: Buffer): PodCounters {
  const stride = Math.ceil(POD_COUNTERS_SIZE / 8) * 8;
  if (buf.length % stride !== 0) throw new CodecError(`per-CPU counters: ${buf.length} bytes is not a multiple of ${stride}`);
  const sum = zeroCounters();
  for (let cpu = 0; cpu < buf.length; cpu += stride) {
    for (const [k, f] of Object.entries(counterFields) as [keyof PodCounters, keyof typeof layouts.pod_counters.fields][]) {
      sum[k] += buf.readBigUInt64LE(cpu + layouts.pod_counters.fields[f].offset);
    }
  }
  return sum;
}

/** Encodes one CPU's value (for tests and for zeroing an entry on every CPU). */
export function encodePodCounters(v: PodCounters): Buffer {
  const buf = Buffer.alloc(POD_COUNTERS_SIZE);
  for (const [k, f] of Object.entries(counterFields) as [keyof PodCounters, keyof typeof layouts.pod_counters.fields][]) {
    buf.writeBigUInt64LE(v[k], layouts.pod_counters.fields[f].offset);
  }
  return buf;
}

// --- qdiscs map (the controller's record of the clsact qdiscs it created) -----------------

export const QdiscNetns = { NODE: constants.QDISC_NETNS_NODE, ZTUNNEL: constants.QDISC_NETNS_ZTUNNEL } as const;
export const QDISC_KEY_SIZE = layouts.qdisc_key.size;
export const QDISC_INFO_SIZE = layouts.qdisc_info.size;

export function encodeQdiscKey(ifindex: number, netns: number): Buffer {
  const buf = Buffer.alloc(QDISC_KEY_SIZE);
  buf.writeUInt32LE(u32(ifindex, 'ifindex'), field(layouts.qdisc_key, 'ifindex').offset);
  buf.writeUInt32LE(u32(netns, 'netns'), field(layouts.qdisc_key, 'netns').offset);
  return buf;
}

export function decodeQdiscKey(buf: Buffer): { ifindex: number; netns: number } {
  return { ifindex: buf.readUInt32LE(field(layouts.qdisc_key, 'ifindex').offset), netns: buf.readUInt32LE(field(layouts.qdisc_key, 'netns').offset) };
}

export function encodeQdiscCreated(): Buffer {
  return encodeQdiscFlags(constants.QDISC_F_CREATED);
}

/** The record's flags (enum qdisc_flags): CREATED, RP_FILTER (old value in bits 2-3, ours in 4-5). */
export const QdiscFlags = { CREATED: constants.QDISC_F_CREATED, RP_FILTER: constants.QDISC_F_RP_FILTER } as const;
/** Record keys that are no device: conf.all and conf.default of the node's netns. */
export const RP_ALL_IFINDEX = 0;
export const RP_DEFAULT_IFINDEX = 0xffffffff;

export function rpFilterFlags(was: number, wrote: number): number {
  return constants.QDISC_F_RP_FILTER | ((was & 3) << 2) | ((wrote & 3) << 4);
}

export function decodeRpFilterFlags(flags: number): { was: number; wrote: number } | null {
  if (!(flags & constants.QDISC_F_RP_FILTER)) return null;
  return { was: (flags >> 2) & 3, wrote: (flags >> 4) & 3 };
}

export function encodeQdiscFlags(flags: number): Buffer {
  const buf = Buffer.alloc(QDISC_INFO_SIZE);
  buf.writeUInt32LE(u32(flags, 'flags'), field(layouts.qdisc_info, 'flags').offset);
  return buf;
}

export function decodeQdiscFlags(buf: Buffer): number {
  return buf.readUInt32LE(field(layouts.qdisc_info, 'flags').offset);
}
