/**
 * The libc calls Node.js's `net` module lacks for the ZDS protocol (docs/zds.md): Unix
 * sockets of type SOCK_SEQPACKET, file descriptors passed as SCM_RIGHTS, TCP listeners with
 * SO_MARK, and an epoll readiness loop. With src/bpf/ffi.ts, the only module that imports
 * koffi. Calls are shaped like the C API and checked: a failing call throws a LibcError
 * naming the operation, its target and the errno.
 *
 * Never blocking the event loop: every socket here is non-blocking (SOCK_NONBLOCK |
 * SOCK_CLOEXEC), so accept4/recvmsg/sendmsg return EAGAIN instead of waiting. Readiness
 * comes from one epoll set per Poller, waited on with koffi's async call, which runs
 * epoll_wait on a libuv worker thread and calls back on the loop; an eventfd in the set
 * wakes it when the poller closes or its last fd goes. libuv itself cannot watch these fds
 * for us: Node wraps only stream Unix sockets, TCP and UDP (a SEQPACKET fd is "unknown" to
 * net.Socket). Cost: one of libuv's worker threads (4 by default) sits in epoll_wait while
 * the process's shared poller watches anything (sharedPoller).
 */
import koffi from 'koffi';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { errnoName } from '../bpf/errors.js';

const libc = koffi.load('libc.so.6');

koffi.struct('zds_iovec', { iov_base: 'void *', iov_len: 'size_t' });
koffi.struct('zds_msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: 'zds_iovec *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});

const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t len)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *len, int flags)'),
  recvmsg: libc.func('intptr_t recvmsg(int fd, _Inout_ zds_msghdr *msg, int flags)'),
  sendmsg: libc.func('intptr_t sendmsg(int fd, const zds_msghdr *msg, int flags)'),
  close: libc.func('int close(int fd)'),
  fcntl: libc.func('int fcntl(int fd, int cmd, int arg)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)'),
  epoll_create1: libc.func('int epoll_create1(int flags)'),
  epoll_ctl: libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)'),
  epoll_wait: libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)'),
  eventfd: libc.func('int eventfd(uint32_t initval, int flags)'),
  write: libc.func('intptr_t write(int fd, const void *buf, size_t count)'),
  read: libc.func('intptr_t read(int fd, void *buf, size_t count)'),
  sendto: libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t alen)'),
};

const errno = (): number => koffi.errno();

export class LibcError extends Error {
  readonly op: string;
  readonly target: string;
  readonly errno: number;
  readonly code: string;
  constructor(op: string, target: string, err: number) {
    const code = errnoName(err);
    super(`${op}(${target}): ${code}`);
    this.name = 'LibcError';
    this.op = op;
    this.target = target;
    this.errno = Math.abs(err);
    this.code = code;
  }
}

const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SO_REUSEADDR = 2;
const SO_REUSEPORT = 15;
const SO_MARK = 36;
const SOL_IP = 0;
const SOL_IPV6 = 41;
const IP_TRANSPARENT = 19;
const IPV6_TRANSPARENT = 75;
const IPV6_V6ONLY = 26;
const MSG_TRUNC = 0x20;
const MSG_CTRUNC = 0x08;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const EAGAIN = 11;
const EINTR = 4;

function sockaddrUn(path: string): Buffer {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length === 0 || bytes.length > 107) throw new LibcError('sockaddr_un', path, 36 /* ENAMETOOLONG */);
  const addr = Buffer.alloc(2 + bytes.length + 1);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  return addr;
}

function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

function closeQuiet(fd: number): void {
  c.close(fd);
}

export function closeFd(fd: number): void {
  if (c.close(fd) < 0) throw new LibcError('close', String(fd), errno());
}

/**
 * A listening SOCK_SEQPACKET Unix socket at `path`, non-blocking. A socket file left at the
 * path by an earlier run is replaced; any other kind of file there is an error. The file
 * gets `mode` (0600 by default) from the moment it exists: the umask is narrowed around
 * bind(2). The parent folder is left as it is.
 */
