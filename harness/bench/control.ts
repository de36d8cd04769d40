/**
 * Control-plane benchmark (figures, not a test):
 *
 *   node dist/harness/bench/control.js [--total 10000] [--node-pods 250] [--rate 20] [--seconds 10] [--runs 5]
 *
 * This process hosts the API double (127.0.0.1) with `total` pods, `node-pods` of them on
 * this node; a child process runs the agent's control plane (watches, cache, enrollment,
 * reconciler) against it through a kubeconfig, with the pods map as an in-memory double
 * and a synthetic routing table (no kernel, no root), so the figures are the control
 * plane's own. Reported: initial sync (start -> first pass with every enrolled pod),
 * the child's RSS, and API event -> map entry latency at `rate` pod changes per second.
 */
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { diffPods, type Desired } from '../../src/core/desired.js';
import { Controller } from '../../src/controller/controller.js';
import type { HostNet, Link } from '../../src/host/netinfo.js';
import { KubeMembership, kubeTransport, loadKubeConfig } from '../../src/kube/index.js';
import { createLogger } from '../../src/log.js';
import type { ActualState, RedirectMode } from '../../src/capture/mode.js';
import type { PodInfo } from '../../src/bpf/codec.js';
import { KubeApiDouble } from '../sim/kube-api.js';
import { bootstrap, figure, figuresLine, median } from './stats.js';

const NODE = 'bench-node';
const podIp = (i: number) => `10.${100 + Math.floor(i / 65536)}.${Math.floor(i / 256) % 256}.${i % 256}`;

type ToParent = { kind: 'synced'; ms: number; entries: number; rss: number } | { kind: 'added'; ip: string; t: number } | { kind: 'rss'; rss: number };

