/**
 * The reference model of docs/datapath.md: the verdict spec, row by row, as pure functions
 * over a frame and the map contents. Written from the spec's text alone (not from the C),
 * so that it is an independent oracle for the programs; the differential fuzzer compares
 * the two. Where the text leaves a choice open, the choice is written down here (INTERP)
 * and reported, never copied from the kernel's behaviour.
 */

export type VerdictName = 'redirect' | 'pass' | 'drop' | 'deliver';

export interface Verdict {
  verdict: VerdictName;
  /** The spec row that decided, e.g. 'O8'. */
  row: string;
  /** zt_*: the mark a deliver sets (ZT_MARK_*). */
  mark?: number;
  /** redirect: the destination MAC written into the frame (ztunnel's eth0). */
  rewrittenDstMac?: string;
  /** zt_assign: the socket assigned ('established', 'listener:15001', ...). */
  socket?: string;
  /** in_redirect, row I11: the host flow it writes (hostFlowKey) and the veth it names. */
  recordFlow?: { key: string; ifindex: number };
}

// Constants of the spec / shared header (bpf/include/ambient_redirect.h).
export const POD_F_ENROLLED = 1;
export const POD_F_DNS_CAPTURE = 2;
export const POD_F_NO_DNS_CAPTURE = 4;
export const POD_F_BYPASS_INBOUND = 8;
export const ZT_F_PRESENT = 1;
export const ZT_F_DNS_CAPTURE = 2;
export const ZT_F_NON_TCP_DROP = 4;
export const MAX_IPV6_EXT = 4;
export const Mark = { LOCAL: 0x800, OUTBOUND: 0x900, INBOUND: 0xa00, HBONE: 0xb00, DNS: 0xc00 } as const;
export const Port = { OUTBOUND: 15001, INBOUND: 15006, HBONE: 15008, DNS: 15053 } as const;

export interface PodEntry {
  ifindex: number;
  mac: string;
  flags: number;
}

export interface ZtunnelSlot {
  ifindex: number;
  peerIfindex: number;
  mac: string;
  flags: number;
}

/** What the maps hold. Keys are 16-byte addresses in hex (IPv4 as ::ffff:a.b.c.d). */
export interface ModelState {
  pods: ReadonlyMap<string, PodEntry>;
  /** The single slot; an ARRAY map always has one, all zero when nothing was written. */
  ztunnel: ZtunnelSlot;
  /** dns_servers: the cluster's DNS servers. */
  dnsServers: ReadonlySet<string>;
  /** host_flows: hostFlowKey -> the veth's ifindex. in_redirect writes it (see record). */
  hostFlows: Map<string, number>;
}

/** A host_flows key, seen from the pod: its address and port, the node's, the protocol. */
export function hostFlowKey(podHex: string, podPort: number, peerHex: string, peerPort: number, proto: number): string {
  return `${podHex}|${podPort}|${peerHex}|${peerPort}|${proto}`;
}

/** What a verdict leaves in the maps: I11 writes its flow (the kernel does the same). */
export function record(state: ModelState, v: Verdict): void {
  if (v.recordFlow) state.hostFlows.set(v.recordFlow.key, v.recordFlow.ifindex);
}

export const EMPTY_ZTUNNEL: ZtunnelSlot = { ifindex: 0, peerIfindex: 0, mac: '00:00:00:00:00:00', flags: 0 };

export interface ModelCtx {
  /** skb->ifindex: the veth the program runs on (`I`). */
  ifindex: number;
  /** skb->ingress_ifindex. */
  ingressIfindex?: number;
}

/** Sockets in ztunnel's netns, for zt_assign. */
export interface SocketTable {
  /** 'tcp4:15001', 'tcp6:15006', 'udp4:15053', ... (wildcard-bound listeners). */
  listeners: ReadonlySet<string>;
  /** Established TCP sockets by tupleKey(family, local, lport, remote, rport). */
  established: ReadonlySet<string>;
}

