/**
 * The in-pod ztunnel stand-in: the client side of ZDS (docs/zds.md), as ztunnel >= 1.23
 * speaks it. It connects to the agent's socket (retrying from 10 ms, doubling, up to 15 s
 * between attempts while nothing listens), sends the hello, and answers every request
 * with an ack, after checking it as ztunnel does: an `add` must carry exactly one fd and
 * workload_info, other requests none; a bad one gets an ack with an error. For each
 * `add` it enters the received netns and opens transparent listeners on 15001/15006/15008
 * there, marked 0x539 with SO_MARK, and closes them on `del` or when a snapshot omits the
 * pod. It reports what it holds and every connection it accepts on those listeners.
 *
 * Usable in-process (class ZtunnelInpod) or as a process:
 *   node dist/harness/sim/ztunnel-inpod.js --socket PATH
 * which prints one JSON object per line (`connected`, `add`, `del`, `snapshot`, `accepted`).
 */
import dgram from 'node:dgram';
import { fstatSync, openSync, closeSync } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setNetns } from '../../src/bpf/ffi.js';
import { AF_INET, AF_INET6, closeFd, LibcError, markedListener, sharedPoller, recvDatagram, seqpacketConnect, sendDatagram } from '../../src/host/libc.js';
import {
  decodeRequest,
  encodeHello,
  encodeResponse,
  MAX_DATAGRAM,
  Version,
  ZdsDecodeError,
  type WorkloadInfo,
  type WorkloadRequest,
} from '../../src/zds/codec.js';
import { relay } from './relay.js';
import { markedConnectStart, originalDst, udpSocket } from './transparent.js';

export const INPOD_PORTS = [15001, 15006, 15008] as const;
export const ZTUNNEL_MARK = 0x539;
export const DNS_PORT = 15053;
const RETRY_FIRST_MS = 10;
const RETRY_MAX_MS = 15_000;

export interface Held {
  uid: string;
  info: WorkloadInfo;
  /** Inode of the netns it was given (the identity of the namespace). */
  netnsInode: number;
  ports: number[];
}

export type StandInEvent =
  | { event: 'connected'; connection: number }
  | { event: 'disconnected'; connection: number; reason: string }
  | { event: 'add'; uid: string; netnsInode: number }
  | { event: 'keep'; uid: string }
  | { event: 'del'; uid: string }
  | { event: 'snapshot'; kept: string[]; dropped: string[] }
  | { event: 'nack'; request: string; error: string }
  | { event: 'accepted'; uid: string; port: number; src: string; origDst: string }
  | { event: 'dns'; uid: string; src: string };

interface Workload {
  info: WorkloadInfo;
  netnsFd: number;
  netnsInode: number;
  servers: { close(): void }[];
}

export interface ZtunnelInpodOptions {
  socket: string;
  ports?: readonly number[];
  /**
   * Also a DNS proxy's UDP sockets on 127.0.0.1/::1 port 15053, as ztunnel binds them
   * (answering `ztunnel-dns`: from loopback, REDIRECT's NAT is undone on the answer); TCP
   * 15053 comes with `ports`.
   */
  dns?: boolean;
  /**
   * Relay each connection to its original destination instead of answering it (as
   * ztunnel does; benchmarks): the upstream leg is opened inside the pod's netns by a
   * socket marked 0x539, so the pod's capture lets it out.
   */
  proxy?: boolean;
  /**
   * Asked first for each accepted connection with its original destination: true when it
   * answered the connection itself (a terminating stand-in; benchmarks), false to go on as
   * `proxy` says.
   */
  answer?: (s: net.Socket, origDst: string) => boolean;
  /**
   * Asked first on each `add` (benchmarks): may open the pod's TCP listeners in another
   * process instead of here (the native terminating stand-in, tools/trafficpeer, handed
   * `netnsFd` to inherit and enter), returning what closes them on `del`; null to listen
   * here as usual. `netnsFd` stays this stand-in's. The add is acked once it returns.
   */
  listenElsewhere?: (uid: string, netnsFd: number, ports: readonly number[]) => { close(): void } | null;
  onEvent?: (e: StandInEvent) => void;
}

