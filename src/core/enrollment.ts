/**
 * Enrollment rules (docs/design.md, "Control plane"), as pure functions over validated views
 * of pods and namespaces. No Kubernetes client here: src/kube/ turns API objects into
 * these views and rejects the ones it cannot trust.
 */
import { isIP } from 'node:net';

export const DATAPLANE_LABEL = 'istio.io/dataplane-mode';
export const STATUS_ANNOTATION = 'ambient.istio.io/redirection';

/** Istio's per-pod annotations (docs/operations.md "Per-pod annotations"). */
export const BYPASS_INBOUND_ANNOTATION = 'ambient.istio.io/bypass-inbound-capture';
export const DNS_CAPTURE_ANNOTATION = 'ambient.istio.io/dns-capture';
export const REROUTE_VIRTUAL_INTERFACES_ANNOTATION = 'ambient.istio.io/reroute-virtual-interfaces';

/** What a pod's annotations ask of its capture. */
export interface PodOverrides {
  /** bypass-inbound-capture: "true". */
  bypassInbound: boolean;
  /** dns-capture: "true" or "false"; null when absent (or another value): the node's setting. */
  dnsCapture: boolean | null;
  /** reroute-virtual-interfaces: the interface names listed (comma-separated). */
  rerouteInterfaces: readonly string[];
}

export const NO_OVERRIDES: PodOverrides = Object.freeze({ bypassInbound: false, dnsCapture: null, rerouteInterfaces: Object.freeze([]) });

/** The overrides a pod's annotations carry; values Istio would not take count as absent. */
export function podOverrides(annotations: Readonly<Record<string, string>>): PodOverrides {
  const bool = (v: string | undefined) =>
    v === undefined ? null : v.trim().toLowerCase() === 'true' ? true : v.trim().toLowerCase() === 'false' ? false : null;
  const reroute = (annotations[REROUTE_VIRTUAL_INTERFACES_ANNOTATION] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return Object.freeze({
    bypassInbound: bool(annotations[BYPASS_INBOUND_ANNOTATION]) === true,
    dnsCapture: bool(annotations[DNS_CAPTURE_ANNOTATION]),
    rerouteInterfaces: Object.freeze(reroute),
  });
}

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
  /** Its per-pod annotations (absent: none). */
  overrides?: PodOverrides;
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

/** A Kubernetes label selector (matchLabels and matchExpressions, ANDed). */
export interface LabelSelector {
  matchLabels?: Readonly<Record<string, string>>;
  matchExpressions?: readonly LabelRequirement[];
}

export interface LabelRequirement {
  key: string;
  operator: 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';
  values?: readonly string[];
}

/**
 * One enablement rule: a pod matches when its labels match `podSelector` and its
 * namespace's labels match `namespaceSelector` (an absent selector matches everything).
 * A pod is enrolled when any rule matches (docs/design.md, "Enrollment").
 */
export interface EnablementSelector {
  podSelector?: LabelSelector;
  namespaceSelector?: LabelSelector;
}

/**
 * Istio's current default rules: a pod labelled ambient anywhere, or any pod not opted
 * out in a namespace labelled ambient.
 */
export const DEFAULT_ENABLEMENT_SELECTORS: readonly EnablementSelector[] = Object.freeze([
  { podSelector: { matchLabels: { [DATAPLANE_LABEL]: 'ambient' } } },
  {
    podSelector: { matchExpressions: [{ key: DATAPLANE_LABEL, operator: 'NotIn', values: ['none'] }] },
    namespaceSelector: { matchLabels: { [DATAPLANE_LABEL]: 'ambient' } },
  },
]);

export function selectorMatches(sel: LabelSelector | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!sel) return true;
  for (const [k, v] of Object.entries(sel.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const r of sel.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, r.key);
    const value = labels[r.key];
    const ok =
      r.operator === 'Exists'
        ? has
        : r.operator === 'DoesNotExist'
          ? !has
          : r.operator === 'In'
            ? has && (r.values ?? []).includes(value!)
            : !has || !(r.values ?? []).includes(value!);
    if (!ok) return false;
  }
  return true;
}

// A label key: an optional DNS-subdomain prefix and a name of at most 63 characters.
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const LABEL_PREFIX = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

function labelKeyProblem(key: unknown): string | null {
  if (typeof key !== 'string') return 'a label key must be a string';
  const slash = key.lastIndexOf('/');
  const prefix = slash >= 0 ? key.slice(0, slash) : null;
  const name = slash >= 0 ? key.slice(slash + 1) : key;
  if (prefix !== null && !LABEL_PREFIX.test(prefix)) return `"${key}": the prefix is not a DNS subdomain`;
  if (!LABEL_NAME.test(name)) return `"${key}" is not a label key`;
  return null;
}