export function tupleKey(family: 4 | 6, localHex: string, lport: number, remoteHex: string, rport: number): string {
  return `${family}|${localHex}|${lport}|${remoteHex}|${rport}`;
}

/** 16-byte key (hex) of a 4- or 16-byte address. */
export function addrKeyHex(addr: Buffer): string {
  if (addr.length === 4) return `00000000000000000000ffff${addr.toString('hex')}`;
  if (addr.length === 16) return addr.toString('hex');
  throw new Error(`address of ${addr.length} bytes`);
}

const ICMP4_ERRORS = new Set([3, 11, 12]);
const ICMP6_ERRORS = new Set([1, 2, 3, 4]);

// --- parsing (rows O1–O6, O11, the facts the later rows need) ----------------------------

const ETH_HLEN = 14;
const P = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58 } as const;
const V6_EXT = new Set([0, 43, 44, 51, 60]);

export type L2 =
  | { kind: 'short' } // O1
  | { kind: 'arp' } // O2
  | { kind: 'vlan' } // O3
  | { kind: 'other' } // O4
  | { kind: 'bad-ip'; family: 4 | 6 } // O5 / O6
  | { kind: 'ip'; ip: Ip };

export interface Ip {
  family: 4 | 6;
  /** 16-byte keys, hex. */
  src: string;
  dst: string;
  srcRaw: Buffer;
  dstRaw: Buffer;
  /** IPv6: the extension chain cannot be classified (O11). Always false for IPv4. */
  badChain: boolean;
  /** Upper-layer protocol (IPv6: where the chain ends). */
  proto: number;
  /** A fragment with offset != 0. */
  laterFragment: boolean;
  /** Offset of the L4 header in the frame (meaningless for later fragments). */
  l4Off: number;
}

export function parse(f: Buffer): L2 {
  if (f.length < ETH_HLEN) return { kind: 'short' };
  const type = f.readUInt16BE(12);
  if (type === 0x0806) return { kind: 'arp' };
  if (type === 0x8100 || type === 0x88a8) return { kind: 'vlan' };
  if (type === 0x0800) return parseV4(f);
  if (type === 0x86dd) return parseV6(f);
  return { kind: 'other' };
}

function parseV4(f: Buffer): L2 {
  const o = ETH_HLEN;
  if (f.length < o + 20) return { kind: 'bad-ip', family: 4 };
  const version = f[o]! >> 4;
  const ihl = f[o]! & 0xf;
  if (version !== 4 || ihl < 5 || o + ihl * 4 > f.length) return { kind: 'bad-ip', family: 4 };
  const srcRaw = f.subarray(o + 12, o + 16);
  const dstRaw = f.subarray(o + 16, o + 20);
  return {
    kind: 'ip',
    ip: {
      family: 4,
      src: addrKeyHex(srcRaw),
      dst: addrKeyHex(dstRaw),
      srcRaw,
      dstRaw,
      badChain: false,
      proto: f[o + 9]!,
      laterFragment: (f.readUInt16BE(o + 6) & 0x1fff) !== 0,
      l4Off: o + ihl * 4,
    },
  };
}