export class ZtunnelInpod {
  private readonly poller = sharedPoller();
  private readonly workloads = new Map<string, Workload>();
  private readonly ports: readonly number[];
  private fd: number | null = null;
  private retryMs = RETRY_FIRST_MS;
  private retryTimer: NodeJS.Timeout | null = null;
  private snapshotNames: Set<string> | null = null;
  private closed = false;
  /** Counts, for reports. */
  readonly stats = { connections: 0, requests: 0, nacks: 0, snapshots: 0 };
  ready = false;

  constructor(private readonly opts: ZtunnelInpodOptions) {
    this.ports = opts.ports ?? INPOD_PORTS;
    this.connect();
  }

  /** What it holds now: one entry per workload, with the ports it listens on in its netns. */
  held(): Held[] {
    return [...this.workloads.entries()]
      .map(([uid, w]) => ({ uid, info: w.info, netnsInode: w.netnsInode, ports: [...this.ports] }))
      .sort((a, b) => (a.uid < b.uid ? -1 : 1));
  }

  connected(): boolean {
    return this.fd !== null;
  }

  private emit(e: StandInEvent): void {
    this.opts.onEvent?.(e);
  }

  private connect(): void {
    if (this.closed) return;
    let fd: number;
    try {
      fd = seqpacketConnect(this.opts.socket);
    } catch (err) {
      if (err instanceof LibcError && ['ENOENT', 'ECONNREFUSED', 'EAGAIN'].includes(err.code)) {
        this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
        this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
        return;
      }
      throw err;
    }
    this.retryMs = RETRY_FIRST_MS;
    this.fd = fd;
    this.ready = false;
    this.snapshotNames = new Set();
    this.stats.connections++;
    this.poller.add(fd, (r) => this.readable(fd, r.hangup));
    sendDatagram(fd, encodeHello({ version: Version.V1 }));
    this.emit({ event: 'connected', connection: this.stats.connections });
  }

  private disconnect(reason: string): void {
    if (this.fd === null) return;
    this.poller.remove(this.fd);
    closeFd(this.fd);
    this.fd = null;
    this.ready = false;
    this.emit({ event: 'disconnected', connection: this.stats.connections, reason });
    // ztunnel keeps its workloads across a lost connection and reconnects.
    if (!this.closed) this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
  }

  private readable(fd: number, hangup: boolean): void {
    for (;;) {
      if (this.fd !== fd) return;
      let got: ReturnType<typeof recvDatagram>;
      try {
        got = recvDatagram(fd, MAX_DATAGRAM);
      } catch (err) {
        // An agent that closes with our datagrams unread resets the connection (ECONNRESET):
        // lost, as a hang-up is.
        if (!(err instanceof LibcError)) throw err;
        this.disconnect(`receive failed: ${err.message}`);
        return;
      }
      if (got.kind === 'again') {
        if (hangup) this.disconnect('agent hung up');
        return;
      }
      if (got.kind === 'zero') {
        if (hangup) {
          this.disconnect('agent closed');
          return;
        }
        got = { kind: 'datagram' as const, data: Buffer.alloc(0), fds: [], truncated: false };
      }
      this.stats.requests++;
      const error = got.truncated ? 'truncated datagram' : this.handle(got.data, got.fds);
      if (error !== '') {
        this.stats.nacks++;
        this.emit({ event: 'nack', request: got.data.toString('hex'), error });
      }
      try {
        sendDatagram(fd, encodeResponse({ error }));
      } catch (err) {
        this.disconnect(`ack failed: ${(err as Error).message}`);
        return;
      }
    }
  }

