/**
 * rtnetlink dumps of this process's netns, in-process (koffi: socket, sendto, recv): the
 * links, the main table's routes and the netns ids, what `ip -j link|route|netns` printed
 * for src/host/netinfo.ts at four process spawns per pass. Synchronous: a dump is answered
 * by the kernel at once, and a few hundred links read in well under a millisecond.
 * Also sock_diag (what `ss` reads and `ss -K` does): the netns's TCP sockets, and ending one.
 * With src/bpf/ffi.ts and src/host/libc.ts, one of the three modules that import koffi.
 */
import koffi from 'koffi';
import { closeSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { encodeAddr } from '../bpf/codec.js';
import { errnoName } from '../bpf/errors.js';

const libc = koffi.load('libc.so.6');
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t len)'),
  send: libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)'),
  recv: libc.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)'),
  close: libc.func('int close(int fd)'),
};

export class NetlinkError extends Error {
  constructor(
    op: string,
    readonly errno: number,
  ) {
    super(`netlink ${op}: ${errnoName(errno)}`);
    this.name = 'NetlinkError';
  }
}

const ENOENT = 2;
const ESRCH = 3;

const AF_NETLINK = 16;
const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const NETLINK_SOCK_DIAG = 4;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const RTM_NEWLINK = 16;
const RTM_GETLINK = 18;
const RTM_NEWROUTE = 24;
const RTM_GETROUTE = 26;
const RTM_NEWNSID = 88;
const RTM_GETNSID = 90;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_LINK = 5;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const IFLA_LINK_NETNSID = 37;
const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_PREFSRC = 7;
const RTA_TABLE = 15;
const RT_TABLE_MAIN = 254;
const RTN_UNICAST = 1;
const RTM_F_CLONED = 0x200;
const NETNSA_NSID = 1;
const NETNSA_FD = 3;

export interface NlLink {
  ifindex: number;
  name: string;
  /** Lower-case, colon-separated; absent when the link has no hardware address. */
  mac?: string;
  /** IFLA_LINK: the peer's ifindex (a veth's other end). */
  link?: number;
  /** IFLA_LINK_NETNSID: the peer's netns id, when it lives in another netns. */
  linkNetnsId?: number;
  /** IFLA_INFO_KIND: veth, netkit, bridge...; absent for a device without one. */
  kind?: string;
}

export interface NlRoute {
  family: number;
  dst: string;
  dstLen: number;
  oif?: number;
  table: number;
  type: number;
  flags: number;
  /** RTA_PREFSRC: the source the route gives a connection that has none. */
  prefsrc?: string;
}

let seq = 1;

/** One request, every message of its answer (a dump's several datagrams), raw. */
function request(type: number, flags: number, body: Buffer, protocol = NETLINK_ROUTE): Buffer[] {
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol) as number;
  if (fd < 0) throw new NetlinkError('socket', koffi.errno());
  try {
    const addr = Buffer.alloc(12); // sockaddr_nl, pid 0: the kernel assigns one
    addr.writeUInt16LE(AF_NETLINK, 0);
    if ((c.bind(fd, addr, addr.length) as number) < 0) throw new NetlinkError('bind', koffi.errno());
    const mySeq = seq++;
    const msg = Buffer.alloc(16 + align(body.length));
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(type, 4);
    msg.writeUInt16LE(flags | NLM_F_REQUEST, 6);
    msg.writeUInt32LE(mySeq, 8);
    body.copy(msg, 16);
    if ((c.send(fd, msg, msg.length, 0) as number) < 0) throw new NetlinkError('send', koffi.errno());
    const out: Buffer[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = Number(c.recv(fd, buf, buf.length, 0));
      if (n < 0) throw new NetlinkError('recv', koffi.errno());
      for (let off = 0; off + 16 <= n; ) {
        const len = buf.readUInt32LE(off);
        const t = buf.readUInt16LE(off + 4);
        if (len < 16 || off + len > n) throw new NetlinkError('recv (a truncated message)', 5 /* EIO */);
        if (buf.readUInt32LE(off + 8) === mySeq) {
          if (t === NLMSG_DONE) return out;
          if (t === NLMSG_ERROR) {
            const err = buf.readInt32LE(off + 16);
            if (err !== 0) throw new NetlinkError(`request ${type}`, -err);
            return out; // an ACK
          }
          out.push(Buffer.from(buf.subarray(off, off + len)));
          if (!(flags & NLM_F_DUMP)) return out;
        }
        off += align(len);
      }
    }
  } finally {
    c.close(fd);
  }
}

