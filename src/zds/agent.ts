/**
 * The in-pod mode's node agent (docs/zds.md, "The agent in inpod mode"): keeps ztunnel's
 * view over ZDS equal to the enrolled pods of this node.
 *
 * For each enrolled pod: find its network namespace (the CNI ADD's CNI_NETNS, else the
 * host's processes, src/host/pod-netns.ts), hold one fd of it, install the in-pod capture
 * (`InPodCapture.install`), then hand the pod to the ZDS server (its `add` goes to the
 * newest ztunnel, and into every later snapshot). A pod whose netns is not found yet is
 * held as `keep` and looked for again on every pass. A pod that leaves (or whose netns is
 * gone) is `del` to every ztunnel; its capture is removed and its fd closed once every
 * ztunnel that was sent the `del` acked it or went away. Each resync checks the capture
 * for drift and reinstalls it.
 *
 * The CNI gate asks `failure(uid)` and waits on the membership's `programmed` set, which
 * holds the IPs of pods whose capture is installed and whose `add` ztunnel acked.
 */
import { NO_OVERRIDES, type PodView } from '../core/enrollment.js';
import type { InPodCapture, PodNetns } from '../capture/inpod.js';
import type { Logger } from '../log.js';
import type { WorkloadInfo, WorkloadRequest } from './codec.js';
import { matchNetns, type NetnsCandidate, type OpenNetns } from '../host/pod-netns.js';
import type { ConnStatus } from './state.js';

/** What the agent needs of the membership (KubeMembership has it). */
export interface InPodSource {
  hasSynced(): boolean;
  /** Enrolled pods by IP (a pod with two IPs appears twice). */
  enrolled(): Map<string, PodView>;
  onChange(cb: () => void): void;
  /** The IPs whose pods are in place (the CNI gate waits on them; status annotation). */
  programmed(ips: ReadonlySet<string>): void;
}

/** What the agent needs of the ZDS server (ZdsServer has it). */
export interface ZdsPort {
  addPod(uid: string, info: WorkloadInfo, netnsFd: number | null): void;
  removePod(uid: string): void;
  connections(): ConnStatus[];
  subscribe(events: { ack(conn: number, request: WorkloadRequest, error: string | null): void; closed(conn: number): void }): void;
}

/** The host's network namespaces (src/host/pod-netns.ts's adapter; a fixture in unit tests). */
export interface NetnsPort {
  scan(): NetnsCandidate[];
  /** Opens a netns file; `expectId` refuses another namespace found there. */
  open(path: string, expectId?: string): OpenNetns;
  /** The identity at a path now, or null when it is gone. */
  idAt(path: string): string | null;
  /** The path of a process's netns (`<host-proc>/<pid>/ns/net`). */
  procPath(pid: number): string;
  /** The agent's own netns (never a pod's). */
  ownId(): string;
  close(fd: number): void;
}

/** How long a CNI_NETNS waits for its pod to be enrolled before it is forgotten. */
/** Pods a pass works on at once (netns lookups, capture installs and checks). */
const PASS_CONCURRENCY = 8;
const HINT_TTL_MS = 5 * 60_000;

export interface InPodAgentOptions {
  source: InPodSource;
  server: ZdsPort;
  /**
   * The in-pod capture (issue 16), or null while this build has none: pods are then sent
   * to ztunnel uncaptured, and `run` says so (log, /readyz, status).
   */
  capture: InPodCapture | null;
  netns: NetnsPort;
  log: Logger;
  /** How long a removed pod's capture waits for the ztunnels' `del` acks at most. */
  delWaitMs?: number;
}

interface Held {
  pod: PodView;
  info: WorkloadInfo;
  /** The open netns, or null while it is not found (sent as `keep`). */
  netns: OpenNetns | null;
  /** Where it was opened (a CNI_NETNS path, or a process's), to tell when it is gone. */
  path: string | null;
  installed: boolean;
  acked: boolean;
  /** Why the pod cannot be in place now (an ack with error, a failed install), or null. */
  failure: string | null;
  /** Why its netns is not found yet, or null. */
  notFound: string | null;
}

