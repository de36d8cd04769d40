/**
 * The demo's story on a simulated node, with the controller as a real process against the
 * Kubernetes API double: pods start, a namespace is enrolled, a pod opts out, the
 * controller is killed and restarted under traffic, ztunnel goes away (fail closed) and
 * comes back. Every step first lets the controller converge, then sends connections from
 * every pod and classifies each by who answered: ztunnel (captured), the outside server
 * (direct), or nobody (dropped). The verdict holds when every pod got what its step
 * promises; an enrolled pod reaching the outside directly fails it at once.
 */
import { mkdirSync, rmSync } from 'node:fs';
import type { CommandRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from './controller.js';
import { startSimKubeApi, type SimKubeApi } from './kube-sim.js';
import { ZTUNNEL_POD } from './kube-api.js';
import type { SimNode, SimPod, SimServer } from './node.js';
import { OUTSIDE_HOST_IP } from './names.js';
import { pinRootFor } from './scenario.js';
import type { SelectedMode } from '../../src/core/modes.js';

export type Route = 'ztunnel' | 'direct' | 'dropped';

export interface PodRow {
  pod: string;
  namespace: string;
  enrolled: boolean;
  counts: Record<Route, number>;
}

export interface StepResult {
  title: string;
  expected: Record<string, Route>;
  rows: PodRow[];
  ok: boolean;
  problems: string[];
}

export interface StoryOptions {
  mode: SelectedMode;
  /** Connections per pod per step. */
  rounds: number;
  /** Progress lines and tables. */
  print: (text: string) => void;
  /** Rewrites the live table in place (a terminal); else tables are printed once per step. */
  live: boolean;
  /** Aborting ends the story at the next connection; its cleanup still runs. */
  signal?: AbortSignal;
  runner?: CommandRunner;
}

const NODE = 'sim-node';
const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Actor {
  pod: SimPod;
  name: string;
  namespace: string;
  labels: Record<string, string>;
}

export function renderRows(rows: readonly PodRow[]): string {
  const head = ['pod', 'namespace', 'enrolled', 'via ztunnel', 'direct', 'dropped'];
  const body = rows.map((r) => [r.pod, r.namespace, r.enrolled ? 'yes' : 'no', String(r.counts.ztunnel), String(r.counts.direct), String(r.counts.dropped)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    '  ' +
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

/** Checks a step: each pod's connections all went the expected way. */
export function judge(expected: Record<string, Route>, rows: readonly PodRow[]): string[] {
  const problems: string[] = [];
  for (const r of rows) {
    const want = expected[r.pod]!;
    const total = r.counts.ztunnel + r.counts.direct + r.counts.dropped;
    if (r.enrolled && r.counts.direct > 0) problems.push(`${r.pod} is enrolled but ${r.counts.direct} connection(s) went around ztunnel`);
    else if (r.counts[want] !== total) problems.push(`${r.pod}: expected every connection ${want}, saw ${JSON.stringify(r.counts)}`);
  }
  return problems;
}

export async function runStory(sim: SimNode, opts: StoryOptions): Promise<{ steps: StepResult[]; ok: boolean }> {
  const say = (line: string) => opts.print(`- ${line}\n`);
  const pinRoot = pinRootFor(sim);
  mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
  let kube: SimKubeApi | undefined;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer | undefined;
  let outside: SimServer | undefined;
  const steps: StepResult[] = [];

  const actors: Actor[] = sim.pods.map((pod, i) => ({
    pod,
    name: ['web', 'cart', 'batch', 'legacy'][i % 4] + `-${i}`,
    namespace: i === sim.pods.length - 1 ? 'plain' : 'shop',
    labels: {},
  }));
  const enrolledNow = new Map<string, boolean>();

  const startCtl = () => {
    controller = startController(sim.nodeNs, [
      '--mode',
      opts.mode,
      '--kubeconfig',
      kube!.kubeconfig,
      '--node-name',
      NODE,
      '--pin-root',
      pinRoot,
      '--resync-interval',
      '2',
      '--backoff-initial',
      '0.2',
      '--backoff-max',
      '2',
    ]);
    return controller.waitFor('programmed', 30_000);
  };
  const ztunnelPod = () =>
    kube!.api.createPod({ name: 'ztunnel-1', namespace: 'istio-system', nodeName: NODE, ip: sim.ztunnel.ip, hostIp: OUTSIDE_HOST_IP, ...ZTUNNEL_POD });

  async function connectOnce(a: Actor): Promise<Route> {
    opts.signal?.throwIfAborted();
    const [r] = await sim.connect(a.pod, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500);
    return r!.ok ? (r!.reply === 'ztunnel' ? 'ztunnel' : 'direct') : 'dropped';
  }

  /** Waits until every pod's connections go the expected way (the controller converged). */
  async function settle(expected: Record<string, Route>, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const routes = await Promise.all(actors.map(connectOnce));
      if (actors.every((a, i) => routes[i] === expected[a.name])) return;
      if (Date.now() > deadline) return; // measured as it is: the verdict will say what is wrong
      await sleep(300);
    }
  }

  async function step(title: string, expected: Record<string, Route>, act: () => Promise<void>, duringTraffic?: () => Promise<void>): Promise<void> {
    say(title);
    await act();
    await settle(expected);
    const rows: PodRow[] = actors.map((a) => ({
      pod: a.name,
      namespace: a.namespace,
      enrolled: enrolledNow.get(a.name) ?? false,
      counts: { ztunnel: 0, direct: 0, dropped: 0 },
    }));
    const draw = () => opts.print((opts.live ? `\x1b[${rows.length + 2}A` : '') + renderRows(rows) + '\n');
    if (opts.live) opts.print('\n'.repeat(rows.length + 2));
    let busy = true;
    // Its error is taken at once and rethrown after the traffic: a rejection left without
    // a handler while the rounds run would end the process before any cleanup.
    let backgroundError: unknown;
    const background = duringTraffic?.()
      .catch((err: unknown) => {
        backgroundError = err ?? new Error('the step failed');
      })
      .finally(() => (busy = false));
    for (let round = 0; round < opts.rounds || (background && busy); round++) {
      const routes = await Promise.all(actors.map(connectOnce));
      routes.forEach((r, i) => rows[i]!.counts[r]++);
      if (opts.live) draw();
    }
    await background;
    if (backgroundError !== undefined) throw backgroundError;
    if (!opts.live) draw();
    const problems = judge(expected, rows);
    steps.push({ title, expected, rows, ok: problems.length === 0, problems });
    for (const p of problems) opts.print(`  ! ${p}\n`);
  }

  const expectAll = (f: (a: Actor) => Route) => Object.fromEntries(actors.map((a) => [a.name, f(a)]));
  const mesh = (a: Actor) => a.namespace === 'shop' && a.labels['istio.io/dataplane-mode'] !== 'none';

  try {
    say(`starting the Kubernetes API double, the ztunnel stand-in, the outside server and the controller (${opts.mode} mode)`);
    kube = await startSimKubeApi(sim.nodeNs, { bookmarkMs: 1_000 });
    [ztunnel, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
    kube.api.upsertNamespace('istio-system');
    kube.api.upsertNamespace('shop');
    kube.api.upsertNamespace('plain');
    ztunnelPod();
    await startCtl();

    await step(
      'pods start in namespaces "shop" and "plain"; nothing is enrolled yet: all direct',
      expectAll(() => 'direct'),
      async () => {
        actors.forEach((a, i) => kube!.api.createPod({ name: a.name, namespace: a.namespace, nodeName: NODE, ip: sim.pods[i]!.ip, hostIp: OUTSIDE_HOST_IP }));
      },
    );

    await step(
      'label namespace "shop" istio.io/dataplane-mode=ambient: its pods go through ztunnel',
      expectAll((a) => (a.namespace === 'shop' ? 'ztunnel' : 'direct')),
      async () => {
        kube!.api.upsertNamespace('shop', AMBIENT);
        for (const a of actors) enrolledNow.set(a.name, mesh(a));
      },
    );

    const optOut = actors.find((a) => a.namespace === 'shop' && actors.indexOf(a) > 0) ?? actors[0]!;
    await step(
      `pod ${optOut.name} opts out (istio.io/dataplane-mode=none): it goes direct`,
      expectAll((a) => (a === optOut || a.namespace !== 'shop' ? 'direct' : 'ztunnel')),
      async () => {
        optOut.labels = { 'istio.io/dataplane-mode': 'none' };
        kube!.api.updatePod(optOut.namespace, optOut.name, (o) => {
          (o.metadata as { labels: Record<string, string> }).labels = { ...optOut.labels };
        });
        for (const a of actors) enrolledNow.set(a.name, mesh(a));
      },
    );

    await step(
      'the controller is killed (SIGKILL) under traffic and restarted 3 s later: capture never stops',
      expectAll((a) => (mesh(a) ? 'ztunnel' : 'direct')),
      async () => {},
      async () => {
        await controller!.stop('SIGKILL');
        await sleep(3_000);
        await startCtl();
      },
    );

    await step(
      'ztunnel goes away: enrolled pods fail closed (dropped, never direct)',
      expectAll((a) => (mesh(a) ? 'dropped' : 'direct')),
      async () => {
        kube!.api.deletePod('istio-system', 'ztunnel-1');
        await ztunnel!.stop();
      },
    );

    await step(
      'ztunnel comes back: capture resumes',
      expectAll((a) => (mesh(a) ? 'ztunnel' : 'direct')),
      async () => {
        ztunnel = await sim.startZtunnel();
        ztunnelPod();
      },
    );

    say('stopping the controller (SIGTERM leaves the data path) and uninstalling');
    await controller!.stop('SIGTERM');
    controller = undefined;
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot], opts.runner);
    return { steps, ok: steps.every((s) => s.ok) };
  } finally {
    // Every part of the cleanup runs, whatever another part throws.
    const failed = controller !== undefined;
    await controller?.stop('SIGKILL').catch(() => null);
    if (failed) await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot], opts.runner).catch(() => '');
    await Promise.allSettled([ztunnel?.stop(), outside?.stop(), kube?.stop()]);
    rmSync(pinRoot, { recursive: true, force: true });
  }
}