const align = (n: number) => (n + 3) & ~3;

/** The attributes of a message after its fixed header, by type (the last one wins). */
function attrs(msg: Buffer, from: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let off = from; off + 4 <= msg.length; ) {
    const len = msg.readUInt16LE(off);
    if (len < 4) break;
    out.set(msg.readUInt16LE(off + 2) & 0x3fff, msg.subarray(off + 4, off + len));
    off += align(len);
  }
  return out;
}

const cstr = (b: Buffer) => b.toString('utf8', 0, b.indexOf(0) < 0 ? b.length : b.indexOf(0));

/** Every link of this netns. */
export function dumpLinks(): NlLink[] {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg, family AF_UNSPEC
  return request(RTM_GETLINK, NLM_F_DUMP, ifinfo)
    .filter((m) => m.readUInt16LE(4) === RTM_NEWLINK)
    .map((m) => {
      const a = attrs(m, 16 + 16);
      const link: NlLink = { ifindex: m.readInt32LE(16 + 4), name: cstr(a.get(IFLA_IFNAME) ?? Buffer.alloc(0)) };
      const mac = a.get(IFLA_ADDRESS);
      if (mac?.length) link.mac = [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
      const peer = a.get(IFLA_LINK);
      if (peer && peer.length >= 4) link.link = peer.readUInt32LE(0);
      const nsid = a.get(IFLA_LINK_NETNSID);
      if (nsid && nsid.length >= 4) link.linkNetnsId = nsid.readInt32LE(0);
      const info = a.get(IFLA_LINKINFO);
      const kind = info && attrs(info, 0).get(IFLA_INFO_KIND);
      if (kind) link.kind = cstr(kind);
      return link;
    });
}

/** Every route of one family (all tables; the caller filters). */
export function dumpRoutes(family: typeof AF_INET | typeof AF_INET6): NlRoute[] {
  const rtmsg = Buffer.alloc(12);
  rtmsg.writeUInt8(family, 0);
  return request(RTM_GETROUTE, NLM_F_DUMP, rtmsg)
    .filter((m) => m.readUInt16LE(4) === RTM_NEWROUTE)
    .map((m) => {
      const a = attrs(m, 16 + 12);
      const fam = m.readUInt8(16);
      const dst = a.get(RTA_DST);
      const table = a.get(RTA_TABLE);
      const oif = a.get(RTA_OIF);
      const prefsrc = a.get(RTA_PREFSRC);
      return {
        family: fam,
        dstLen: m.readUInt8(17),
        dst: dst ? formatAddr(fam, dst) : '',
        table: table && table.length >= 4 ? table.readUInt32LE(0) : m.readUInt8(20),
        type: m.readUInt8(23),
        flags: m.readUInt32LE(24),
        ...(oif && oif.length >= 4 && { oif: oif.readUInt32LE(0) }),
        ...(prefsrc && { prefsrc: formatAddr(fam, prefsrc) }),
      };
    });
}

function formatAddr(family: number, b: Buffer): string {
  if (family === AF_INET) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // RFC 5952: the longest run of two or more zero groups becomes "::" (the first of equals).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j > i ? j : i + 1;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** Host routes (/32, /128) of the main table with an output device: address -> ifindex. */
export function hostRoutes(routes: readonly NlRoute[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const r of routes) {
    if (r.table !== RT_TABLE_MAIN || r.type !== RTN_UNICAST || r.flags & RTM_F_CLONED || r.oif === undefined) continue;
    if (r.dstLen !== (r.family === AF_INET ? 32 : 128)) continue;
    out.set(r.dst, r.oif);
  }
  return out;
}

/** The id this netns gives another (named under `dir`, as `ip netns` keeps them), or null when none is assigned. */
export function netnsIds(dir = '/run/netns'): Map<number, string> {
  const out = new Map<number, string>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    let fd: number;
    try {
      fd = openSync(join(dir, name), 'r');
    } catch {
      continue;
    }
    try {
      const body = Buffer.alloc(4 + 8); // struct rtgenmsg (padded) + NETNSA_FD
      body.writeUInt8(AF_UNSPEC, 0);
      body.writeUInt16LE(8, 4);
      body.writeUInt16LE(NETNSA_FD, 6);
      body.writeUInt32LE(fd, 8);
      const [m] = request(RTM_GETNSID, 0, body);
      if (!m || m.readUInt16LE(4) !== RTM_NEWNSID) continue;
      const id = attrs(m, 16 + 4).get(NETNSA_NSID);
      if (id && id.length >= 4 && id.readInt32LE(0) >= 0) out.set(id.readInt32LE(0), name);
    } catch {
      // Not a netns (a stale mount point): `ip netns list` shows it without an id.
    } finally {
      closeSync(fd);
    }
  }
  return out;
}

// --- addresses, policy rules and routes: what the in-pod capture reads and writes ----------

const RTM_NEWADDR = 20;
const RTM_GETADDR = 22;
const RTM_DELROUTE = 25;
const RTM_NEWRULE = 32;
const RTM_DELRULE = 33;
const RTM_GETRULE = 34;
const NLM_F_ACK = 0x4;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const NLM_F_REPLACE = 0x100;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const FRA_DST = 1;
const FRA_IIFNAME = 3;
const FRA_PRIORITY = 6;
const FRA_FWMARK = 10;
const FRA_TABLE = 15;
const FRA_FWMASK = 16;
const FRA_IP_PROTO = 22;
const FR_ACT_TO_TBL = 1;
const RTPROT_BOOT = 3;
const RT_SCOPE_HOST = 254;
/** rtm_type of a local route (`ip route add local ...`). */
export const RTN_LOCAL = 2;

export interface NlAddr {
  ifindex: number;
  family: number;
  address: string;
}

/** Every address of this netns (IFA_LOCAL where the kernel gives one, else IFA_ADDRESS). */
export function dumpAddrs(): NlAddr[] {
  const ifaddr = Buffer.alloc(8); // struct ifaddrmsg, family AF_UNSPEC
  return request(RTM_GETADDR, NLM_F_DUMP, ifaddr)
    .filter((m) => m.readUInt16LE(4) === RTM_NEWADDR)
    .flatMap((m) => {
      const family = m.readUInt8(16);
      const a = attrs(m, 16 + 8);
      const addr = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
      if (!addr || (family !== AF_INET && family !== AF_INET6)) return [];
      return [{ ifindex: m.readUInt32LE(16 + 4), family, address: formatAddr(family, addr) }];
    });
}

/**
 * A policy rule "lookup table" at a priority, with the selectors this project uses:
 * fwmark/mask, iif, ipproto, and a destination prefix ("to").
 */
export interface NlRule {
  priority: number;
  table: number;
  fwmark?: number;
  /** With fwmark: the mask (default all ones, as the kernel's). */
  fwmask?: number;
  /** The input interface by name ("lo": what this host sends). */
  iif?: string;
  /** The IP protocol (6 TCP, 17 UDP). */
  ipProto?: number;
  /** The destination prefix. */
  dst?: { addr: string; len: number };
}

/** A rule that selects by fwmark. */
export interface NlFwmarkRule extends NlRule {
  fwmark: number;
  fwmask: number;
}

function rtattr(type: number, value: Buffer): Buffer {
  const b = Buffer.alloc(align(4 + value.length));
  b.writeUInt16LE(4 + value.length, 0);
  b.writeUInt16LE(type, 2);
  value.copy(b, 4);
  return b;
}

const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
};

