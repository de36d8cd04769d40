/**
 * The agent's Prometheus metrics. Values the agent pushes (passes, mode) come through
 * methods; values that live elsewhere (kernel maps, watch statistics) are pulled from
 * sources at scrape time, so a scrape always shows the kernel's current state.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PodCounters } from '../bpf/codec.js';
import type { Finding, FindingKind } from '../core/ordering.js';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { POD_COUNTER_KEYS } from '../bpf/codec.js';
import { type KernelSample, type MapUsage, type PodCounterSample, type PodSeries, podSeriesOf } from './pinned.js';
import type { RequestedMode, SelectedMode } from '../core/modes.js';

/** The ZDS server's view at scrape time (inpod mode; src/zds/server.ts). */
export interface ZdsSample {
  connections: readonly { phase: string; podsSent: number }[];
  counters: {
    connectionsAccepted: number;
    connectionsRefused: number;
    requests: Record<string, number>;
    acksOk: number;
    ackErrors: number;
    ackTimeouts: number;
    helloTimeouts: number;
    malformed: number;
  };
}

export const PREFIX = 'ambient_redirect_';

/** Read at scrape time; each may be absent (iptables mode has no maps, static membership no watches). */
export interface MetricSources {
  /**
   * The kernel's maps, read once per scrape and possibly across turns of the loop
   * (readScrape in src/metrics/pinned.ts); when given, mapUsage and podCounters are not asked.
   */
  kernel?: (opts: { maxSeries: number }) => Promise<KernelSample>;
  mapUsage?: () => MapUsage[];
  podCounters?: () => PodCounterSample[];
  /** Pod IP → its namespace and name, when the membership knows them. */
  podName?: (ip: string) => { namespace: string; pod: string } | null;
  /** Restarts of each watch (Reflector.stats.restarts by watch name). */
  watchRestarts?: () => Record<string, number>;
  /** Pod objects the API sent that failed to parse (KubeMembership.stats.rejected). */
  rejectedPods?: () => number;
}

/** The parts of a pass report the metrics use (controller's PassReport fits). */
export interface PassSummary {
  enrolled: number;
  programmed: number;
  upserted: number;
  attached: number;
  /** The pass's ordering findings (absent: the mode has none to check). */
  findings?: readonly Pick<Finding, 'where' | 'direction' | 'kind'>[];
}

/** Every hook and kind the ordering gauge reports, 0 included, so alerts see the series. */
const ORDER_HOOKS = ['pod-ingress', 'pod-egress', 'ztunnel-ingress'] as const;
const ORDER_KINDS: readonly FindingKind[] = ['tcx', 'tc-lower-priority', 'tc-same-priority', 'missing', 'bypass', 'xdp'];

const VERDICTS = [
  ['redirected', 'redirectedPackets', 'redirectedBytes'],
  ['dropped', 'droppedPackets', 'droppedBytes'],
  ['passed', 'passedPackets', 'passedBytes'],
] as const satisfies readonly (readonly [string, keyof PodCounters, keyof PodCounters])[];

/**
 * Pod addresses with series of their own; the rest are summed under pod_ip="other". A node
 * runs a few hundred pods at most: the cap only bounds a scrape of an overfull map (65,536
 * entries would be 393,216 series, tens of megabytes of text).
 */
export const MAX_POD_SERIES = 1024;

