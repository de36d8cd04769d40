/**
 * The agent's ZDS server: a SOCK_SEQPACKET Unix socket (src/host/libc.ts) in front of the
 * pure state machine (src/zds/state.ts). It owns the listening socket and the connections;
 * the caller owns the pods' netns fds and keeps each open from addPod until removePod.
 *
 * `run --ztunnel-mode inpod` feeds it the enrolled pods through src/zds/agent.ts.
 */
import type { Logger } from '../log.js';
import { acceptConn, closeFd, LibcError, sharedPoller, recvDatagram, seqpacketListen, sendDatagram } from '../host/libc.js';
import { decodeHello, decodeResponse, encodeRequest, MAX_DATAGRAM, ZdsDecodeError, type WorkloadInfo, type WorkloadRequest } from './codec.js';
import { type Action, type ConnStatus, type Counters, DEFAULT_MAX_CONNECTIONS, type Inbound, ZdsState } from './state.js';

export { DEFAULT_ZDS_SOCKET } from './paths.js';

export interface ZdsServerOptions {
  path: string;
  log: Logger;
  /** File mode of the socket; 0600 by default (ztunnel runs as root on the node). */
  mode?: number;
  maxConnections?: number;
  /** Called for every ack (error null on success); the CNI gate will wait on it. */
  onAck?: (conn: number, request: WorkloadRequest, error: string | null) => void;
  now?: () => number;
  /**
   * Hold each connection's snapshot until `podSetComplete()` (an agent gathering its pods
   * at start: a partial snapshot would make ztunnel drop the rest). Default false.
   */
  holdSnapshots?: boolean;
}

/** What a user of the server hears besides the options' callbacks (src/zds/agent.ts). */
export interface ZdsEvents {
  ack(conn: number, request: WorkloadRequest, error: string | null): void;
  /** A connection is gone (peer closed, dropped for bad input or a timeout). */
  closed(conn: number): void;
}

export class ZdsServer {
  private readonly state: ZdsState;
  private readonly poller = sharedPoller();
  private readonly listenFd: number;
  private readonly conns = new Map<number, number>(); // conn id -> fd
  private readonly netns = new Map<string, number>(); // pod uid -> netns fd (the caller's)
  private nextId = 1;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly now: () => number;
  private readonly subscribers: ZdsEvents[] = [];

  constructor(private readonly opts: ZdsServerOptions) {
    this.now = opts.now ?? Date.now;
    this.state = new ZdsState(opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS, !opts.holdSnapshots);
    this.listenFd = seqpacketListen(opts.path, opts.mode ?? 0o600);
    this.poller.add(this.listenFd, () => this.acceptAll());
    opts.log.info('zds listening', { path: opts.path, mode: (opts.mode ?? 0o600).toString(8) });
  }

  /** The agent holds every enrolled pod it can: held snapshots go out now. */
  podSetComplete(): void {
    this.apply(this.state.podSetComplete(this.now()));
  }

  subscribe(events: ZdsEvents): void {
    this.subscribers.push(events);
  }

  get path(): string {
    return this.opts.path;
  }

  get counters(): Readonly<Counters> {
    return this.state.counters;
  }

  connections(): ConnStatus[] {
    return this.state.connections();
  }

  pods(): string[] {
    return this.state.podList().map((p) => p.uid);
  }

  /** Enrolls a pod; `netnsFd` null when its netns cannot be opened now (sent as `keep`). */
  addPod(uid: string, info: WorkloadInfo, netnsFd: number | null): void {
    if (netnsFd === null) this.netns.delete(uid);
    else this.netns.set(uid, netnsFd);
    this.apply(this.state.podAdded({ uid, info, hasNetns: netnsFd !== null }, this.now()));
  }