/** An address's bytes as netlink carries them for its family (4 or 16). */
function addrBytes(family: number, addr: string): Buffer {
  const b = encodeAddr(addr);
  const v4 = !addr.includes(':');
  if (v4 !== (family === AF_INET)) throw new Error(`${addr} is not an address of family ${family === AF_INET ? 'IPv4' : 'IPv6'}`);
  return v4 ? b.subarray(12) : b;
}

/** Every rule of one family. */
export function dumpRules(family: typeof AF_INET | typeof AF_INET6): NlRule[] {
  const hdr = Buffer.alloc(12); // struct fib_rule_hdr
  hdr.writeUInt8(family, 0);
  return request(RTM_GETRULE, NLM_F_DUMP, hdr)
    .filter((m) => m.readUInt16LE(4) === RTM_NEWRULE)
    .map((m) => {
      const a = attrs(m, 16 + 12);
      // The kernel leaves FRA_FWMARK out for mark 0 and sends the mask alone.
      const mark = a.get(FRA_FWMARK) ?? (a.get(FRA_FWMASK) ? u32(0) : undefined);
      const table = a.get(FRA_TABLE);
      const iif = a.get(FRA_IIFNAME);
      const proto = a.get(FRA_IP_PROTO);
      const dst = a.get(FRA_DST);
      return {
        priority: a.get(FRA_PRIORITY)?.readUInt32LE(0) ?? 0,
        table: table ? table.readUInt32LE(0) : m.readUInt8(16 + 4),
        ...(mark && { fwmark: mark.readUInt32LE(0), fwmask: a.get(FRA_FWMASK)?.readUInt32LE(0) ?? 0xffffffff }),
        ...(iif && { iif: iif.toString('utf8').replace(/\0+$/, '') }),
        ...(proto && { ipProto: proto.readUInt8(0) }),
        ...(dst && { dst: { addr: formatAddr(family, dst), len: m.readUInt8(16 + 1) } }),
      };
    });
}

