/**
 * A small, pure packet builder for BPF_PROG_RUN tables, the fuzzer and the benchmark.
 *
 * Layers are built inside out: an L4 segment (`tcp`, `udp`, `icmp4`, `icmp6`, `raw`) goes
 * into `ipv4`/`ipv6` (which fill in lengths and next-header fields), which goes into
 * `ether`. Every field can be overridden, including the ones that make a packet malformed
 * (version, IHL, lengths, next headers), and `truncate` cuts anywhere. The IPv4 header
 * checksum is computed (unless overridden); L4 checksums are left 0: TC programs do not
 * verify them.
 */
import { isIP } from 'node:net';

export const EtherType = {
  IPV4: 0x0800,
  ARP: 0x0806,
  VLAN: 0x8100,
  QINQ: 0x88a8,
  IPV6: 0x86dd,
} as const;

export const IpProto = {
  HOPOPTS: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  ROUTING: 43,
  FRAGMENT: 44,
  ESP: 50,
  AH: 51,
  ICMPV6: 58,
  NONE: 59,
  DSTOPTS: 60,
  SCTP: 132,
} as const;

export const TcpFlags = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

/** Address bytes, network order: 4 for IPv4, 16 for IPv6. */
export function ipBytes(ip: string): Buffer {
  const family = isIP(ip);
  if (family === 4) return Buffer.from(ip.split('.').map(Number));
  if (family !== 6) throw new Error(`not an IP address: ${ip}`);
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  let tail4: Buffer | null = null;
  if (v4) {
    tail4 = ipBytes(v4[1]!);
    text = text.slice(0, -v4[1]!.length) + '0:0';
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g || '0', 16), i * 2));
  if (tail4) tail4.copy(out, 12);
  return out;
}

export function macBytes(mac: string): Buffer {
  const parts = mac.split(':');
  if (parts.length !== 6) throw new Error(`not a MAC address: ${mac}`);
  return Buffer.from(parts.map((p) => parseInt(p, 16)));
}

export function truncate(buf: Buffer, length: number): Buffer {
  return Buffer.from(buf.subarray(0, Math.max(0, length)));
}

// --- Ethernet ----------------------------------------------------------------------------

export interface VlanTag {
  /** 0x8100 (802.1Q) or 0x88a8 (802.1ad). */
  tpid: number;
  tci: number;
}

export interface EtherOpts {
  dst?: string;
  src?: string;
  /** Outermost first. */
  vlans?: readonly VlanTag[];
}

export const DEFAULT_DST_MAC = '0a:58:c6:12:00:01';
export const DEFAULT_SRC_MAC = '0a:58:c6:12:00:0a';

export function ether(opts: EtherOpts, etherType: number, payload: Buffer): Buffer {
  const vlans = opts.vlans ?? [];
  const hdr = Buffer.alloc(14 + 4 * vlans.length);
  macBytes(opts.dst ?? DEFAULT_DST_MAC).copy(hdr, 0);
  macBytes(opts.src ?? DEFAULT_SRC_MAC).copy(hdr, 6);
  let off = 12;
  for (const v of vlans) {
    hdr.writeUInt16BE(v.tpid, off);
    hdr.writeUInt16BE(v.tci & 0xffff, off + 2);
    off += 4;
  }
  hdr.writeUInt16BE(etherType & 0xffff, off);
  return Buffer.concat([hdr, payload]);
}

export interface ArpOpts {
  op?: number;
  senderMac?: string;
  senderIp?: string;
  targetMac?: string;
  targetIp?: string;
}

export function arp(o: ArpOpts = {}): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt16BE(1, 0); // Ethernet
  b.writeUInt16BE(EtherType.IPV4, 2);
  b[4] = 6;
  b[5] = 4;
  b.writeUInt16BE(o.op ?? 1, 6);
  macBytes(o.senderMac ?? DEFAULT_SRC_MAC).copy(b, 8);
  ipBytes(o.senderIp ?? '198.18.0.10').copy(b, 14);
  macBytes(o.targetMac ?? '00:00:00:00:00:00').copy(b, 18);
  ipBytes(o.targetIp ?? '198.18.0.1').copy(b, 24);
  return b;
}

