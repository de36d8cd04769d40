/**
 * The agent's side of a CNI invocation. ADD: the pod's namespace is taken from the cache
 * when the cache can vouch (ambient, with the namespace watch up), else read from the API
 * (a retryable error while neither can tell); a pod of a namespace that is not ambient
 * passes; otherwise the pod is found (the membership's cache, else a GET), the enrollment
 * rules decide with the sandbox's IPs from prevResult, and an enrolled pod is announced to
 * the membership (UID-keyed, reconciled with the API later) and held until all its IPs
 * are programmed: by the fast path (node mode: just this pod, Controller.programPod) or
 * else by a pass. DEL forgets what the sandbox announced and always succeeds.
 * CHECK fails while an enrolled pod is not programmed. STATUS succeeds (the agent answers,
 * so it can decide every ADD). GC forgets the announcements of sandboxes the runtime no
 * longer has.
 */
import { DEFAULT_ENABLEMENT_SELECTORS, namespaceSelected, type EnrollmentContext, type NamespaceView, type PodView } from '../core/enrollment.js';
import type { Logger } from '../log.js';
import { namespaceDecision, podDecision, type Decision } from './decide.js';
import type { RawRequest, Reply } from './protocol.js';
import { CNI_ERR, errorResult, parseRequest, passThrough, type CniError, type CniRequest } from './request.js';

/** What the handler needs of the membership (KubeMembership has it). */
export interface CniMembership {
  hasSynced(): boolean;
  namespace(name: string): NamespaceView | undefined;
  /** True while the namespace watch is established (the cache follows the API). */
  namespacesLive(): boolean;
  /** GET of one namespace (null when it does not exist; throws when the API fails). */
  fetchNamespace(name: string): Promise<NamespaceView | null>;
  cachedPod(namespace: string, name: string, uid?: string): PodView | undefined;
  podDeleted(uid: string): boolean;
  fetchPod(namespace: string, name: string): Promise<PodView | null>;
  enrollmentContext(): EnrollmentContext;
  provisionPod(pod: PodView, containerId: string): void;
  releaseSandbox(containerId: string): boolean;
  /** The sandboxes (container IDs) with an announcement. */
  announcedSandboxes(): string[];
  programmedNow(): ReadonlySet<string>;
  onProgrammed(cb: (ips: ReadonlySet<string>) => void): void;
  onChange(cb: () => void): void;
}

/**
 * inpod mode (src/zds/agent.ts): an enrolled pod is in place once its capture is installed
 * and ztunnel acked its `add`; the ADD gives the agent the sandbox's netns first, and fails
 * at once when ztunnel refused the pod.
 */
export interface InPodGate {
  /** The sandbox's netns (CNI_NETNS), before the pod is announced. */
  sandbox(uid: string, netnsPath: string): void;
  /** The pod is in place in this sandbox's netns: captured, and ztunnel acked its add. */
  ready(uid: string): boolean;
  /** Why the pod cannot be in place (ztunnel's ack error, a failed capture), or null. */
  failure(uid: string): string | null;
  /** Why it is not in place yet, in words (for the timeout's message). */
  pending(uid: string): string;
}

export interface CniHandlerOptions {
  /** How long an ADD may take in all (sync, lookup, programming). */
  addTimeoutMs: number;
  log: Logger;
  inpod?: InPodGate;
  /**
   * node mode's fast path (Controller.programPod): programs just the pod with this UID
   * and resolves with the IPs it programmed; called before the pod is announced, it takes
   * its turn ahead of the pass the announcement kicks, and reads the view after it.
   */
  programPod?: (uid: string) => Promise<ReadonlySet<string>>;
}

class Deadline extends Error {}

export class CniHandler {
  private readonly programmedWaiters = new Set<() => void>();
  private readonly syncWaiters = new Set<() => void>();
  readonly stats = { add: 0, enrolled: 0, passed: 0, failed: 0, del: 0, gc: 0, namespaceReads: 0 };

  constructor(
    private readonly m: CniMembership,
    private readonly opts: CniHandlerOptions,
  ) {
    m.onProgrammed(() => [...this.programmedWaiters].forEach((w) => w()));
    m.onChange(() => [...this.syncWaiters].forEach((w) => w()));
  }