function parseV6(f: Buffer): L2 {
  const o = ETH_HLEN;
  if (f.length < o + 40 || f[o]! >> 4 !== 6) return { kind: 'bad-ip', family: 6 };
  const srcRaw = f.subarray(o + 8, o + 24);
  const dstRaw = f.subarray(o + 24, o + 40);
  const ip: Ip = {
    family: 6,
    src: srcRaw.toString('hex'),
    dst: dstRaw.toString('hex'),
    srcRaw,
    dstRaw,
    badChain: false,
    proto: f[o + 6]!,
    laterFragment: false,
    l4Off: o + 40,
  };
  // O11. INTERP: every extension header counts toward MAX_IPV6_EXT (the fragment header
  // too); a header is truncated unless all of it (its own length field) is in the frame;
  // a fragment header with offset != 0 ends the walk (what follows is not a header), and
  // its next-header field is the protocol that must be TCP/UDP/ICMPv6.
  let nh = ip.proto;
  let off = ip.l4Off;
  let count = 0;
  while (V6_EXT.has(nh)) {
    if (count === MAX_IPV6_EXT) return { kind: 'ip', ip: { ...ip, badChain: true } };
    let len: number;
    if (nh === 44) {
      len = 8;
    } else {
      if (off + 2 > f.length) return { kind: 'ip', ip: { ...ip, badChain: true } };
      len = nh === 51 ? (f[off + 1]! + 2) * 4 : (f[off + 1]! + 1) * 8;
    }
    if (off + len > f.length) return { kind: 'ip', ip: { ...ip, badChain: true } };
    count++;
    const next = f[off]!;
    if (nh === 44 && f.readUInt16BE(off + 2) >> 3 !== 0) {
      ip.laterFragment = true;
      nh = next;
      off += len;
      break;
    }
    nh = next;
    off += len;
  }
  ip.proto = nh;
  ip.l4Off = off;
  if (nh !== P.TCP && nh !== P.UDP && nh !== P.ICMPV6) ip.badChain = true;
  return { kind: 'ip', ip };
}

function isIcmp(ip: Ip): boolean {
  return ip.proto === (ip.family === 4 ? P.ICMP : P.ICMPV6);
}

/** TCP, UDP or the family's ICMP: what ztunnel's netns takes. */
function carried(ip: Ip): boolean {
  return ip.proto === P.TCP || ip.proto === P.UDP || isIcmp(ip);
}

/**
 * INTERP: "header truncated" means the fixed header is not all in the frame: 20 bytes for
 * TCP (the data offset is not looked at), 8 for UDP, 8 for ICMP/ICMPv6.
 */
function l4Complete(f: Buffer, ip: Ip): boolean {
  const need = ip.proto === P.TCP ? 20 : 8;
  return ip.l4Off + need <= f.length;
}

function dport(f: Buffer, ip: Ip): number {
  return f.readUInt16BE(ip.l4Off + 2);
}

function sport(f: Buffer, ip: Ip): number {
  return f.readUInt16BE(ip.l4Off);
}

/** fe80::/10 and ff02::/16 (O7, I8). */
function linkLocal(a: Buffer): boolean {
  return (a[0] === 0xfe && (a[1]! & 0xc0) === 0x80) || (a[0] === 0xff && a[1] === 0x02);
}

/**
 * INTERP: "no ztunnel" (O12, O16, I13, I17, and "ztunnel's host veth" in I7) is one
 * condition everywhere: the slot lacks PRESENT or its ifindex is 0, as O16 words it.
 */
function ztunnelPresent(s: ModelState): boolean {
  return (s.ztunnel.flags & ZT_F_PRESENT) !== 0 && s.ztunnel.ifindex !== 0;
}

/** DNS capture for a pod: its own flags (annotation) first, else the slot's. */
function dnsCapture(s: ModelState, podFlags: number): boolean {
  if (podFlags & POD_F_DNS_CAPTURE) return true;
  if (podFlags & POD_F_NO_DNS_CAPTURE) return false;
  return (s.ztunnel.flags & ZT_F_DNS_CAPTURE) !== 0;
}

function nonTcpDrop(s: ModelState): boolean {
  return (s.ztunnel.flags & ZT_F_NON_TCP_DROP) !== 0;
}

function icmpError(frame: Buffer, ip: Ip): boolean {
  return isIcmp(ip) && (ip.family === 4 ? ICMP4_ERRORS : ICMP6_ERRORS).has(frame[ip.l4Off]!);
}

/** O15b / I16b: what ztunnel does not proxy (UDP but captured DNS, ICMP but errors), by the policy. */
function nonTcp(s: ModelState, row: string): Verdict {
  return { verdict: nonTcpDrop(s) ? 'drop' : 'pass', row };
}

/** O7 / I8: ICMPv6 neighbour discovery (133–137) or MLD (130–132, 143), header in the frame. */
function ndOrMld(f: Buffer, ip: Ip): boolean {
  if (ip.family !== 6 || ip.badChain || ip.laterFragment || ip.proto !== P.ICMPV6 || !l4Complete(f, ip)) return false;
  const type = f[ip.l4Off]!;
  return (type >= 130 && type <= 137) || type === 143;
}