/** prom-client's escaping of a label value (its registry.js), for the lines written here. */
function escapeLabel(v: string): string {
  return /[\\\n"]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v;
}

/** prom-client's text for a sample value (its util.js getValueAsString). */
function valueText(v: number): string {
  if (Number.isNaN(v)) return 'Nan';
  if (!Number.isFinite(v)) return v < 0 ? '-Inf' : '+Inf';
  return `${v}`;
}

/** Pods formatted between two turns of the loop. */
const PODS_PER_TURN = 128;

/**
 * The sample lines of one per-pod family (`index` 0: packets, 1: bytes), written as
 * prom-client writes a counter's (labels in the order pod_ip, namespace, pod, verdict), in
 * pieces of PODS_PER_TURN pods, each joined in its own turn of the loop and each starting
 * with its newline. prom-client's own formatting of these series (an object, four escapes
 * and a join per series) took tens of milliseconds; a join of a whole family, or of the
 * whole text, copies hundreds of kilobytes in one turn (milliseconds on a busy machine).
 */
export async function podLines(name: string, series: PodSeries, index: 0 | 1, podName?: MetricSources['podName']): Promise<string[]> {
  const pieces: string[] = [];
  const at = VERDICTS.map((v) => POD_COUNTER_KEYS.indexOf(v[index + 1] as keyof PodCounters));
  for (let from = 0; from < series.ips.length; from += PODS_PER_TURN) {
    if (from > 0) await nextTurn();
    // A leading "" so that the joined piece starts with its newline (flat, not a concatenation).
    const lines: string[] = [''];
    for (let i = from; i < Math.min(series.ips.length, from + PODS_PER_TURN); i++) {
      const ip = series.ips[i]!;
      const n = podName?.(ip) ?? null;
      const labels = `${name}{pod_ip="${escapeLabel(ip)}",namespace="${escapeLabel(n?.namespace ?? '')}",pod="${escapeLabel(n?.pod ?? '')}",verdict="`;
      VERDICTS.forEach((v, k) => lines.push(`${labels}${v[0]}"} ${valueText(series.values[6 * i + at[k]!]!)}`));
    }
    pieces.push(lines.join('\n'));
  }
  if (series.other)
    pieces.push(
      ['', ...VERDICTS.map((v, k) => `${name}{pod_ip="other",namespace="",pod="",verdict="${v[0]}"} ${valueText(series.other![at[k]!]!)}`)].join('\n'),
    );
  return pieces;
}

/** Attachments that re-hooked a veth the maps already knew (drift repaired), not new pods. */
export function reattachments(p: Pick<PassSummary, 'attached' | 'upserted'>): number {
  return Math.max(0, p.attached - p.upserted);
}

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly enrolled: Gauge;
  private readonly programmed: Gauge;
  private readonly reconcile: Histogram;
  private readonly eventToProgrammed: Histogram;
  private readonly reattached: Counter;
  private readonly mode: Gauge;
  private readonly foreign: Gauge;
  private readonly ztunnelMode: Gauge;
  private readonly zdsSnapshot: Histogram;
  private zdsSource: (() => ZdsSample) | null = null;
  /** The metrics after the per-pod families (the exposition is registry, per-pod families, after). */
  private readonly after = new Registry();
  private readonly perPod: { name: string; help: string; index: 0 | 1 }[];
  /** The kernel sample of the scrape under way, shared by its collectors. */
  private pending: Promise<KernelSample> | null = null;

  constructor(
    private readonly sources: MetricSources = {},
    opts: { defaultMetrics?: boolean } = {},
  ) {
    let registers = [this.registry];
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    this.enrolled = new Gauge({ name: `${PREFIX}enrolled_pods`, help: 'Pods of this node the membership enrolls', registers });
    this.programmed = new Gauge({ name: `${PREFIX}programmed_pods`, help: 'Enrolled pods the data path holds after the last pass', registers });
    this.reconcile = new Histogram({
      name: `${PREFIX}reconcile_duration_seconds`,
      help: 'Duration of reconcile passes, by outcome',
      labelNames: ['outcome'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.eventToProgrammed = new Histogram({
      name: `${PREFIX}event_to_programmed_seconds`,
      help: 'From the API event that enrolls or unenrolls a pod to the pass that programs it',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.reattached = new Counter({
      name: `${PREFIX}reattachments_total`,
      help: 'Capture programs attached again to a known pod veth (drift repaired)',
      registers,
    });
    this.mode = new Gauge({
      name: `${PREFIX}capture_mode`,
      help: 'The capture mode in use (1), with the one requested and whether it is a fallback',
      labelNames: ['mode', 'requested', 'fallback'],
      registers,
    });

    this.foreign = new Gauge({
      name: `${PREFIX}foreign_programs`,
      help: 'What the last pass found on the hooks we use: programs running before ours (tcx, tc at a lower or the same priority), ours missing, devices whose traffic skips the hook; any non-zero makes /readyz fail',
      labelNames: ['hook', 'kind'],
      registers,
    });

    // One read of the kernel per scrape serves the three map gauges and both per-pod families.
    const usage = async (): Promise<MapUsage[]> => (await this.sample()).usage;
    new Gauge({
      name: `${PREFIX}map_entries`,
      help: 'Entries in each pinned BPF map',
      labelNames: ['map'],
      registers,
      async collect() {
        const u = await usage();
        this.reset();
        for (const x of u) this.set({ map: x.map }, x.entries);
      },
    });
    new Gauge({
      name: `${PREFIX}map_capacity`,
      help: 'max_entries of each pinned BPF map',
      labelNames: ['map'],
      registers,
      async collect() {
        const u = await usage();
        this.reset();
        for (const x of u) this.set({ map: x.map }, x.capacity);
      },
    });
    new Gauge({
      name: `${PREFIX}map_pressure_ratio`,
      help: 'Entries over capacity of each pinned BPF map (1 = full: new pods cannot be enrolled)',
      labelNames: ['map'],
      registers,
      async collect() {
        const u = await usage();
        this.reset();
        for (const x of u) this.set({ map: x.map }, x.capacity ? x.entries / x.capacity : 0);
      },
    });

    // The per-pod families are written here, not by prom-client (its formatting of a few
    // thousand series held the loop for tens of milliseconds): metrics() puts them between
    // the metrics registered above (`registry`) and those below (`after`), where they were
    // registered before, so the exposition is the same text.
    this.perPod = [
      {
        name: `${PREFIX}pod_packets_total`,
        help: 'Packets of each enrolled pod by verdict (redirected to ztunnel, dropped failing closed, passed), summed over CPUs',
        index: 0,
      },
      { name: `${PREFIX}pod_bytes_total`, help: 'Bytes of each enrolled pod by verdict, summed over CPUs', index: 1 },
    ];
    registers = [this.after];

    new Counter({
      name: `${PREFIX}watch_restarts_total`,
      help: 'Kubernetes watches restarted after a failure or a stall',
      labelNames: ['watch'],
      registers,
      collect() {
        this.reset();
        for (const [watch, n] of Object.entries(sources.watchRestarts?.() ?? {})) this.inc({ watch }, n);
      },
    });
    this.ztunnelMode = new Gauge({
      name: `${PREFIX}ztunnel_mode`,
      help: 'The ztunnel the agent serves (1 on the series of the mode): node (own netns) or inpod (ZDS)',
      labelNames: ['mode'],
      registers,
    });
    this.zdsSnapshot = new Histogram({
      name: `${PREFIX}zds_snapshot_duration_seconds`,
      help: 'inpod mode: from a ztunnel’s hello to its ack of snapshot_sent',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10],
      registers,
    });
    const zds = () => this.zdsSource?.() ?? null;
    new Gauge({
      name: `${PREFIX}zds_connections`,
      help: 'inpod mode: ztunnel connections open on the ZDS socket, by phase (hello, snapshot, ready)',
      labelNames: ['phase'],
      registers,
      collect() {
        this.reset();
        const z = zds();
        if (!z) return;
        for (const phase of ['hello', 'snapshot', 'ready']) this.set({ phase }, z.connections.filter((c) => c.phase === phase).length);
      },
    });
    // The ZDS counters: each a label's values from the server's counters, none outside inpod mode.
    const zdsCounter = (name: string, help: string, label: string, values: (z: ZdsSample) => Record<string, number>) =>
      new Counter({
        name: `${PREFIX}${name}`,
        help,
        labelNames: [label],
        registers,
        collect() {
          this.reset();
          const z = zds();
          if (!z) return;
          for (const [value, n] of Object.entries(values(z))) this.inc({ [label]: value }, n);
        },
      });
    zdsCounter('zds_connections_total', 'inpod mode: ZDS connections accepted, or refused (too many open)', 'outcome', (z) => ({
      accepted: z.counters.connectionsAccepted,
      refused: z.counters.connectionsRefused,
    }));
    zdsCounter('zds_requests_total', 'inpod mode: ZDS requests sent to ztunnel, by type (add, keep, del, snapshot_sent)', 'type', (z) => ({
      ...z.counters.requests,
    }));
    zdsCounter('zds_acks_total', 'inpod mode: ztunnel’s answers to our requests: ok, error (an ack with an error), timeout (none in 5 s)', 'outcome', (z) => ({
      ok: z.counters.acksOk,
      error: z.counters.ackErrors,
      timeout: z.counters.ackTimeouts,
    }));
    zdsCounter('zds_bad_peer_total', 'inpod mode: ZDS connections closed for bad input: malformed datagram, or no hello in time', 'reason', (z) => ({
      malformed: z.counters.malformed,
      'hello-timeout': z.counters.helloTimeouts,
    }));
    new Counter({
      name: `${PREFIX}rejected_pod_objects_total`,
      help: 'Pod objects from the API that could not be parsed and were ignored',
      registers,
      collect() {
        this.reset();
        const n = sources.rejectedPods?.();
        if (n !== undefined) this.inc(n);
      },
    });
  }

  /** After each successful pass. */
  observePass(p: PassSummary, seconds: number): void {
    this.enrolled.set(p.enrolled);
    this.programmed.set(p.programmed);
    this.reconcile.observe({ outcome: 'ok' }, seconds);
    const r = reattachments(p);
    if (r > 0) this.reattached.inc(r);
    if (p.findings) {
      for (const hook of ORDER_HOOKS) for (const kind of ORDER_KINDS) this.foreign.set({ hook, kind }, 0);
      for (const f of p.findings) this.foreign.inc({ hook: `${f.where}-${f.direction}`, kind: f.kind });
    }
  }

  /** After a failed pass. */
  observeFailedPass(seconds: number): void {
    this.reconcile.observe({ outcome: 'error' }, seconds);
  }

  /** One API event → programmed latency (instrumentMembership's observer). */
  observeEventToProgrammed(seconds: number): void {
    this.eventToProgrammed.observe(seconds);
  }

  setMode(mode: SelectedMode, requested: RequestedMode): void {
    this.mode.reset();
    this.mode.set({ mode, requested, fallback: String(requested === 'ebpf' && mode !== 'ebpf') }, 1);
  }

  setZtunnelMode(mode: 'node' | 'inpod'): void {
    this.ztunnelMode.reset();
    this.ztunnelMode.set({ mode }, 1);
  }

  /** inpod mode: where the ZDS series are read at scrape time. */
  setZdsSource(source: () => ZdsSample): void {
    this.zdsSource = source;
  }

  /** inpod mode: one snapshot acked (seconds from hello to snapshot_sent's ack). */
  observeZdsSnapshot(seconds: number): void {
    this.zdsSnapshot.observe(seconds);
  }

  /**
   * The kernel's maps for the scrape under way: read once (the collectors of a scrape all
   * ask in its first turn) and dropped a turn after the read ends, so the next scrape reads afresh.
   */
  private sample(): Promise<KernelSample> {
    if (this.pending) return this.pending;
    const s = this.sources;
    const p: Promise<KernelSample> = s.kernel
      ? s.kernel({ maxSeries: MAX_POD_SERIES })
      : Promise.resolve().then(() => ({ usage: s.mapUsage?.() ?? [], pods: podSeriesOf(s.podCounters?.() ?? [], MAX_POD_SERIES) }));
    this.pending = p;
    const drop = () =>
      setImmediate(() => {
        if (this.pending === p) this.pending = null;
      });
    p.then(drop, drop);
    return p;
  }

  /**
   * The exposition text (Prometheus format), as prom-client writes a registry's, in
   * pieces whose concatenation is the text: the HTTP server writes them one by one, and
   * nothing copies the whole text at once.
   */
  async exposition(): Promise<string[]> {
    const [head, tail, series] = await Promise.all([this.registry.metrics(), this.after.metrics(), this.sample().then((s) => s.pods)]);
    // prom-client joins its metrics with a blank line and ends the text with a newline.
    const out = [head];
    for (const [k, f] of this.perPod.entries()) {
      out.push(`${k === 0 ? '\n' : '\n\n'}# HELP ${f.name} ${f.help}\n# TYPE ${f.name} counter`);
      out.push(...(await podLines(f.name, series, f.index, this.sources.podName)));
    }
    out.push(`\n\n${tail}`);
    return out;
  }

  /** The exposition text in one string. */
  async metrics(): Promise<string> {
    return (await this.exposition()).join('');
  }
}
