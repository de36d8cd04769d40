/**
 * The agent side of ZDS as a pure state machine: plain events in (a connection opened, a
 * datagram arrived or could not be read, a pod was enrolled or left, time passed), plain
 * actions out (send this request on that connection with that pod's netns fd, close that
 * connection, log this). No sockets, no timers, no fds: src/zds/server.ts applies the
 * actions. The protocol it keeps is in docs/zds.md.
 */
import type { Ack, RequestKind, WorkloadInfo, WorkloadRequest, ZdsHello } from './codec.js';
import { Version } from './codec.js';

export const HELLO_TIMEOUT_MS = 5000;
export const ACK_TIMEOUT_MS = 5000;
export const DEFAULT_MAX_CONNECTIONS = 16;

export interface Pod {
  uid: string;
  info: WorkloadInfo;
  /** False while the pod's netns cannot be opened: a snapshot names it with `keep`. */
  hasNetns: boolean;
}

/** What a datagram from a peer turned out to be (decoding happens in the adapter). */
export type Inbound = { kind: 'hello'; hello: ZdsHello } | { kind: 'ack'; ack: Ack } | { kind: 'malformed'; error: string; detail: string };

export type Action =
  | { kind: 'send'; conn: number; request: WorkloadRequest; netnsOf?: string }
  | { kind: 'close'; conn: number; reason: string }
  | { kind: 'log'; level: 'info' | 'warn'; msg: string; fields: Record<string, unknown> }
  | { kind: 'acked'; conn: number; request: WorkloadRequest; error: string | null };

/**
 * hello: waiting for the peer's hello; waiting: it said hello, and its snapshot waits until
 * the agent's pod set is complete (`podSetComplete`); snapshot: being sent; ready.
 */
type Phase = 'hello' | 'waiting' | 'snapshot' | 'ready';

interface Conn {
  id: number;
  phase: Phase;
  openedAt: number;
  queue: WorkloadRequest[];
  outstanding: { request: WorkloadRequest; deadline: number } | null;
  snapshotStartedAt: number;
  podsSent: number;
}

export interface Counters {
  connectionsAccepted: number;
  connectionsRefused: number;
  connectionsClosed: number;
  requests: Record<RequestKind, number>;
  acksOk: number;
  ackErrors: number;
  ackTimeouts: number;
  helloTimeouts: number;
  malformed: number;
  snapshots: number;
  lastSnapshotMs: number | null;
}

export interface ConnStatus {
  id: number;
  phase: Phase;
  podsSent: number;
}

export class ZdsState {
  private readonly pods = new Map<string, Pod>();
  private readonly conns = new Map<number, Conn>();
  readonly counters: Counters = {
    connectionsAccepted: 0,
    connectionsRefused: 0,
    connectionsClosed: 0,
    requests: { add: 0, keep: 0, del: 0, snapshot_sent: 0 },
    acksOk: 0,
    ackErrors: 0,
    ackTimeouts: 0,
    helloTimeouts: 0,
    malformed: 0,
    snapshots: 0,
    lastSnapshotMs: null,
  };

  /**
   * `complete` false: the pod set is still being gathered (an agent that just started), and
   * a snapshot sent now would make ztunnel drop the pods not gathered yet; snapshots wait
   * for `podSetComplete`.
   */
  constructor(
    private readonly maxConnections = DEFAULT_MAX_CONNECTIONS,
    private complete = true,
  ) {}

  /** The pod set is complete: every connection waiting for its snapshot gets it now. */
  podSetComplete(now: number): Action[] {
    if (this.complete) return [];
    this.complete = true;
    const out: Action[] = [];
    for (const c of this.conns.values()) if (c.phase === 'waiting') out.push(...this.startSnapshot(c, now));
    return out;
  }