  /** Applies one request; returns '' or the error to ack with. Owns (closes) `fds`. */
  private handle(data: Buffer, fds: number[]): string {
    let req: WorkloadRequest;
    try {
      req = decodeRequest(data);
    } catch (err) {
      fds.forEach(closeFd);
      if (err instanceof ZdsDecodeError) return err.message;
      throw err;
    }
    if (req.kind !== 'add') {
      fds.forEach(closeFd);
      if (fds.length > 0) return `${req.kind} must not carry file descriptors, got ${fds.length}`;
    }
    switch (req.kind) {
      case 'add':
        if (fds.length !== 1) {
          fds.forEach(closeFd);
          return `add for ${req.uid} must carry exactly one netns fd, got ${fds.length}`;
        }
        this.snapshotNames?.add(req.uid);
        return this.add(req.uid, req.workloadInfo, fds[0]!);
      case 'keep':
        this.snapshotNames?.add(req.uid);
        this.emit({ event: 'keep', uid: req.uid });
        return '';
      case 'del':
        this.del(req.uid);
        return '';
      case 'snapshot_sent': {
        if (!this.snapshotNames) return 'snapshot_sent outside a snapshot';
        const kept: string[] = [];
        const dropped: string[] = [];
        for (const uid of [...this.workloads.keys()]) {
          if (this.snapshotNames.has(uid)) kept.push(uid);
          else {
            this.del(uid);
            dropped.push(uid);
          }
        }
        this.snapshotNames = null;
        this.ready = true;
        this.stats.snapshots++;
        this.emit({ event: 'snapshot', kept, dropped });
        return '';
      }
    }
  }

  private add(uid: string, info: WorkloadInfo, netnsFd: number): string {
    let inode: number;
    try {
      inode = fstatSync(netnsFd).ino;
    } catch (err) {
      closeFd(netnsFd);
      return `add for ${uid}: cannot stat the netns fd: ${(err as Error).message}`;
    }
    const had = this.workloads.get(uid);
    if (had && had.netnsInode === inode) {
      // The same pod again (a new snapshot): keep its listeners, as ztunnel does.
      closeFd(netnsFd);
      had.info = info;
      this.emit({ event: 'add', uid, netnsInode: inode });
      return '';
    }
    if (had) this.del(uid);
    let servers: { close(): void }[];
    try {
      const elsewhere = this.opts.listenElsewhere?.(uid, netnsFd, this.ports);
      servers = elsewhere ? [elsewhere] : this.listenIn(uid, netnsFd);
    } catch (err) {
      closeFd(netnsFd);
      return `add for ${uid}: ${(err as Error).message}`;
    }
    this.workloads.set(uid, { info, netnsFd, netnsInode: inode, servers });
    this.emit({ event: 'add', uid, netnsInode: inode });
    return '';
  }

  /** Opens the listeners inside the pod's netns (listenInNetns, and the DNS sockets). */
  private listenIn(uid: string, netnsFd: number): (net.Server | dgram.Socket)[] {
    const proxy = this.opts.proxy === true;
    const tcp = listenInNetns(
      netnsFd,
      `pod ${uid}`,
      this.ports,
      (port, s, family) => {
        // As ztunnel: SO_ORIGINAL_DST (REDIRECT's NAT), else the local address (TPROXY, sk_assign).
        const handle = (s as unknown as { _handle?: { fd?: number } })._handle;
        const nat = handle?.fd !== undefined && handle.fd >= 0 ? originalDst(handle.fd, family) : null;
        const origDst = nat ?? `${s.localAddress}:${s.localPort}`;
        this.emit({ event: 'accepted', uid, port, src: `${s.remoteAddress}:${s.remotePort}`, origDst });
        if (this.opts.answer?.(s, origDst)) return true;
        if (proxy) this.relay(s, netnsFd, origDst);
        return proxy;
      },
      { allowHalfOpen: proxy },
    );
    let udp: number[];
    try {
      udp = this.opts.dns
        ? openInNetns(
            netnsFd,
            `pod ${uid}`,
            ([AF_INET, AF_INET6] as const).map((family) => () => udpSocket(family, DNS_PORT, { mark: ZTUNNEL_MARK, loopback: true })),
          )
        : [];
    } catch (err) {
      for (const server of tcp) server.close();
      throw err;
    }
    const dns = udp.map((fd, i) => {
      const sock = dgram.createSocket(i === 0 ? 'udp4' : 'udp6');
      sock.on('message', (_msg, rinfo) => {
        this.emit({ event: 'dns', uid, src: `${rinfo.address}:${rinfo.port}` });
        sock.send('ztunnel-dns', rinfo.port, rinfo.address);
      });
      sock.on('error', () => undefined);
      sock.bind({ fd });
      return sock;
    });
    return [...tcp, ...dns];
  }

