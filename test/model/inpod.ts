/**
 * The reference model of docs/datapath.md's in-pod rows (PO, PL, PI, PR, PV, PH, PK), written from the
 * spec's text, as test/model/datapath.ts is for the node rows (whose frame parser it
 * shares: the same facts, O1–O6 and O11, decide what is a sound IP packet here). Pure
 * functions over a frame, the map contents and a table of the netns's sockets.
 */
import { addrKeyHex, parse, type Ip } from './datapath.js';
import { connKey, handoffKey, type ConnState } from '../../harness/inpod/sockets.js';

// The socket table's and the handoffs' keys, shared with the kernel side (harness/inpod/).
export { connKey, handoffKey, type ConnState };

export type InpodVerdictName = 'pass' | 'drop' | 'loop' | 'deliver';

export interface InpodVerdict {
  verdict: InpodVerdictName;
  row: string;
  /** deliver: the socket assigned ('tcp4:15001', 'udp6:15053', ...). */
  socket?: string;
  /** PH4: the flow it records (probeFlowKey) and the node address it remembers (hex). */
  recordFlow?: { key: string; node: string };
  /** PH4/PH5: the new source; PH8: the new destination (16-byte key, hex). */
  rewrite?: { field: 'src' | 'dst'; to: string };
  /** PL5/PI8/PV5/PR10: the handoff it leaves for the socket lookup (handoffKey) and the listener in it. */
  handoff?: { key: string; socket: string };
  /** The mark it leaves when not the one it came with, nor a loop's (PV3, PV5: the loop mark). */
  mark?: number;
}

export const LOOP_MARK = 0x20000;
export const ZTUNNEL_MARK = 0x539;
export const Port = { OUTBOUND: 15001, INBOUND: 15006, HBONE: 15008, DNS: 15053 } as const;
export const PROBE_HEX = { 4: addrKeyHex(Buffer.from([169, 254, 7, 127])), 6: 'fd169254712713 37ffffffffffffffff'.replace(' ', '') } as const;

export interface InpodState {
  dnsCapture: boolean;
  /** probe_flows: probeFlowKey -> the node's address (hex). */
  probeFlows: Map<string, string>;
  /** inpod_overrides: a pod's address (hex) -> its flags (Override); absent: none. */
  overrides?: ReadonlyMap<string, number>;
  /** inpod_handoff: handoffKey -> the listener it holds ('tcp4:15001'); absent: not tracked. */
  handoffs?: Map<string, string>;
}

/** The netns's sockets, as the kernel's lookups see them. */
export interface InpodSockets {
  /** Wildcard-bound listeners and UDP sockets: 'tcp4:15001', 'udp6:15053', 'tcp4:8080'. */
  listeners: ReadonlySet<string>;
  /** Connection sockets by connKey (local end first). */
  conns: ReadonlyMap<string, ConnState>;
}

export const NO_SOCKETS: InpodSockets = { listeners: new Set(), conns: new Map() };

export function probeFlowKey(podHex: string, podPort: number, nodePort: number, family: 4 | 6): string {
  return `${podHex}|${podPort}|${nodePort}|${family}`;
}

const TCP = 6;
const UDP = 17;

function l4Complete(f: Buffer, ip: Ip): boolean {
  return ip.l4Off + (ip.proto === TCP ? 20 : 8) <= f.length;
}

/** TCP/UDP with its ports in the frame. */
function ports(f: Buffer, ip: Ip): { sport: number; dport: number } | null {
  if ((ip.proto !== TCP && ip.proto !== UDP) || ip.laterFragment || !l4Complete(f, ip)) return null;
  return { sport: f.readUInt16BE(ip.l4Off), dport: f.readUInt16BE(ip.l4Off + 2) };
}

function syn(f: Buffer, ip: Ip): boolean {
  return (f[ip.l4Off + 13]! & 0x12) === 0x02;
}

