/**
 * The reconcile loop: read membership and the node, compute the desired state, read the
 * actual state from the kernel, apply the difference. Level-triggered and idempotent: a
 * pass repairs whatever the previous one, or someone else, left. Passes run from a
 * coalescing work queue (one key: a burst of events is one pass), on every membership
 * change that alters the view a pass starts from (an event of a pod outside the mesh does
 * not) and on a jittered resync timer.
 *
 * Two guards stand between a bad view of the API and the maps: nothing is touched before
 * the membership has synced once (prune only after the first full sync), and a pass that
 * would delete more than `maxDeleteShare` of the entries holds those deletes until a
 * second, confirming list agrees (the circuit breaker).
 */
import { desiredState, placeBySandbox, type EnrolledRef, type Placement, type SandboxBinding, type ZtunnelPlacement } from '../core/desired.js';
import { describeFinding, type Finding } from '../core/ordering.js';
import { placeZtunnelByIp, ZtunnelNotFound } from './ztunnel.js';
import { DEFAULT_BACKOFF, WorkQueue, type BackoffOptions } from './queue.js';
import { hostLinkFor, readHostNet, type HostNet } from '../host/netinfo.js';
import type { CommandRunner } from '../host/runner.js';
import type { Logger } from '../log.js';
import type { ApplyResult, RedirectMode } from '../capture/mode.js';

export interface MembershipView {
  /** False until every source delivered a full list: no entry is deleted before. */
  synced: boolean;
  /** Enrolled pod IPs. */
  enrolled: readonly string[];
  /** The pod behind each enrolled IP, where the source knows pods (Kubernetes): entries are then bound to the pod's sandbox. */
  pods?: ReadonlyMap<string, EnrolledRef>;
  /** ztunnel's IP as discovered, or null (none Ready, or not discovered by this source). */
  ztunnelIp: string | null;
  /** Why no ztunnel was taken although candidates exist (an impostor, a conflict), or null. */
  ztunnelProblem?: string | null;
  /** Full lists completed so far: a later one confirms what the breaker held. */
  listGeneration: number;
}

/** Who is enrolled: static (--enroll) or the Kubernetes watches. */
export interface Membership {
  view(): MembershipView;
  /** Takes a fresh full list (the breaker's confirmation); bumps listGeneration. */
  confirm(): Promise<void>;
  /** After each pass: the pod IPs the maps now hold for membership (not held ones). */
  programmed(ips: ReadonlySet<string>): void;
  /** Called on every change that may alter the desired state. */
  onChange(cb: () => void): void;
}

export function staticMembership(ips: readonly string[]): Membership {
  const enrolled = Object.freeze([...ips]);
  let listGeneration = 1;
  return {
    view: () => ({ synced: true, enrolled, ztunnelIp: null, listGeneration }),
    confirm: async () => {
      listGeneration++;
    },
    programmed: () => {},
    onChange: () => {},
  };
}

export interface ControllerDeps {
  mode: RedirectMode;
  membership: Membership;
  /** ztunnel's IP when given (--ztunnel-ip): wins over discovery. */
  ztunnelIp?: string | null;
  runner: CommandRunner;
  log: Logger;
  /** Defaults to one bulk read of links, routes and netns through `runner`. */
  readNet?: () => Promise<HostNet>;
  placeZtunnel?: (ip: string, net: HostNet) => Promise<ZtunnelPlacement>;
  /** Share of the entries one pass may delete without a confirming list (default 0.5). */
  maxDeleteShare?: number;
  /** Retry backoff of a failed pass. */
  backoff?: BackoffOptions;
}

export interface PassReport extends ApplyResult {
  enrolled: number;
  programmed: number;
  unplaced: string[];
  ztunnel: boolean;
  /** Why discovery took no ztunnel (membership's reason), or null. */
  ztunnelProblem: string | null;
  /** Deletes held back by the breaker, waiting for a confirming list. */
  held: number;
  breaker: 'closed' | 'holding' | 'confirmed';
  /**
   * What the pass found, after applying, on the hooks the mode uses: programs that run
   * before ours, our own missing, devices whose traffic skips the hooks. Empty: verified.
   */
  findings: Finding[];
}