/** TCP or UDP with its ports in the frame (O10, I11). */
function hasPorts(f: Buffer, ip: Ip): boolean {
  return (ip.proto === P.TCP || ip.proto === P.UDP) && !ip.badChain && !ip.laterFragment && l4Complete(f, ip);
}

/** A TCP SYN without ACK. */
function tcpOpening(f: Buffer, ip: Ip): boolean {
  return ip.proto === P.TCP && (f[ip.l4Off + 13]! & 0x12) === 0x02;
}

/** O15 / I16: UDP with the DNS port on the server's side, no capture, a known server. */
function dnsBypass(s: ModelState, f: Buffer, ip: Ip, side: 'dst' | 'src', podFlags: number): boolean {
  if (ip.proto !== P.UDP || dnsCapture(s, podFlags)) return false;
  return (side === 'dst' ? dport(f, ip) : sport(f, ip)) === 53 && s.dnsServers.has(side === 'dst' ? ip.dst : ip.src);
}

function redirect(s: ModelState, row: string): Verdict {
  return { verdict: 'redirect', row, rewrittenDstMac: s.ztunnel.mac };
}

/** O1–O6 / I1–I6 / Z1: the verdict for a frame that is not a parsable IP packet. */
function l2Verdict(l2: Exclude<L2, { kind: 'ip' }>, prefix: 'O' | 'I'): Verdict {
  switch (l2.kind) {
    case 'short':
      return { verdict: 'drop', row: `${prefix}1` };
    case 'arp':
      return { verdict: 'pass', row: `${prefix}2` };
    case 'vlan':
      return { verdict: 'drop', row: `${prefix}3` };
    case 'other':
      return { verdict: 'drop', row: `${prefix}4` };
    case 'bad-ip':
      return { verdict: 'drop', row: `${prefix}${l2.family === 4 ? 5 : 6}` };
  }
}

// --- outbound: out_redir_peer / out_redirect ---------------------------------------------

export function outbound(frame: Buffer, state: ModelState, ctx: ModelCtx): Verdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return l2Verdict(l2, 'O');
  const ip = l2.ip;
  if (linkLocal(ip.dstRaw) && ndOrMld(frame, ip)) return { verdict: 'pass', row: 'O7' };
  const pod = state.pods.get(ip.src);
  if (!pod || pod.ifindex !== ctx.ifindex) return { verdict: 'drop', row: 'O8' };
  if (!(pod.flags & POD_F_ENROLLED)) return { verdict: 'pass', row: 'O9' };
  // O10. INTERP: "answers a flow the node opened" is the reversed key in host_flows naming
  // this veth; a SYN without ACK is never an answer.
  if (
    hasPorts(frame, ip) &&
    !tcpOpening(frame, ip) &&
    state.hostFlows.get(hostFlowKey(ip.src, sport(frame, ip), ip.dst, dport(frame, ip), ip.proto)) === ctx.ifindex
  ) {
    return { verdict: 'pass', row: 'O10' };
  }
  if (ip.badChain) return { verdict: 'drop', row: 'O11' };
  if (ip.laterFragment && carried(ip)) {
    // INTERP: a non-first fragment of UDP or ICMP follows the non-TCP policy as a whole
    // under pass (its first fragment may be DNS: only the drop policy sends it to ztunnel).
    if (ip.proto !== P.TCP && !nonTcpDrop(state)) return { verdict: 'pass', row: 'O12' };
    return ztunnelPresent(state) ? redirect(state, 'O12') : { verdict: 'drop', row: 'O12' };
  }
  if (!carried(ip)) return { verdict: 'drop', row: 'O13' };
  if (!l4Complete(frame, ip)) return { verdict: 'drop', row: 'O14' };
  const isDns = ip.proto === P.UDP && dport(frame, ip) === 53;
  if (isDns && dnsCapture(state, pod.flags)) return ztunnelPresent(state) ? redirect(state, 'O17') : { verdict: 'drop', row: 'O16' };
  if (dnsBypass(state, frame, ip, 'dst', pod.flags)) return { verdict: 'pass', row: 'O15' };
  if (ip.proto === P.UDP || (isIcmp(ip) && !icmpError(frame, ip))) return nonTcp(state, 'O15b');
  if (!ztunnelPresent(state)) return { verdict: 'drop', row: 'O16' };
  return redirect(state, 'O17');
}