/**
 * Any fragment: IPv4 with MF or an offset; IPv6 with a fragment header in its chain.
 * INTERP: the chain is the one O11 walks (no more than MAX_IPV6_EXT headers; a longer one
 * is an unclassified chain, judged before this).
 */
function fragmented(f: Buffer, ip: Ip): boolean {
  if (ip.family === 4) return (f.readUInt16BE(14 + 6) & 0x3fff) !== 0;
  if (ip.laterFragment) return true;
  let nh = f[14 + 6]!;
  let off = 14 + 40;
  for (let i = 0; i < 4; i++) {
    if (nh === 44) return true;
    if (![0, 43, 51, 60].includes(nh) || off + 2 > f.length) return false;
    const len = nh === 51 ? (f[off + 1]! + 2) * 4 : (f[off + 1]! + 1) * 8;
    nh = f[off]!;
    off += len;
  }
  return false;
}

/** The socket a lookup by the frame's tuple (destination port replaced) finds. */
function lookupTcp(s: InpodSockets, ip: Ip, src: [string, number], dst: [string, number]): ConnState | 'listen' | null {
  const c = s.conns.get(connKey(ip.family, dst[0], dst[1], src[0], src[1]));
  if (c) return c;
  return s.listeners.has(`tcp${ip.family}:${dst[1]}`) ? 'listen' : null;
}

/** The connection of the frame's tuple: a connecting socket is an open one here (not TIME_WAIT). */
function conn(s: InpodSockets, ip: Ip, p: { sport: number; dport: number }): 'open' | 'time_wait' | null {
  const c = lookupTcp(s, ip, [ip.src, p.sport], [ip.dst, p.dport]);
  return c === 'listen' || c === null ? null : c === 'time_wait' ? 'time_wait' : 'open';
}

/** ztunnel's listener (TCP) or socket (UDP) on `port` for the frame's tuple. */
function ztunnelSocket(s: InpodSockets, ip: Ip, p: { sport: number }, port: number): string | null {
  const name = `${ip.proto === UDP ? 'udp' : 'tcp'}${ip.family}:${port}`;
  if (ip.proto === UDP) return s.listeners.has(name) ? name : null;
  return lookupTcp(s, ip, [ip.src, p.sport], [ip.dst, port]) === 'listen' ? name : null;
}

/** inpod_overrides' flags (enum inpod_override_flags). */
export const Override = { DNS_CAPTURE: 1, NO_DNS_CAPTURE: 2, BYPASS_INBOUND: 4 } as const;

/** DNS the pod (the frame's source) sends and DNS capture takes: its annotation, else the node's setting. */
function dnsOut(state: InpodState, ip: Ip, p: { dport: number }): boolean {
  if (p.dport !== 53) return false;
  const o = state.overrides?.get(ip.src) ?? 0;
  if (o & Override.DNS_CAPTURE) return true;
  if (o & Override.NO_DNS_CAPTURE) return false;
  return state.dnsCapture;
}

// --- inpod_out: TC egress of the pod's interface ---------------------------------------

export function inpodOut(frame: Buffer, state: InpodState, ctx: { mark: number }, s: InpodSockets): InpodVerdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return { verdict: l2.kind === 'arp' ? 'pass' : 'drop', row: 'PO1' };
  const ip = l2.ip;
  if ((ctx.mark & 0xfff) === ZTUNNEL_MARK) return { verdict: 'pass', row: 'PO2' };
  if (ip.badChain) return { verdict: 'drop', row: 'PO3' };
  if (ip.proto !== TCP && ip.proto !== UDP) return { verdict: 'pass', row: 'PO4' };
  const p = ports(frame, ip);
  if (ip.proto === UDP && (!p || !dnsOut(state, ip, p))) return { verdict: 'pass', row: 'PO5' };
  if (!p || fragmented(frame, ip)) return { verdict: 'drop', row: 'PO6' };
  if (ip.proto === UDP) return ztunnelSocket(s, ip, p, Port.DNS) ? { verdict: 'loop', row: 'PO8' } : { verdict: 'drop', row: 'PO8' };
  // A new connection loops unlooked-up: inpod_in delivers it or drops it (PL3-PL5).
  if (syn(frame, ip)) return { verdict: 'loop', row: 'PO8' };
  if (conn(s, ip, p)) return { verdict: 'loop', row: 'PO7' };
  if (lookupTcp(s, ip, [ip.dst, p.dport], [ip.src, p.sport]) !== null) return { verdict: 'pass', row: 'PO9' };
  return { verdict: 'drop', row: 'PO10' };
}

