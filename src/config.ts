/**
 * Configuration of `run`, parsed and validated once at start into a frozen object. Every
 * flag has an environment equivalent (for the DaemonSet); a flag wins over its variable.
 * A bad value is a ConfigError: one clear line and exit code 2.
 */
import { isIP } from 'node:net';
import {
  hookConflict,
  NON_TCP_POLICIES,
  REQUESTED_HOOKS,
  type Delivery,
  type NonTcpPolicy,
  type RequestedHook,
  type RequestedMode,
  type RequestedTunnel,
  type Variant,
} from './core/modes.js';
import { LEVELS, type Level } from './log.js';
import { DEFAULT_ENABLEMENT_SELECTORS, parseEnablementSelectors, parseSelector, type EnablementSelector } from './core/enrollment.js';
import { ConfigError, HOST_PROC_FLAG, parseFlags, PIN_ROOT_FLAG, resolveValues, usageOf, type FlagSpec } from './lib/flags.js';
import { repoPath } from './lib/repo-path.js';
import { DEFAULT_ZDS_SOCKET } from './zds/paths.js';

// Commands import these from here as well as from lib/flags.ts.
export { ConfigError, parseFlags, usageOf };

export type Mode = RequestedMode;
export type VariantChoice = 'auto' | Variant;

/** Where membership comes from: a static list, or the Kubernetes API. */
export type MembershipSource =
  | { readonly kind: 'static'; readonly enroll: readonly string[] }
  | { readonly kind: 'kubernetes'; readonly kubeconfig: string /* '' = in-cluster */ };

export interface RunConfig {
  readonly nodeName: string;
  readonly mode: Mode;
  readonly pinRoot: string;
  readonly objectPath: string;
  /** The XDP hook's object (--hook xdp): its programs share objectPath's pinned maps. */
  readonly xdpObjectPath: string;
  readonly inpodObjectPath: string;
  /** ztunnel's IP when given: overrides discovery (required with static membership). */
  readonly ztunnelIp: string | null;
  readonly membership: MembershipSource;
  readonly ztunnelNamespace: string;
  /** Which pods are enrolled (Kubernetes membership): Istio's rules unless given. */
  readonly enablementSelectors: readonly EnablementSelector[];
  readonly ztunnelSelector: Readonly<Record<string, string>>;
  /** The DaemonSet that must control the ztunnel pod. */
  readonly ztunnelDaemonSet: string;
  /** The service account the ztunnel pod must run as. */
  readonly ztunnelServiceAccount: string;
  readonly resyncSeconds: number;
  readonly maxDeleteShare: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly watchStallSeconds: number;
  /** host:port for /healthz, /readyz and /metrics, or '' for none. */
  readonly healthAddress: string;
  /** host:port of an extra listener serving /metrics only (a scrape address), or '' for none. */
  readonly metricsAddress: string;
  readonly variant: VariantChoice;
  /** The pod-side outbound hook (node topology, ebpf mode): tc, xdp, or auto (src/core/modes.ts selectHook). */
  readonly hook: RequestedHook;
  readonly delivery: 'auto' | Delivery;
  readonly tunnel: RequestedTunnel;
  readonly dnsCapture: boolean;
  /** UDP but captured DNS, and ICMP but errors: pass uncaptured or drop. */
  readonly nonTcp: NonTcpPolicy;
  /**
   * DNS servers given by flags (--dns-servers, --node-local-dns); with Kubernetes
   * membership the DNS Service's addresses are added to them.
   */
  readonly dnsServers: readonly string[];
  /** The DNS Service to read (Kubernetes membership only); null: none. */
  readonly dnsService: { namespace: string; name: string } | null;
  readonly logLevel: Level;
  /** The chained CNI plugin's side (docs/cni.md); socket '' = no CNI gate. */
  readonly cni: CniConfig;
  /**
   * Which ztunnel the agent serves (docs/zds.md): `node`, ztunnel in its own netns (Istio
   * 1.18-1.22, the host-veth capture); `inpod`, ztunnel >= 1.23 opening its listeners in
   * each pod's netns, told the pods over ZDS at `zdsSocket`.
   */
  readonly ztunnelMode: ZtunnelMode;
  /** The ZDS socket the agent listens on (inpod mode). */
  readonly zdsSocket: string;
  /** Where the host's /proc is (inpod mode: the pods' netns of existing pods are found there). */
  readonly hostProc: string;
}