// --- L4 ----------------------------------------------------------------------------------

/** An upper-layer segment: its protocol number and bytes. */
export interface L4 {
  proto: number;
  bytes: Buffer;
}

export interface TcpOpts {
  sport?: number;
  dport?: number;
  seq?: number;
  ack?: number;
  flags?: number;
  /** Data offset in 32-bit words (default 5, or more with options). */
  doff?: number;
  options?: Buffer;
  payload?: Buffer;
}

export function tcp(o: TcpOpts = {}): L4 {
  const opts = o.options ?? Buffer.alloc(0);
  const hdr = Buffer.alloc(20);
  hdr.writeUInt16BE(o.sport ?? 40000, 0);
  hdr.writeUInt16BE(o.dport ?? 80, 2);
  hdr.writeUInt32BE((o.seq ?? 1) >>> 0, 4);
  hdr.writeUInt32BE((o.ack ?? 0) >>> 0, 8);
  const doff = o.doff ?? 5 + Math.ceil(opts.length / 4);
  hdr[12] = (doff & 0xf) << 4;
  hdr[13] = o.flags ?? TcpFlags.SYN;
  hdr.writeUInt16BE(65535, 14);
  return { proto: IpProto.TCP, bytes: Buffer.concat([hdr, opts, o.payload ?? Buffer.alloc(0)]) };
}

export interface UdpOpts {
  sport?: number;
  dport?: number;
  payload?: Buffer;
  /** The length field; default header + payload. */
  length?: number;
}

export function udp(o: UdpOpts = {}): L4 {
  const payload = o.payload ?? Buffer.alloc(0);
  const hdr = Buffer.alloc(8);
  hdr.writeUInt16BE(o.sport ?? 40000, 0);
  hdr.writeUInt16BE(o.dport ?? 53, 2);
  hdr.writeUInt16BE((o.length ?? 8 + payload.length) & 0xffff, 4);
  return { proto: IpProto.UDP, bytes: Buffer.concat([hdr, payload]) };
}

export interface IcmpOpts {
  type?: number;
  code?: number;
  /** The 4 bytes after the checksum (id/seq for echo, unused/MTU for errors). */
  rest?: number;
  /** For errors: the offending packet's start; for echo: data. */
  body?: Buffer;
}

function icmpLike(proto: number, o: IcmpOpts, defaultType: number): L4 {
  const hdr = Buffer.alloc(8);
  hdr[0] = o.type ?? defaultType;
  hdr[1] = o.code ?? 0;
  hdr.writeUInt32BE((o.rest ?? 0x00010001) >>> 0, 4);
  return { proto, bytes: Buffer.concat([hdr, o.body ?? Buffer.alloc(0)]) };
}

export const Icmp4Type = { ECHO_REPLY: 0, DEST_UNREACH: 3, ECHO: 8, TIME_EXCEEDED: 11, PARAM_PROBLEM: 12, TIMESTAMP: 13 } as const;
export const Icmp6Type = {
  DEST_UNREACH: 1,
  PACKET_TOO_BIG: 2,
  TIME_EXCEEDED: 3,
  PARAM_PROBLEM: 4,
  ECHO: 128,
  ECHO_REPLY: 129,
  MLD_QUERY: 130,
  ROUTER_SOLICIT: 133,
  ROUTER_ADVERT: 134,
  NEIGHBOR_SOLICIT: 135,
  NEIGHBOR_ADVERT: 136,
  REDIRECT: 137,
} as const;

export function icmp4(o: IcmpOpts = {}): L4 {
  return icmpLike(IpProto.ICMP, o, Icmp4Type.ECHO);
}

/** ICMPv6; for ND types pass the target in `body` (e.g. `ipBytes('fe80::1')`). */
export function icmp6(o: IcmpOpts = {}): L4 {
  return icmpLike(IpProto.ICMPV6, o, Icmp6Type.ECHO);
}