  private startSnapshot(c: Conn, now: number): Action[] {
    c.phase = 'snapshot';
    c.snapshotStartedAt = now;
    const snapshot: WorkloadRequest[] = [...this.pods.values()]
      .sort((a, b) => (a.uid < b.uid ? -1 : a.uid > b.uid ? 1 : 0))
      .map((p) => (p.hasNetns ? { kind: 'add', uid: p.uid, workloadInfo: p.info } : { kind: 'keep', uid: p.uid }));
    c.queue.push(...snapshot, { kind: 'snapshot_sent' });
    return [log('info', 'zds snapshot', { conn: c.id, snapshotPods: snapshot.length }), ...this.pump(c, now)];
  }

  podList(): Pod[] {
    return [...this.pods.values()];
  }

  connections(): ConnStatus[] {
    return [...this.conns.values()].map((c) => ({ id: c.id, phase: c.phase, podsSent: c.podsSent }));
  }

  /** The earliest deadline (hello or ack) of any connection, or null. */
  nextDeadline(): number | null {
    let next: number | null = null;
    for (const c of this.conns.values()) {
      const d = c.phase === 'hello' ? c.openedAt + HELLO_TIMEOUT_MS : c.outstanding?.deadline;
      if (d !== undefined && (next === null || d < next)) next = d;
    }
    return next;
  }

  connOpened(id: number, now: number): Action[] {
    if (this.conns.size >= this.maxConnections) {
      this.counters.connectionsRefused++;
      return [
        log('warn', 'zds connection refused: too many connections', { conn: id, open: this.conns.size, max: this.maxConnections }),
        { kind: 'close', conn: id, reason: 'too many connections' },
      ];
    }
    this.counters.connectionsAccepted++;
    this.conns.set(id, { id, phase: 'hello', openedAt: now, queue: [], outstanding: null, snapshotStartedAt: 0, podsSent: 0 });
    return [log('info', 'zds connection opened', { conn: id, open: this.conns.size })];
  }

  /** The peer hung up or the socket failed (the adapter has closed it already). */
  connClosed(id: number, reason: string): Action[] {
    const c = this.conns.get(id);
    if (!c) return [];
    this.conns.delete(id);
    this.counters.connectionsClosed++;
    return [log('info', 'zds connection closed', { conn: id, reason, phase: c.phase, podsSent: c.podsSent, open: this.conns.size })];
  }

  inbound(id: number, msg: Inbound, now: number): Action[] {
    const c = this.conns.get(id);
    if (!c) return [];
    if (msg.kind === 'malformed') {
      this.counters.malformed++;
      return this.drop(c, 'warn', 'zds malformed datagram', { error: msg.error, detail: msg.detail });
    }
    if (c.phase === 'hello') {
      if (msg.kind !== 'hello') return this.drop(c, 'warn', 'zds expected hello', { got: msg.kind });
      if (msg.hello.version !== Version.V1) {
        return this.drop(c, 'warn', 'zds unsupported version', { version: msg.hello.version, want: Version.V1 });
      }
      const hello = log('info', 'zds hello', { conn: id, version: msg.hello.version, snapshotWaits: !this.complete });
      if (!this.complete) {
        c.phase = 'waiting';
        return [hello];
      }
      return [hello, ...this.startSnapshot(c, now)];
    }
    if (msg.kind !== 'ack') return this.drop(c, 'warn', 'zds unexpected message', { got: msg.kind, phase: c.phase });
    if (!c.outstanding) return this.drop(c, 'warn', 'zds ack without a request', {});
    const request = c.outstanding.request;
    c.outstanding = null;
    const uid = 'uid' in request ? request.uid : undefined;
    if (msg.ack.error !== '') {
      this.counters.ackErrors++;
      return [
        { kind: 'acked', conn: id, request, error: msg.ack.error },
        ...this.drop(c, 'warn', 'zds ack with error', { request: request.kind, uid, error: msg.ack.error }),
      ];
    }
    this.counters.acksOk++;
    const out: Action[] = [{ kind: 'acked', conn: id, request, error: null }];
    if (request.kind === 'add') c.podsSent++;
    if (request.kind === 'snapshot_sent') {
      c.phase = 'ready';
      const ms = now - c.snapshotStartedAt;
      this.counters.snapshots++;
      this.counters.lastSnapshotMs = ms;
      out.push(log('info', 'zds snapshot acked', { conn: id, pods: c.podsSent, durationMs: ms }));
    }
    return [...out, ...this.pump(c, now)];
  }