export const ZTUNNEL_MODES = ['node', 'inpod'] as const;
export type ZtunnelMode = (typeof ZTUNNEL_MODES)[number];

export interface CniConfig {
  /** Unix socket the plugin asks; '' when the gate is off. */
  readonly socket: string;
  /** How long an ADD waits for its pod to be programmed before failing. */
  readonly addTimeoutMs: number;
  /** Host folder of the namespace list the plugin reads and the saved CNI config. */
  readonly stateDir: string;
  /** Install the plugin and edit the CNI config list once the namespaces are known. */
  readonly install: boolean;
  readonly binDir: string;
  readonly confDir: string;
  /** The plugin binary to install. */
  readonly plugin: string;
}

/** --ztunnel-mode and --zds-socket: declared once for run and status. */
export const ZTUNNEL_MODE_FLAGS: Record<'ztunnel-mode' | 'zds-socket', FlagSpec> = {
  'ztunnel-mode': {
    env: 'ZTUNNEL_MODE',
    help: 'the ztunnel served: inpod (ztunnel >= 1.23, pods sent over ZDS) | node (ztunnel 1.18-1.22 in its own netns)',
    default: 'inpod',
  },
  'zds-socket': { env: 'ZDS_SOCKET', help: 'inpod mode: the ZDS socket the agent listens on for ztunnel', default: DEFAULT_ZDS_SOCKET },
};

import { DEFAULT_INPOD_OBJECT, DEFAULT_OBJECT, DEFAULT_XDP_OBJECT } from './lib/repo-path.js';
export { DEFAULT_INPOD_OBJECT, DEFAULT_OBJECT, DEFAULT_XDP_OBJECT };
/** The CNI plugin `make` builds (tools/cni/). */
export const DEFAULT_CNI_PLUGIN = repoPath('build/ambient-redirect-cni', import.meta.url);

