/**
 * A capture mode: how the desired state reaches the kernel. The controller picks one at
 * start and talks to it only through this interface.
 */
import type { PodInfo, ZtunnelInfo } from '../bpf/codec.js';
import type { Desired } from '../core/desired.js';
import type { SelectedMode } from '../core/modes.js';
import type { Finding } from '../core/ordering.js';
import type { Link } from '../host/netinfo.js';

export interface ActualState {
  pods: Map<string, PodInfo>;
  ztunnel: ZtunnelInfo | null;
  /** Host links (ifindex) that carry our capture program. */
  hooks: Set<number>;
}

export interface ApplyResult {
  upserted: number;
  deleted: number;
  attached: number;
  detached: number;
}

export interface RedirectMode {
  readonly name: SelectedMode;
  /** Prepares (or adopts) what the mode needs; reads nothing from Kubernetes. */
  init(): Promise<void>;
  /** What the kernel holds now. */
  actual(candidateLinks: Iterable<number>): Promise<ActualState>;
  /** Makes the kernel hold `desired`; idempotent. */
  apply(desired: Desired, actual: ActualState): Promise<ApplyResult>;
  /**
   * The fast path of one pod (the CNI gate's, Controller.programPod), with programPod: what
   * the kernel holds for these IPs and these links only, changing nothing.
   */
  actualOf?(ips: Iterable<string>, links: Iterable<number>): Promise<ActualState>;
  /**
   * Places `desired`'s entries and hooks as apply would, and nothing else: no delete, no
   * detach, ztunnel's side untouched. The next apply confirms or corrects it.
   */
  programPod?(desired: Desired, actual: ActualState): Promise<ApplyResult>;
  /**
   * After apply: what on the hooks this mode uses runs before its programs, or lets traffic
   * skip them (docs/datapath.md, "Ordering"). Absent for a mode without such hooks.
   */
  verify?(desired: Desired, links: ReadonlyMap<number, Link>): Promise<Finding[]>;
  /** Releases handles; the data path stays as it is. */
  close(): void;
}
