/**
 * Pure codec for the keys and values the programs and the controller share. Offsets and
 * sizes come from the generated layouts (never from a hand-made copy of the C structs);
 * byte orders are the ones the shared header documents field by field.
 */
import { isIP } from 'node:net';
import { constants, layouts } from './layout.generated.js';

type Layout = { readonly size: number; readonly fields: Readonly<Record<string, { readonly offset: number; readonly size: number }>> };

// The map values as plain data, and their flags, belong to the core (src/core/values.ts);
// test/build/layout.test.ts checks the flags against the generated constants.
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

// Writers into a caller's buffer at an offset: a batch of 65,536 entries is packed into one
// buffer with no allocation per entry (small Buffer.alloc calls were most of a fill's time).

function zero(out: Buffer, from: number, to: number): void {
  // A loop, not Buffer#fill: for a few bytes the native call costs more than the work.
  for (let i = from; i < to; i++) out[i] = 0;
}

/**
 * A dotted quad at ip[from..to) as 4 bytes at `off`; false (nothing promised about `out`)
 * unless it is exactly four decimal octets 0..255 without leading zeros, as isIP wants.
 */
function writeV4(ip: string, from: number, to: number, out: Buffer, off: number): boolean {
  let n = 0;
  let digits = 0;
  let part = 0;
  for (let i = from; i <= to; i++) {
    const c = i < to ? ip.charCodeAt(i) : 46;
    if (c === 46 /* . */) {
      if (digits === 0 || part > 3 || n > 255) return false;
      out[off + part++] = n;
      n = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits === 1 && n === 0) return false; // a leading zero
      n = n * 10 + (c - 48);
      digits++;
    } else return false;
  }
  return part === 4;
}

const groups = new Uint16Array(8);
const quadBytes = Buffer.alloc(4);

/**
 * A plain IPv6 address (groups, at most one "::", an optional trailing dotted quad) as 16
 * bytes at `off`; false for anything else (a zone, a typo), which the caller hands to the
 * general path.
 */
function writeV6(ip: string, out: Buffer, off: number): boolean {
  const len = ip.length;
  let count = 0;
  let atGap = -1;
  let i = 0;
  if (len < 2) return false;
  if (ip.charCodeAt(0) === 58 /* : */) {
    if (ip.charCodeAt(1) !== 58) return false;
    atGap = 0;
    i = 2;
  }
  while (i < len) {
    // One pass over the group: its value as the digits go by.
    let j = i;
    let g = 0;
    for (; j < len; j++) {
      const c = ip.charCodeAt(j);
      if (c === 58 /* : */ || c === 46 /* . */) break;
      const d = hex(c);
      if (d < 0) return false;
      g = (g << 4) | d;
    }
    if (j < len && ip.charCodeAt(j) === 46 /* . */) {
      // The rest is a dotted quad: the last two groups.
      if (count > 6 || !writeV4(ip, i, len, quadBytes, 0)) return false;
      groups[count++] = quadBytes.readUInt16BE(0);
      groups[count++] = quadBytes.readUInt16BE(2);
      break;
    }
    if (j === i || j - i > 4 || count === 8) return false;
    groups[count++] = g;
    if (j === len) break;
    if (j + 1 < len && ip.charCodeAt(j + 1) === 58) {
      if (atGap >= 0) return false;
      atGap = count;
      i = j + 2;
    } else {
      i = j + 1;
      if (i === len) return false; // a trailing single ":"
    }
  }
  if (atGap >= 0 ? count > 7 : count !== 8) return false;
  const zeros = atGap >= 0 ? 8 - count : 0;
  for (let g = 0, k = 0; g < 8; g++) {
    const v = g >= atGap && g < atGap + zeros ? 0 : groups[k++]!;
    out[off + g * 2] = v >> 8;
    out[off + g * 2 + 1] = v & 0xff;
  }
  return true;
}

/** What isIP accepts and the fast parsers do not (a zone, an unusual spelling): the general path. */
function writeOther(ip: string, out: Buffer, off: number): void {
  const family = isIP(ip);
  if (family === 0) throw new CodecError(`not an IP address: ${JSON.stringify(ip)}`);
  const bare = ip.replace(/%.*$/, '');
  if (family === 4 || !writeV6(bare, out, off)) throw new CodecError(`not an IP address this agent stores: ${JSON.stringify(ip)}`);
}