// --- inpod_in: TC ingress of the pod's interface ---------------------------------------

function deliver(s: InpodSockets, ip: Ip, p: { sport: number }, port: number, row: string): InpodVerdict {
  const sock = ztunnelSocket(s, ip, p, port);
  return sock ? { verdict: 'deliver', row, socket: sock } : { verdict: 'drop', row };
}

/**
 * PL5/PI8/PV5/PR10: ztunnel's listener left for the socket lookup, the frame passed; none, or
 * an entry already there (another copy of the SYN on its way to its lookup): drop.
 */
function handoff(state: InpodState, s: InpodSockets, ip: Ip, p: { sport: number; dport: number }, port: number, row: string): InpodVerdict {
  const sock = ztunnelSocket(s, ip, p, port);
  if (!sock) return { verdict: 'drop', row };
  const key = handoffKey(ip.family, ip.src, p.sport, ip.dst, p.dport);
  if (state.handoffs?.has(key)) return { verdict: 'drop', row };
  return { verdict: 'pass', row, handoff: { key, socket: sock } };
}

/** The rows of outboundSyn's outcomes, by caller: an open connection's, none, a TIME_WAIT forged, handed over. */
interface OutboundSynRows {
  open: string;
  none: string;
  forged: string;
  handoff: string;
}

/**
 * A SYN the pod itself sent (looped by inpod_out: PL2-PL5; routed to lo: PR8-PR10): an open
 * connection's passes; a new connection's goes to ztunnel's listener (15001; 15053 for DNS
 * capture takes), or nowhere; one meeting a TIME_WAIT is handed over, but only for the pod's
 * own connecting socket (on the reverse tuple).
 */
function outboundSyn(state: InpodState, s: InpodSockets, ip: Ip, p: { sport: number; dport: number }, rows: OutboundSynRows): InpodVerdict {
  const c = conn(s, ip, p);
  if (c === 'open') return { verdict: 'pass', row: rows.open };
  const port = dnsOut(state, ip, p) ? Port.DNS : Port.OUTBOUND;
  if (c === null) return deliver(s, ip, p, port, rows.none);
  // A SYN meeting a TIME_WAIT: handed over only for the pod's own connecting socket.
  if (s.conns.get(connKey(ip.family, ip.src, p.sport, ip.dst, p.dport)) !== 'syn_sent') return { verdict: 'drop', row: rows.forged };
  return handoff(state, s, ip, p, port, rows.handoff);
}