  /** Relays `down` (./relay.ts) over a marked upstream connection to `dst`, opened in the pod's netns. */
  private relay(down: net.Socket, netnsFd: number, dst: string): void {
    const i = dst.lastIndexOf(':');
    let fd: number;
    try {
      [fd] = openInNetns(netnsFd, 'pod (relay)', [() => markedConnectStart(dst.slice(0, i), Number(dst.slice(i + 1)), ZTUNNEL_MARK)]) as [number];
    } catch {
      down.destroy();
      return;
    }
    relay(down, new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true }));
  }

  private del(uid: string): void {
    const w = this.workloads.get(uid);
    if (!w) return;
    this.workloads.delete(uid);
    for (const s of w.servers) s.close();
    closeFd(w.netnsFd);
    this.emit({ event: 'del', uid });
  }

  /** Ends the connection and closes every listener (a ztunnel that stops). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.fd !== null) {
      this.poller.remove(this.fd);
      closeFd(this.fd);
      this.fd = null;
    }
    for (const uid of [...this.workloads.keys()]) this.del(uid);
  }
}

/**
 * Opens sockets inside the netns at `netnsFd` (setns on this thread, each `open`, setns
 * back); when one fails, closes those already opened and throws.
 */
function openInNetns(netnsFd: number, what: string, opens: readonly (() => number)[]): number[] {
  const fds: number[] = [];
  const own = openSync('/proc/thread-self/ns/net', 'r');
  try {
    setNetns(netnsFd, what);
    try {
      for (const open of opens) fds.push(open());
    } finally {
      setNetns(own, 'own netns');
    }
  } catch (err) {
    fds.forEach(closeFd);
    throw err;
  } finally {
    closeSync(own);
  }
  return fds;
}

/**
 * ztunnel's in-pod listeners: TCP on each port, IPv4 and IPv6, transparent, SO_REUSEPORT,
 * marked 0x539 (or `opts.mark`: 0 for an app's), opened inside the netns at `netnsFd`. Each accepted connection is reported;
 * unless `onAccepted` returns true (it took the connection), it is answered with `ztunnel`
 * and closed.
 */
export function listenInNetns(
  netnsFd: number,
  what: string,
  ports: readonly number[],
  onAccepted: (port: number, s: net.Socket, family: typeof AF_INET | typeof AF_INET6) => unknown,
  opts: { allowHalfOpen?: boolean; mark?: number } = {},
): net.Server[] {
  const families = [AF_INET, AF_INET6] as const;
  const fds = openInNetns(
    netnsFd,
    what,
    ports.flatMap((port) => families.map((family) => () => markedListener(family, port, opts.mark ?? ZTUNNEL_MARK))),
  );
  return fds.map((fd, i) => {
    const port = ports[Math.floor(i / 2)]!;
    const server = net.createServer({ allowHalfOpen: opts.allowHalfOpen === true }, (s) => {
      if (onAccepted(port, s, families[i % 2]!) === true) return;
      s.on('error', () => s.destroy());
      s.end('ztunnel\n');
    });
    server.on('error', () => undefined);
    server.listen({ fd });
    return server;
  });
}

function main(argv: string[]): void {
  const { values } = parseArgs({ args: argv, options: { socket: { type: 'string' } }, strict: true });
  if (typeof values.socket !== 'string') {
    process.stderr.write('ztunnel-inpod: --socket PATH is required\n');
    process.exit(2);
  }
  const z = new ZtunnelInpod({ socket: values.socket, onEvent: (e) => process.stdout.write(`${JSON.stringify(e)}\n`) });
  const stop = () => {
    z.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  try {
    main(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`ztunnel-inpod: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