// --- inbound: in_redirect -----------------------------------------------------------------

export function inbound(frame: Buffer, state: ModelState, ctx: ModelCtx): Verdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return l2Verdict(l2, 'I');
  const ip = l2.ip;
  if (ztunnelPresent(state) && (ctx.ingressIfindex ?? 0) === state.ztunnel.ifindex) return { verdict: 'pass', row: 'I7' };
  if ((linkLocal(ip.srcRaw) || linkLocal(ip.dstRaw)) && ndOrMld(frame, ip)) return { verdict: 'pass', row: 'I8' };
  const pod = state.pods.get(ip.dst);
  if (!pod || pod.ifindex !== ctx.ifindex) return { verdict: 'drop', row: 'I9' };
  if (!(pod.flags & POD_F_ENROLLED)) return { verdict: 'pass', row: 'I10' };
  if ((ctx.ingressIfindex ?? 0) === 0 && hasPorts(frame, ip)) {
    const key = hostFlowKey(ip.dst, dport(frame, ip), ip.src, sport(frame, ip), ip.proto);
    if (ip.proto === P.UDP || tcpOpening(frame, ip)) return { verdict: 'pass', row: 'I11', recordFlow: { key, ifindex: ctx.ifindex } };
    if (state.hostFlows.get(key) === ctx.ifindex) return { verdict: 'pass', row: 'I11' };
  }
  if (pod.flags & POD_F_BYPASS_INBOUND) {
    // I11b: every frame passes; a UDP datagram or TCP SYN records its flow (as I11 does) for the pod's answers (O10).
    if (hasPorts(frame, ip) && (ip.proto === P.UDP || tcpOpening(frame, ip))) {
      const key = hostFlowKey(ip.dst, dport(frame, ip), ip.src, sport(frame, ip), ip.proto);
      return { verdict: 'pass', row: 'I11b', recordFlow: { key, ifindex: ctx.ifindex } };
    }
    return { verdict: 'pass', row: 'I11b' };
  }
  if (ip.badChain) return { verdict: 'drop', row: 'I12' };
  if (ip.laterFragment && carried(ip)) {
    if (ip.proto !== P.TCP && !nonTcpDrop(state)) return { verdict: 'pass', row: 'I13' };
    return ztunnelPresent(state) ? redirect(state, 'I13') : { verdict: 'drop', row: 'I13' };
  }
  if (!carried(ip)) return { verdict: 'drop', row: 'I14' };
  if (!l4Complete(frame, ip)) return { verdict: 'drop', row: 'I15' };
  if (dnsBypass(state, frame, ip, 'src', pod.flags)) return { verdict: 'pass', row: 'I16' };
  // Inbound DNS is never captured: ztunnel's answers come from its netns (I7).
  if (ip.proto === P.UDP || (isIcmp(ip) && !icmpError(frame, ip))) return nonTcp(state, 'I16b');
  if (!ztunnelPresent(state)) return { verdict: 'drop', row: 'I17' };
  return redirect(state, 'I18');
}

// --- ztunnel side: zt_mark / zt_assign ----------------------------------------------------

function enrolled(state: ModelState, key: string): boolean {
  const p = state.pods.get(key);
  return p !== undefined && (p.flags & POD_F_ENROLLED) !== 0;
}

interface ZtClass {
  verdict: Verdict;
  /** For Z4–Z7: how zt_assign finds the socket. */
  lookup?: { listener: string; established?: string };
}