const KEY = 'reconcile';

/** A view's inputs to the desired state, as text (equal text: the same desired state on the same node). */
function viewKey(v: MembershipView): string {
  const pods = v.pods ? [...v.pods].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) : null;
  return JSON.stringify([v.synced, v.listGeneration, v.ztunnelIp, v.ztunnelProblem ?? null, [...v.enrolled].sort(), pods]);
}

export class Controller {
  private timer: NodeJS.Timeout | undefined;
  private stopped = true;
  private queue: WorkQueue | null = null;
  /** listGeneration when the breaker tripped; null when closed. */
  private trippedAt: number | null = null;
  private confirming = false;
  /** What the last pass said about a missing ztunnel (to say it once, not every pass). */
  private lastZtunnelWarning: string | null = null;
  /** The last pass's findings in words, to log a change once rather than every pass. */
  private lastFindings = '';
  /** Each enrolled pod's sandbox, by UID (desired.ts placeBySandbox). */
  private bindings: ReadonlyMap<string, SandboxBinding> = new Map();
  /** Refusals already logged (ip + reason), to say each once. */
  private refusedLogged = new Set<string>();
  /** A pass on a synced membership has completed: the fast path may run. */
  private passed = false;
  /**
   * The inputs of the last pass started (viewKey), until a pass fails: a membership change
   * that leaves them as they were (an event of a pod outside the mesh) kicks no pass.
   */
  private passView: string | null = null;
  /** What the last pass programmed for membership. */
  private lastProgrammed: ReadonlySet<string> = new Set();

  constructor(private readonly deps: ControllerDeps) {}