interface Leaving {
  capture: PodNetns;
  waiting: Set<number>;
  timer: NodeJS.Timeout;
}

export interface InPodPodStatus {
  uid: string;
  namespace: string;
  name: string;
  ips: readonly string[];
  netns: string | null;
  installed: boolean;
  acked: boolean;
  problem: string | null;
}

export class InPodAgent {
  private readonly held = new Map<string, Held>();
  /** Per-pod locks (`serial`): the tail of each pod's queued work. */
  private readonly locks = new Map<string, Promise<void>>();
  private readonly leaving = new Map<string, Leaving[]>();
  /**
   * CNI_NETNS of sandboxes the CNI gate saw, by pod UID (newest wins). The ADD names the
   * netns before the pod is announced, so a hint outlives passes that do not enroll its pod
   * yet; one never used is forgotten after HINT_TTL_MS.
   */
  private readonly hints = new Map<string, string>();
  private readonly hintTimes = new Map<string, number>();
  private running: Promise<void> | null = null;
  private again = false;
  private fullPass = false;
  private stopped = false;
  private lastProgrammed = '';
  readonly stats = { installs: 0, installFailures: 0, reinstalls: 0, removes: 0, netnsGone: 0, scans: 0 };

  constructor(private readonly o: InPodAgentOptions) {
    o.source.onChange(() => {
      this.fast();
      void this.kick();
    });
    o.server.subscribe({ ack: (c, r, e) => this.acked(c, r, e), closed: (c) => this.connClosed(c) });
  }

  /** The CNI gate's ADD: the sandbox's netns, before the pod is announced to the membership. */
  sandbox(uid: string, netnsPath: string): void {
    if (!uid || !netnsPath) return;
    this.hints.set(uid, netnsPath);
    this.hintTimes.set(uid, Date.now());
    const h = this.held.get(uid);
    // A retried ADD (new sandbox) clears the previous attempt's failure.
    if (h) h.failure = null;
    this.fast();
    void this.kick();
  }

  /** The pod is in place in the netns its latest ADD named: captured, and acked by ztunnel. */
  ready(uid: string): boolean {
    const h = this.held.get(uid);
    const hint = this.hints.get(uid);
    return !!h && h.installed && h.acked && h.netns !== null && (hint === undefined || h.path === hint);
  }

  /** Why the pod's ADD must fail now (ztunnel refused it, the capture failed), or null. */
  failure(uid: string): string | null {
    return this.held.get(uid)?.failure ?? null;
  }

  /** Why the pod is not in place yet, in words (the ADD's timeout message). */
  pending(uid: string): string {
    const h = this.held.get(uid);
    const ready = this.o.server.connections().filter((c) => c.phase !== 'hello').length;
    if (!h) return 'not enrolled by the agent yet';
    if (h.notFound) return `its network namespace is not found (${h.notFound})`;
    if (!h.installed) return 'its capture is not installed yet';
    if (ready === 0) return 'no ztunnel is connected to the ZDS socket';
    return 'ztunnel has not acked its add yet';
  }