export function inpodIn(frame: Buffer, state: InpodState, ctx: { mark: number }, s: InpodSockets): InpodVerdict {
  const l2 = parse(frame);
  if (ctx.mark === LOOP_MARK) {
    if (l2.kind !== 'ip') return { verdict: 'drop', row: 'PL1' };
    const ip = l2.ip;
    const p = ports(frame, ip);
    if (ip.badChain || !p || fragmented(frame, ip)) return { verdict: 'drop', row: 'PL1' };
    if (ip.proto === UDP) return dnsOut(state, ip, p) ? deliver(s, ip, p, Port.DNS, 'PL4') : { verdict: 'drop', row: 'PL1' };
    if (!syn(frame, ip)) return { verdict: 'pass', row: 'PL2' };
    return outboundSyn(state, s, ip, p, { open: 'PL2', none: 'PL4', forged: 'PL3', handoff: 'PL5' });
  }
  if (l2.kind !== 'ip') return { verdict: l2.kind === 'arp' ? 'pass' : 'drop', row: 'PI1' };
  const ip = l2.ip;
  if (ip.badChain) return { verdict: 'drop', row: 'PI2' };
  if (ip.proto !== TCP) return { verdict: 'pass', row: 'PI3' };
  const p = ports(frame, ip);
  if (!p || fragmented(frame, ip)) return { verdict: 'drop', row: 'PI4' };
  if (ip.src === PROBE_HEX[ip.family]) return { verdict: 'pass', row: 'PI5' };
  if (p.dport === Port.HBONE) return { verdict: 'pass', row: 'PI6' };
  const c = conn(s, ip, p);
  // A SYN goes to the connection's own socket (bpf_sk_assign), never on to the listener lookup.
  if (c === 'open' && syn(frame, ip)) return { verdict: 'deliver', row: 'PI7', socket: 'connection' };
  if (c === 'open' || (c === 'time_wait' && !syn(frame, ip))) return { verdict: 'pass', row: 'PI7' };
  if ((state.overrides?.get(ip.dst) ?? 0) & Override.BYPASS_INBOUND) return { verdict: 'pass', row: 'PI7b' };
  if (c === 'time_wait') return handoff(state, s, ip, p, Port.INBOUND, 'PI8');
  return deliver(s, ip, p, Port.INBOUND, 'PI9');
}

// --- inpod_lo_in: TC ingress of lo in the pod's netns --------------------------------------

const LOOPBACK6_HEX = `${'0'.repeat(31)}1`;

/**
 * PR7: a destination of the netns's own as the kernel chose it: loopback (IPv4 127.0.0.0/8,
 * IPv6 ::1), or the source itself. INTERP: by the frame's family (an IPv6 frame to
 * ::ffff:127.0.0.1 is not loopback).
 */
function toItself(ip: Ip): boolean {
  if (ip.dst === ip.src) return true;
  return ip.family === 4 ? ip.dst.slice(24, 26) === '7f' : ip.dst === LOOPBACK6_HEX;
}

/** The pod's own TCP the local route sends to lo: its SYNs to foreign destinations go to ztunnel's listener. */
export function inpodLoIn(frame: Buffer, state: InpodState, ctx: { mark: number }, s: InpodSockets): InpodVerdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return { verdict: l2.kind === 'arp' ? 'pass' : 'drop', row: 'PR1' };
  const ip = l2.ip;
  if (ip.badChain) return { verdict: 'drop', row: 'PR2' };
  if (ip.proto !== TCP) return { verdict: 'pass', row: 'PR3' };
  const p = ports(frame, ip);
  if (!p || fragmented(frame, ip)) return { verdict: 'drop', row: 'PR4' };
  if ((ctx.mark & 0xfff) === ZTUNNEL_MARK) return { verdict: 'pass', row: 'PR5' };
  if (!syn(frame, ip)) return { verdict: 'pass', row: 'PR6' };
  if (toItself(ip)) return { verdict: 'pass', row: 'PR7' };
  return outboundSyn(state, s, ip, p, { open: 'PR8', none: 'PR9', forged: 'PR10', handoff: 'PR10' });
}

// --- inpod_vm_in: TC ingress of a VM interface the pod's annotation lists -------------------

