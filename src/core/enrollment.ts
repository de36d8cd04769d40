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
  /** The controlling owner (ownerReferences entry with controller: true), if any. */
  owner?: { kind: string; name: string } | null;
  /** spec.serviceAccountName ('' when absent). */
  serviceAccount?: string;
  /** metadata.deletionTimestamp is set: the pod is being deleted (its sandbox may already be gone). */
  terminating?: boolean;
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
export function enrolledPods(pods: Iterable<PodView>, namespaces: ReadonlyMap<string, NamespaceView>, ctx: EnrollmentContext): Map<string, PodView> {
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
  /** The DaemonSet that must control the pod (ownerReferences, controller: true); default "ztunnel". */
  daemonSet?: string;
  /** The service account the pod must run as; default "ztunnel". */
  serviceAccount?: string;
}

export const DEFAULT_ZTUNNEL_IDENTITY = { daemonSet: 'ztunnel', serviceAccount: 'ztunnel' } as const;

/** Parses `k=v,k2=v2` (equality terms only); throws on anything else. */
export function parseSelector(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^([A-Za-z0-9._/-]+)=([A-Za-z0-9._-]*)$/.exec(term);
    if (!m) throw new Error(`"${term}" is not a key=value term`);
    out[m[1]!] = m[2]!;
  }
  if (Object.keys(out).length === 0) throw new Error('empty selector');
  return out;
}

/** The chosen ztunnel pod, or null with the reason (null reason: simply none Ready yet). */
export type ZtunnelChoice = { pod: PodView; problem: null } | { pod: null; problem: string | null };

/** Why a candidate is not the real ztunnel, or null when it carries ztunnel's identity. */
export function ztunnelIdentityProblem(pod: PodView, sel: ZtunnelSelector): string | null {
  const ds = sel.daemonSet ?? DEFAULT_ZTUNNEL_IDENTITY.daemonSet;
  const sa = sel.serviceAccount ?? DEFAULT_ZTUNNEL_IDENTITY.serviceAccount;
  const problems: string[] = [];
  const owner = pod.owner;
  if (owner?.kind !== 'DaemonSet' || owner.name !== ds)
    problems.push(`controlled by ${owner ? `${owner.kind} ${owner.name}` : 'nothing'}, not DaemonSet ${ds}`);
  if ((pod.serviceAccount ?? '') !== sa) problems.push(`service account "${pod.serviceAccount ?? ''}", not "${sa}"`);
  return problems.length ? problems.join('; ') : null;
}

/**
 * ztunnel: among the Ready, running pods of this node in its namespace matching the
 * selector, the newest, provided every one of them carries ztunnel's identity (its
 * DaemonSet as controlling owner, its service account). Labels alone anyone who may
 * create or relabel a pod there can copy; a candidate without the identity is never
 * taken, and next to a real one it makes the choice fail closed: which of two differing
 * pods is the impostor is not ours to guess, and a wrong guess hands the node's mesh
 * traffic to it.
 */
export function chooseZtunnel(pods: Iterable<PodView>, sel: ZtunnelSelector, nodeName: string): ZtunnelChoice {
  let best: PodView | null = null;
  const impostors: string[] = [];
  for (const pod of pods) {
    if (pod.namespace !== sel.namespace || pod.nodeName !== nodeName || !pod.ready || isTerminal(pod)) continue;
    if (pod.ips[0] === undefined || ipProblem(pod.ips[0]) !== null) continue;
    if (!Object.entries(sel.labels).every(([k, v]) => pod.labels[k] === v)) continue;
    const problem = ztunnelIdentityProblem(pod, sel);
    if (problem) {
      impostors.push(`${pod.namespace}/${pod.name} (${problem})`);
      continue;
    }
    if (!best || newer(pod, best)) best = pod;
  }
  if (impostors.length === 0) return best ? { pod: best, problem: null } : { pod: null, problem: null };
  impostors.sort();
  if (best)
    return {
      pod: null,
      problem: `refusing every ztunnel candidate: ${best.namespace}/${best.name} has ztunnel's identity but ${impostors.join(', ')} also matches the selector`,
    };
  return { pod: null, problem: `no ztunnel candidate has ztunnel's identity: ${impostors.join(', ')}` };
}

/** The chosen ztunnel pod or null (see chooseZtunnel). */
export function selectZtunnel(pods: Iterable<PodView>, sel: ZtunnelSelector, nodeName: string): PodView | null {
  return chooseZtunnel(pods, sel, nodeName).pod;
}
