/**
 * The capture of the in-pod ztunnel topology (docs/zds.md): installed inside each enrolled
 * pod's network namespace, where ztunnel opens its listeners. The ZDS flow calls it around
 * the protocol: `install` before the pod's `add` is sent to ztunnel, `remove` after its
 * `del` (or when the pod leaves with no ztunnel connected). Implementations: eBPF and
 * iptables (Istio's in-pod rules), chosen as the node topology's modes are.
 */

import type { PodOverrides } from '../core/enrollment.js';

/** An enrolled pod and its network namespace, held open by the agent. */
export interface PodNetns {
  uid: string;
  namespace: string;
  name: string;
  /** The pod's addresses (IPv4 and IPv6) as the API reports them. */
  ips: readonly string[];
  /** An open fd of the pod's netns, owned by the agent; valid until `remove` returns. */
  fd: number;
  /** What the pod's annotations ask of its capture (docs/operations.md, "Per-pod annotations"); none when absent. */
  overrides?: PodOverrides;
}

export interface InPodCapture {
  readonly name: 'ebpf' | 'iptables';
  /** Prepares what the capture needs on the host (programs loaded, probe handling); adopts what a previous run left. */
  init(): Promise<void>;
  /** Installs (or adopts, unchanged) the capture in the pod's netns; resolves once it is in place. Idempotent. */
  install(pod: PodNetns): Promise<void>;
  /** Removes the capture from the pod's netns; a netns already gone is success. Idempotent. */
  remove(pod: PodNetns): Promise<void>;
  /** True when the pod's netns holds the capture as `install` leaves it (drift check). */
  check(pod: PodNetns): Promise<boolean>;
  /** Releases handles; what is installed stays. */
  close(): void;
}
