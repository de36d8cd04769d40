/**
 * The simulated ztunnel's transparent listener: the harness's own libc socket calls
 * (koffi), kept out of src/bpf/ffi.ts because the agent never listens transparently.
 */
import koffi from 'koffi';
import { BpfError } from '../../src/bpf/errors.js';

const libc = koffi.load('libc.so.6');
const c = {
  close: libc.func('int close(int fd)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t len)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, _Out_ void *value, _Inout_ uint32_t *len)'),
  sendto: libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t alen)'),
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)'),
};
const errno = (): number => koffi.errno();

export const AF_INET = 2;
export const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOL_IP = 0;
const SOL_IPV6 = 41;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const IP_TRANSPARENT = 19;
const IPV6_TRANSPARENT = 75;
const IPV6_V6ONLY = 26;

/**
 * A listening TCP socket with IP_TRANSPARENT set, so that TPROXY can hand it connections
 * for addresses that are not local. Returns the fd, for net.Server.listen({ fd }).
 */
export function transparentListener(family: typeof AF_INET | typeof AF_INET6, port: number): number {
  const fd = c.socket(family, SOCK_STREAM, 0) as number;
  if (fd < 0) throw new BpfError('socket', `port ${port}`, errno());
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  const fail = (op: string): never => {
    const e = errno();
    c.close(fd);
    throw new BpfError(op, `port ${port}`, e);
  };
  if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) < 0) fail('setsockopt(SO_REUSEADDR)');
  // An IPv6 listener takes IPv6 only, so that an IPv4 one can share its port.
  if (family === AF_INET6 && c.setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, one, 4) < 0) fail('setsockopt(IPV6_V6ONLY)');
  const transparent = family === AF_INET ? [SOL_IP, IP_TRANSPARENT] : [SOL_IPV6, IPV6_TRANSPARENT];
  if (c.setsockopt(fd, transparent[0], transparent[1], one, 4) < 0) fail('setsockopt(IP_TRANSPARENT)');
  let addr: Buffer;
  if (family === AF_INET) {
    addr = Buffer.alloc(16); // sockaddr_in, INADDR_ANY
    addr.writeUInt16LE(AF_INET, 0);
    addr.writeUInt16BE(port, 2);
  } else {
    addr = Buffer.alloc(28); // sockaddr_in6, in6addr_any
    addr.writeUInt16LE(AF_INET6, 0);
    addr.writeUInt16BE(port, 2);
  }
  if (c.bind(fd, addr, addr.length) < 0) fail('bind');
  if (c.listen(fd, 511) < 0) fail('listen');
  return fd;
}

const SOCK_DGRAM = 2;
const SO_MARK = 36;
const SOL_TCP = 6;
const TCP_NODELAY = 1;
const SO_RCVTIMEO = 20;
const SO_SNDTIMEO = 21;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
/** SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6) share the number. */
const SO_ORIGINAL_DST = 80;

function sockaddr(ip: string, port: number): Buffer {
  if (ip.includes(':')) {
    const addr = Buffer.alloc(28);
    addr.writeUInt16LE(AF_INET6, 0);
    addr.writeUInt16BE(port, 2);
    ipv6Bytes(ip).copy(addr, 8);
    return addr;
  }
  const addr = Buffer.alloc(16);
  addr.writeUInt16LE(AF_INET, 0);
  addr.writeUInt16BE(port, 2);
  ip.split('.').forEach((o, i) => addr.writeUInt8(Number(o), 4 + i));
  return addr;
}

function ipv6Bytes(ip: string): Buffer {
  const [head, tail] = ip.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(Number.parseInt(g || '0', 16), i * 2));
  return b;
}

function formatAddr(buf: Buffer): string {
  const family = buf.readUInt16LE(0);
  const port = buf.readUInt16BE(2);
  if (family === AF_INET) return `${[...buf.subarray(4, 8)].join('.')}:${port}`;
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(8 + i * 2).toString(16));
  // Longest run of zero groups as ::, as inet_ntop writes it (Node's socket addresses too).
  let best = [-1, 0];
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > best[1]! && j - i > 1) best = [i, j - i];
    i = j;
  }
  const text = best[0]! < 0 ? groups.join(':') : `${groups.slice(0, best[0]).join(':')}::${groups.slice(best[0]! + best[1]!).join(':')}`;
  return `${text}:${port}`;
}

const SO_COOKIE = 57;

/** A socket's cookie (`getsockopt(SO_COOKIE)`): what BPF helpers and sk_lookup report for it. */
export function socketCookie(fd: number): bigint {
  const buf = Buffer.alloc(8);
  if (c.getsockopt(fd, SOL_SOCKET, SO_COOKIE, buf, [8]) < 0) throw new BpfError('getsockopt(SO_COOKIE)', `fd ${fd}`, errno());
  return buf.readBigUInt64LE(0);
}