export const RUN_FLAGS: Record<string, FlagSpec> = {
  'node-name': { env: 'NODE_NAME', help: 'this node’s name', default: '' },
  mode: { env: 'REDIRECT_MODE', help: 'capture mode: ebpf | iptables | auto (probe the kernel)', default: 'auto' },
  ...PIN_ROOT_FLAG,
  object: { env: 'BPF_OBJECT', help: 'compiled BPF object (node mode)', default: DEFAULT_OBJECT },
  'xdp-object': { env: 'BPF_XDP_OBJECT', help: 'compiled BPF object of the XDP hook (node mode, --hook xdp)', default: DEFAULT_XDP_OBJECT },
  'inpod-object': { env: 'BPF_INPOD_OBJECT', help: 'compiled BPF object of the in-pod capture (inpod mode)', default: DEFAULT_INPOD_OBJECT },
  kubeconfig: { env: 'KUBECONFIG', help: 'kubeconfig file (default: in-cluster service account when $KUBERNETES_SERVICE_HOST is set)' },
  'ztunnel-namespace': { env: 'ZTUNNEL_NAMESPACE', help: 'namespace of the ztunnel pods', default: 'istio-system' },
  'ztunnel-selector': { env: 'ZTUNNEL_SELECTOR', help: 'labels of the ztunnel pods (k=v,...)', default: 'app=ztunnel' },
  'ztunnel-daemonset': { env: 'ZTUNNEL_DAEMONSET', help: 'the DaemonSet that must control a ztunnel pod (ownerReferences)', default: 'ztunnel' },
  'ztunnel-service-account': { env: 'ZTUNNEL_SERVICE_ACCOUNT', help: 'the service account a ztunnel pod must run as', default: 'ztunnel' },
  'ztunnel-ip': { env: 'ZTUNNEL_IP', help: 'ztunnel’s pod IP: overrides discovery (required with --enroll)' },
  'enablement-selectors': {
    env: 'ENABLEMENT_SELECTORS',
    help: 'which pods are enrolled: JSON list of {podSelector, namespaceSelector} (default: Istio’s, pod label istio.io/dataplane-mode=ambient anywhere or the namespace label, docs/operations.md)',
  },
  enroll: { env: 'ENROLL_IPS', help: 'static membership instead of Kubernetes: comma-separated pod IPs' },
  'resync-interval': { env: 'RESYNC_INTERVAL', help: 'seconds between full reconcile passes (jittered; drift is repaired within ~2x)', default: '5' },
  'max-delete-share': { env: 'MAX_DELETE_SHARE', help: 'share of entries one pass may delete without a confirming list', default: '0.5' },
  'backoff-initial': { env: 'BACKOFF_INITIAL', help: 'seconds before the first retry of a failed watch', default: '0.8' },
  'backoff-max': { env: 'BACKOFF_MAX', help: 'cap in seconds of the retry backoff', default: '30' },
  'watch-stall-timeout': { env: 'WATCH_STALL_TIMEOUT', help: 'seconds of watch silence (no event, no bookmark) before a restart', default: '120' },
  'health-address': {
    env: 'HEALTH_ADDRESS',
    help: 'host:port serving /metrics, /healthz and /readyz (default: none; keep it on 127.0.0.1: /metrics names pods)',
  },
  'metrics-address': { env: 'METRICS_ADDRESS', help: 'host:port of a scrape address serving /metrics only (default: none)' },
  variant: { env: 'REDIRECT_VARIANT', help: 'ebpf mode: auto | redirect | redirect_peer (auto: probe the kernel)', default: 'auto' },
  hook: {
    env: 'REDIRECT_HOOK',
    help: 'node mode, ebpf: the hook of the pods’ outbound program: tc | xdp | auto (auto: tc, which the TC/XDP benchmark found faster or even on every workload; docs/datapath.md)',
    default: 'auto',
  },
  delivery: { env: 'REDIRECT_DELIVERY', help: 'ebpf mode, ztunnel side: auto | sk_assign | tproxy (auto: probe the kernel)', default: 'auto' },
  tunnel: { env: 'REDIRECT_TUNNEL', help: 'iptables mode: auto | geneve | vxlan (auto: Geneve where the kernel has it)', default: 'auto' },
  'dns-capture': { env: 'DNS_CAPTURE', help: 'capture pods’ DNS (UDP and TCP 53) to ztunnel’s 15053: true | false', default: 'false' },
  'non-tcp': {
    env: 'NON_TCP',
    help: 'enrolled pods’ UDP (but captured DNS) and ICMP (but errors), which ztunnel does not proxy: pass (uncaptured, as Istio) | drop',
    default: 'pass',
  },
  'dns-service': {
    env: 'DNS_SERVICE',
    help: 'namespace/name of the cluster DNS Service whose addresses UDP 53 may reach uncaptured (none: no Service)',
    default: 'kube-system/kube-dns',
  },
  'dns-servers': { env: 'DNS_SERVERS', help: 'more DNS server addresses, comma-separated (with --enroll, the only ones)' },
  'node-local-dns': { env: 'NODE_LOCAL_DNS', help: 'node-local DNS cache addresses, comma-separated (e.g. 169.254.20.10)' },
  'log-level': { env: 'LOG_LEVEL', help: 'debug | info | warn | error', default: 'info' },
  'cni-socket': { env: 'CNI_SOCKET', help: 'Unix socket the chained CNI plugin asks (default: none, no CNI gate; Kubernetes membership only)' },
  'cni-add-timeout': { env: 'CNI_ADD_TIMEOUT', help: 'seconds a CNI ADD waits for its pod to be programmed', default: '8' },
  'cni-state-dir': {
    env: 'CNI_STATE_DIR',
    help: 'host folder for the ambient namespace list the plugin reads and the saved CNI config',
    default: '/var/lib/ambient-redirect',
  },
  'cni-install': { env: 'CNI_INSTALL', help: 'install the plugin and add it to the CNI config list: true | false', default: 'false' },
  'cni-bin-dir': { env: 'CNI_BIN_DIR', help: 'where the container runtime finds CNI plugins', default: '/opt/cni/bin' },
  'cni-conf-dir': { env: 'CNI_CONF_DIR', help: 'the node’s CNI configuration folder (first *.conflist)', default: '/etc/cni/net.d' },
  'cni-plugin': { env: 'CNI_PLUGIN', help: 'the plugin binary to install', default: DEFAULT_CNI_PLUGIN },
  ...ZTUNNEL_MODE_FLAGS,
  ...HOST_PROC_FLAG,
};

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new ConfigError(`--${name}: "${value}" is not one of ${allowed.join(', ')}`);
  return value as T;
}

function ipList(name: string, value: string): string[] {
  const ips = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const ip of ips) if (!isIP(ip)) throw new ConfigError(`--${name}: "${ip}" is not an IP address`);
  return ips;
}