/** Any protocol with the given bytes (ESP, SCTP, GRE, no-next-header with none). */
export function raw(proto: number, bytes: Buffer = Buffer.alloc(0)): L4 {
  return { proto, bytes };
}

export function esp(spi = 0x1000, seq = 1, data: Buffer = Buffer.alloc(16)): L4 {
  const hdr = Buffer.alloc(8);
  hdr.writeUInt32BE(spi >>> 0, 0);
  hdr.writeUInt32BE(seq >>> 0, 4);
  return raw(IpProto.ESP, Buffer.concat([hdr, data]));
}

// --- IPv4 --------------------------------------------------------------------------------

export interface Ipv4Opts {
  src?: string;
  dst?: string;
  ttl?: number;
  id?: number;
  tos?: number;
  /** Options bytes, padded to a multiple of 4 (IHL follows unless overridden). */
  options?: Buffer;
  /** Raw 4-bit IHL, to build bad ones. */
  ihl?: number;
  /** Raw 4-bit version (default 4). */
  version?: number;
  /** Fragment offset in 8-byte units. */
  fragOffset?: number;
  moreFragments?: boolean;
  dontFragment?: boolean;
  /** Total length field; default header + payload. */
  totalLength?: number;
  /** Overrides the protocol of the L4 segment. */
  proto?: number;
  checksum?: number;
}

export function ipv4Checksum(hdr: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < hdr.length; i += 2) sum += hdr.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

export function ipv4(o: Ipv4Opts, l4: L4): Buffer {
  const rawOpts = o.options ?? Buffer.alloc(0);
  const opts = Buffer.concat([rawOpts, Buffer.alloc((4 - (rawOpts.length % 4)) % 4)]);
  const hdr = Buffer.alloc(20 + opts.length);
  const ihl = o.ihl ?? hdr.length / 4;
  hdr[0] = (((o.version ?? 4) & 0xf) << 4) | (ihl & 0xf);
  hdr[1] = o.tos ?? 0;
  hdr.writeUInt16BE((o.totalLength ?? hdr.length + l4.bytes.length) & 0xffff, 2);
  hdr.writeUInt16BE(o.id ?? 0x1234, 4);
  const frag = ((o.fragOffset ?? 0) & 0x1fff) | (o.moreFragments ? 0x2000 : 0) | (o.dontFragment ? 0x4000 : 0);
  hdr.writeUInt16BE(frag, 6);
  hdr[8] = o.ttl ?? 64;
  hdr[9] = o.proto ?? l4.proto;
  ipBytes(o.src ?? '198.18.0.10').copy(hdr, 12);
  ipBytes(o.dst ?? '203.0.113.5').copy(hdr, 16);
  opts.copy(hdr, 20);
  hdr.writeUInt16BE(o.checksum ?? ipv4Checksum(hdr), 10);
  return Buffer.concat([hdr, l4.bytes]);
}

/** IPv4 options: a router alert (4 bytes) and a record-route of `slots` addresses. */
export const Ipv4Option = {
  routerAlert: (): Buffer => Buffer.from([0x94, 0x04, 0x00, 0x00]),
  recordRoute: (slots = 2): Buffer => {
    const b = Buffer.alloc(3 + 4 * slots);
    b[0] = 0x07;
    b[1] = b.length;
    b[2] = 4;
    return b;
  },
  nop: (): Buffer => Buffer.from([0x01]),
};

// --- IPv6 --------------------------------------------------------------------------------

export type Ipv6Ext =
  | { type: 'hop' | 'dest' /** Hdr Ext Len: 8-byte units after the first 8 */; len?: number; next?: number }
  | { type: 'routing'; len?: number; routingType?: number; segmentsLeft?: number; next?: number }
  | { type: 'fragment'; offset?: number; more?: boolean; id?: number; next?: number }
  | { type: 'ah' /** Payload Len: 4-byte units minus 2 */; len?: number; spi?: number; next?: number };

const EXT_PROTO: Record<Ipv6Ext['type'], number> = {
  hop: IpProto.HOPOPTS,
  dest: IpProto.DSTOPTS,
  routing: IpProto.ROUTING,
  fragment: IpProto.FRAGMENT,
  ah: IpProto.AH,
};