/**
 * A connection's original destination as REDIRECT's conntrack NAT recorded it
 * (`getsockopt(SO_ORIGINAL_DST)`), as `ip:port`; null when the connection was not NATed
 * (TPROXY, bpf_sk_assign: the local address is the original destination then).
 */
export function originalDst(fd: number, family: typeof AF_INET | typeof AF_INET6): string | null {
  const buf = Buffer.alloc(family === AF_INET ? 16 : 28);
  const len = [buf.length];
  const level = family === AF_INET ? SOL_IP : SOL_IPV6;
  if (c.getsockopt(fd, level, SO_ORIGINAL_DST, buf, len) < 0) return null;
  return formatAddr(buf);
}

/**
 * A UDP socket in the calling thread's netns bound to `port` (0: any) on the wildcard
 * address (or loopback, as ztunnel's DNS proxy binds), transparent and with SO_MARK when
 * asked (ztunnel's in-pod DNS socket is both); for dgram's bind({ fd }) or udpReceive.
 */
export function udpSocket(
  family: typeof AF_INET | typeof AF_INET6,
  port: number,
  opts: { mark?: number; loopback?: boolean; transparent?: boolean } = {},
): number {
  const fd = c.socket(family, SOCK_DGRAM, 0) as number;
  if (fd < 0) throw new BpfError('socket', `udp port ${port}`, errno());
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  const fail = (op: string): never => {
    const e = errno();
    c.close(fd);
    throw new BpfError(op, `udp port ${port}`, e);
  };
  if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) < 0) fail('setsockopt(SO_REUSEADDR)');
  if (family === AF_INET6 && c.setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, one, 4) < 0) fail('setsockopt(IPV6_V6ONLY)');
  if (opts.transparent) {
    const t = family === AF_INET ? [SOL_IP, IP_TRANSPARENT] : [SOL_IPV6, IPV6_TRANSPARENT];
    if (c.setsockopt(fd, t[0]!, t[1]!, one, 4) < 0) fail('setsockopt(IP_TRANSPARENT)');
  }
  if (opts.mark !== undefined) {
    const m = Buffer.alloc(4);
    m.writeUInt32LE(opts.mark);
    if (c.setsockopt(fd, SOL_SOCKET, SO_MARK, m, 4) < 0) fail('setsockopt(SO_MARK)');
  }
  const any = family === AF_INET ? '0.0.0.0' : '::';
  const loop = family === AF_INET ? '127.0.0.1' : '::1';
  const addr = sockaddr(opts.loopback ? loop : any, port);
  if (c.bind(fd, addr, addr.length) < 0) fail('bind');
  return fd;
}

export function udpSendTo(fd: number, ip: string, port: number, data: Buffer): void {
  const addr = sockaddr(ip, port);
  if (Number(c.sendto(fd, data, data.length, 0, addr, addr.length)) < 0) throw new BpfError('sendto', `${ip}:${port}`, errno());
}

/** One datagram waiting on the socket, or null. */
export function udpReceive(fd: number): Buffer | null {
  const buf = Buffer.alloc(2048);
  const n = Number(c.recv(fd, buf, buf.length, MSG_DONTWAIT));
  return n < 0 ? null : buf.subarray(0, n);
}

/** send(2) on a connected socket: 0, or the errno it failed with. */
export function sendOn(fd: number, data: Buffer): number {
  return Number(c.sendto(fd, data, data.length, MSG_NOSIGNAL, null, 0)) < 0 ? errno() : 0;
}

export function closeSocket(fd: number): void {
  c.close(fd);
}

function timeval(ms: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  b.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
  return b;
}

const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const EINPROGRESS = 115;

function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

/**
 * A TCP socket for `ip`'s family carrying SO_MARK `mark` (as ztunnel's own sockets do), in
 * the netns this thread is in, with what `opts` asks: non-blocking, Nagle off, bound to a
 * `from` address not of this netns (IP_TRANSPARENT), send and receive timeouts (the send
 * timeout bounds connect(2) too). A failing call closes it and throws, naming `target`.
 */