/**
 * INTERP: rows Z4–Z8 need the L4 header, so they apply to first fragments and
 * unfragmented packets with the fixed header in the frame; a non-first fragment goes to
 * Z9 (TCP/UDP) or Z10 (anything else), a truncated one to Z10. A deliver sets the whole
 * mark to the ZT_MARK_* value (the tests start from mark 0). Only Z4 looks for an
 * established socket first: the spec says so for Z4 alone.
 */
function ztClassify(frame: Buffer, state: ModelState): ZtClass {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return { verdict: { verdict: 'pass', row: 'Z1' } };
  const ip = l2.ip;
  const out = enrolled(state, ip.src);
  if (!out && !enrolled(state, ip.dst)) return { verdict: { verdict: 'pass', row: 'Z2' } };
  if (ip.badChain) return { verdict: { verdict: 'drop', row: 'Z3' } };
  const fam = ip.family;
  if (ip.laterFragment) {
    if (ip.proto === P.TCP || ip.proto === P.UDP) return { verdict: { verdict: 'deliver', row: 'Z9', mark: out ? Mark.OUTBOUND : Mark.INBOUND } };
    return { verdict: { verdict: 'drop', row: 'Z10' } };
  }
  if (!carried(ip) || !l4Complete(frame, ip)) return { verdict: { verdict: 'drop', row: 'Z10' } };
  const srcFlags = out ? state.pods.get(ip.src)!.flags : 0;
  if (out && (ip.proto === P.TCP || ip.proto === P.UDP) && dport(frame, ip) === 53 && dnsCapture(state, srcFlags)) {
    // TCP DNS as Z4: its established socket first, else the 15053 listener.
    const tcp = ip.proto === P.TCP;
    return {
      verdict: { verdict: 'deliver', row: 'Z5', mark: Mark.DNS },
      lookup: {
        listener: `${tcp ? 'tcp' : 'udp'}${fam}:${Port.DNS}`,
        ...(tcp && { established: tupleKey(fam, ip.dst, dport(frame, ip), ip.src, sport(frame, ip)) }),
      },
    };
  }
  if (ip.proto === P.TCP) {
    if (out) {
      return {
        verdict: { verdict: 'deliver', row: 'Z4', mark: Mark.OUTBOUND },
        lookup: {
          established: tupleKey(fam, ip.dst, dport(frame, ip), ip.src, sport(frame, ip)),
          listener: `tcp${fam}:${Port.OUTBOUND}`,
        },
      };
    }
    if (dport(frame, ip) === Port.HBONE) {
      return { verdict: { verdict: 'deliver', row: 'Z6', mark: Mark.HBONE }, lookup: { listener: `tcp${fam}:${Port.HBONE}` } };
    }
    return { verdict: { verdict: 'deliver', row: 'Z7', mark: Mark.INBOUND }, lookup: { listener: `tcp${fam}:${Port.INBOUND}` } };
  }
  if (isIcmp(ip) && (fam === 4 ? ICMP4_ERRORS : ICMP6_ERRORS).has(frame[ip.l4Off]!)) {
    return { verdict: { verdict: 'deliver', row: 'Z8', mark: Mark.LOCAL } };
  }
  return { verdict: { verdict: 'drop', row: 'Z10' } };
}

export function ztunnelMark(frame: Buffer, state: ModelState): Verdict {
  return ztClassify(frame, state).verdict;
}

export function ztunnelAssign(frame: Buffer, state: ModelState, sockets: SocketTable): Verdict {
  const c = ztClassify(frame, state);
  if (!c.lookup) return c.verdict;
  if (c.lookup.established && sockets.established.has(c.lookup.established)) return { ...c.verdict, socket: 'established' };
  if (sockets.listeners.has(c.lookup.listener)) return { ...c.verdict, socket: `listener:${c.lookup.listener}` };
  return { verdict: 'drop', row: 'Z11' };
}

/** The counters field a verdict of out_* / in_redirect adds to. */
export function counterOf(v: Verdict): 'redirected' | 'dropped' | 'passed' {
  if (v.verdict === 'redirect') return 'redirected';
  if (v.verdict === 'drop') return 'dropped';
  return 'passed';
}