async function agent(kubeconfig: string, nodePods: number): Promise<void> {
  const send = (m: ToParent) => process.send!(m);
  const start = Date.now();
  const pods = new Map<string, PodInfo>();
  const mode: RedirectMode = {
    name: 'ebpf',
    init: async () => {},
    actual: async (): Promise<ActualState> => ({ pods: new Map(pods), ztunnel: null, hooks: new Set() }),
    apply: async (desired: Desired, actual: ActualState) => {
      const d = diffPods(desired.pods, actual.pods);
      const t = Date.now();
      for (const [ip, v] of d.upserts) {
        pods.set(ip, v);
        if (synced) send({ kind: 'added', ip, t });
      }
      for (const ip of d.deletes) pods.delete(ip);
      return { upserted: d.upserts.size, deleted: d.deletes.length, attached: 0, detached: 0 };
    },
    close: () => {},
  };
  // A routing table with a host route per pod IP of this node (what `ip -j route` gives).
  const links = new Map<number, Link>();
  const hostRoutes = new Map<string, string>();
  for (let i = 0; i < nodePods * 2; i++) {
    links.set(1000 + i, { ifindex: 1000 + i, name: `veth${i}`, mac: '02:00:00:00:00:01' });
    hostRoutes.set(podIp(i), `veth${i}`);
  }
  const net: HostNet = { links, hostRoutes, netnsById: new Map() };
  const log = createLogger('error');
  const membership = new KubeMembership(kubeTransport(loadKubeConfig({ kubeconfig })), {
    nodeName: NODE,
    ztunnel: { namespace: 'istio-system', labels: { app: 'ztunnel' } },
    backoff: { initialMs: 800, maxMs: 30_000 },
    stallTimeoutMs: 120_000,
    watchTimeoutSeconds: 600,
    log,
  });
  let synced = false;
  const controller = new Controller({
    mode,
    membership,
    runner: { run: async () => '' },
    log,
    readNet: async () => net,
    placeZtunnel: async () => {
      throw new Error('no ztunnel in the bench');
    },
  });
  membership.start();
  controller.start(
    60_000,
    (r) => {
      if (!synced && r.programmed >= nodePods) {
        synced = true;
        send({ kind: 'synced', ms: Date.now() - start, entries: pods.size, rss: process.memoryUsage().rss });
      }
    },
    () => {},
  );
  process.on('message', (m) => {
    if (m === 'rss') send({ kind: 'rss', rss: process.memoryUsage().rss });
    if (m === 'stop')
      void controller
        .stop()
        .then(() => membership.stop())
        .then(() => process.exit(0));
  });
}

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      kubeconfig: { type: 'string' },
      total: { type: 'string' },
      'node-pods': { type: 'string' },
      rate: { type: 'string' },
      seconds: { type: 'string' },
      runs: { type: 'string' },
    },
  });
  const nodePods = Number(values['node-pods'] ?? 250);
  if (values.role === 'agent') return agent(values.kubeconfig!, nodePods);
  const total = Number(values.total ?? 10_000);
  const rate = Number(values.rate ?? 20);
  const seconds = Number(values.seconds ?? 10);
  const runs = Number(values.runs ?? 5);
  if (!Number.isInteger(runs) || runs < 1 || runs > 50) throw new Error('--runs: an integer in 1..50');

  const api = new KubeApiDouble({ bookmarkMs: 60_000 });
  const server = await api.listen({ port: 0 });
  const dir = mkdtempSync(join(tmpdir(), 'ar-bench-'));
  const kubeconfig = join(dir, 'kubeconfig');
  api.writeKubeconfig(kubeconfig, server);
  api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
  api.upsertNamespace('istio-system');
  for (let i = 0; i < total; i++) {
    const here = i < nodePods;
    api.createPod({
      name: `p${i}`,
      namespace: 'shop',
      nodeName: here ? NODE : `node-${i % 40}`,
      ip: here ? podIp(i) : `10.200.${Math.floor(i / 256) % 256}.${i % 256}`,
      hostIp: '10.0.0.1',
    });
  }
  // Start and sync the agent `runs` times (RSS and sync time get an interval over the runs);
  // the last one also takes the churn.
  const startAgent = () => {
    const child = fork(fileURLToPath(import.meta.url), ['--role', 'agent', '--kubeconfig', kubeconfig, '--node-pods', String(nodePods)], { stdio: 'inherit' });
    const synced = new Promise<ToParent & { kind: 'synced' }>((resolve) => {
      child.on('message', (m: ToParent) => {
        if (m.kind === 'synced') resolve(m);
        else if (m.kind === 'added') added.set(m.ip, m.t);
        else onRss(m.rss);
      });
    });
    return { child, synced };
  };
  const added = new Map<string, number>();
  let onRss: (rss: number) => void = () => {};
  const syncs: (ToParent & { kind: 'synced' })[] = [];
  let agentRun = startAgent();
  for (let k = 0; ; k++) {
    syncs.push(await agentRun.synced);
    if (k === runs - 1) break;
    agentRun.child.send('stop');
    await new Promise((r) => agentRun.child.once('exit', r));
    agentRun = startAgent();
  }
  const child = agentRun.child;
  const sync = syncs.at(-1)!;

  const sent = new Map<string, number>();
  for (let k = 0; k < rate * seconds; k++) {
    const i = nodePods + k;
    const ip = podIp(i);
    sent.set(ip, Date.now());
    api.createPod({ name: `new${k}`, namespace: 'shop', nodeName: NODE, ip, hostIp: '10.0.0.1' });
    await new Promise((r) => setTimeout(r, 1000 / rate));
  }
  await new Promise((r) => setTimeout(r, 1000));
  child.send('rss');
  const rss = await new Promise<number>((r) => (onRss = r));
  const lat = [...sent]
    .map(([ip, t]) => (added.get(ip) ?? NaN) - t)
    .filter(Number.isFinite)
    .sort((a, b) => a - b);
  child.send('stop');
  await new Promise((r) => child.once('exit', r));
  await api.close();
  rmSync(dir, { recursive: true, force: true });
  const mib = (b: number) => (b / 1048576).toFixed(1);
  const out = [
    `control plane, in-process map double, ${total} pods in the API double, ${nodePods} on this node`,
    `initial sync: ${sync.ms} ms to program ${sync.entries} entries (goal <= 200 ms, process start included; runs: ${syncs.map((x) => x.ms).join(', ')} ms)`,
    `controller RSS: ${mib(median(syncs.map((x) => x.rss)))} MiB after sync (median of ${runs} starts: ${syncs.map((x) => mib(x.rss)).join(', ')}), ${mib(rss)} MiB after the churn (goal <= 64 MiB)`,
    `API event -> map entry at ${rate}/s, ${lat.length}/${sent.size} seen: p50 ${pct(lat, 50)} ms, p99 ${pct(lat, 99)} ms, max ${lat.at(-1)} ms (goal p99 <= 50 ms)`,
  ];
  const figures = [
    figure(
      `agent RSS after sync, ${nodePods} node pods (${total.toLocaleString('en-US')} in the API)`,
      'MiB',
      { kind: 'atMost', value: 64 },
      bootstrap(
        syncs.map((x) => x.rss / 1048576),
        median,
        7,
      ),
    ),
  ];
  out.push(figuresLine(figures));
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
