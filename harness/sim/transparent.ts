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

const cx = {
  connect: libc.func('int connect(int fd, const void *addr, uint32_t len)'),
  sendto: libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t alen)'),
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)'),
};
const SOCK_DGRAM = 2;
const SO_MARK = 36;
const SO_RCVTIMEO = 20;
const SO_SNDTIMEO = 21;
const MSG_DONTWAIT = 0x40;

function sockaddr(ip: string, port: number): Buffer {
  if (ip.includes(':')) {
    const addr = Buffer.alloc(28);
    addr.writeUInt16LE(AF_INET6, 0);
    addr.writeUInt16BE(port, 2);
    const groups = ip.split('::');
    const head = groups[0] ? groups[0].split(':') : [];
    const tail = groups.length > 1 && groups[1] ? groups[1].split(':') : [];
    const all = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
    all.forEach((g, i) => addr.writeUInt16BE(parseInt(g, 16), 8 + i * 2));
    return addr;
  }
  const addr = Buffer.alloc(16);
  addr.writeUInt16LE(AF_INET, 0);
  addr.writeUInt16BE(port, 2);
  ip.split('.').forEach((o, i) => addr.writeUInt8(Number(o), 4 + i));
  return addr;
}

function timeval(ms: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  b.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
  return b;
}

/**
 * A UDP socket in the calling thread's netns, on every address at `port` (0: any),
 * transparent and marked if asked (ztunnel's in-pod DNS socket is both). Non-blocking reads
 * with udpReceive.
 */
export function udpSocket(family: typeof AF_INET | typeof AF_INET6, port: number, opts: { transparent?: boolean; mark?: number } = {}): number {
  const fd = c.socket(family, SOCK_DGRAM, 0) as number;
  if (fd < 0) throw new BpfError('socket', `udp port ${port}`, errno());
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  const fail = (op: string): never => {
    const e = errno();
    c.close(fd);
    throw new BpfError(op, `udp port ${port}`, e);
  };
  if (family === AF_INET6 && c.setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, one, 4) < 0) fail('setsockopt(IPV6_V6ONLY)');
  if (opts.transparent) {
    const t = family === AF_INET ? [SOL_IP, IP_TRANSPARENT] : [SOL_IPV6, IPV6_TRANSPARENT];
    if (c.setsockopt(fd, t[0], t[1], one, 4) < 0) fail('setsockopt(IP_TRANSPARENT)');
  }
  if (opts.mark !== undefined) {
    const m = Buffer.alloc(4);
    m.writeUInt32LE(opts.mark);
    if (c.setsockopt(fd, SOL_SOCKET, SO_MARK, m, 4) < 0) fail('setsockopt(SO_MARK)');
  }
  const addr = family === AF_INET ? sockaddr('0.0.0.0', port) : sockaddr('::', port);
  if (c.bind(fd, addr, addr.length) < 0) fail('bind');
  return fd;
}

export function udpSendTo(fd: number, ip: string, port: number, data: Buffer): void {
  const addr = sockaddr(ip, port);
  if (Number(cx.sendto(fd, data, data.length, 0, addr, addr.length)) < 0) throw new BpfError('sendto', `${ip}:${port}`, errno());
}

/** One datagram waiting on the socket, or null. */
export function udpReceive(fd: number): Buffer | null {
  const buf = Buffer.alloc(2048);
  const n = Number(cx.recv(fd, buf, buf.length, MSG_DONTWAIT));
  return n < 0 ? null : buf.subarray(0, n);
}

export function closeSocket(fd: number): void {
  c.close(fd);
}

/**
 * A blocking TCP connect from the calling thread's netns with SO_MARK `mark` (as ztunnel's
 * own sockets), bounded by `timeoutMs`; returns the first bytes the server sent, or the
 * error. For a test's "ztunnel's own traffic is never captured". `read: false` returns
 * once connected (reply ''): a server in this same process cannot answer a blocked thread.
 */
export function markedConnect(
  ip: string,
  port: number,
  mark: number,
  opts: { timeoutMs?: number; read?: boolean } = {},
): { ok: true; reply: string } | { ok: false; error: string } {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  const family = ip.includes(':') ? AF_INET6 : AF_INET;
  const fd = c.socket(family, SOCK_STREAM, 0) as number;
  if (fd < 0) throw new BpfError('socket', `${ip}:${port}`, errno());
  try {
    const m = Buffer.alloc(4);
    m.writeUInt32LE(mark);
    if (c.setsockopt(fd, SOL_SOCKET, SO_MARK, m, 4) < 0) throw new BpfError('setsockopt(SO_MARK)', ip, errno());
    if (c.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, timeval(timeoutMs), 16) < 0) throw new BpfError('setsockopt(SO_SNDTIMEO)', ip, errno());
    if (c.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval(timeoutMs), 16) < 0) throw new BpfError('setsockopt(SO_RCVTIMEO)', ip, errno());
    const addr = sockaddr(ip, port);
    if (cx.connect(fd, addr, addr.length) < 0) return { ok: false, error: `connect: errno ${errno()}` };
    if (opts.read === false) return { ok: true, reply: '' };
    const buf = Buffer.alloc(256);
    const n = Number(cx.recv(fd, buf, buf.length, 0));
    if (n < 0) return { ok: false, error: `recv: errno ${errno()}` };
    return { ok: true, reply: buf.subarray(0, n).toString('utf8') };
  } finally {
    c.close(fd);
  }
}