export function seqpacketListen(path: string, mode = 0o600, backlog = 128): number {
  try {
    if (lstatSync(path).isSocket()) unlinkSync(path);
    else throw new LibcError('bind', `${path} exists and is not a socket`, 17 /* EEXIST */);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const fd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError('socket(AF_UNIX, SOCK_SEQPACKET)', path, errno());
  const addr = sockaddrUn(path);
  const oldMask = process.umask(0o777 & ~mode);
  let ret: number;
  let err = 0;
  try {
    ret = c.bind(fd, addr, addr.length) as number;
    if (ret < 0) err = errno();
  } finally {
    process.umask(oldMask);
  }
  if (ret < 0) {
    closeQuiet(fd);
    throw new LibcError('bind', path, err);
  }
  chmodSync(path, mode);
  if (c.listen(fd, backlog) < 0) {
    const e = errno();
    closeQuiet(fd);
    throw new LibcError('listen', path, e);
  }
  return fd;
}

/** Connects a non-blocking SOCK_SEQPACKET socket to `path` (ENOENT/ECONNREFUSED when nothing listens). */
export function seqpacketConnect(path: string): number {
  const fd = c.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError('socket(AF_UNIX, SOCK_SEQPACKET)', path, errno());
  const addr = sockaddrUn(path);
  if (c.connect(fd, addr, addr.length) < 0) {
    const e = errno();
    closeQuiet(fd);
    throw new LibcError('connect', path, e);
  }
  return fd;
}

/** The next pending connection (non-blocking, close-on-exec), or null when none waits. */
export function acceptConn(fd: number): number | null {
  for (;;) {
    const conn = c.accept4(fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
    if (conn >= 0) return conn;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return null;
    throw new LibcError('accept4', String(fd), e);
  }
}

export type Received =
  | { kind: 'datagram'; data: Buffer; fds: number[]; truncated: boolean }
  /**
   * recvmsg returned 0 with no fds: on SOCK_SEQPACKET this is either a zero-length
   * datagram or the peer's orderly close. The kernel does not tell them apart here; the
   * poller's hang-up flag does (Readiness.hangup).
   */
  | { kind: 'zero' }
  | { kind: 'again' };

const CMSG_HDR = 16; // cmsg_len (size_t), cmsg_level (int), cmsg_type (int)
const MAX_FDS = 16;
const CONTROL_LEN = CMSG_HDR + 4 * MAX_FDS;

/**
 * Reads one datagram of up to `max` bytes. A longer one is reported truncated (MSG_TRUNC:
 * the rest is lost, as the kernel discards it). File descriptors that came with it are
 * returned open, close-on-exec; the caller owns them.
 */
export function recvDatagram(fd: number, max: number): Received {
  const data = Buffer.alloc(max);
  const control = Buffer.alloc(CONTROL_LEN);
  const msg = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: data, iov_len: max }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: CONTROL_LEN,
    msg_flags: 0,
  };
  let n: number;
  for (;;) {
    n = Number(c.recvmsg(fd, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC));
    if (n >= 0) break;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return { kind: 'again' };
    throw new LibcError('recvmsg', String(fd), e);
  }
  const fds = parseRights(control, Number(msg.msg_controllen));
  if (n === 0 && fds.length === 0 && (msg.msg_flags & MSG_TRUNC) === 0) return { kind: 'zero' };
  const truncated = n > max || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) !== 0;
  return { kind: 'datagram', data: data.subarray(0, Math.min(n, max)), fds, truncated };
}

function parseRights(control: Buffer, len: number): number[] {
  const fds: number[] = [];
  let off = 0;
  while (off + CMSG_HDR <= len) {
    const cmsgLen = Number(control.readBigUInt64LE(off));
    if (cmsgLen < CMSG_HDR) break;
    const level = control.readInt32LE(off + 8);
    const type = control.readInt32LE(off + 12);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = off + CMSG_HDR; p + 4 <= off + cmsgLen && p + 4 <= len; p += 4) fds.push(control.readInt32LE(p));
    }
    off += (cmsgLen + 7) & ~7;
  }
  return fds;
}

/** Sends one datagram with `fds` as SCM_RIGHTS. False when the socket buffer is full. */
export function sendDatagram(fd: number, data: Buffer, fds: readonly number[] = []): boolean {
  let control: Buffer | null = null;
  if (fds.length > 0) {
    const len = CMSG_HDR + 4 * fds.length;
    control = Buffer.alloc((len + 7) & ~7);
    control.writeBigUInt64LE(BigInt(len), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control!.writeInt32LE(f, CMSG_HDR + 4 * i));
  }
  const msg = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: [{ iov_base: data, iov_len: data.length }],
    msg_iovlen: 1,
    msg_control: control,
    msg_controllen: control?.length ?? 0,
    msg_flags: 0,
  };
  for (;;) {
    const n = Number(c.sendmsg(fd, msg, MSG_DONTWAIT | MSG_NOSIGNAL));
    if (n >= 0) return true;
    const e = errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return false;
    throw new LibcError('sendmsg', String(fd), e);
  }
}