/** Flag value, else environment value, else default. */

function numberIn(name: string, value: string, min: number, max: number, what: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < min || n > max) throw new ConfigError(`--${name}: "${value}" is not ${what} in ${min}..${max}`);
  return n;
}

function hostPort(name: string, value: string): string {
  const m = /^(.*):(\d{1,5})$/.exec(value);
  const host = m?.[1]?.replace(/^\[(.*)\]$/, '$1') ?? '';
  if (!m || Number(m[2]) > 65535 || (host !== '' && !isIP(host))) throw new ConfigError(`--${name}: "${value}" is not IP:PORT (or :PORT)`);
  return value;
}

/** A Kubernetes object name (DNS subdomain: lower case, digits, '-' and '.', at most 253). */
function objectName(name: string, value: string): string {
  if (value.length > 253 || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(value)) throw new ConfigError(`--${name}: "${value}" is not a Kubernetes object name`);
  return value;
}

export function parseRunConfig(argv: readonly string[], env: NodeJS.ProcessEnv): RunConfig {
  const { values } = parseFlags(argv, RUN_FLAGS);
  const v = resolveValues(values, env, RUN_FLAGS);
  const ztunnelIp = v['ztunnel-ip'] ?? null;
  if (ztunnelIp !== null && !isIP(ztunnelIp)) throw new ConfigError(`--ztunnel-ip: "${ztunnelIp}" is not an IP address`);
  // --enroll given at all (even empty: nobody enrolled) means static membership.
  const staticGiven = typeof values.enroll === 'string' || env.ENROLL_IPS !== undefined;
  const enroll = Object.freeze(ipList('enroll', v.enroll ?? env.ENROLL_IPS ?? ''));
  let membership: MembershipSource;
  const ztunnelMode = oneOf('ztunnel-mode', v['ztunnel-mode']!, ZTUNNEL_MODES);
  if (staticGiven) {
    if (!ztunnelIp) throw new ConfigError('--ztunnel-ip (or $ZTUNNEL_IP) is required with --enroll');
    membership = { kind: 'static', enroll };
  } else if (v.kubeconfig || env.KUBERNETES_SERVICE_HOST) {
    membership = { kind: 'kubernetes', kubeconfig: v.kubeconfig ?? '' };
  } else {
    throw new ConfigError('no membership source: give --kubeconfig (or $KUBECONFIG), run in-cluster ($KUBERNETES_SERVICE_HOST), or --enroll');
  }
  const nodeName = v['node-name'] ?? '';
  if (membership.kind === 'kubernetes' && !nodeName) throw new ConfigError('--node-name (or $NODE_NAME) is required with Kubernetes membership');
  let ztunnelSelector: Record<string, string>;
  try {
    ztunnelSelector = parseSelector(v['ztunnel-selector']!);
  } catch (err) {
    throw new ConfigError(`--ztunnel-selector: ${(err as Error).message}`);
  }
  let enablementSelectors = DEFAULT_ENABLEMENT_SELECTORS;
  if (v['enablement-selectors'] !== undefined && v['enablement-selectors'].trim() !== '') {
    try {
      enablementSelectors = parseEnablementSelectors(v['enablement-selectors']);
    } catch (err) {
      throw new ConfigError(`--enablement-selectors: ${(err as Error).message}`);
    }
  }
  const backoffInitial = numberIn('backoff-initial', v['backoff-initial']!, 0.01, 60, 'a number of seconds');
  const backoffMax = numberIn('backoff-max', v['backoff-max']!, 0.1, 600, 'a number of seconds');
  if (backoffMax < backoffInitial) throw new ConfigError(`--backoff-max: ${backoffMax} is below --backoff-initial ${backoffInitial}`);
  const mode = oneOf('mode', v.mode!, ['ebpf', 'iptables', 'auto'] as const);
  const cni = cniConfig(v, membership);
  const hook = oneOf('hook', v.hook!, REQUESTED_HOOKS);
  const conflict = hookConflict(hook, { ztunnelMode, mode });
  if (conflict) throw new ConfigError(conflict);
  if (ztunnelMode === 'inpod' && membership.kind === 'static')
    throw new ConfigError('--enroll serves the node-level ztunnel only (--ztunnel-mode node): inpod mode sends ztunnel pods, which need Kubernetes membership');
  return Object.freeze({
    nodeName,
    mode,
    pinRoot: v['pin-root']!,
    objectPath: v.object!,
    xdpObjectPath: v['xdp-object']!,
    inpodObjectPath: v['inpod-object']!,
    ztunnelIp,
    membership: Object.freeze(membership),
    ztunnelNamespace: v['ztunnel-namespace']!,
    ztunnelSelector: Object.freeze(ztunnelSelector),
    enablementSelectors,
    ztunnelDaemonSet: objectName('ztunnel-daemonset', v['ztunnel-daemonset']!),
    ztunnelServiceAccount: objectName('ztunnel-service-account', v['ztunnel-service-account']!),
    resyncSeconds: numberIn('resync-interval', v['resync-interval']!, 1, 3600, 'a number of seconds'),
    maxDeleteShare: numberIn('max-delete-share', v['max-delete-share']!, 0, 1, 'a share'),
    backoffInitialMs: backoffInitial * 1000,
    backoffMaxMs: backoffMax * 1000,
    watchStallSeconds: numberIn('watch-stall-timeout', v['watch-stall-timeout']!, 1, 3600, 'a number of seconds'),
    healthAddress: v['health-address'] ? hostPort('health-address', v['health-address']) : '',
    metricsAddress: v['metrics-address'] ? hostPort('metrics-address', v['metrics-address']) : '',
    variant: oneOf('variant', v.variant!, ['auto', 'redirect', 'redirect_peer'] as const),
    hook,
    delivery: oneOf('delivery', v.delivery!, ['auto', 'sk_assign', 'tproxy'] as const),
    tunnel: oneOf('tunnel', v.tunnel!, ['auto', 'geneve', 'vxlan'] as const),
    dnsCapture: oneOf('dns-capture', v['dns-capture']!, ['true', 'false'] as const) === 'true',
    nonTcp: oneOf('non-tcp', v['non-tcp']!, NON_TCP_POLICIES),
    dnsServers: Object.freeze([...new Set([...ipList('dns-servers', v['dns-servers'] ?? ''), ...ipList('node-local-dns', v['node-local-dns'] ?? '')])]),
    dnsService: dnsService(v['dns-service']!, membership),
    logLevel: oneOf('log-level', v['log-level']!, LEVELS),
    cni,
    ztunnelMode,
    zdsSocket: absolute('zds-socket', v['zds-socket']!),
    hostProc: absolute('host-proc', v['host-proc']!),
  });
}