export function extProto(e: Ipv6Ext): number {
  return EXT_PROTO[e.type];
}

function extBytes(e: Ipv6Ext, next: number): Buffer {
  switch (e.type) {
    case 'hop':
    case 'dest': {
      const len = e.len ?? 0;
      const b = Buffer.alloc(8 * (len + 1));
      b[0] = e.next ?? next;
      b[1] = len;
      // One PadN option filling the rest.
      b[2] = 1;
      b[3] = b.length - 4;
      return b;
    }
    case 'routing': {
      const len = e.len ?? 0;
      const b = Buffer.alloc(8 * (len + 1));
      b[0] = e.next ?? next;
      b[1] = len;
      b[2] = e.routingType ?? 4;
      b[3] = e.segmentsLeft ?? 0;
      return b;
    }
    case 'fragment': {
      const b = Buffer.alloc(8);
      b[0] = e.next ?? next;
      b.writeUInt16BE((((e.offset ?? 0) & 0x1fff) << 3) | (e.more ? 1 : 0), 2);
      b.writeUInt32BE((e.id ?? 0xabcd) >>> 0, 4);
      return b;
    }
    case 'ah': {
      const len = e.len ?? 4; // 12 bytes of fixed fields + a 12-byte ICV
      const b = Buffer.alloc(4 * (len + 2));
      b[0] = e.next ?? next;
      b[1] = len;
      if (b.length >= 8) b.writeUInt32BE((e.spi ?? 0x2000) >>> 0, 4);
      return b;
    }
  }
}

export interface Ipv6Opts {
  src?: string;
  dst?: string;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
  /** Raw 4-bit version (default 6). */
  version?: number;
  /** Extension headers in wire order; next-header fields are chained automatically. */
  ext?: readonly Ipv6Ext[];
  /** Overrides the IPv6 header's next header. */
  nextHeader?: number;
  payloadLength?: number;
}

export function ipv6(o: Ipv6Opts, l4: L4): Buffer {
  const ext = o.ext ?? [];
  const parts: Buffer[] = [];
  for (let i = 0; i < ext.length; i++) {
    const next = i + 1 < ext.length ? extProto(ext[i + 1]!) : l4.proto;
    parts.push(extBytes(ext[i]!, next));
  }
  const payload = Buffer.concat([...parts, l4.bytes]);
  const hdr = Buffer.alloc(40);
  const v = ((o.version ?? 6) & 0xf) << 28;
  hdr.writeUInt32BE((v | ((o.trafficClass ?? 0) << 20) | ((o.flowLabel ?? 0) & 0xfffff)) >>> 0, 0);
  hdr.writeUInt16BE((o.payloadLength ?? payload.length) & 0xffff, 4);
  hdr[6] = o.nextHeader ?? (ext.length > 0 ? extProto(ext[0]!) : l4.proto);
  hdr[7] = o.hopLimit ?? 64;
  ipBytes(o.src ?? 'fd00:10:244::a').copy(hdr, 8);
  ipBytes(o.dst ?? '2001:db8::5').copy(hdr, 24);
  return Buffer.concat([hdr, payload]);
}

// --- whole frames ------------------------------------------------------------------------

export function v4Frame(ip: Ipv4Opts, l4: L4, eth: EtherOpts = {}): Buffer {
  return ether(eth, EtherType.IPV4, ipv4(ip, l4));
}

export function v6Frame(ip: Ipv6Opts, l4: L4, eth: EtherOpts = {}): Buffer {
  return ether(eth, EtherType.IPV6, ipv6(ip, l4));
}

export function arpFrame(o: ArpOpts = {}, eth: EtherOpts = {}): Buffer {
  return ether({ dst: 'ff:ff:ff:ff:ff:ff', ...eth }, EtherType.ARP, arp(o));
}

/** Lowercase hex, for reproducers. */
export function hex(buf: Buffer): string {
  return buf.toString('hex');
}