function labelValueProblem(v: unknown): string | null {
  if (typeof v !== 'string') return `${JSON.stringify(v)} is not a string`;
  return LABEL_VALUE.test(v) ? null : `"${v}" is not a label value`;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function labelSelector(v: unknown, where: string): LabelSelector {
  if (!isObject(v)) throw new Error(`${where}: not an object`);
  for (const k of Object.keys(v)) if (k !== 'matchLabels' && k !== 'matchExpressions') throw new Error(`${where}: unknown field "${k}"`);
  const out: { matchLabels?: Record<string, string>; matchExpressions?: LabelRequirement[] } = {};
  if (v.matchLabels !== undefined) {
    if (!isObject(v.matchLabels)) throw new Error(`${where}.matchLabels: not an object`);
    const ml: Record<string, string> = {};
    for (const [k, val] of Object.entries(v.matchLabels)) {
      const p = labelKeyProblem(k) ?? labelValueProblem(val);
      if (p) throw new Error(`${where}.matchLabels: ${p}`);
      ml[k] = val as string;
    }
    out.matchLabels = Object.freeze(ml);
  }
  if (v.matchExpressions !== undefined) {
    if (!Array.isArray(v.matchExpressions)) throw new Error(`${where}.matchExpressions: not a list`);
    out.matchExpressions = v.matchExpressions.map((e, i) => {
      const w = `${where}.matchExpressions[${i}]`;
      if (!isObject(e)) throw new Error(`${w}: not an object`);
      for (const k of Object.keys(e)) if (!['key', 'operator', 'values'].includes(k)) throw new Error(`${w}: unknown field "${k}"`);
      const kp = labelKeyProblem(e.key);
      if (kp) throw new Error(`${w}.key: ${kp}`);
      const op = e.operator;
      if (op !== 'In' && op !== 'NotIn' && op !== 'Exists' && op !== 'DoesNotExist')
        throw new Error(`${w}.operator: ${JSON.stringify(op)} is not one of In, NotIn, Exists, DoesNotExist`);
      const values = e.values ?? [];
      if (!Array.isArray(values)) throw new Error(`${w}.values: not a list`);
      for (const val of values) {
        const p = labelValueProblem(val);
        if (p) throw new Error(`${w}.values: ${p}`);
      }
      if ((op === 'In' || op === 'NotIn') && values.length === 0) throw new Error(`${w}: ${op} needs at least one value`);
      if ((op === 'Exists' || op === 'DoesNotExist') && values.length > 0) throw new Error(`${w}: ${op} takes no values`);
      return Object.freeze({ key: e.key as string, operator: op, values: Object.freeze([...values] as string[]) });
    });
    Object.freeze(out.matchExpressions);
  }
  return Object.freeze(out);
}

/**
 * Parses enablement selectors given as JSON (the shape of Istio's Helm value
 * `ambient.enablementSelectors`: a list of {podSelector, namespaceSelector}); throws an
 * Error saying what is wrong and where. A rule with neither selector would enroll every
 * pod of the cluster (the mesh's own included) and is refused.
 */
export function parseEnablementSelectors(text: string): readonly EnablementSelector[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new Error(`not JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(raw)) throw new Error('not a list of {podSelector, namespaceSelector}');
  if (raw.length === 0) throw new Error('an empty list enrolls nothing: give at least one rule');
  return Object.freeze(
    raw.map((r, i) => {
      const w = `[${i}]`;
      if (!isObject(r)) throw new Error(`${w}: not an object`);
      for (const k of Object.keys(r)) if (k !== 'podSelector' && k !== 'namespaceSelector') throw new Error(`${w}: unknown field "${k}"`);
      if (r.podSelector === undefined && r.namespaceSelector === undefined)
        throw new Error(`${w}: neither podSelector nor namespaceSelector: it would enroll every pod`);
      const out: EnablementSelector = {};
      if (r.podSelector !== undefined) out.podSelector = labelSelector(r.podSelector, `${w}.podSelector`);
      if (r.namespaceSelector !== undefined) out.namespaceSelector = labelSelector(r.namespaceSelector, `${w}.namespaceSelector`);
      return Object.freeze(out);
    }),
  );
}

export interface EnrollmentContext {
  nodeName: string;
  /** The node's and ztunnel's own addresses. */
  reserved: ReadonlySet<string>;
  /** The enablement rules; default DEFAULT_ENABLEMENT_SELECTORS. */
  selectors?: readonly EnablementSelector[];
}

/** Whether any rule selects the pod (the namespace unknown: only rules without a namespaceSelector can). */
export function selected(pod: PodView, ns: NamespaceView | undefined, selectors: readonly EnablementSelector[]): boolean {
  return selectors.some(
    (s) =>
      selectorMatches(s.podSelector, pod.labels) &&
      (s.namespaceSelector === undefined || (ns !== undefined && selectorMatches(s.namespaceSelector, ns.labels))),
  );
}

/**
 * Whether the namespace's labels alone rule out every pod of it: each rule has a
 * namespaceSelector and none matches. A rule without one (Istio's default: the pod label
 * in any namespace) leaves every namespace open, so a pod's own labels must be read. The
 * CNI gate passes a pod at once only when this holds (docs/cni.md, "What ADD does").
 */
export function namespaceRulesOut(ns: NamespaceView, selectors: readonly EnablementSelector[]): boolean {
  return selectors.every((s) => s.namespaceSelector !== undefined && !selectorMatches(s.namespaceSelector, ns.labels));
}

/**
 * Whether some rule's namespaceSelector matches the namespace: its pods are enrolled for
 * where they are (unless their own labels say otherwise). The namespaces the CNI plugin
 * holds pods of when the agent cannot be asked (docs/cni.md).
 */
export function namespaceSelected(ns: NamespaceView, selectors: readonly EnablementSelector[]): boolean {
  return selectors.some((s) => s.namespaceSelector !== undefined && selectorMatches(s.namespaceSelector, ns.labels));
}

/**
 * Precedence: eligibility (this node), then the pod's opt-out label (whatever the rules
 * say), then the rules, then what makes a selected pod impossible to capture.
 */
export function enrollment(pod: PodView, ns: NamespaceView | undefined, ctx: EnrollmentContext): Verdict {
  if (pod.nodeName !== ctx.nodeName) return { enrolled: false, reason: 'pod of another node' };
  if (pod.labels[DATAPLANE_LABEL] === 'none') return { enrolled: false, reason: 'pod opted out' };
  if (!selected(pod, ns, ctx.selectors ?? DEFAULT_ENABLEMENT_SELECTORS))
    return { enrolled: false, reason: ns ? 'no enablement selector matches' : 'namespace unknown' };
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