function markedSocket(
  ip: string,
  mark: number,
  target: string,
  opts: { nonBlocking?: boolean; noDelay?: boolean; from?: string; fromPort?: number; sendTimeoutMs?: number; recvTimeoutMs?: number } = {},
): number {
  const family = ip.includes(':') ? AF_INET6 : AF_INET;
  const fd = c.socket(family, SOCK_STREAM | (opts.nonBlocking ? SOCK_NONBLOCK | SOCK_CLOEXEC : 0), 0) as number;
  if (fd < 0) throw new BpfError('socket', target, errno());
  const set = (op: string, level: number, name: number, value: Buffer) => {
    if (c.setsockopt(fd, level, name, value, value.length) >= 0) return;
    const e = errno();
    c.close(fd);
    throw new BpfError(op, target, e);
  };
  set('setsockopt(SO_MARK)', SOL_SOCKET, SO_MARK, int32(mark));
  if (opts.noDelay) set('setsockopt(TCP_NODELAY)', SOL_TCP, TCP_NODELAY, int32(1));
  if (opts.from !== undefined) {
    if (family === AF_INET) set('setsockopt(IP_TRANSPARENT)', SOL_IP, IP_TRANSPARENT, int32(1));
    else set('setsockopt(IPV6_TRANSPARENT)', SOL_IPV6, IPV6_TRANSPARENT, int32(1));
  }
  if (opts.sendTimeoutMs !== undefined) set('setsockopt(SO_SNDTIMEO)', SOL_SOCKET, SO_SNDTIMEO, timeval(opts.sendTimeoutMs));
  if (opts.recvTimeoutMs !== undefined) set('setsockopt(SO_RCVTIMEO)', SOL_SOCKET, SO_RCVTIMEO, timeval(opts.recvTimeoutMs));
  if (opts.from !== undefined) {
    const local = sockaddr(opts.from, opts.fromPort ?? 0);
    if (c.bind(fd, local, local.length) < 0) {
      const e = errno();
      c.close(fd);
      throw new BpfError('bind', target, e);
    }
  }
  return fd;
}

/** connect(2): 0, or the errno it failed with. */
function connectErrno(fd: number, ip: string, port: number): number {
  const addr = sockaddr(ip, port);
  return c.connect(fd, addr, addr.length) < 0 ? errno() : 0;
}

/** Connects `fd` (blocking), or closes it and throws; returns it. */
function connectOrThrow(fd: number, ip: string, port: number, target: string): number {
  const e = connectErrno(fd, ip, port);
  if (e === 0) return fd;
  c.close(fd);
  throw new BpfError('connect', target, e);
}

/**
 * A TCP connection to ip:port made by a socket carrying SO_MARK `mark` (as ztunnel's own
 * sockets do), connected (blocking, 3 s at most) before it is returned; for new
 * net.Socket({ fd }).
 */
export function markedConnect(ip: string, port: number, mark: number): number {
  const target = `${ip}:${port}`;
  return connectOrThrow(markedSocket(ip, mark, target, { sendTimeoutMs: 3_000 }), ip, port, target);
}

/**
 * A TCP connection to ip:port started (non-blocking) by a socket carrying SO_MARK `mark`,
 * in the netns this thread is in: for new net.Socket({ fd }), whose writes wait for the
 * connection (a proxy's upstream leg, made inside a pod's netns).
 */
export function markedConnectStart(ip: string, port: number, mark: number): number {
  const target = `${ip}:${port}`;
  const fd = markedSocket(ip, mark, target, { nonBlocking: true, noDelay: true });
  const e = connectErrno(fd, ip, port);
  if (e !== 0 && e !== EINPROGRESS) {
    c.close(fd);
    throw new BpfError('connect', target, e);
  }
  return fd;
}

/**
 * A TCP connection to ip:port from `fromIp` (an address not of this netns: IP_TRANSPARENT)
 * and `fromPort` (0: the kernel's pick) by a socket carrying SO_MARK `mark`, connected
 * (blocking, 3 s at most): ztunnel's inbound leg to the app, sent with the client's own address.
 */
export function transparentMarkedConnect(fromIp: string, ip: string, port: number, mark: number, fromPort = 0): number {
  const target = `${fromIp}:${fromPort} -> ${ip}:${port}`;
  return connectOrThrow(markedSocket(ip, mark, target, { from: fromIp, fromPort, sendTimeoutMs: 3_000 }), ip, port, target);
}

/**
 * A blocking TCP connect from the calling thread's netns with SO_MARK `mark` (as ztunnel's
 * own sockets), bounded by `timeoutMs`; returns the first bytes the server sent, or the
 * error. For a test's "ztunnel's own traffic is never captured". `read: false` returns
 * once connected (reply ''): a server in this same process cannot answer a blocked thread.
 */
export function markedExchange(
  ip: string,
  port: number,
  mark: number,
  opts: { timeoutMs?: number; read?: boolean } = {},
): { ok: true; reply: string } | { ok: false; error: string } {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  const fd = markedSocket(ip, mark, `${ip}:${port}`, { sendTimeoutMs: timeoutMs, recvTimeoutMs: timeoutMs });
  try {
    const e = connectErrno(fd, ip, port);
    if (e !== 0) return { ok: false, error: `connect: errno ${e}` };
    if (opts.read === false) return { ok: true, reply: '' };
    const buf = Buffer.alloc(256);
    const n = Number(c.recv(fd, buf, buf.length, 0));
    if (n < 0) return { ok: false, error: `recv: errno ${errno()}` };
    return { ok: true, reply: buf.subarray(0, n).toString('utf8') };
  } finally {
    c.close(fd);
  }
}
