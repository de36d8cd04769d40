/**
 * Membership from the Kubernetes API: a reflector on the pods of this node (field
 * selector on list and watch), one on the namespaces, a UID-keyed fenced cache, the
 * enrollment rules, ztunnel discovery, and the status annotation written back through
 * pods/status once a pod is programmed (and removed once it leaves).
 */
import { PodCache, NamespaceCache } from '../controller/cache.js';
import type { Membership, MembershipView } from '../controller/controller.js';
import type { EnrolledRef } from '../core/desired.js';
import { overrideFlags } from '../core/values.js';
import {
  chooseZtunnel,
  DEFAULT_ENABLEMENT_SELECTORS,
  enrolledPods,
  namespaceSelected,
  NO_OVERRIDES,
  type EnablementSelector,
  STATUS_ANNOTATION,
  type ZtunnelChoice,
  type EnrollmentContext,
  type NamespaceView,
  type PodView,
  type ZtunnelSelector,
} from '../core/enrollment.js';
import { WorkQueue, type BackoffOptions } from '../controller/queue.js';
import type { Logger } from '../log.js';
import { KubeError, type KubeTransport } from './http.js';
import { ThrottledLog } from './logthrottle.js';
import { parseNamespace, parsePod } from './parse.js';
import { Reflector, type WatchEventType } from './reflector.js';

export interface KubeMembershipOptions {
  nodeName: string;
  /** The enablement rules (src/core/enrollment.ts); default Istio's. */
  selectors?: readonly EnablementSelector[];
  ztunnel: ZtunnelSelector;
  backoff: BackoffOptions;
  stallTimeoutMs: number;
  watchTimeoutSeconds: number;
  log: Logger;
  /** Write the status annotation (default true). */
  writeStatus?: boolean;
}

export interface KubeMembershipStats {
  rejected: number;
  foreign: number;
  stale: number;
  statusPatches: number;
}

export class KubeMembership implements Membership {
  readonly pods = new PodCache();
  readonly namespaces = new NamespaceCache();
  readonly podReflector: Reflector;
  readonly nsReflector: Reflector;
  private readonly listeners: (() => void)[] = [];
  private readonly rejectLog: ThrottledLog;
  private readonly statusQueue: WorkQueue;
  private programmedIps: ReadonlySet<string> = new Set();
  /** No status is written before the first pass: an annotation left by a previous run stays until a pass decides. */
  private passSeen = false;
  private generation = 0;
  private enrolledCache: Map<string, PodView> | null = null;
  private ztunnelCache: ZtunnelChoice | null = null;
  readonly stats: KubeMembershipStats = { rejected: 0, foreign: 0, stale: 0, statusPatches: 0 };
  /**
   * Pods the CNI plugin announced (by UID) before the API showed their IPs: they count
   * for enrollment with the IPs of the sandbox until the API confirms the pod with IPs,
   * deletes it, or the runtime's DEL releases it (docs/cni.md).
   */
  private readonly provisional = new Map<string, { pod: PodView; containerId: string }>();
  private readonly programmedListeners: ((ips: ReadonlySet<string>) => void)[] = [];
  /**
   * The last sandbox (container ID) the CNI plugin announced for each UID: the evidence a
   * pod whose veth is gone has a new sandbox (core/desired.ts placeBySandbox). Kept
   * past the announcement's settling, forgotten with the pod.
   */
  private readonly announced = new Map<string, string>();

  constructor(
    private readonly api: KubeTransport,
    private readonly opts: KubeMembershipOptions,
  ) {
    const common = { backoff: opts.backoff, stallTimeoutMs: opts.stallTimeoutMs, watchTimeoutSeconds: opts.watchTimeoutSeconds, log: opts.log };
    this.podReflector = new Reflector(
      api,
      { replace: (items) => this.replacePods(items), event: (t, o) => this.podEvent(t, o) },
      { ...common, name: 'pods', path: '/api/v1/pods', query: { fieldSelector: `spec.nodeName=${opts.nodeName}` } },
    );
    this.nsReflector = new Reflector(
      api,
      { replace: (items) => this.replaceNamespaces(items), event: (t, o) => this.nsEvent(t, o) },
      { ...common, name: 'namespaces', path: '/api/v1/namespaces', query: {} },
    );
    this.rejectLog = new ThrottledLog(opts.log, 10_000);
    // Status writes wait for the API: during an outage the watches' backoff is the only
    // retry traffic; once the pod watch is back, every pod is checked again.
    this.podReflector.onOpen = () => {
      if (this.passSeen) this.programmed(this.programmedIps);
    };
    this.statusQueue = new WorkQueue((key) => this.syncStatus(key), {
      backoff: opts.backoff,
      onError: (key, err, ms) => opts.log.debug('status patch failed; retrying', { uid: key, error: String(err), retryInMs: Math.round(ms) }),
    });
  }