export function inpodVmIn(frame: Buffer, state: InpodState, s: InpodSockets): InpodVerdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return { verdict: l2.kind === 'arp' ? 'pass' : 'drop', row: 'PV1' };
  const ip = l2.ip;
  if (ip.badChain) return { verdict: 'drop', row: 'PV2' };
  if (ip.proto !== TCP) return { verdict: 'pass', row: 'PV1' };
  const p = ports(frame, ip);
  if (!p || fragmented(frame, ip)) return { verdict: 'drop', row: 'PV2' };
  const c = conn(s, ip, p);
  if (c === 'open' || (c === 'time_wait' && !syn(frame, ip))) return { verdict: 'pass', row: 'PV3', mark: LOOP_MARK };
  if (!syn(frame, ip)) return { verdict: 'drop', row: 'PV4' };
  const v = c === 'time_wait' ? handoff(state, s, ip, p, Port.OUTBOUND, 'PV5') : deliver(s, ip, p, Port.OUTBOUND, 'PV5');
  return v.verdict === 'drop' ? v : { ...v, mark: LOOP_MARK };
}

// --- the pod's host veth -----------------------------------------------------------------

/** inpod_host_in: TC egress of the host veth (frames to the pod). */
export function inpodHostIn(frame: Buffer, state: InpodState, ctx: { ingressIfindex: number }): InpodVerdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return { verdict: 'pass', row: 'PH1' };
  const ip = l2.ip;
  if (ip.src === PROBE_HEX[ip.family]) return { verdict: 'drop', row: 'PH2' };
  // INTERP: "TCP with its ports" as O10's: a chain that does not end in TCP is not TCP.
  const p = ip.badChain || ip.proto !== TCP ? null : ports(frame, ip);
  if (ctx.ingressIfindex !== 0 || !p) return { verdict: 'pass', row: 'PH3' };
  const key = probeFlowKey(ip.dst, p.dport, p.sport, ip.family);
  const rewrite = { field: 'src' as const, to: PROBE_HEX[ip.family] };
  if (syn(frame, ip)) return { verdict: 'pass', row: 'PH4', recordFlow: { key, node: ip.src }, rewrite };
  if (state.probeFlows.get(key) === ip.src) return { verdict: 'pass', row: 'PH5', rewrite };
  return { verdict: 'pass', row: 'PH6' };
}

/** inpod_host_out: TC ingress of the host veth (frames from the pod). */
export function inpodHostOut(frame: Buffer, state: InpodState): InpodVerdict {
  const l2 = parse(frame);
  if (l2.kind !== 'ip' || l2.ip.dst !== PROBE_HEX[l2.ip.family]) return { verdict: 'pass', row: 'PH7' };
  const ip = l2.ip;
  const p = ip.badChain || ip.proto !== TCP ? null : ports(frame, ip);
  if (!p) return { verdict: 'drop', row: 'PH9' };
  const node = state.probeFlows.get(probeFlowKey(ip.src, p.sport, p.dport, ip.family));
  if (node === undefined) return { verdict: 'drop', row: 'PH9' };
  return { verdict: 'pass', row: 'PH8', rewrite: { field: 'dst', to: node } };
}

/** The frame programs of build/inpod.bpf.o (inpod_lookup runs on a lookup: inpodLookup). */
export type InpodFrameProgram = 'inpod_out' | 'inpod_in' | 'inpod_host_in' | 'inpod_host_out' | 'inpod_vm_in' | 'inpod_lo_in';

/** The verdict of `program` on a frame in a context (each program reads what it reads of it). */
export function inpodVerdict(
  program: InpodFrameProgram,
  frame: Buffer,
  state: InpodState,
  ctx: { mark: number; ingressIfindex: number },
  s: InpodSockets,
): InpodVerdict {
  if (program === 'inpod_out') return inpodOut(frame, state, ctx, s);
  if (program === 'inpod_in') return inpodIn(frame, state, ctx, s);
  if (program === 'inpod_host_in') return inpodHostIn(frame, state, ctx);
  if (program === 'inpod_vm_in') return inpodVmIn(frame, state, s);
  if (program === 'inpod_lo_in') return inpodLoIn(frame, state, ctx, s);
  return inpodHostOut(frame, state);
}