  async handle(raw: RawRequest): Promise<Reply> {
    const parsed = parseRequest(raw);
    if (!parsed.ok) {
      // DEL succeeds whatever it was given.
      if (raw.env.CNI_COMMAND === 'DEL') return { code: 0, stdout: '' };
      return { code: 1, stdout: errorResult(parsed.cniVersion, parsed.error) };
    }
    const req = parsed.req;
    if (req.command === 'STATUS') return { code: 0, stdout: '' };
    if (req.command === 'GC') {
      const keep = new Set(req.validAttachments);
      for (const id of this.m.announcedSandboxes()) {
        if (keep.has(id) || !this.m.releaseSandbox(id)) continue;
        this.stats.gc++;
        this.opts.log.info('cni: sandbox released by GC', { container: id });
      }
      return { code: 0, stdout: '' };
    }
    if (req.command === 'DEL') {
      this.stats.del++;
      if (this.m.releaseSandbox(req.containerId))
        this.opts.log.info('cni: sandbox released', { container: req.containerId, pod: req.pod.name, namespace: req.pod.namespace });
      return { code: 0, stdout: '' };
    }
    const t0 = performance.now();
    const deadline = Date.now() + this.opts.addTimeoutMs;
    let decision: Decision;
    try {
      decision = await this.decide(req, deadline);
    } catch (err) {
      const msg = err instanceof Deadline ? err.message : `cannot decide: ${err instanceof Error ? err.message : String(err)}`;
      return this.fail(req, { code: CNI_ERR.tryAgainLater, msg: `ambient-redirect: pod ${req.pod.namespace}/${req.pod.name}: ${msg}` });
    }
    if (req.command === 'ADD') this.stats.add++;
    if (decision.kind === 'error') return this.fail(req, decision.error);
    if (decision.kind === 'pass') {
      if (req.command === 'ADD') this.stats.passed++;
      this.opts.log.debug('cni: pod passes', { command: req.command, pod: req.pod.name, namespace: req.pod.namespace, reason: decision.reason });
      return { code: 0, stdout: req.command === 'ADD' ? passThrough(req) : '' };
    }
    const ips = decision.pod.ips;
    if (req.command === 'CHECK') {
      if (this.covered(ips)) return { code: 0, stdout: '' };
      return this.fail(req, {
        code: CNI_ERR.tryAgainLater,
        msg: `ambient-redirect: pod ${req.pod.namespace}/${req.pod.name} is enrolled but ${ips.join(', ')} is not programmed`,
      });
    }
    const inpod = this.opts.inpod;
    const uid = decision.pod.uid;
    inpod?.sandbox(uid, req.netns);
    const fast = inpod ? undefined : this.opts.programPod?.(uid);
    this.m.provisionPod(decision.pod, req.containerId);
    const failed = () => inpod?.failure(uid) ?? null;
    // The fast path's IPs, or the pass's: either has them in the kernel now.
    let quick: ReadonlySet<string> = new Set();
    const covered = () => ips.every((ip) => quick.has(ip)) || this.covered(ips);
    try {
      if (fast) quick = await this.race(fast, deadline, `not programmed within ${this.opts.addTimeoutMs} ms (is ztunnel's node agent healthy?)`);
      await this.until(
        this.programmedWaiters,
        () => (inpod ? inpod.ready(uid) : covered()) || failed() !== null,
        deadline,
        inpod
          ? `not in place within ${this.opts.addTimeoutMs} ms: ${inpod.pending(uid)}`
          : `not programmed within ${this.opts.addTimeoutMs} ms (is ztunnel's node agent healthy?)`,
      );
    } catch (err) {
      const msg = err instanceof Deadline && inpod ? `not in place within ${this.opts.addTimeoutMs} ms: ${inpod.pending(uid)}` : (err as Error).message;
      return this.fail(req, { code: CNI_ERR.tryAgainLater, msg: `ambient-redirect: pod ${req.pod.namespace}/${req.pod.name}: ${msg}` });
    }
    const refused = (inpod ? inpod.ready(uid) : covered()) ? null : failed();
    if (refused !== null) return this.fail(req, { code: CNI_ERR.tryAgainLater, msg: `ambient-redirect: pod ${req.pod.namespace}/${req.pod.name}: ${refused}` });
    this.stats.enrolled++;
    this.opts.log.info('cni: pod enrolled before start', {
      pod: req.pod.name,
      namespace: req.pod.namespace,
      uid: decision.pod.uid,
      ips,
      fastPath: ips.every((ip) => quick.has(ip)),
      ms: Math.round(performance.now() - t0),
    });
    return { code: 0, stdout: passThrough(req) };
  }