  removePod(uid: string): void {
    this.netns.delete(uid);
    this.apply(this.state.podRemoved(uid, this.now()));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const [id, fd] of this.conns) {
      this.poller.remove(fd);
      closeFd(fd);
      this.conns.delete(id);
    }
    this.poller.remove(this.listenFd);
    closeFd(this.listenFd);
    this.opts.log.info('zds server closed', { path: this.opts.path });
  }

  private acceptAll(): void {
    for (;;) {
      let fd: number | null;
      try {
        fd = acceptConn(this.listenFd);
      } catch (err) {
        // EMFILE and the like: the pending peer stays queued; try again on the next event.
        this.opts.log.warn('zds accept failed', { error: (err as Error).message });
        return;
      }
      if (fd === null) return;
      const id = this.nextId++;
      this.conns.set(id, fd);
      this.poller.add(fd, (r) => this.readable(id, fd, r.hangup));
      this.apply(this.state.connOpened(id, this.now()));
    }
  }

  private readable(id: number, fd: number, hangup: boolean): void {
    for (;;) {
      if (this.conns.get(id) !== fd) return;
      let got: ReturnType<typeof recvDatagram>;
      try {
        got = recvDatagram(fd, MAX_DATAGRAM);
      } catch (err) {
        this.dropConn(id, `recvmsg failed: ${(err as Error).message}`);
        return;
      }
      if (got.kind === 'again') {
        if (hangup) this.dropConn(id, 'peer hung up');
        return;
      }
      if (got.kind === 'zero') {
        if (hangup) {
          this.dropConn(id, 'peer closed');
          return;
        }
        got = { kind: 'datagram' as const, data: Buffer.alloc(0), fds: [], truncated: false };
      }
      // ztunnel never sends fds; any that came are closed unread.
      for (const f of got.fds) closeFd(f);
      this.apply(this.state.inbound(id, this.classify(id, got.data, got.truncated, got.fds.length), this.now()));
    }
  }

  private classify(id: number, data: Buffer, truncated: boolean, fds: number): Inbound {
    if (truncated) return { kind: 'malformed', error: 'truncated', detail: `datagram longer than ${MAX_DATAGRAM} bytes` };
    if (fds > 0) return { kind: 'malformed', error: 'unexpected-fds', detail: `${fds} file descriptor(s) attached` };
    const phase = this.state.connections().find((c) => c.id === id)?.phase;
    try {
      return phase === 'hello' ? { kind: 'hello', hello: decodeHello(data) } : { kind: 'ack', ack: decodeResponse(data) };
    } catch (err) {
      if (err instanceof ZdsDecodeError) return { kind: 'malformed', error: err.kind, detail: err.message };
      throw err;
    }
  }

  private dropConn(id: number, reason: string): void {
    const fd = this.conns.get(id);
    if (fd !== undefined) {
      this.conns.delete(id);
      this.poller.remove(fd);
      closeFd(fd);
    }
    this.apply(this.state.connClosed(id, reason));
    for (const s of this.subscribers) s.closed(id);
  }

  private apply(actions: Action[]): void {
    for (const a of actions) {
      switch (a.kind) {
        case 'log':
          this.opts.log[a.level](a.msg, a.fields);
          break;
        case 'acked':
          this.opts.onAck?.(a.conn, a.request, a.error);
          for (const s of this.subscribers) s.ack(a.conn, a.request, a.error);
          break;
        case 'close': {
          const fd = this.conns.get(a.conn);
          if (fd !== undefined) {
            this.conns.delete(a.conn);
            this.poller.remove(fd);
            closeFd(fd);
          }
          for (const s of this.subscribers) s.closed(a.conn);
          break;
        }
        case 'send':
          this.send(a.conn, a.request, a.netnsOf);
          break;
      }
    }
    this.rearm();
  }

  private send(id: number, request: WorkloadRequest, netnsOf: string | undefined): void {
    const fd = this.conns.get(id);
    if (fd === undefined) return;
    const fds: number[] = [];
    if (netnsOf !== undefined) {
      const ns = this.netns.get(netnsOf);
      if (ns === undefined) {
        this.dropConn(id, `no netns fd for pod ${netnsOf}`);
        return;
      }
      fds.push(ns);
    }
    try {
      if (!sendDatagram(fd, encodeRequest(request), fds)) this.dropConn(id, 'send buffer full');
    } catch (err) {
      this.dropConn(id, err instanceof LibcError ? `sendmsg failed: ${err.code}` : (err as Error).message);
    }
  }

  private rearm(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const next = this.state.nextDeadline();
    if (next === null) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.apply(this.state.tick(this.now()));
      },
      Math.max(0, next - this.now()) + 5,
    );
  }
}