/** The rules of one family that select by fwmark (others are left out). */
export function dumpFwmarkRules(family: typeof AF_INET | typeof AF_INET6): NlFwmarkRule[] {
  return dumpRules(family).filter((r): r is NlFwmarkRule => r.fwmark !== undefined);
}

/** The rule equals `want` in every field `want` sets, and sets no selector `want` does not. */
export function sameRule(r: NlRule, want: NlRule): boolean {
  return (
    r.priority === want.priority &&
    r.table === want.table &&
    r.fwmark === want.fwmark &&
    (want.fwmark === undefined || r.fwmask === (want.fwmask ?? 0xffffffff)) &&
    r.iif === want.iif &&
    r.ipProto === want.ipProto &&
    r.dst?.addr === want.dst?.addr &&
    r.dst?.len === want.dst?.len
  );
}

function ruleMessage(family: number, r: NlRule): Buffer {
  const hdr = Buffer.alloc(12);
  hdr.writeUInt8(family, 0);
  hdr.writeUInt8(r.dst?.len ?? 0, 1);
  hdr.writeUInt8(r.table < 256 ? r.table : 0, 4);
  hdr.writeUInt8(FR_ACT_TO_TBL, 7);
  const parts = [hdr, rtattr(FRA_PRIORITY, u32(r.priority))];
  if (r.fwmark !== undefined) parts.push(rtattr(FRA_FWMARK, u32(r.fwmark)), rtattr(FRA_FWMASK, u32(r.fwmask ?? 0xffffffff)));
  if (r.iif !== undefined) parts.push(rtattr(FRA_IIFNAME, Buffer.from(`${r.iif}\0`)));
  if (r.ipProto !== undefined) parts.push(rtattr(FRA_IP_PROTO, Buffer.from([r.ipProto])));
  if (r.dst) parts.push(rtattr(FRA_DST, addrBytes(family, r.dst.addr)));
  parts.push(rtattr(FRA_TABLE, u32(r.table)));
  return Buffer.concat(parts);
}