/** writeAddr into bytes known to be zero (a packed batch's): the IPv4 prefix's zeros are already there. */
function writeAddrZeroed(ip: string, out: Buffer, off: number): void {
  if (ip.includes(':')) {
    if (!writeV6(ip, out, off)) writeOther(ip, out, off);
    return;
  }
  if (!writeV4(ip, 0, ip.length, out, off + 12)) throw new CodecError(`not an IP address: ${JSON.stringify(ip)}`);
  out[off + 10] = 0xff;
  out[off + 11] = 0xff;
}

/** 16 bytes at `off`, network order; IPv4 as ::ffff:a.b.c.d. Throws CodecError on anything else. */
export function writeAddr(ip: string, out: Buffer, off: number): void {
  if (ip.includes(':')) {
    if (!writeV6(ip, out, off)) writeOther(ip, out, off);
    return;
  }
  if (!writeV4(ip, 0, ip.length, out, off + 12)) throw new CodecError(`not an IP address: ${JSON.stringify(ip)}`);
  zero(out, off, off + 10);
  out[off + 10] = 0xff;
  out[off + 11] = 0xff;
}

/** 16 bytes, network order; IPv4 as ::ffff:a.b.c.d. Throws CodecError on anything else. */
export function encodeAddr(ip: string): Buffer {
  const out = Buffer.allocUnsafe(16);
  writeAddr(ip, out, 0);
  return out;
}

const V4_MAPPED = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

