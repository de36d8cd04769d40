/** Metrics and health (src/metrics): latency tracking, readiness, scrape-time sources, exposition, HTTP. */
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import type { Membership, MembershipView } from '../../src/controller/controller.js';
import {
  AgentMetrics,
  instrumentMembership,
  mapUsage,
  parseListenAddress,
  podCounters,
  ProgrammingLatency,
  Readiness,
  reattachments,
  serveMetrics,
  type MetricsServer,
  type PinnedMaps,
} from '../../src/metrics/index.js';
import { cachePerTurn, podSeriesOf, type PodCounterSample } from '../../src/metrics/pinned.js';
import { MAX_POD_SERIES } from '../../src/metrics/registry.js';

/** The value of one sample line of the exposition text, or undefined. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => got[k] === v) && Object.keys(got).length === Object.keys(labels).length) return Number(m[3]);
  }
  return undefined;
}

describe('ProgrammingLatency', () => {
  it('times a pod from the event that enrolls it to the pass that programs it', () => {
    const l = new ProgrammingLatency();
    l.changed(['10.0.0.1'], 1000);
    l.changed(['10.0.0.1'], 1040); // a later event for the same pod keeps the first start
    expect(l.programmed(new Set(), 1050)).toEqual([]); // a pass without it (no route yet)
    expect(l.programmed(new Set(['10.0.0.1']), 1100)).toEqual([100]);
    expect(l.waiting()).toBe(0);
  });

  it('times removals too, and drops a pod enrolled and gone before any pass', () => {
    const l = new ProgrammingLatency();
    l.changed(['a', 'b'], 0);
    expect(l.programmed(new Set(['a', 'b']), 10).sort()).toEqual([10, 10]);
    l.changed(['a'], 100); // b leaves
    l.changed(['a', 'c'], 110); // c comes
    l.changed(['a'], 120); // c goes before any pass: nothing to wait for
    expect(l.waiting()).toBe(1);
    expect(l.programmed(new Set(['a']), 150)).toEqual([50]);
    expect(l.waiting()).toBe(0);
  });

  it('instrumentMembership: feeds change notifications and the controller’s programmed() into the histogram', () => {
    let view: MembershipView = { synced: true, enrolled: [], ztunnelIp: null, listGeneration: 1 };
    const listeners: (() => void)[] = [];
    const programmedSeen: ReadonlySet<string>[] = [];
    const inner: Membership = {
      view: () => view,
      confirm: async () => {},
      programmed: (ips) => programmedSeen.push(ips),
      onChange: (cb) => listeners.push(cb),
    };
    let now = 0;
    const seen: number[] = [];
    const m = instrumentMembership(
      inner,
      (s) => seen.push(s),
      () => now,
    );
    let changes = 0;
    m.onChange(() => changes++);
    now = 5000;
    view = { ...view, enrolled: ['10.0.0.9'] };
    listeners.forEach((cb) => cb());
    now = 5250;
    m.programmed(new Set(['10.0.0.9']));
    expect(changes).toBe(1);
    expect(programmedSeen).toHaveLength(1); // the inner membership still gets the call
    expect(seen).toEqual([0.25]);
  });
});

describe('Readiness', () => {
  it('is ready only after the first sync, with the data path attached and ztunnel known', () => {
    const r = new Readiness();
    expect(r.state()).toEqual({ ready: false, missing: ['first full sync not programmed yet', 'data path not attached', 'ztunnel not known on this node'] });
    r.setDataPathAttached(true);
    r.setZtunnelKnown(true);
    expect(r.state().ready).toBe(false);
    r.markSynced();
    expect(r.state()).toEqual({ ready: true, missing: [] });
    r.setZtunnelKnown(false);
    expect(r.state()).toEqual({ ready: false, missing: ['ztunnel not known on this node'] });
  });
});

// --- scrape-time sources -----------------------------------------------------------------

const stride = Math.ceil(codec.POD_COUNTERS_SIZE / 8) * 8;
function perCpu(...cpus: Partial<codec.PodCounters>[]): Buffer {
  const buf = Buffer.alloc(stride * cpus.length);
  cpus.forEach((c, i) => codec.encodePodCounters({ ...codec.zeroCounters(), ...c }).copy(buf, i * stride));
  return buf;
}
const pod = (ip: string, ifindex: number, slot: number): [Buffer, Buffer] => [
  codec.encodeAddrKey(ip),
  codec.encodePodInfo({ ifindex, mac: '0a:58:0a:00:00:01', flags: codec.PodFlags.ENROLLED, slot }),
];

function fakeMaps(m: Partial<Record<'pods' | 'counters' | 'dns_servers' | 'host_flows' | 'host_flows4' | 'ztunnel', [Buffer, Buffer][]>>): PinnedMaps {
  return { entries: (name) => m[name] ?? null };
}

describe('pinned map sources', () => {
  const maps = fakeMaps({
    // Joined by slot, not by ifindex: slot 0 (what no slot names) is no pod's, slot 2 has no pod.
    pods: [pod('10.0.0.1', 12, 1), pod('10.0.0.2', 13, 3)],
    counters: [
      [codec.encodeU32Key(0), perCpu({ droppedPackets: 9n, droppedBytes: 900n })],
      [
        codec.encodeU32Key(1),
        perCpu({ redirectedPackets: 3n, redirectedBytes: 300n }, { redirectedPackets: 4n, redirectedBytes: 400n, droppedPackets: 1n, droppedBytes: 60n }),
      ],
      [codec.encodeU32Key(2), perCpu({ passedPackets: 5n })],
      [codec.encodeU32Key(3), perCpu({})],
    ],
    dns_servers: [[codec.encodeAddrKey('10.96.0.10'), codec.encodeDnsInfo()]],
  });

  it('sums each pod’s per-CPU counters by its veth’s slot; a pod with an unused slot reads zero', () => {
    const s = podCounters(maps);
    expect(s.map((x) => [x.ip, x.ifindex, x.slot])).toEqual([
      ['10.0.0.1', 12, 1],
      ['10.0.0.2', 13, 3],
    ]);
    expect(s[0]!.counters).toMatchObject({ redirectedPackets: 7n, redirectedBytes: 700n, droppedPackets: 1n, droppedBytes: 60n, passedPackets: 0n });
    expect(s[1]!.counters).toEqual(codec.zeroCounters());
  });

  it('map usage of the pinned maps; nothing when not pinned (iptables mode)', () => {
    expect(mapUsage(maps)).toEqual([
      { map: 'pods', entries: 2, capacity: 65536 },
      { map: 'counters', entries: 2, capacity: 65536 },
      { map: 'dns_servers', entries: 1, capacity: 64 },
    ]);
    expect(mapUsage(fakeMaps({}))).toEqual([]);
    expect(podCounters(fakeMaps({}))).toEqual([]);
  });
});

describe('AgentMetrics', () => {
  it('exposes what the agent pushed and what the sources hold at scrape time', async () => {
    let restarts = 1;
    const m = new AgentMetrics({
      mapUsage: () => [{ map: 'pods', entries: 32768, capacity: 65536 }],
      podCounters: () =>
        podCounters(
          fakeMaps({
            pods: [pod('10.0.0.1', 12, 1)],
            counters: [[codec.encodeU32Key(1), perCpu({ redirectedPackets: 5n, redirectedBytes: 500n, passedPackets: 2n })]],
          }),
        ),
      podName: (ip) => (ip === '10.0.0.1' ? { namespace: 'shop', pod: 'cart-1' } : null),
      watchRestarts: () => ({ pods: restarts, namespaces: 0 }),
      rejectedPods: () => 3,
    });
    m.setMode('iptables', 'ebpf');
    m.observePass({ enrolled: 4, programmed: 3, upserted: 1, attached: 3 }, 0.02);
    m.observeFailedPass(1.5);
    m.observeEventToProgrammed(0.3);
    let text = await m.metrics();
    const podLabels = { pod_ip: '10.0.0.1', namespace: 'shop', pod: 'cart-1' };
    expect(sample(text, 'ambient_redirect_enrolled_pods')).toBe(4);
    expect(sample(text, 'ambient_redirect_programmed_pods')).toBe(3);
    expect(sample(text, 'ambient_redirect_map_pressure_ratio', { map: 'pods' })).toBe(0.5);
    expect(sample(text, 'ambient_redirect_map_entries', { map: 'pods' })).toBe(32768);
    expect(sample(text, 'ambient_redirect_pod_packets_total', { ...podLabels, verdict: 'redirected' })).toBe(5);
    expect(sample(text, 'ambient_redirect_pod_packets_total', { ...podLabels, verdict: 'passed' })).toBe(2);
    expect(sample(text, 'ambient_redirect_pod_packets_total', { ...podLabels, verdict: 'dropped' })).toBe(0);
    expect(sample(text, 'ambient_redirect_pod_bytes_total', { ...podLabels, verdict: 'redirected' })).toBe(500);
    expect(sample(text, 'ambient_redirect_reattachments_total')).toBe(2);
    expect(sample(text, 'ambient_redirect_capture_mode', { mode: 'iptables', requested: 'ebpf', fallback: 'true' })).toBe(1);
    expect(sample(text, 'ambient_redirect_watch_restarts_total', { watch: 'pods' })).toBe(1);
    expect(sample(text, 'ambient_redirect_rejected_pod_objects_total')).toBe(3);
    expect(sample(text, 'ambient_redirect_reconcile_duration_seconds_count', { outcome: 'ok' })).toBe(1);
    expect(sample(text, 'ambient_redirect_reconcile_duration_seconds_count', { outcome: 'error' })).toBe(1);
    expect(sample(text, 'ambient_redirect_event_to_programmed_seconds_sum')).toBeCloseTo(0.3);

    // Scrape time: the sources are read again, the mode replaced.
    restarts = 4;
    m.setMode('ebpf', 'auto');
    text = await m.metrics();
    expect(sample(text, 'ambient_redirect_watch_restarts_total', { watch: 'pods' })).toBe(4);
    expect(sample(text, 'ambient_redirect_capture_mode', { mode: 'iptables', requested: 'ebpf', fallback: 'true' })).toBeUndefined();
    expect(sample(text, 'ambient_redirect_capture_mode', { mode: 'ebpf', requested: 'auto', fallback: 'false' })).toBe(1);
  });

  it('reads the pod counters once per scrape for both families, and again on the next scrape', async () => {
    let reads = 0;
    const counters = { ...codec.zeroCounters(), redirectedPackets: 3n, redirectedBytes: 300n };
    const m = new AgentMetrics({
      podCounters: () => {
        reads++;
        return [{ ip: '10.0.0.1', ifindex: 4, slot: 4, counters }];
      },
    });
    const first = await m.metrics();
    expect(reads).toBe(1);
    expect(sample(first, 'ambient_redirect_pod_packets_total', { pod_ip: '10.0.0.1', namespace: '', pod: '', verdict: 'redirected' })).toBe(3);
    expect(sample(first, 'ambient_redirect_pod_bytes_total', { pod_ip: '10.0.0.1', namespace: '', pod: '', verdict: 'redirected' })).toBe(300);
    await new Promise((r) => setImmediate(r));
    await m.metrics();
    expect(reads).toBe(2);
  });

  it(`caps per-pod series at ${MAX_POD_SERIES} addresses and sums the rest under pod_ip="other"`, async () => {
    const one = { ...codec.zeroCounters(), droppedPackets: 1n, passedBytes: 10n };
    const pods = Array.from({ length: MAX_POD_SERIES + 5 }, (_, i) => ({ ip: `10.1.${i >> 8}.${i & 255}`, ifindex: i, slot: i, counters: one }));
    const text = await new AgentMetrics({ podCounters: () => pods }).metrics();
    const series = text.split('\n').filter((l) => l.startsWith('ambient_redirect_pod_packets_total{'));
    expect(series).toHaveLength((MAX_POD_SERIES + 1) * 3);
    expect(sample(text, 'ambient_redirect_pod_packets_total', { pod_ip: 'other', namespace: '', pod: '', verdict: 'dropped' })).toBe(5);
    expect(sample(text, 'ambient_redirect_pod_bytes_total', { pod_ip: 'other', namespace: '', pod: '', verdict: 'passed' })).toBe(50);
    expect(sample(text, 'ambient_redirect_pod_packets_total', { pod_ip: '10.1.0.0', namespace: '', pod: '', verdict: 'dropped' })).toBe(1);
  });

  it('writes the per-pod families as prom-client wrote them: same text, same place, escapes and the "other" sum included', async () => {
    // Values past 2^53 (rounded as Number(bigint) rounds) and names that need escaping.
    const samples: PodCounterSample[] = Array.from({ length: MAX_POD_SERIES + 7 }, (_, i) => ({
      ip: i % 2 ? `fd00::${i.toString(16)}` : `10.2.${i >> 8}.${i & 255}`,
      ifindex: i,
      slot: i,
      counters: {
        redirectedPackets: BigInt(i),
        redirectedBytes: 2n ** 53n + BigInt(i) * 3n,
        droppedPackets: BigInt(i % 5),
        droppedBytes: 2n ** 62n + BigInt(i),
        passedPackets: 0n,
        passedBytes: BigInt(i) * 1000n,
      },
    }));
    const podName = (ip: string) =>
      ip.endsWith('.8') ? { namespace: 'we"ird\\ns', pod: 'line\nbreak' } : ip.startsWith('fd00') ? null : { namespace: 'shop', pod: `p-${ip}` };
    const text = await new AgentMetrics({ podCounters: () => samples, podName, mapUsage: () => [{ map: 'pods', entries: 3, capacity: 8 }] }).metrics();

    // The reference: prom-client formatting the series the way this registry handed them over before.
    const verdicts = [
      ['redirected', 'redirectedPackets', 'redirectedBytes'],
      ['dropped', 'droppedPackets', 'droppedBytes'],
      ['passed', 'passedPackets', 'passedBytes'],
    ] as const;
    const reference = async (name: string, help: string, index: 1 | 2) => {
      const values: { labels: Record<string, string>; value: number }[] = [];
      const other = [0n, 0n, 0n];
      samples.forEach((s, i) => {
        if (i >= MAX_POD_SERIES) return verdicts.forEach((v, k) => (other[k]! += s.counters[v[index]]));
        const n = podName(s.ip);
        for (const v of verdicts)
          values.push({ labels: { pod_ip: s.ip, namespace: n?.namespace ?? '', pod: n?.pod ?? '', verdict: v[0] }, value: Number(s.counters[v[index]]) });
      });
      verdicts.forEach((v, k) => values.push({ labels: { pod_ip: 'other', namespace: '', pod: '', verdict: v[0] }, value: Number(other[k]) }));
      const r = new Registry();
      r.registerMetric({
        name,
        help,
        type: 'counter',
        get: async () => ({ name, help, type: 'counter', aggregator: 'sum', values }),
        reset: () => {},
      } as never);
      return (await r.metrics()).trimEnd();
    };
    const block = (name: string) => {
      const from = text.indexOf(`# HELP ${name} `);
      const to = text.indexOf('\n\n', from);
      return text.slice(from, to < 0 ? undefined : to);
    };
    const packets = 'ambient_redirect_pod_packets_total';
    const bytes = 'ambient_redirect_pod_bytes_total';
    expect(block(packets)).toBe(
      await reference(packets, 'Packets of each enrolled pod by verdict (redirected to ztunnel, dropped failing closed, passed), summed over CPUs', 1),
    );
    expect(block(bytes)).toBe(await reference(bytes, 'Bytes of each enrolled pod by verdict, summed over CPUs', 2));
    // Where they were registered: after the map gauges, before the watch restarts; the text ends as prom-client's does.
    const order = [...text.matchAll(/^# HELP (\S+)/gm)].map((m) => m[1]);
    expect(order.slice(order.indexOf('ambient_redirect_map_pressure_ratio'), order.indexOf('ambient_redirect_map_pressure_ratio') + 4)).toEqual([
      'ambient_redirect_map_pressure_ratio',
      packets,
      bytes,
      'ambient_redirect_watch_restarts_total',
    ]);
    expect(text.endsWith('\n') && !text.endsWith('\n\n')).toBe(true);
    expect(text).not.toMatch(/\n\n\n/);
  });

  it('podSeriesOf keeps the first pods in order and sums the rest exactly before rounding', () => {
    const c = (v: bigint): codec.PodCounters => ({ ...codec.zeroCounters(), redirectedBytes: v });
    const s = podSeriesOf(
      [
        { ip: 'a', ifindex: 1, slot: 1, counters: c(1n) },
        { ip: 'b', ifindex: 2, slot: 2, counters: c(2n ** 53n) },
        { ip: 'c', ifindex: 3, slot: 3, counters: c(1n) },
        { ip: 'd', ifindex: 3, slot: 3, counters: c(1n) },
      ],
      2,
    );
    expect(s.ips).toEqual(['a', 'b']);
    expect([...s.values]).toEqual([0, 1, 0, 0, 0, 0, 0, 2 ** 53, 0, 0, 0, 0]);
    expect([...s.other!]).toEqual([0, 2, 0, 0, 0, 0]);
    expect(podSeriesOf([{ ip: 'a', ifindex: 1, slot: 1, counters: c(1n) }], 2).other).toBeNull();
  });

  it('a pinned-map reader reads each map once per turn of the loop', async () => {
    let walks = 0;
    const raw: PinnedMaps = {
      entries: () => {
        walks++;
        return [];
      },
    };
    const cached = cachePerTurn(raw);
    mapUsage(cached);
    mapUsage(cached);
    podCounters(cached);
    expect(walks).toBe(5); // pods, counters, dns_servers, host_flows, host_flows4: once each
    await new Promise((r) => setImmediate(r));
    mapUsage(cached);
    expect(walks).toBe(10);
  });

  it('counts a re-attachment only where a veth was hooked again without a new pod entry', () => {
    expect(reattachments({ attached: 2, upserted: 2 })).toBe(0);
    expect(reattachments({ attached: 1, upserted: 0 })).toBe(1);
    expect(reattachments({ attached: 0, upserted: 5 })).toBe(0);
  });
});

describe('serveMetrics', () => {
  let srv: MetricsServer | null = null;
  afterEach(async () => {
    await srv?.close();
    srv = null;
  });

  it('parses listen addresses like --health-address', () => {
    expect(parseListenAddress(':15034')).toEqual({ host: undefined, port: 15034 });
    expect(parseListenAddress('127.0.0.1:0')).toEqual({ host: '127.0.0.1', port: 0 });
    expect(parseListenAddress('[::1]:9')).toEqual({ host: '::1', port: 9 });
    expect(() => parseListenAddress('localhost:80')).toThrow(/IP:PORT/);
    expect(() => parseListenAddress('1.2.3.4:99999')).toThrow(/IP:PORT/);
  });

  it('serves /healthz always, /readyz by readiness, /metrics in the Prometheus format', async () => {
    const metrics = new AgentMetrics();
    const readiness = new Readiness();
    srv = await serveMetrics('127.0.0.1:0', { metrics, readiness });
    const url = (p: string) => `http://127.0.0.1:${srv!.port()}${p}`;
    expect((await fetch(url('/healthz'))).status).toBe(200);
    let r = await fetch(url('/readyz'));
    expect(r.status).toBe(503);
    expect(await r.text()).toMatch(/first full sync/);
    readiness.markSynced();
    readiness.setDataPathAttached(true);
    readiness.setZtunnelKnown(true);
    r = await fetch(url('/readyz'));
    expect(r.status).toBe(200);
    metrics.observePass({ enrolled: 2, programmed: 2, upserted: 2, attached: 2 }, 0.01);
    r = await fetch(url('/metrics'));
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(sample(await r.text(), 'ambient_redirect_enrolled_pods')).toBe(2);
    expect((await fetch(url('/nope'))).status).toBe(404);
    expect((await fetch(url('/metrics'), { method: 'POST' })).status).toBe(405);
  });

  it('/metrics sends the text piece by piece: the same bytes as metrics(), Content-Length in bytes', async () => {
    const c = { ...codec.zeroCounters(), redirectedPackets: 7n };
    const pods = Array.from({ length: 300 }, (_, i) => ({ ip: `10.4.${i >> 8}.${i & 255}`, ifindex: i, slot: i, counters: c }));
    // A two-byte character in a label: the length is in bytes, not characters.
    const metrics = new AgentMetrics({ podCounters: () => pods, podName: (ip) => ({ namespace: 'café’s', pod: ip }) });
    srv = await serveMetrics('127.0.0.1:0', { metrics, readiness: new Readiness() });
    const r = await fetch(`http://127.0.0.1:${srv.port()}/metrics`);
    const body = Buffer.from(await r.arrayBuffer());
    expect(Number(r.headers.get('content-length'))).toBe(body.length);
    expect(body.toString('utf8')).toBe(await metrics.metrics());
    expect(
      sample(body.toString('utf8'), 'ambient_redirect_pod_packets_total', { pod_ip: '10.4.1.0', namespace: 'café’s', pod: '10.4.1.0', verdict: 'redirected' }),
    ).toBe(7);
  });

  it('fails to start on a taken port instead of serving nothing', async () => {
    srv = await serveMetrics('127.0.0.1:0', { metrics: new AgentMetrics(), readiness: new Readiness() });
    await expect(serveMetrics(`127.0.0.1:${srv.port()}`, { metrics: new AgentMetrics(), readiness: new Readiness() })).rejects.toThrow(/EADDRINUSE/);
  });
});