/** `ip rule add pref P [fwmark M/K] [iif I] [ipproto N] [to A/L] lookup T`; EEXIST when the same rule is there. */
export function addRule(family: typeof AF_INET | typeof AF_INET6, r: NlRule): void {
  request(RTM_NEWRULE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ruleMessage(family, r));
}

/** `ip rule del` of that rule; false when there was none. */
export function delRule(family: typeof AF_INET | typeof AF_INET6, r: NlRule): boolean {
  try {
    request(RTM_DELRULE, NLM_F_ACK, ruleMessage(family, r));
    return true;
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === ENOENT) return false;
    throw err;
  }
}

/** `ip rule add pref P fwmark M/K lookup T`; EEXIST when the same rule is there. */
export const addFwmarkRule: (family: typeof AF_INET | typeof AF_INET6, r: NlFwmarkRule) => void = addRule;

/** `ip rule del pref P fwmark M/K lookup T`; false when there was none. */
export const delFwmarkRule: (family: typeof AF_INET | typeof AF_INET6, r: NlFwmarkRule) => boolean = delRule;

function localDefaultMessage(family: number, table: number, oif: number, prefsrc?: string): Buffer {
  const rtmsg = Buffer.alloc(12);
  rtmsg.writeUInt8(family, 0);
  rtmsg.writeUInt8(table < 256 ? table : 0, 4); // rtm_table
  rtmsg.writeUInt8(RTPROT_BOOT, 5);
  rtmsg.writeUInt8(RT_SCOPE_HOST, 6);
  rtmsg.writeUInt8(RTN_LOCAL, 7);
  const parts = [rtmsg, rtattr(RTA_TABLE, u32(table)), rtattr(RTA_OIF, u32(oif))];
  if (prefsrc !== undefined) parts.push(rtattr(RTA_PREFSRC, addrBytes(family, prefsrc)));
  return Buffer.concat(parts);
}

/** `ip route replace local default dev <oif> table T [src <prefsrc>]`. */
export function replaceLocalDefault(family: typeof AF_INET | typeof AF_INET6, table: number, oif: number, prefsrc?: string): void {
  request(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, localDefaultMessage(family, table, oif, prefsrc));
}

/** `ip route del local default dev <oif> table T`; false when there was none. */
export function delLocalDefault(family: typeof AF_INET | typeof AF_INET6, table: number, oif: number): boolean {
  try {
    request(RTM_DELROUTE, NLM_F_ACK, localDefaultMessage(family, table, oif));
    return true;
  } catch (err) {
    if (err instanceof NetlinkError && (err.errno === ENOENT || err.errno === ESRCH)) return false;
    throw err;
  }
}

// --- one route lookup, as a socket's segments get it ---------------------------------------

const RTA_SRC = 2;
const RTA_MARK = 16;
const RTA_IP_PROTO = 27;
/** rtm_flags of a lookup: answer with the table the lookup ended in. */
const RTM_F_LOOKUP_TABLE = 0x1000;

/**
 * `ip route get <dst> from <src> mark <mark> ipproto <proto>`: the route the kernel gives a
 * local socket's segments (an output lookup, through the policy rules), its table and type.
 */
export function routeGet(
  family: typeof AF_INET | typeof AF_INET6,
  q: { dst: string; src: string; mark: number; ipProto: number },
): { table: number; type: number } {
  const full = family === AF_INET ? 32 : 128;
  const rtmsg = Buffer.alloc(12);
  rtmsg.writeUInt8(family, 0);
  rtmsg.writeUInt8(full, 1); // rtm_dst_len
  rtmsg.writeUInt8(full, 2); // rtm_src_len
  rtmsg.writeUInt32LE(RTM_F_LOOKUP_TABLE, 8);
  const body = Buffer.concat([
    rtmsg,
    rtattr(RTA_DST, addrBytes(family, q.dst)),
    rtattr(RTA_SRC, addrBytes(family, q.src)),
    rtattr(RTA_MARK, u32(q.mark)),
    rtattr(RTA_IP_PROTO, Buffer.from([q.ipProto])),
  ]);
  const [m] = request(RTM_GETROUTE, 0, body);
  if (!m || m.readUInt16LE(4) !== RTM_NEWROUTE) throw new NetlinkError('route get (no route in the answer)', 5 /* EIO */);
  const table = attrs(m, 16 + 12).get(RTA_TABLE);
  return { table: table && table.length >= 4 ? table.readUInt32LE(0) : m.readUInt8(16 + 4), type: m.readUInt8(16 + 7) };
}