/**
 * A TCP listener on every address at `port` in the calling thread's network namespace,
 * with SO_REUSEADDR, SO_REUSEPORT, SO_MARK `mark` and IP(V6)_TRANSPARENT, as ztunnel opens
 * its in-pod listeners. Blocking fd, for net.Server's `listen({ fd })`.
 */
export function markedListener(family: typeof AF_INET | typeof AF_INET6, port: number, mark: number): number {
  const what = `${family === AF_INET ? 'IPv4' : 'IPv6'} port ${port}`;
  const fd = c.socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError('socket', what, errno());
  const fail = (op: string): never => {
    const e = errno();
    closeQuiet(fd);
    throw new LibcError(op, what, e);
  };
  const one = int32(1);
  if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, one, 4) < 0) fail('setsockopt(SO_REUSEADDR)');
  if (c.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, one, 4) < 0) fail('setsockopt(SO_REUSEPORT)');
  if (c.setsockopt(fd, SOL_SOCKET, SO_MARK, int32(mark), 4) < 0) fail('setsockopt(SO_MARK)');
  if (family === AF_INET6 && c.setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, one, 4) < 0) fail('setsockopt(IPV6_V6ONLY)');
  const transparent = family === AF_INET ? [SOL_IP, IP_TRANSPARENT] : [SOL_IPV6, IPV6_TRANSPARENT];
  if (c.setsockopt(fd, transparent[0]!, transparent[1]!, one, 4) < 0) fail('setsockopt(IP_TRANSPARENT)');
  const addr = family === AF_INET ? Buffer.alloc(16) : Buffer.alloc(28); // INADDR_ANY / in6addr_any
  addr.writeUInt16LE(family, 0);
  addr.writeUInt16BE(port, 2);
  if (c.bind(fd, addr, addr.length) < 0) fail('bind');
  if (c.listen(fd, 511) < 0) fail('listen');
  return fd;
}

/** sockaddr_in of 127.0.0.1:port. */
function loopback4(port: number): Buffer {
  const addr = Buffer.alloc(16);
  addr.writeUInt16LE(AF_INET, 0);
  addr.writeUInt16BE(port, 2);
  addr.writeUInt32BE(0x7f000001, 4);
  return addr;
}

/**
 * A non-blocking UDP socket bound to 127.0.0.1:port in the calling thread's network
 * namespace, with SO_REUSEPORT when asked (the in-pod delivery probe,
 * src/capture/inpod/probe.ts). Read it with recvDatagram.
 */
export function udpLoopbackSocket(port: number, reuseport: boolean): number {
  const what = `UDP 127.0.0.1:${port}`;
  const fd = c.socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new LibcError('socket', what, errno());
  const fail = (op: string): never => {
    const e = errno();
    closeQuiet(fd);
    throw new LibcError(op, what, e);
  };
  if (reuseport && c.setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, int32(1), 4) < 0) fail('setsockopt(SO_REUSEPORT)');
  const addr = loopback4(port);
  if (c.bind(fd, addr, addr.length) < 0) fail('bind');
  return fd;
}

/** Sends one datagram from `fd` to 127.0.0.1:port. */
export function udpSendLoopback(fd: number, port: number, data: Buffer): void {
  const addr = loopback4(port);
  if (Number(c.sendto(fd, data, data.length, MSG_DONTWAIT, addr, addr.length)) < 0) throw new LibcError('sendto', `127.0.0.1:${port}`, errno());
}

// --- readiness --------------------------------------------------------------------------

const EPOLLIN = 0x001;
const EPOLLERR = 0x008;
const EPOLLHUP = 0x010;
const EPOLLRDHUP = 0x2000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
// struct epoll_event is packed on x86-64 (12 bytes), naturally aligned elsewhere (16).
const EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
const DATA_OFF = process.arch === 'x64' ? 4 : 8;
const MAX_EVENTS = 64;
/** epoll_wait returns at least this often, so a lost wake-up costs at most this long. */
const WAIT_MS = 1000;

export interface Readiness {
  readable: boolean;
  /** The peer hung up or the socket has an error. */
  hangup: boolean;
}