  /** Passes and fast paths, one at a time (exclusive): each reads and writes the kernel whole. */
  private turn: Promise<unknown> = Promise.resolve();

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.turn.then(fn);
    this.turn = run.catch(() => {});
    return run;
  }

  reconcile(): Promise<PassReport> {
    return this.exclusive(() => this.pass()).catch((err: unknown) => {
      this.passView = null;
      throw err;
    });
  }

  /**
   * The CNI gate's fast path (docs/cni.md): programs just the pod with this UID, as the
   * next pass would (the same view, placeBySandbox and desiredState, restricted to the
   * pod), its entries and its veths' hooks; nothing else is read or written. Resolves with
   * the IPs now programmed (empty: none, the pass decides; it never throws). Takes its turn
   * when called, so it runs before a pass the caller kicks right after (the announcement's);
   * its work starts a microtask later, when that announcement is in the view.
   */
  programPod(uid: string): Promise<ReadonlySet<string>> {
    const run = this.exclusive(async () => {
      try {
        return await this.programOne(uid);
      } catch (err) {
        this.deps.log.warn('cni fast path failed; the pass programs the pod', { uid, error: err instanceof Error ? err.message : String(err) });
        return new Set<string>();
      }
    });
    // The pass that follows waits one turn of the loop: its work is synchronous between
    // resolved awaits and would otherwise run before the ADD's answer is written.
    this.turn = this.turn.then(() => new Promise<void>((resolve) => setImmediate(resolve)));
    return run;
  }

  private async programOne(uid: string): Promise<ReadonlySet<string>> {
    const { mode, membership, runner } = this.deps;
    const view = membership.view();
    // Before the first full pass (adoption, ztunnel's side, the breaker) the pass decides.
    if (!mode.programPod || !mode.actualOf || !this.passed || !view.synced || !view.pods) {
      this.deps.log.debug('cni fast path: not now', { uid, mode: !!mode.programPod, passed: this.passed, synced: view.synced, pods: !!view.pods });
      return new Set();
    }
    const mine = new Map([...view.pods].filter(([, ref]) => ref.uid === uid));
    if (mine.size === 0) {
      this.deps.log.debug('cni fast path: the pod is not enrolled in the view; the pass decides', { uid });
      return new Set();
    }
    const net = await (this.deps.readNet ?? (() => readHostNet(runner)))();
    const routed = [...mine.keys()].map((ip) => hostLinkFor(net, ip)).filter((l) => l !== undefined);
    const actual = await mode.actualOf(mine.keys(), [...new Set(routed.map((l) => l.ifindex))]);
    const placement = placeBySandbox(mine, net, this.bindings, actual.pods);
    if (placement.refused.length > 0 || placement.unplaced.length > 0) {
      this.deps.log.debug('cni fast path: the pass decides', { uid, refused: placement.refused, unplaced: placement.unplaced });
      return new Set();
    }
    const desired = desiredState([], net, null, placement, mine);
    await mode.programPod(desired, actual);
    const bindings = new Map(this.bindings);
    for (const [u, b] of placement.bindings) bindings.set(u, b);
    this.bindings = bindings;
    return new Set(desired.pods.keys());
  }

  private async pass(): Promise<PassReport> {
    const { mode, membership, runner, log } = this.deps;
    const view = membership.view();
    this.passView = viewKey(view);
    if (!view.synced) {
      // Before the first full list the view is empty or partial: touching the maps now
      // would clear ztunnel's slot or entries a previous run programmed (adoption).
      return {
        upserted: 0,
        deleted: 0,
        attached: 0,
        detached: 0,
        enrolled: 0,
        programmed: 0,
        unplaced: [],
        ztunnel: false,
        ztunnelProblem: null,
        held: 0,
        breaker: 'closed',
        findings: [],
      };
    }
    const net = await (this.deps.readNet ?? (() => readHostNet(runner)))();
    const ztIp = this.deps.ztunnelIp || view.ztunnelIp;
    let zt: ZtunnelPlacement | null = null;
    if (ztIp) {
      try {
        zt = await (this.deps.placeZtunnel ?? ((ip, n) => placeZtunnelByIp(ip, n, runner)))(ztIp, net);
      } catch (err) {
        if (!(err instanceof ZtunnelNotFound)) throw err;
        log.warn('ztunnel not found: enrolled pods fail closed', { reason: err.message });
      }
    }
    const ztunnelProblem = ztIp ? null : (view.ztunnelProblem ?? null);
    const warning = ztIp ? '' : (ztunnelProblem ?? 'no Ready ztunnel on this node');
    if (warning && warning !== this.lastZtunnelWarning)
      log.warn(
        `${ztunnelProblem ? 'ztunnel refused' : 'no Ready ztunnel on this node'}: enrolled pods fail closed`,
        ztunnelProblem ? { reason: ztunnelProblem } : {},
      );
    this.lastZtunnelWarning = warning;
    const actual = await mode.actual(net.links.keys());
    let placement: Placement | undefined;
    if (view.pods) {
      placement = placeBySandbox(view.pods, net, this.bindings, actual.pods);
      this.bindings = placement.bindings;
      const now = new Set<string>();
      for (const r of placement.refused) {
        const key = `${r.ip} ${r.reason}`;
        now.add(key);
        if (!this.refusedLogged.has(key)) log.warn('enrolled pod not placed: bound to a sandbox that is gone', { ip: r.ip, uid: r.uid, reason: r.reason });
      }
      this.refusedLogged = now;
    }
    const desired = desiredState(view.enrolled, net, zt, placement, view.pods);
    const deletes = [...actual.pods.keys()].filter((ip) => !desired.pods.has(ip));
    const programmedByMembership = new Set(desired.pods.keys());

    let hold = false;
    let breaker: PassReport['breaker'] = 'closed';
    const share = this.deps.maxDeleteShare ?? 0.5;
    if (deletes.length > 0 && deletes.length > share * actual.pods.size) {
      if (this.trippedAt !== null && view.listGeneration > this.trippedAt) {
        breaker = 'confirmed';
        log.warn('circuit breaker: a second list confirms the deletes', { deletes: deletes.length, entries: actual.pods.size });
        this.trippedAt = null;
      } else {
        hold = true;
        breaker = 'holding';
        if (this.trippedAt === null) {
          this.trippedAt = view.listGeneration;
          log.warn('circuit breaker: holding deletes until a second list confirms them', {
            deletes: deletes.length,
            entries: actual.pods.size,
            maxDeleteShare: share,
          });
        }
        this.requestConfirmation();
      }
    } else this.trippedAt = null;

    if (hold) {
      for (const ip of deletes) {
        const have = actual.pods.get(ip)!;
        desired.pods.set(ip, have);
        if (actual.hooks.has(have.ifindex)) desired.hooks.add(have.ifindex);
      }
    }
    const result = await mode.apply(desired, actual);
    const findings = mode.verify ? await mode.verify(desired, net.links) : [];
    const said = findings.map(describeFinding).join('; ');
    if (said !== this.lastFindings) {
      if (findings.length) log.warn('data path not verified: something runs before our programs or skips them', { findings: findings.map(describeFinding) });
      else if (this.lastFindings) log.info('data path verified again: nothing runs before our programs', {});
      this.lastFindings = said;
    }
    for (const ip of desired.unplaced) log.debug('enrolled pod has no host route yet', { ip });
    membership.programmed(programmedByMembership);
    this.lastProgrammed = programmedByMembership;
    this.passed = true;
    return {
      ...result,
      enrolled: view.enrolled.length,
      programmed: programmedByMembership.size,
      unplaced: desired.unplaced,
      ztunnel: zt !== null,
      ztunnelProblem,
      held: hold ? deletes.length : 0,
      breaker,
      findings,
    };
  }

  private requestConfirmation(): void {
    if (this.confirming) return;
    this.confirming = true;
    this.deps.membership.confirm().then(
      () => {
        this.confirming = false;
        this.queue?.add(KEY);
      },
      (err: unknown) => {
        this.confirming = false;
        // The next pass (event or resync) asks again.
        this.deps.log.warn('circuit breaker: confirming list failed', { error: err instanceof Error ? err.message : String(err) });
      },
    );
  }

  /** Reconciles now, on every membership change that alters the view, and every intervalMs (+-10%) until stop(). */
  start(intervalMs: number, onPass: (r: PassReport, seconds: number) => void, onError: (e: unknown, seconds: number) => void): void {
    this.stopped = false;
    const queue = new WorkQueue(
      async () => {
        const t0 = performance.now();
        const seconds = () => (performance.now() - t0) / 1000;
        try {
          const r = await this.reconcile();
          onPass(r, seconds());
        } catch (err) {
          onError(err, seconds());
          throw err;
        }
      },
      { backoff: this.deps.backoff ?? DEFAULT_BACKOFF },
    );
    this.queue = queue;
    this.deps.membership.onChange(() => {
      const { membership } = this.deps;
      if (this.passView === null || viewKey(membership.view()) !== this.passView) return queue.add(KEY);
      // The desired state cannot differ from the last pass's: no pass (the resync timer
      // still repairs drift); the pods' status annotations are checked again as after one.
      if (this.passed) membership.programmed(this.lastProgrammed);
    });
    const tick = () => {
      if (this.stopped) return;
      queue.add(KEY);
      this.timer = setTimeout(tick, intervalMs * (0.9 + Math.random() * 0.2));
    };
    tick();
  }

  /** Resolves when no pass is queued or running (tests, benchmarks). */
  idle(): Promise<void> {
    return this.queue?.idle() ?? Promise.resolve();
  }

  /** Stops after the pass under way, if any; the data path stays as it is. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.queue?.stop();
  }
}