// --- sock_diag: the netns's TCP sockets, and ending one -------------------------------------

const SOCK_DIAG_BY_FAMILY = 20;
const SOCK_DESTROY = 21;
const INET_DIAG_MARK = 15;
/** struct inet_diag_req_v2: family, protocol, ext, pad, states, then the socket id. */
const REQ_SIZE = 56;
/** struct inet_diag_msg: family, state, timer, retrans, the socket id, five u32s. */
const MSG_SIZE = 72;
/** struct inet_diag_sockid: ports, two 16-byte addresses, interface, cookie. */
const SOCKID_SIZE = 48;

/** A TCP socket of this netns, as `ss -tanm` would show it. */
export interface NlTcpSocket {
  /** The socket's own family: an IPv6 socket on an IPv4 connection shows `::ffff:` addresses. */
  family: typeof AF_INET | typeof AF_INET6;
  state: number;
  src: string;
  sport: number;
  dst: string;
  dport: number;
  /** SO_MARK; absent where the kernel gives none (a TIME_WAIT, a request). */
  mark?: number;
  /** The kernel's id of it (ports, addresses, interface, cookie): what SOCK_DESTROY names. */
  id: Buffer;
}

function diagRequest(family: number, states: number, id?: Buffer): Buffer {
  const req = Buffer.alloc(REQ_SIZE);
  req.writeUInt8(family, 0);
  req.writeUInt8(6, 1); // IPPROTO_TCP
  req.writeUInt32LE(states >>> 0, 4);
  id?.copy(req, 8, 0, SOCKID_SIZE);
  return req;
}

/** Every TCP socket of one family in this netns (all states; the mark needs CAP_NET_ADMIN). */
export function dumpTcpSockets(family: typeof AF_INET | typeof AF_INET6): NlTcpSocket[] {
  return request(SOCK_DIAG_BY_FAMILY, NLM_F_DUMP, diagRequest(family, 0xffffffff), NETLINK_SOCK_DIAG)
    .filter((m) => m.readUInt16LE(4) === SOCK_DIAG_BY_FAMILY && m.length >= 16 + MSG_SIZE)
    .map((m) => {
      const fam = m.readUInt8(16) as typeof AF_INET | typeof AF_INET6;
      const id = Buffer.from(m.subarray(16 + 4, 16 + 4 + SOCKID_SIZE));
      const addr = (at: number) => formatAddr(fam, id.subarray(at, at + (fam === AF_INET ? 4 : 16)));
      const mark = attrs(m, 16 + MSG_SIZE).get(INET_DIAG_MARK);
      return {
        family: fam,
        state: m.readUInt8(17),
        src: addr(4),
        sport: id.readUInt16BE(0),
        dst: addr(20),
        dport: id.readUInt16BE(2),
        ...(mark && mark.length >= 4 && { mark: mark.readUInt32LE(0) }),
        id,
      };
    });
}

/**
 * `ss -K`: ends the socket as a reset would (the app's next call fails with ECONNABORTED;
 * the kernel sends its reset where it can route one). False when it was gone already;
 * EOPNOTSUPP (a NetlinkError) from a kernel built without CONFIG_INET_DIAG_DESTROY.
 */
export function destroyTcpSocket(s: Pick<NlTcpSocket, 'family' | 'id'>): boolean {
  try {
    request(SOCK_DESTROY, NLM_F_ACK, diagRequest(s.family, 0xffffffff, s.id), NETLINK_SOCK_DIAG);
    return true;
  } catch (err) {
    if (err instanceof NetlinkError && err.errno === ENOENT) return false;
    throw err;
  }
}