function absolute(name: string, value: string): string {
  if (!value.startsWith('/')) throw new ConfigError(`--${name}: "${value}" is not an absolute path`);
  return value;
}

function dnsService(text: string, membership: MembershipSource): { namespace: string; name: string } | null {
  if (text === 'none' || membership.kind !== 'kubernetes') return null;
  const parts = text.split('/');
  const label = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
  if (parts.length !== 2 || !label.test(parts[0]!) || !label.test(parts[1]!)) throw new ConfigError(`--dns-service: "${text}" is not namespace/name (or none)`);
  return Object.freeze({ namespace: parts[0]!, name: parts[1]! });
}

function cniConfig(v: Record<string, string | undefined>, membership: MembershipSource): CniConfig {
  const socket = v['cni-socket'] ?? '';
  if (socket !== '' && !socket.startsWith('/')) throw new ConfigError(`--cni-socket: "${socket}" is not an absolute path`);
  if (socket !== '' && membership.kind !== 'kubernetes') throw new ConfigError('--cni-socket needs Kubernetes membership (the plugin names pods, not IPs)');
  for (const name of ['cni-state-dir', 'cni-bin-dir', 'cni-conf-dir'] as const) {
    if (!v[name]!.startsWith('/')) throw new ConfigError(`--${name}: "${v[name]}" is not an absolute path`);
  }
  const install = oneOf('cni-install', v['cni-install']!, ['true', 'false'] as const) === 'true';
  if (install && socket === '') throw new ConfigError('--cni-install needs --cni-socket');
  return Object.freeze({
    socket,
    addTimeoutMs: numberIn('cni-add-timeout', v['cni-add-timeout']!, 0.1, 600, 'a number of seconds') * 1000,
    stateDir: v['cni-state-dir']!,
    install,
    binDir: v['cni-bin-dir']!,
    confDir: v['cni-conf-dir']!,
    plugin: v['cni-plugin']!,
  });
}