/**
 * Calls `onReady(fd, readiness)` on the event loop when a registered fd is readable or
 * hung up (level-triggered: a handler that does not drain the fd is called again).
 */
export class Poller {
  private readonly epfd: number;
  private readonly wakeFd: number;
  private readonly handlers = new Map<number, (r: Readiness) => void>();
  private readonly events = Buffer.alloc(EVENT_SIZE * MAX_EVENTS);
  private closed = false;
  private waiting = false;

  constructor() {
    this.epfd = c.epoll_create1(EFD_CLOEXEC) as number;
    if (this.epfd < 0) throw new LibcError('epoll_create1', 'poller', errno());
    this.wakeFd = c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) as number;
    if (this.wakeFd < 0) {
      const e = errno();
      closeQuiet(this.epfd);
      throw new LibcError('eventfd', 'poller', e);
    }
    this.ctl(EPOLL_CTL_ADD, this.wakeFd);
  }

  private ctl(op: number, fd: number): void {
    const ev = Buffer.alloc(EVENT_SIZE);
    ev.writeUInt32LE(EPOLLIN | EPOLLRDHUP, 0);
    ev.writeUInt32LE(fd, DATA_OFF);
    if (c.epoll_ctl(this.epfd, op, fd, ev) < 0) throw new LibcError(op === EPOLL_CTL_ADD ? 'epoll_ctl(ADD)' : 'epoll_ctl(DEL)', String(fd), errno());
  }

  add(fd: number, onReady: (r: Readiness) => void): void {
    if (this.closed) throw new LibcError('epoll_ctl(ADD)', `${fd} (poller closed)`, 9 /* EBADF */);
    this.ctl(EPOLL_CTL_ADD, fd);
    this.handlers.set(fd, onReady);
    this.arm();
  }

  /** Stops watching `fd`; call before closing it. The last one stops the wait loop. */
  remove(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    try {
      this.ctl(EPOLL_CTL_DEL, fd);
    } catch {
      // Already closed: the kernel dropped it from the set with its last reference.
    }
    if (this.handlers.size === 0 && this.waiting) this.wake();
  }

  private wake(): void {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    c.write(this.wakeFd, one, 8);
  }

  private arm(): void {
    if (this.waiting || this.closed || this.handlers.size === 0) return;
    this.waiting = true;
    c.epoll_wait.async(this.epfd, this.events, MAX_EVENTS, WAIT_MS, (err: unknown, n: number) => {
      this.waiting = false;
      if (this.closed) {
        closeQuiet(this.epfd);
        closeQuiet(this.wakeFd);
        return;
      }
      if (!err && n > 0) this.dispatch(n);
      this.arm();
    });
  }

  private dispatch(n: number): void {
    const ready: [number, Readiness][] = [];
    for (let i = 0; i < n; i++) {
      const flags = this.events.readUInt32LE(i * EVENT_SIZE);
      const fd = this.events.readUInt32LE(i * EVENT_SIZE + DATA_OFF);
      if (fd === this.wakeFd) {
        c.read(this.wakeFd, Buffer.alloc(8), 8);
        continue;
      }
      ready.push([fd, { readable: (flags & EPOLLIN) !== 0, hangup: (flags & (EPOLLHUP | EPOLLERR | EPOLLRDHUP)) !== 0 }]);
    }
    for (const [fd, r] of ready) this.handlers.get(fd)?.(r);
  }

  /** Stops the loop; the epoll and wake fds are closed once the pending wait returns. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handlers.clear();
    if (this.waiting) this.wake();
    else {
      closeQuiet(this.epfd);
      closeQuiet(this.wakeFd);
    }
  }
}

let shared: Poller | null = null;

/**
 * The process's poller: every ZDS socket of a process shares it, so that a process holds
 * at most one libuv worker thread in epoll_wait, and none while it watches nothing.
 */
export function sharedPoller(): Poller {
  shared ??= new Poller();
  return shared;
}

/** Clears O_NONBLOCK (for fds handed to a blocking consumer). */
export function setBlocking(fd: number): void {
  const F_GETFL = 3;
  const F_SETFL = 4;
  const flags = c.fcntl(fd, F_GETFL, 0) as number;
  if (flags < 0) throw new LibcError('fcntl(F_GETFL)', String(fd), errno());
  if (c.fcntl(fd, F_SETFL, flags & ~0o4000) < 0) throw new LibcError('fcntl(F_SETFL)', String(fd), errno());
}