  private async decide(req: CniRequest, deadline: number): Promise<Decision> {
    const { namespace, name, uid } = req.pod;
    if (!namespace || !name) return { kind: 'pass', reason: 'not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME)' };
    // Before the first lists the namespace may look unknown: wait for them.
    await this.until(this.syncWaiters, () => this.m.hasSynced(), deadline, 'the agent has not synced with the API yet');
    const ctx = this.m.enrollmentContext();
    const nsView = await this.namespaceOf(namespace, deadline, ctx);
    const early = namespaceDecision(nsView, ctx);
    if (early) return early;
    if (uid && this.m.podDeleted(uid)) return { kind: 'pass', reason: 'pod deleted in the API' };
    let pod = this.m.cachedPod(namespace, name, uid || undefined);
    if (!pod || (uid && pod.uid !== uid)) {
      // The watch is behind the runtime: ask the API for this one pod.
      const fetched = await this.race(this.m.fetchPod(namespace, name), deadline, 'reading the pod from the API timed out');
      if (!fetched)
        return { kind: 'error', error: { code: CNI_ERR.tryAgainLater, msg: `ambient-redirect: pod ${namespace}/${name} does not exist in the API` } };
      if (uid && fetched.uid !== uid)
        return {
          kind: 'error',
          error: { code: CNI_ERR.tryAgainLater, msg: `ambient-redirect: pod ${namespace}/${name} in the API has UID ${fetched.uid}, the runtime says ${uid}` },
        };
      pod = fetched;
    }
    return podDecision(pod, nsView, req.ips, ctx);
  }

  /**
   * The namespace as far as anyone can know: the cache vouches only for an ambient
   * namespace while its watch is up (a label added a moment ago, a namespace the watch
   * has not delivered, a broken watch: the cache cannot tell), otherwise one GET.
   * undefined: the namespace does not exist. Throws (a retryable error) when the API
   * cannot be read.
   */
  private async namespaceOf(name: string, deadline: number, ctx: EnrollmentContext): Promise<NamespaceView | undefined> {
    // Not a namespace name (RFC 1123 label): no such namespace can exist, nothing to ask.
    if (name.length > 63 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name)) return undefined;
    const cached = this.m.namespace(name);
    if (cached && namespaceSelected(cached, ctx.selectors ?? DEFAULT_ENABLEMENT_SELECTORS) && this.m.namespacesLive()) return cached;
    this.stats.namespaceReads++;
    let fetched: NamespaceView | null;
    try {
      fetched = await this.race(this.m.fetchNamespace(name), deadline, `reading namespace ${name} from the API timed out`);
    } catch (err) {
      if (err instanceof Deadline) throw err;
      throw new Deadline(
        `the agent cannot tell whether namespace ${name} is ambient: reading it from the API failed (${err instanceof Error ? err.message : String(err)})`,
      );
    }
    return fetched ?? undefined;
  }

  private covered(ips: readonly string[]): boolean {
    const now = this.m.programmedNow();
    return ips.every((ip) => now.has(ip));
  }

  private until(waiters: Set<() => void>, cond: () => boolean, deadline: number, what: string): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const check = () => {
        if (!cond()) return;
        done();
        resolve();
      };
      const timer = setTimeout(
        () => {
          done();
          reject(new Deadline(what));
        },
        Math.max(0, deadline - Date.now()),
      );
      const done = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
    });
  }

  private race<T>(p: Promise<T>, deadline: number, what: string): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Deadline(what)), Math.max(0, deadline - Date.now()));
    });
    return Promise.race([p, t]).finally(() => clearTimeout(timer));
  }

  private fail(req: CniRequest, e: CniError): Reply {
    if (req.command === 'ADD') this.stats.failed++;
    this.opts.log.warn('cni: refused', {
      command: req.command,
      pod: req.pod.name,
      namespace: req.pod.namespace,
      container: req.containerId,
      code: e.code,
      reason: e.msg,
    });
    return { code: 1, stdout: errorResult(req.cniVersion, e) };
  }
}