  /** Closes connections whose hello or ack is overdue. */
  tick(now: number): Action[] {
    const out: Action[] = [];
    for (const c of [...this.conns.values()]) {
      if (c.phase === 'hello' && now >= c.openedAt + HELLO_TIMEOUT_MS) {
        this.counters.helloTimeouts++;
        out.push(...this.drop(c, 'warn', 'zds no hello in time', { timeoutMs: HELLO_TIMEOUT_MS }));
      } else if (c.outstanding && now >= c.outstanding.deadline) {
        this.counters.ackTimeouts++;
        const r = c.outstanding.request;
        out.push(...this.drop(c, 'warn', 'zds no ack in time', { request: r.kind, uid: 'uid' in r ? r.uid : undefined, timeoutMs: ACK_TIMEOUT_MS }));
      }
    }
    return out;
  }

  /**
   * A pod enrolled (or its netns became available): `add` to the newest connection that
   * said hello. A connection still waiting for its hello gets the pod in its snapshot.
   */
  podAdded(pod: Pod, now: number): Action[] {
    const before = this.pods.get(pod.uid);
    this.pods.set(pod.uid, { ...pod, info: { ...pod.info } });
    if (!pod.hasNetns) return [];
    if (before?.hasNetns && sameInfo(before.info, pod.info)) return [];
    const newest = this.newest();
    if (!newest) return [];
    newest.queue.push({ kind: 'add', uid: pod.uid, workloadInfo: pod.info });
    return this.pump(newest, now);
  }

  /** A pod left: `del` to every connection that said hello. */
  podRemoved(uid: string, now: number): Action[] {
    if (!this.pods.delete(uid)) return [];
    const out: Action[] = [];
    for (const c of this.conns.values()) {
      // Before its snapshot: the snapshot will not name the pod.
      if (c.phase === 'hello' || c.phase === 'waiting') continue;
      // Not sent yet: drop it from the queue instead of sending add then del.
      const queued = c.queue.findIndex((r) => (r.kind === 'add' || r.kind === 'keep') && r.uid === uid);
      if (queued >= 0) {
        c.queue.splice(queued, 1);
        continue;
      }
      c.queue.push({ kind: 'del', uid });
      out.push(...this.pump(c, now));
    }
    return out;
  }

  private newest(): Conn | undefined {
    let newest: Conn | undefined;
    for (const c of this.conns.values()) if (c.phase !== 'hello' && c.phase !== 'waiting' && (!newest || c.id > newest.id)) newest = c;
    return newest;
  }

  /** Sends the next queued request when none is outstanding. */
  private pump(c: Conn, now: number): Action[] {
    if (c.outstanding) return [];
    const request = c.queue.shift();
    if (!request) return [];
    c.outstanding = { request, deadline: now + ACK_TIMEOUT_MS };
    this.counters.requests[request.kind]++;
    return [{ kind: 'send', conn: c.id, request, ...(request.kind === 'add' && { netnsOf: request.uid }) }];
  }

  private drop(c: Conn, level: 'info' | 'warn', msg: string, fields: Record<string, unknown>): Action[] {
    this.conns.delete(c.id);
    this.counters.connectionsClosed++;
    return [log(level, msg, { conn: c.id, phase: c.phase, ...fields }), { kind: 'close', conn: c.id, reason: msg }];
  }
}

function sameInfo(a: WorkloadInfo, b: WorkloadInfo): boolean {
  return a.name === b.name && a.namespace === b.namespace && a.serviceAccount === b.serviceAccount;
}

function log(level: 'info' | 'warn', msg: string, fields: Record<string, unknown>): Action {
  return { kind: 'log', level, msg, fields };
}
