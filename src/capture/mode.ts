/**
 * A capture mode: how the desired state reaches the kernel. The controller picks one at
 * start and talks to it only through this interface.
 */
import type { PodInfo, ZtunnelInfo } from '../bpf/codec.js';
import type { Desired } from '../core/desired.js';
import type { SelectedMode } from '../core/modes.js';

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
  /** Releases handles; the data path stays as it is. */
  close(): void;
}