/** Inverse of encodeAddr: IPv4-mapped addresses come back as dotted quads. */
export function decodeAddr(buf: Buffer): string {
  if (buf.length !== 16) throw new CodecError(`address must be 16 bytes, got ${buf.length}`);
  let mapped = true;
  for (let i = 0; i < 12 && mapped; i++) mapped = buf[i] === V4_MAPPED[i];
  if (mapped) return `${buf[12]}.${buf[13]}.${buf[14]}.${buf[15]}`;
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

function hex(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  const l = c | 0x20;
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

function writeMac(mac: string, out: Buffer, off: number): void {
  const bad = () => new CodecError(`not a MAC address: ${JSON.stringify(mac)}`);
  if (mac.length !== 17) throw bad();
  for (let i = 0; i < 6; i++) {
    const hi = hex(mac.charCodeAt(i * 3));
    const lo = hex(mac.charCodeAt(i * 3 + 1));
    if (hi < 0 || lo < 0 || (i < 5 && mac.charCodeAt(i * 3 + 2) !== 58)) throw bad();
    out[off + i] = (hi << 4) | lo;
  }
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

const ADDR_KEY_ADDR = field(layouts.addr_key, 'addr');

/** The key at `off` of a packed buffer (padding zeroed). */
export function writeAddrKey(ip: string, out: Buffer, off: number): void {
  zero(out, off, off + ADDR_KEY_SIZE);
  writeAddr(ip, out, off + ADDR_KEY_ADDR.offset);
}

export function encodeAddrKey(ip: string): Buffer {
  const key = Buffer.allocUnsafe(ADDR_KEY_SIZE);
  writeAddrKey(ip, key, 0);
  return key;
}

export function decodeAddrKey(buf: Buffer): string {
  const f = field(layouts.addr_key, 'addr');
  return decodeAddr(buf.subarray(f.offset, f.offset + f.size));
}

/** Key of the counters and veth_slots maps and of array slots: a host-order u32. */
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

const POD_INFO = {
  ifindex: field(layouts.pod_info, 'ifindex'),
  mac: field(layouts.pod_info, 'mac'),
  flags: field(layouts.pod_info, 'flags'),
  slot: field(layouts.pod_info, 'slot'),
};

/** The value at `off` of a packed buffer (padding zeroed). */
export function writePodInfo(v: PodInfo, out: Buffer, off: number): void {
  zero(out, off, off + POD_INFO_SIZE);
  out.writeUInt32LE(u32(v.ifindex, 'ifindex'), off + POD_INFO.ifindex.offset);
  writeMac(v.mac, out, off + POD_INFO.mac.offset);
  out.writeUInt16LE(u16(v.flags, 'flags'), off + POD_INFO.flags.offset);
  out.writeUInt32LE(u32(v.slot ?? 0, 'slot'), off + POD_INFO.slot.offset);
}

export function encodePodInfo(v: PodInfo): Buffer {
  const buf = Buffer.allocUnsafe(POD_INFO_SIZE);
  writePodInfo(v, buf, 0);
  return buf;
}

/** A host-order (little-endian, as on every architecture we build for) u32 / u16 at `off`, written byte by byte. */
function putU32(out: Buffer, off: number, v: number): void {
  out[off] = v;
  out[off + 1] = v >>> 8;
  out[off + 2] = v >>> 16;
  out[off + 3] = v >>> 24;
}

function putU16(out: Buffer, off: number, v: number): void {
  out[off] = v;
  out[off + 1] = v >>> 8;
}

/**
 * Pods packed for one batch update: keys back to back, values back to back. Both buffers
 * come zeroed (one calloc), so an entry writes its fields and nothing else: no padding to
 * clear, no per-entry object or Buffer, a Map walked with forEach (no [key, value] pair
 * per entry).
 */
export function packPods(entries: ReadonlyMap<string, PodInfo> | readonly (readonly [string, PodInfo])[]): { keys: Buffer; values: Buffer; count: number } {
  const count = entries instanceof Map ? entries.size : (entries as readonly unknown[]).length;
  const keys = Buffer.alloc(count * ADDR_KEY_SIZE);
  const values = Buffer.alloc(count * POD_INFO_SIZE);
  let i = 0;
  const put = (info: PodInfo, ip: string) => {
    writeAddrZeroed(ip, keys, i * ADDR_KEY_SIZE + ADDR_KEY_ADDR.offset);
    const off = i * POD_INFO_SIZE;
    putU32(values, off + POD_INFO.ifindex.offset, u32(info.ifindex, 'ifindex'));
    writeMac(info.mac, values, off + POD_INFO.mac.offset);
    putU16(values, off + POD_INFO.flags.offset, u16(info.flags, 'flags'));
    if (info.slot) putU32(values, off + POD_INFO.slot.offset, u32(info.slot, 'slot'));
    i++;
  };
  if (entries instanceof Map) (entries as ReadonlyMap<string, PodInfo>).forEach(put);
  else for (const [ip, info] of entries as readonly (readonly [string, PodInfo])[]) put(info, ip);
  return { keys, values, count };
}

/** Where a pods-map value holds its counters slot (a host-order u32): readers of whole batches read it in place. */
export const POD_INFO_SLOT_OFFSET = POD_INFO.slot.offset;

export function decodePodInfo(buf: Buffer): PodInfo {
  const l = layouts.pod_info;
  const mac = field(l, 'mac');
  return {
    ifindex: buf.readUInt32LE(field(l, 'ifindex').offset),
    mac: decodeMac(buf.subarray(mac.offset, mac.offset + mac.size)),
    flags: buf.readUInt16LE(field(l, 'flags').offset),
    slot: buf.readUInt32LE(POD_INFO.slot.offset),
  };
}

/** The ifindex and counters slot of a pods-map value (readers that need no more). */
export function decodePodSlot(buf: Buffer): { ifindex: number; slot: number } {
  if (buf.length !== POD_INFO_SIZE) throw new CodecError(`pod_info must be ${POD_INFO_SIZE} bytes, got ${buf.length}`);
  return { ifindex: buf.readUInt32LE(POD_INFO.ifindex.offset), slot: buf.readUInt32LE(POD_INFO.slot.offset) };
}

// --- veth_slots map ----------------------------------------------------------------------

export const VETH_SLOT_SIZE = layouts.veth_slot.size;

export function encodeVethSlot(slot: number): Buffer {
  const buf = Buffer.alloc(VETH_SLOT_SIZE);
  buf.writeUInt32LE(u32(slot, 'slot'), field(layouts.veth_slot, 'slot').offset);
  return buf;
}

export function decodeVethSlot(buf: Buffer): number {
  if (buf.length !== VETH_SLOT_SIZE) throw new CodecError(`veth_slot must be ${VETH_SLOT_SIZE} bytes, got ${buf.length}`);
  return buf.readUInt32LE(field(layouts.veth_slot, 'slot').offset);
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
  writeMac(v.mac, buf, field(l, 'mac').offset);
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

// --- host_flows and host_flows4 maps (written by in_redirect) ------------------------------

export const HOST_FLOW_KEY_SIZE = layouts.host_flow_key.size;
export const HOST_FLOW_INFO_SIZE = layouts.host_flow_info.size;

/** Both host flow keys (host_flow_key, host_flow4_key) end in the same ports and protocol. */
function writeFlowPorts(buf: Buffer, l: Layout, k: Pick<HostFlowKey, 'podPort' | 'peerPort' | 'proto'>): void {
  buf.writeUInt16BE(u16(k.podPort, 'pod_port'), field(l, 'pod_port').offset);
  buf.writeUInt16BE(u16(k.peerPort, 'peer_port'), field(l, 'peer_port').offset);
  if (k.proto !== 6 && k.proto !== 17) throw new CodecError(`host flow protocol must be 6 or 17: ${k.proto}`);
  buf.writeUInt8(k.proto, field(l, 'proto').offset);
}

function readFlowPorts(buf: Buffer, l: Layout): Pick<HostFlowKey, 'podPort' | 'peerPort' | 'proto'> {
  return {
    podPort: buf.readUInt16BE(field(l, 'pod_port').offset),
    peerPort: buf.readUInt16BE(field(l, 'peer_port').offset),
    proto: buf.readUInt8(field(l, 'proto').offset),
  };
}

export function encodeHostFlowKey(k: HostFlowKey): Buffer {
  const l = layouts.host_flow_key;
  const buf = Buffer.alloc(l.size);
  encodeAddr(k.pod).copy(buf, field(l, 'pod').offset);
  encodeAddr(k.peer).copy(buf, field(l, 'peer').offset);
  writeFlowPorts(buf, l, k);
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
    ...readFlowPorts(buf, l),
  };
}

export const HOST_FLOW4_KEY_SIZE = layouts.host_flow4_key.size;

/**
 * The map a flow is kept in: host_flows4 when both its addresses are IPv4 (or IPv4-mapped,
 * the same to the programs), host_flows otherwise (bpf/include/redirect.h).
 */
export function hostFlowMapOf(k: Pick<HostFlowKey, 'pod' | 'peer'>): 'host_flows4' | 'host_flows' {
  const mapped = (ip: string) => encodeAddr(ip).subarray(0, 12).equals(V4_MAPPED);
  return mapped(k.pod) && mapped(k.peer) ? 'host_flows4' : 'host_flows';
}

/** The key of an IPv4 flow in host_flows4 (see hostFlowMapOf). */
export function encodeHostFlow4Key(k: HostFlowKey): Buffer {
  if (hostFlowMapOf(k) !== 'host_flows4') throw new CodecError(`host_flows4 keeps IPv4 flows only: ${k.pod} ${k.peer}`);
  const l = layouts.host_flow4_key;
  const buf = Buffer.alloc(l.size);
  encodeAddr(k.pod).copy(buf, field(l, 'pod').offset, 12, 16);
  encodeAddr(k.peer).copy(buf, field(l, 'peer').offset, 12, 16);
  writeFlowPorts(buf, l, k);
  return buf;
}

export function decodeHostFlow4Key(buf: Buffer): HostFlowKey {
  const l = layouts.host_flow4_key;
  const addr = (name: 'pod' | 'peer') => {
    const o = field(l, name).offset;
    return `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
  };
  return {
    pod: addr('pod'),
    peer: addr('peer'),
    ...readFlowPorts(buf, l),
  };
}

/** A flow's map and its key there. */
export function encodeHostFlow(k: HostFlowKey): { map: 'host_flows4' | 'host_flows'; key: Buffer } {
  const map = hostFlowMapOf(k);
  return { map, key: map === 'host_flows4' ? encodeHostFlow4Key(k) : encodeHostFlowKey(k) };
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
/** Each counter with its offset, computed once (a scrape decodes every pod's counters). */
const COUNTER_OFFSETS = (Object.entries(counterFields) as [keyof PodCounters, keyof typeof layouts.pod_counters.fields][]).map(
  ([k, f]) => [k, layouts.pod_counters.fields[f].offset] as const,
);

/** The counters' fields in PodCounters order (redirected, dropped, passed; packets before bytes), as offsets into one CPU's struct. */
export const POD_COUNTER_KEYS: readonly (keyof PodCounters)[] = COUNTER_OFFSETS.map(([k]) => k);
export const POD_COUNTER_OFFSETS: readonly number[] = COUNTER_OFFSETS.map(([, o]) => o);
/** One CPU's struct in a per-CPU value: rounded up to 8 bytes. */
export const POD_COUNTERS_STRIDE = Math.ceil(POD_COUNTERS_SIZE / 8) * 8;

export function decodePodCountersPerCpu(buf: Buffer): PodCounters {
  const stride = Math.ceil(POD_COUNTERS_SIZE / 8) * 8;
  if (buf.length % stride !== 0) throw new CodecError(`per-CPU counters: ${buf.length} bytes is not a multiple of ${stride}`);
  const sum = zeroCounters();
  for (const [k, offset] of COUNTER_OFFSETS) {
    // Summed as two 32-bit halves in plain numbers (exact below 2^53 per half-sum, i.e.
    // for any count of CPUs), one BigInt per counter: a scrape decodes every pod.
    let lo = 0;
    let hi = 0;
    for (let cpu = 0; cpu < buf.length; cpu += stride) {
      lo += buf.readUInt32LE(cpu + offset);
      hi += buf.readUInt32LE(cpu + offset + 4);
    }
    sum[k] = (BigInt(hi) << 32n) + BigInt(lo);
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