  start(): void {
    this.podReflector.start();
    this.nsReflector.start();
  }

  async stop(): Promise<void> {
    await Promise.all([this.podReflector.stop(), this.nsReflector.stop(), this.statusQueue.stop()]);
  }

  hasSynced(): boolean {
    return this.podReflector.hasSynced() && this.nsReflector.hasSynced();
  }

  onChange(cb: () => void): void {
    this.listeners.push(cb);
  }

  view(): MembershipView {
    const zt = this.ztunnel();
    const enrolled = this.enrolled();
    const pods = new Map<string, EnrolledRef>();
    for (const [ip, p] of enrolled)
      pods.set(ip, {
        uid: p.uid,
        terminating: p.terminating === true,
        ips: p.ips,
        announced: this.announced.get(p.uid) ?? null,
        flags: overrideFlags(p.overrides ?? NO_OVERRIDES),
      });
    return {
      synced: this.hasSynced(),
      enrolled: [...enrolled.keys()],
      pods,
      ztunnelIp: zt.pod?.ips[0] ?? null,
      ztunnelProblem: zt.problem,
      listGeneration: this.generation,
    };
  }

  /** ztunnel as discovered (src/core/enrollment.ts chooseZtunnel), recomputed only after a change. */
  ztunnel(): ZtunnelChoice {
    return (this.ztunnelCache ??= chooseZtunnel(this.pods.values(), this.opts.ztunnel, this.opts.nodeName));
  }

  /** Enrolled pods by IP, recomputed only after a change. */
  enrolled(): Map<string, PodView> {
    if (!this.enrolledCache) {
      const reserved = new Set<string>();
      for (const p of this.pods.values()) if (p.hostIp) reserved.add(p.hostIp);
      const zt = this.ztunnel().pod;
      if (zt?.ips[0]) reserved.add(zt.ips[0]);
      this.enrolledCache = enrolledPods(this.podsForEnrollment(), this.namespaces.map, {
        nodeName: this.opts.nodeName,
        reserved,
        ...(this.opts.selectors && { selectors: this.opts.selectors }),
      });
    }
    return this.enrolledCache;
  }

  async confirm(): Promise<void> {
    await Promise.all([this.podReflector.relist(), this.nsReflector.relist()]);
    this.generation++;
    this.changed();
  }

  programmed(ips: ReadonlySet<string>): void {
    this.programmedIps = ips;
    this.passSeen = true;
    for (const l of this.programmedListeners) l(ips);
    if (this.opts.writeStatus === false) return;
    for (const pod of this.pods.values()) {
      if (pod.statusAnnotation !== this.wantedStatus(pod)) this.statusQueue.add(pod.uid);
    }
  }

  // --- the CNI gate (src/cni/) -----------------------------------------------------------

  /** After each pass: the IPs the maps hold for membership. */
  onProgrammed(cb: (ips: ReadonlySet<string>) => void): void {
    this.programmedListeners.push(cb);
  }

  /** The IPs the last pass programmed. */
  programmedNow(): ReadonlySet<string> {
    return this.programmedIps;
  }

  namespacesSynced(): boolean {
    return this.nsReflector.hasSynced();
  }

  namespace(name: string): NamespaceView | undefined {
    return this.namespaces.map.get(name);
  }

  /** True while the namespace watch is established. */
  namespacesLive(): boolean {
    return this.nsReflector.connected;
  }

  /**
   * GET of one namespace (the CNI gate, when the cache cannot vouch): null when it does not
   * exist; throws when the API fails. A newer object than the cache's goes into the cache
   * (fenced by resourceVersion, as watch events are), so the pass sees the same labels.
   */
  async fetchNamespace(name: string): Promise<NamespaceView | null> {
    let raw: unknown;
    try {
      raw = await this.api.request('GET', `/api/v1/namespaces/${encodeURIComponent(name)}`, {});
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return null;
      throw err;
    }
    const n = parseNamespace(raw);
    if (!n.ok) throw new Error(`the API's namespace ${name} is malformed: ${n.reason}`);
    const before = this.namespaces.map.get(name);
    const same = before !== undefined && JSON.stringify(before.labels) === JSON.stringify(n.value.ns.labels);
    if (this.namespaces.apply('MODIFIED', n.value.ns, n.value.resourceVersion) && !same) this.changed();
    return n.value.ns;
  }