  /** Runs a pass now (membership change, CNI hint); `full` also checks for gone netns and drift. */
  kick(full = false): Promise<void> {
    if (full) this.fullPass = true;
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        const f = this.fullPass;
        this.fullPass = false;
        try {
          await this.pass(f);
        } catch (err) {
          this.o.log.error('inpod: pass failed; retrying on the next change or resync', { error: errorText(err) });
        }
      } while (this.again && !this.stopped);
      this.running = null;
    })();
    return this.running;
  }

  /** Resolves once no pass runs (tests). */
  async idle(): Promise<void> {
    while (this.running) await this.running;
  }

  status(): InPodPodStatus[] {
    return [...this.held.values()]
      .map((h) => ({
        uid: h.pod.uid,
        namespace: h.pod.namespace,
        name: h.pod.name,
        ips: h.pod.ips,
        netns: h.netns?.id ?? null,
        installed: h.installed,
        acked: h.acked,
        problem: h.failure ?? h.notFound,
      }))
      .sort((a, b) => (a.namespace + a.name < b.namespace + b.name ? -1 : 1));
  }

  /** Stops passes; the pods' netns fds are closed, what is installed and what ztunnel holds stay. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.idle();
    for (const list of this.leaving.values())
      for (const l of list) {
        clearTimeout(l.timer);
        this.o.netns.close(l.capture.fd);
      }
    this.leaving.clear();
    for (const h of this.held.values()) if (h.netns) this.o.netns.close(h.netns.fd);
    this.held.clear();
  }

  private async pass(full: boolean): Promise<void> {
    const { source } = this.o;
    // Before the first full lists the view is partial: deleting now would drop pods
    // ztunnel serves (a restarted agent).
    if (!source.hasSynced()) return;
    const desired = new Map<string, PodView>();
    for (const p of source.enrolled().values()) desired.set(p.uid, p);
    const gone = [...this.held.keys()].filter((uid) => !desired.has(uid));
    await inParallel(gone, PASS_CONCURRENCY, (uid) => this.serial(uid, () => this.leave(uid, 'pod no longer enrolled')));
    for (const [uid, at] of this.hintTimes) {
      if (desired.has(uid) || this.held.has(uid) || Date.now() - at < HINT_TTL_MS) continue;
      this.hints.delete(uid);
      this.hintTimes.delete(uid);
    }

    let scan: NetnsCandidate[] | null = null;
    const scanned = () => {
      if (!scan) {
        this.stats.scans++;
        scan = this.o.netns.scan();
      }
      return scan;
    };

    // Pods one at a time would queue every new pod's ADD behind each install before it
    // (seconds for 50 pods starting together); each pod's work touches only its own entry,
    // and runs under that pod's lock (a pass and the fast path never work on one pod at once).
    await inParallel([...desired], PASS_CONCURRENCY, ([uid, pod]) => this.serial(uid, () => this.podWork(uid, pod, full, scanned)));
    this.publish();
  }

  /** One desired pod's share of a pass: follow its netns, reinstall a drifted capture, or enter it. */
  private async podWork(uid: string, pod: PodView, full: boolean, scanned: () => NetnsCandidate[]): Promise<void> {
    const { server, log } = this.o;
    const h = this.held.get(uid);
    const hint = this.hints.get(uid) ?? null;
    if (h?.netns) {
      // A new sandbox (the runtime's retry, a restarted pod): the old netns leaves.
      const moved = hint !== null && hint !== h.path && this.o.netns.idAt(hint) !== h.netns.id;
      const gone = full && !moved && !this.alive(h, scanned);
      if (moved || gone) {
        if (gone) {
          this.stats.netnsGone++;
          log.info('inpod: pod netns gone; del sent, looking for it again', { pod: pod.name, namespace: pod.namespace, uid });
        }
        await this.leave(uid, moved ? 'new sandbox' : 'netns gone');
      } else {
        h.pod = pod;
        const info = workloadInfo(pod);
        if (!sameInfo(info, h.info)) {
          h.info = info;
          if (h.installed) server.addPod(uid, info, h.netns.fd);
        }
        if (full && h.installed && !(await this.checkCapture(h))) {
          this.stats.reinstalls++;
          log.warn('inpod: capture drifted; installing it again', { pod: pod.name, namespace: pod.namespace, uid });
          await this.install(h);
        } else if (!h.installed) await this.install(h);
        return;
      }
    }
    await this.enter(pod, hint, scanned);
  }

  /** Runs `work` after every earlier work on the same pod; the pod's lock. */
  private serial(uid: string, work: () => Promise<void>): Promise<void> {
    const prev = this.locks.get(uid) ?? Promise.resolve();
    const next = prev.then(work, work);
    this.locks.set(uid, next);
    const release = () => {
      if (this.locks.get(uid) === next) this.locks.delete(uid);
    };
    next.then(release, release);
    return next;
  }

  /**
   * The fast path: enrolled pods the agent does not hold yet are entered at once, each
   * under its lock, without waiting for a running pass (a new pod's ADD waits on this).
   */
  private fast(): void {
    if (this.stopped || !this.o.source.hasSynced()) return;
    let scan: NetnsCandidate[] | null = null;
    const scanned = () => {
      if (!scan) {
        this.stats.scans++;
        scan = this.o.netns.scan();
      }
      return scan;
    };
    for (const pod of this.o.source.enrolled().values()) {
      if (this.held.get(pod.uid)?.installed || this.locks.has(pod.uid)) continue;
      void this.serial(pod.uid, async () => {
        if (this.stopped || this.held.get(pod.uid)?.installed) return;
        await this.podWork(pod.uid, pod, false, scanned);
        this.publish();
      }).catch((err: unknown) => this.o.log.error('inpod: entering a new pod failed; the next pass retries', { uid: pod.uid, error: errorText(err) }));
    }
  }

  /** A pod to hold: open its netns, install the capture, send it (or `keep` it while not found). */
  private async enter(pod: PodView, hint: string | null, scanned: () => NetnsCandidate[]): Promise<void> {
    const prev = this.held.get(pod.uid);
    const h: Held = prev ?? {
      pod,
      info: workloadInfo(pod),
      netns: null,
      path: null,
      installed: false,
      acked: false,
      failure: null,
      notFound: null,
    };
    h.pod = pod;
    h.info = workloadInfo(pod);
    this.held.set(pod.uid, h);
    const found = this.find(pod, hint, scanned);
    if ('error' in found) {
      if (h.notFound !== found.error)
        this.o.log.info('inpod: pod netns not found yet; sent as keep, looked for on every pass', {
          pod: pod.name,
          namespace: pod.namespace,
          uid: pod.uid,
          reason: found.error,
        });
      h.notFound = found.error;
      this.o.server.addPod(pod.uid, h.info, null);
      return;
    }
    h.notFound = null;
    h.netns = found.netns;
    h.path = found.path;
    h.acked = false;
    await this.install(h);
  }

  private find(pod: PodView, hint: string | null, scanned: () => NetnsCandidate[]): { netns: OpenNetns; path: string } | { error: string } {
    if (hint) {
      try {
        return { netns: this.o.netns.open(hint), path: hint };
      } catch (err) {
        this.hints.delete(pod.uid);
        this.hintTimes.delete(pod.uid);
        this.o.log.warn('inpod: the CNI netns cannot be opened; looking through the host processes', { uid: pod.uid, path: hint, error: errorText(err) });
      }
    }
    const own = this.o.netns.ownId();
    const m = matchNetns(pod.ips, scanned(), new Set([own]));
    if (m.kind === 'none') return { error: pod.ips.length ? `no process's netns holds ${pod.ips.join(', ')}` : 'the pod has no IP yet' };
    if (m.kind === 'ambiguous') return { error: m.reason };
    const path = this.o.netns.procPath(m.candidate.pid);
    try {
      return { netns: this.o.netns.open(path, m.candidate.id), path };
    } catch (err) {
      return { error: `opening ${path}: ${errorText(err)}` };
    }
  }

  /** The held netns still has a process in it, or its CNI path still names it. */
  private alive(h: Held, scanned: () => NetnsCandidate[]): boolean {
    const id = h.netns!.id;
    if (h.path && !/\/\d+\/ns\/net$/.test(h.path) && this.o.netns.idAt(h.path) === id) return true;
    return scanned().some((c) => c.id === id);
  }

  private async install(h: Held): Promise<void> {
    const pod = capturePod(h);
    try {
      await this.o.capture?.install(pod);
    } catch (err) {
      this.stats.installFailures++;
      h.installed = false;
      h.failure = `the in-pod capture (${this.o.capture?.name}) could not be installed: ${errorText(err)}`;
      this.o.log.error('inpod: capture install failed; the pod is not sent to ztunnel, retried on the next pass', {
        pod: h.pod.name,
        namespace: h.pod.namespace,
        uid: h.pod.uid,
        error: errorText(err),
      });
      return;
    }
    if (!h.installed) this.stats.installs++;
    h.installed = true;
    h.failure = null;
    // The capture first, then ztunnel's add: once ztunnel serves the pod, nothing of it
    // passes uncaptured (docs/zds.md).
    this.o.server.addPod(h.pod.uid, h.info, h.netns!.fd);
  }

  private async checkCapture(h: Held): Promise<boolean> {
    try {
      return this.o.capture ? await this.o.capture.check(capturePod(h)) : true;
    } catch (err) {
      this.o.log.warn('inpod: capture check failed', { uid: h.pod.uid, error: errorText(err) });
      return false;
    }
  }

  /** `del` to every ztunnel; the capture is removed and the fd closed once they acked (or went away). */
  private async leave(uid: string, reason: string): Promise<void> {
    const h = this.held.get(uid);
    if (!h) return;
    this.held.delete(uid);
    this.o.server.removePod(uid);
    if (!h.netns) return;
    this.o.log.info('inpod: pod leaves ztunnel', { pod: h.pod.name, namespace: h.pod.namespace, uid, reason });
    const waiting = new Set(
      this.o.server
        .connections()
        .filter((c) => c.phase !== 'hello')
        .map((c) => c.id),
    );
    const l: Leaving = { capture: capturePod(h), waiting, timer: setTimeout(() => void this.finishLeave(uid, l), this.o.delWaitMs ?? 6_000) };
    l.timer.unref?.();
    const list = this.leaving.get(uid) ?? [];
    list.push(l);
    this.leaving.set(uid, list);
    if (waiting.size === 0) await this.finishLeave(uid, l);
  }

  private async finishLeave(uid: string, l: Leaving): Promise<void> {
    const list = this.leaving.get(uid);
    if (!list?.includes(l)) return;
    list.splice(list.indexOf(l), 1);
    if (list.length === 0) this.leaving.delete(uid);
    clearTimeout(l.timer);
    try {
      await this.o.capture?.remove(l.capture);
      this.stats.removes++;
    } catch (err) {
      this.o.log.warn('inpod: capture remove failed', { uid, error: errorText(err) });
    } finally {
      this.o.netns.close(l.capture.fd);
    }
  }

  private acked(conn: number, request: WorkloadRequest, error: string | null): void {
    if (request.kind === 'add') {
      const h = this.held.get(request.uid);
      if (!h) return;
      if (error === null) {
        h.acked = true;
        h.failure = null;
      } else if (!h.acked) h.failure = `ztunnel refused pod ${h.pod.namespace}/${h.pod.name}: ${error}`;
      // (A pod another ztunnel serves stays in place: the refusing connection is closed, and logged.)
      this.publish(true);
    } else if (request.kind === 'del') {
      for (const l of this.leaving.get(request.uid) ?? []) {
        l.waiting.delete(conn);
        if (l.waiting.size === 0) void this.finishLeave(request.uid, l);
      }
    }
  }

  private connClosed(conn: number): void {
    for (const [uid, list] of this.leaving) {
      for (const l of [...list]) {
        l.waiting.delete(conn);
        if (l.waiting.size === 0) void this.finishLeave(uid, l);
      }
    }
    this.publish(true);
  }

  /** The IPs of pods in place (captured and acked), to the membership; `force` wakes the gate's waiters. */
  private publish(force = false): void {
    const ips = new Set<string>();
    for (const h of this.held.values()) if (h.installed && h.acked && h.netns) for (const ip of h.pod.ips) ips.add(ip);
    const key = [...ips].sort().join(',');
    if (!force && key === this.lastProgrammed) return;
    this.lastProgrammed = key;
    this.o.source.programmed(ips);
  }
}

function workloadInfo(pod: PodView): WorkloadInfo {
  return { name: pod.name, namespace: pod.namespace, serviceAccount: pod.serviceAccount ?? '' };
}

function sameInfo(a: WorkloadInfo, b: WorkloadInfo): boolean {
  return a.name === b.name && a.namespace === b.namespace && a.serviceAccount === b.serviceAccount;
}

function capturePod(h: Held): PodNetns {
  return { uid: h.pod.uid, namespace: h.pod.namespace, name: h.pod.name, ips: h.pod.ips, fd: h.netns!.fd, overrides: h.pod.overrides ?? NO_OVERRIDES };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Runs `work` over `items`, at most `limit` at a time; rejects with the first failure once all settled. */
async function inParallel<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const errors: unknown[] = [];
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      try {
        await work(item);
      } catch (err) {
        errors.push(err);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (errors.length) throw errors[0];
}
