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