  /** Namespaces some enablement rule selects by their labels, sorted (the plugin's fallback list). */
  ambientNamespaces(): string[] {
    const selectors = this.opts.selectors ?? DEFAULT_ENABLEMENT_SELECTORS;
    return [...this.namespaces.map.values()]
      .filter((n) => namespaceSelected(n, selectors))
      .map((n) => n.name)
      .sort();
  }

  /** What enrollment needs besides the pod and its namespace. */
  enrollmentContext(): EnrollmentContext {
    const reserved = new Set<string>();
    for (const p of this.pods.values()) if (p.hostIp) reserved.add(p.hostIp);
    const zt = this.ztunnel().pod;
    if (zt?.ips[0]) reserved.add(zt.ips[0]);
    return { nodeName: this.opts.nodeName, reserved, ...(this.opts.selectors && { selectors: this.opts.selectors }) };
  }

  /** The cached pod: by UID when given, else the newest live one of that name. */
  cachedPod(namespace: string, name: string, uid?: string): PodView | undefined {
    if (uid) return this.pods.get(uid);
    let best: PodView | undefined;
    for (const p of this.pods.values()) {
      if (p.namespace === namespace && p.name === name && (!best || p.created > best.created)) best = p;
    }
    return best;
  }

  /** True when the API deleted this UID (the cache's tombstone). */
  podDeleted(uid: string): boolean {
    return this.pods.isDeleted(uid);
  }

  /** GET of one pod from the API: null when it does not exist; throws when the API fails. */
  async fetchPod(namespace: string, name: string): Promise<PodView | null> {
    try {
      const raw = await this.api.request('GET', `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}`, {});
      const p = parsePod(raw);
      if (!p.ok) throw new Error(`the API's pod ${namespace}/${name} is malformed: ${p.reason}`);
      return p.value;
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return null;
      throw err;
    }
  }

  /** Counts a pod announced by the CNI plugin (with its sandbox's IPs) as known. */
  provisionPod(pod: PodView, containerId: string): void {
    if (this.pods.isDeleted(pod.uid)) return;
    this.provisional.set(pod.uid, { pod, containerId });
    this.announced.set(pod.uid, containerId);
    this.changed();
  }

  /** The runtime's DEL: forgets what the plugin announced for this sandbox. */
  releaseSandbox(containerId: string): boolean {
    let removed = false;
    for (const [uid, p] of this.provisional) {
      if (p.containerId === containerId) removed = this.provisional.delete(uid) || removed;
    }
    if (removed) this.changed();
    return removed;
  }

  /** The sandboxes (container IDs) with an announcement (the runtime's GC keeps only valid ones). */
  announcedSandboxes(): string[] {
    return [...new Set([...this.provisional.values()].map((p) => p.containerId))];
  }

  provisionalCount(): number {
    return this.provisional.size;
  }

  /** The cache, with the IPs of announced pods the API does not show yet. */
  private *podsForEnrollment(): Iterable<PodView> {
    if (this.provisional.size === 0) {
      yield* this.pods.values();
      return;
    }
    for (const p of this.pods.values()) {
      const prov = this.provisional.get(p.uid);
      yield prov && p.ips.length === 0 ? { ...p, ips: prov.pod.ips } : p;
    }
    for (const [uid, prov] of this.provisional) if (!this.pods.get(uid)) yield prov.pod;
  }

  /** The API confirmed (with IPs) or deleted a pod: its announcement has served. */
  private settleProvisional(uid: string): void {
    if (!this.provisional.has(uid)) return;
    const cur = this.pods.get(uid);
    if (this.pods.isDeleted(uid) || (cur && cur.ips.length > 0)) this.provisional.delete(uid);
  }

  // --- intake --------------------------------------------------------------------------

  private changed(): void {
    this.enrolledCache = null;
    this.ztunnelCache = null;
    for (const l of this.listeners) l();
  }

  private reject(kind: string, reason: string, uid?: string): void {
    this.stats.rejected++;
    this.rejectLog.warn('rejected a malformed object', { kind, reason, ...(uid && { uid }), rejected: this.stats.rejected });
  }

  private ours(pod: PodView): boolean {
    // The API should only send pods of this node; a server that ignores the field selector must not make us program other nodes' pods.
    if (pod.nodeName === this.opts.nodeName) return true;
    this.stats.foreign++;
    return false;
  }

