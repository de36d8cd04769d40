/**
 * Enrollment rules (docs/design.md, "Control plane"), as pure functions over validated views
 * of pods and namespaces. No Kubernetes client here: src/kube/ turns API objects into
 * these views and rejects the ones it cannot trust.
 */
import { isIP } from 'node:net';

export const DATAPLANE_LABEL = 'istio.io/dataplane-mode';
export const STATUS_ANNOTATION = 'ambient.istio.io/redirection';

export interface PodView {
  uid: string;
  name: string;
  namespace: string;
  nodeName: string;
  /** Integer resourceVersion of the object, for fencing stale events of the same UID. */
  resourceVersion: bigint;
  labels: Readonly<Record<string, string>>;
  /** Pod IPs in status order (primary first), each already a canonical IP string. */
  ips: readonly string[];
  hostIp: string | null;
  hostNetwork: boolean;
  phase: string;
  /** A sidecar (istio-proxy container or the sidecar status annotation) means the mesh is already there. */
  sidecar: boolean;
  ready: boolean;
  /** creationTimestamp in ms since the epoch (0 when absent). */
  created: number;
  /** Our status annotation as last seen: only to know whether a patch is needed, never as input. */
  statusAnnotation: string | null;
}

export interface NamespaceView {
  name: string;
  labels: Readonly<Record<string, string>>;
}

export type Verdict = { enrolled: true } | { enrolled: false; reason: string };

export const isTerminal = (pod: PodView) => pod.phase === 'Succeeded' || pod.phase === 'Failed';

/**
 * Why an IP cannot be a pod's entry in the pods map, or null when it can. Reserved: the
 * addresses that are never a pod's own (loopback, link-local, multicast, unspecified,
 * broadcast), and the node's and ztunnel's own addresses, given in `reserved`.
 */
export function ipProblem(ip: string, reserved: ReadonlySet<string> = new Set()): string | null {
  const family = isIP(ip);
  if (family === 0) return 'not an IP address';
  if (reserved.has(ip)) return 'the node’s or ztunnel’s own address';
  if (family === 4) {
    const [a, b] = ip.split('.').map(Number) as [number, number];
    if (a === 0) return 'unspecified';
    if (a === 127) return 'loopback';
    if (a === 169 && b === 254) return 'link-local';
    if (a >= 224 && a <= 239) return 'multicast';
    if (a >= 240) return 'reserved or broadcast';
    return null;
  }
  const lower = ip.toLowerCase();
  if (lower === '::') return 'unspecified';
  if (lower === '::1') return 'loopback';
  if (/^fe[89ab]/.test(lower)) return 'link-local';
  if (lower.startsWith('ff')) return 'multicast';
  if (lower.startsWith('::ffff:')) return 'IPv4-mapped';
  return null;
}

export interface EnrollmentContext {
  nodeName: string;
  /** The node's and ztunnel's own addresses. */
  reserved: ReadonlySet<string>;
}

export function enrollment(pod: PodView, ns: NamespaceView | undefined, ctx: EnrollmentContext): Verdict {
  if (pod.nodeName !== ctx.nodeName) return { enrolled: false, reason: 'pod of another node' };
  if (!ns) return { enrolled: false, reason: 'namespace unknown' };
  if (ns.labels[DATAPLANE_LABEL] !== 'ambient') return { enrolled: false, reason: 'namespace not ambient' };
  if (pod.labels[DATAPLANE_LABEL] === 'none') return { enrolled: false, reason: 'pod opted out' };
  if (pod.hostNetwork) return { enrolled: false, reason: 'hostNetwork' };
  if (pod.sidecar) return { enrolled: false, reason: 'has a sidecar' };
  if (isTerminal(pod)) return { enrolled: false, reason: `terminal (${pod.phase})` };
  const ip = pod.ips[0];
  if (ip === undefined) return { enrolled: false, reason: 'no IP yet' };
  const problem = ipProblem(ip, ctx.reserved);
  if (problem) return { enrolled: false, reason: `IP ${ip}: ${problem}` };
  return { enrolled: true };
}

const newer = (a: PodView, b: PodView) => a.created > b.created || (a.created === b.created && a.resourceVersion > b.resourceVersion);

/**
 * Who owns each IP: among the live (non-terminal, non-hostNetwork) pods of this node that
 * claim it, the newest. A terminating or stale pod never takes an IP from the pod that
 * reuses it, whatever order the events came in.
 */
export function ipOwners(pods: Iterable<PodView>, nodeName: string): Map<string, PodView> {
  const owners = new Map<string, PodView>();
  for (const pod of pods) {
    if (pod.nodeName !== nodeName || pod.hostNetwork || isTerminal(pod)) continue;
    for (const ip of pod.ips) {
      const cur = owners.get(ip);
      if (!cur || newer(pod, cur)) owners.set(ip, pod);
    }
  }
  return owners;
}

/**
 * The enrolled pod IPs and their pods: every IP (both families of a dual-stack pod) that
 * an enrolled pod owns and that is a valid pod address.
 */
export function enrolledPods(
  pods: Iterable<PodView>,
  namespaces: ReadonlyMap<string, NamespaceView>,
  ctx: EnrollmentContext,
): Map<string, PodView> {
  const out = new Map<string, PodView>();
  const verdicts = new Map<string, boolean>();
  for (const [ip, pod] of ipOwners(pods, ctx.nodeName)) {
    let ok = verdicts.get(pod.uid);
    if (ok === undefined) verdicts.set(pod.uid, (ok = enrollment(pod, namespaces.get(pod.namespace), ctx).enrolled));
    if (ok && ipProblem(ip, ctx.reserved) === null) out.set(ip, pod);
  }
  return out;
}

export interface ZtunnelSelector {
  namespace: string;
  labels: Readonly<Record<string, string>>;
}

/** Parses `k=v,k2=v2` (equality terms only); throws on anything else. */
export function parseSelector(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z0-9._/-]+)=([A-Za-z0-9._-]*)$/.exec(term);
    if (!m) throw new Error(`"${term}" is not a key=value term`);
    out[m[1]!] = m[2]!;
  }
  if (Object.keys(out).length === 0) throw new Error('empty selector');
  return out;
}

/** ztunnel: the Ready, running pod of this node matching the selector, newest first. */
export function selectZtunnel(pods: Iterable<PodView>, sel: ZtunnelSelector, nodeName: string): PodView | null {
  let best: PodView | null = null;
  for (const pod of pods) {
    if (pod.namespace !== sel.namespace || pod.nodeName !== nodeName || !pod.ready || isTerminal(pod)) continue;
    if (pod.ips[0] === undefined || ipProblem(pod.ips[0]) !== null) continue;
    if (!Object.entries(sel.labels).every(([k, v]) => pod.labels[k] === v)) continue;
    if (!best || newer(pod, best)) best = pod;
  }
  return best;
}