/** What a verdict leaves in the maps (PH4 records its flow, as the kernel does). */
export function recordInpod(state: InpodState, v: InpodVerdict): void {
  if (v.recordFlow) state.probeFlows.set(v.recordFlow.key, v.recordFlow.node);
  if (v.handoff) state.handoffs?.set(v.handoff.key, v.handoff.socket);
}

// --- inpod_lookup: the socket lookup of the pod's netns -----------------------------------

/** What the kernel's listener lookup hands the program (struct bpf_sk_lookup's fields). */
export interface LookupCtx {
  family: 4 | 6;
  protocol: number;
  remoteHex: string;
  remotePort: number;
  localHex: string;
  localPort: number;
}

export interface LookupVerdict {
  verdict: 'pass' | 'drop';
  row: 'PK1' | 'PK2' | 'PK3';
  /** PK1: the socket given to the lookup. */
  selected?: string;
  /** PK1/PK2: the handoff taken (and removed). */
  takes?: string;
}

/**
 * inpod_lookup. `sockets`: the listener each socket name is, for the assign check (a socket
 * of the other family refuses unless it is a dual-stack IPv6 one; `v6only` names them).
 * `handoffs` are the entries of the lookup's generation and the one before (the tests
 * write and look up within moments); an older one is never found, which
 * test/kernel/inpod-datapath.test.ts checks on its own.
 */
export function inpodLookup(ctx: LookupCtx, handoffs: ReadonlyMap<string, string>, v6only: ReadonlySet<string>): LookupVerdict {
  if (ctx.protocol !== TCP) return { verdict: 'pass', row: 'PK3' };
  const key = handoffKey(ctx.family, ctx.remoteHex, ctx.remotePort, ctx.localHex, ctx.localPort);
  const sock = handoffs.get(key);
  if (sock === undefined) return { verdict: 'pass', row: 'PK3' };
  const sockFamily = sock.startsWith('tcp6') ? 6 : 4;
  const fits = sockFamily === ctx.family || (sockFamily === 6 && !v6only.has(sock));
  return fits ? { verdict: 'pass', row: 'PK1', selected: sock, takes: key } : { verdict: 'drop', row: 'PK2', takes: key };
}

// --- the bytes a verdict leaves ------------------------------------------------------------

/** Ones' complement helpers on 16-bit words as the kernel stores them (csum_replace). */
function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** RFC 1624 incremental update of a checksum over a changed run of 16-bit words. */
function csumUpdate(check: number, from: Buffer, to: Buffer): number {
  let sum = ~check & 0xffff;
  for (let i = 0; i < from.length; i += 2) sum += ~from.readUInt16BE(i) & 0xffff;
  for (let i = 0; i < to.length; i += 2) sum += to.readUInt16BE(i);
  return ~fold(sum) & 0xffff;
}

/**
 * The frame as the program leaves it: loop rewrites the destination MAC to the source's;
 * a rewrite changes the address and updates the IPv4 header checksum (IPv4) and the TCP
 * checksum (its pseudo-header) incrementally.
 */
export function expectedBytes(frame: Buffer, v: InpodVerdict): Buffer {
  const out = Buffer.from(frame);
  if (v.verdict === 'loop') frame.copy(out, 0, 6, 12);
  if (!v.rewrite) return out;
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return out;
  const ip = l2.ip;
  const to16 = Buffer.from(v.rewrite.to, 'hex');
  const to = ip.family === 4 ? to16.subarray(12) : to16;
  const off = ip.family === 4 ? (v.rewrite.field === 'src' ? 26 : 30) : v.rewrite.field === 'src' ? 22 : 38;
  const from = Buffer.from(frame.subarray(off, off + to.length));
  const tcpCheck = ip.l4Off + 16;
  out.writeUInt16BE(csumUpdate(out.readUInt16BE(tcpCheck), from, to), tcpCheck);
  if (ip.family === 4) out.writeUInt16BE(csumUpdate(out.readUInt16BE(24), from, to), 24);
  to.copy(out, off);
  return out;
}