  private replacePods(items: unknown[]): void {
    const pods: PodView[] = [];
    const keep = new Set<string>();
    for (const item of items) {
      const p = parsePod(item);
      if (p.ok) {
        if (this.ours(p.value)) pods.push(p.value);
      } else {
        this.reject('pod', p.reason, p.uid);
        if (p.uid) keep.add(p.uid);
      }
    }
    this.pods.replace(pods, keep);
    for (const uid of [...this.provisional.keys()]) this.settleProvisional(uid);
    for (const uid of [...this.announced.keys()]) if (!this.pods.get(uid) && !this.provisional.has(uid)) this.announced.delete(uid);
    this.changed();
  }

  private podEvent(type: WatchEventType, obj: unknown): void {
    const p = parsePod(obj);
    if (!p.ok) {
      this.reject('pod', p.reason, p.uid);
      return;
    }
    if (!this.ours(p.value)) return;
    const before = this.pods.get(p.value.uid);
    const staleBefore = this.pods.stale;
    if (!this.pods.apply(type, p.value)) {
      this.stats.stale += this.pods.stale - staleBefore;
      return;
    }
    this.settleProvisional(p.value.uid);
    if (type === 'DELETED') this.announced.delete(p.value.uid);
    // Our own status patch coming back changes nothing the maps depend on.
    if (type !== 'DELETED' && before && sameInputs(before, p.value)) {
      this.statusCheck(p.value);
      return;
    }
    this.changed();
  }

  private replaceNamespaces(items: unknown[]): void {
    const list = [];
    for (const item of items) {
      const n = parseNamespace(item);
      if (n.ok) list.push(n.value);
      else this.reject('namespace', n.reason);
    }
    this.namespaces.replace(list);
    this.changed();
  }

  private nsEvent(type: WatchEventType, obj: unknown): void {
    const n = parseNamespace(obj);
    if (!n.ok) {
      this.reject('namespace', n.reason);
      return;
    }
    if (this.namespaces.apply(type, n.value.ns, n.value.resourceVersion)) this.changed();
  }

  // --- status --------------------------------------------------------------------------

  private wantedStatus(pod: PodView): string | null {
    const ip = pod.ips[0];
    return ip !== undefined && this.programmedIps.has(ip) && this.enrolled().get(ip)?.uid === pod.uid ? 'enabled' : null;
  }

  private statusCheck(pod: PodView): void {
    if (this.passSeen && this.opts.writeStatus !== false && pod.statusAnnotation !== this.wantedStatus(pod)) this.statusQueue.add(pod.uid);
  }

  private async syncStatus(uid: string): Promise<void> {
    const pod = this.pods.get(uid);
    if (!pod) return this.statusQueue.forget(uid);
    if (!this.podReflector.connected) return; // re-queued by the next watch that opens
    const want = this.wantedStatus(pod);
    if (pod.statusAnnotation === want) return;
    try {
      // A merge patch of pods/status; the UID makes it a precondition, so a new pod
      // that took the name is never annotated on behalf of the old one.
      await this.api.request(
        'PATCH',
        `/api/v1/namespaces/${encodeURIComponent(pod.namespace)}/pods/${encodeURIComponent(pod.name)}/status`,
        {},
        {
          contentType: 'application/merge-patch+json',
          data: { metadata: { uid: pod.uid, annotations: { [STATUS_ANNOTATION]: want } } },
        },
      );
      this.stats.statusPatches++;
      this.opts.log.debug('status annotation patched', { pod: pod.name, namespace: pod.namespace, uid, value: want });
    } catch (err) {
      // Gone, or the name now belongs to another pod: nothing left to annotate.
      if (err instanceof KubeError && (err.status === 404 || err.status === 409)) return this.statusQueue.forget(uid);
      throw err;
    }
  }
}

/** Equal in everything enrollment and ztunnel discovery read. */
function sameInputs(a: PodView, b: PodView): boolean {
  return (
    a.namespace === b.namespace &&
    a.nodeName === b.nodeName &&
    a.hostNetwork === b.hostNetwork &&
    a.phase === b.phase &&
    a.sidecar === b.sidecar &&
    a.ready === b.ready &&
    a.created === b.created &&
    a.hostIp === b.hostIp &&
    a.ips.join() === b.ips.join() &&
    a.serviceAccount === b.serviceAccount &&
    a.terminating === b.terminating &&
    JSON.stringify(a.owner) === JSON.stringify(b.owner) &&
    JSON.stringify(a.labels) === JSON.stringify(b.labels) &&
    JSON.stringify(a.overrides) === JSON.stringify(b.overrides)
  );
}
