/**
 * The demo's story on a simulated node, with the agent as a real process against the
 * Kubernetes API double, in either ztunnel topology (a StoryWorld: story-inpod.ts for
 * today's in-pod ztunnel, story-node.ts for the node-level one): pods start, a namespace
 * is enrolled, a pod opts out, a pod in an unlabelled namespace is enrolled by its own
 * label, the agent is killed and restarted under traffic, a kubelet-style probe from the
 * node reaches an enrolled pod's app, ztunnel goes away (fail closed) and comes back.
 *
 * Every step first lets the agent converge, then sends connections from every pod to the
 * outside server and classifies each by what the servers recorded, not by what the client
 * was told: ztunnel's stand-in accepted it with the outside server as its original
 * destination (in the pod's own netns, in-pod) = captured; the outside server saw it from
 * the pod = direct; neither, and the client failed = dropped. Anything else (a reply nobody
 * recorded, a capture with the wrong destination) is "unexplained" and fails the step. The
 * verdict holds when every pod got what its step promises; an enrolled pod reaching the
 * outside directly fails it at once.
 */
import type { LogEvent } from './controller.js';
import type { KubeApiDouble } from './kube-api.js';
import type { ConnectResult, SimNode, SimPod, SimServer, SimSource } from './node.js';

export type Topology = 'inpod' | 'node';
export type Route = 'ztunnel' | 'direct' | 'dropped' | 'unexplained';

export interface Actor {
  pod: SimPod;
  name: string;
  namespace: string;
  labels: Record<string, string>;
  /** The pod object's UID (ZDS names workloads by it). */
  uid: string;
}

export interface PodRow {
  pod: string;
  namespace: string;
  enrolled: boolean;
  counts: Record<Route, number>;
}

export interface StepResult {
  title: string;
  /** The step's table as printed. */
  table: string;
  ok: boolean;
  problems: string[];
}

/** What ztunnel recorded of one pod's connections so far (cumulative). */
export interface Recorded {
  /** Accepted on 15001 with the expected original destination (in-pod: by a listener in this pod's netns). */
  captured: number;
  /** Any other connection of this pod ztunnel accepted (wrong port or destination). */
  stray: number;
}

/**
 * A topology as the story drives it. The world owns ztunnel and the agent; the story owns
 * the pods' objects in the API double, the outside server and the pods' apps.
 */
export interface StoryWorld {
  readonly topology: Topology;
  /** The table's header for captured connections. */
  readonly capturedHeader: string;
  readonly kube: KubeApiDouble;
  /** Starts ztunnel and the agent; resolves once the agent's first full pass is done. */
  start(): Promise<void>;
  /** `a`'s outbound connections to `dst` (`ip:port`) as ztunnel recorded them. */
  outbound(a: Actor, dst: string): Recorded;
  /** Inbound connections to `dst` (`a`'s app) that ztunnel accepted on 15006 with that original destination. */
  inbound(a: Actor, dst: string): number;
  /** SIGKILL, 3 s without an agent, a new one; resolves with what went wrong around it (ztunnel's view). */
  restartAgent(signal?: AbortSignal): Promise<string[]>;
  ztunnelAway(): Promise<void>;
  ztunnelBack(): Promise<void>;
  /** After a step settled: facts to print, and problems (what ztunnel holds against who is enrolled). */
  check(enrolled: readonly Actor[]): Promise<{ facts: string[]; problems: string[] }>;
  /** The capture the agent picked, in its own words (log line, status). */
  capture(): Promise<string[]>;
  /** Stops the agent (SIGTERM leaves the data path) and uninstalls; resolves with uninstall's output. */
  finish(): Promise<string>;
  /** Idempotent; every part runs: agent, uninstall if not done, ztunnel, API double, files. */
  cleanup(): Promise<void>;
  /** Every log line of every agent process the story ran, in order (the demo shows the warnings when a step failed). */
  agentLog(): LogEvent[];
}

export interface StoryOptions {
  /** Connections per pod per step. */
  rounds: number;
  /** Progress lines and tables. */
  print: (text: string) => void;
  /** Rewrites the live table in place (a terminal); else tables are printed once per step. */
  live: boolean;
  /** Aborting ends the story at the next connection; its cleanup still runs. */
  signal?: AbortSignal;
}

export const NODE_NAME = 'sim-node';
const AMBIENT = 'ambient';
const LABEL = 'istio.io/dataplane-mode';
const APP_PORT = 8080;
// Generous: on this shared 2-core machine a client, ztunnel's stand-in (in the demo's own
// process) and the servers all wait for CPU; a slow answer must not pass for a dropped one.
const CONNECT_TIMEOUT_MS = 3_000;
const ROUTES: Route[] = ['ztunnel', 'direct', 'dropped', 'unexplained'];

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A table with a header row and a rule under it. */
export function renderTable(head: string[], body: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) =>
    '  ' +
    cells
      .map((c, i) => c.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

/** The pods' table; the "unexplained" column only when some connection was. */
export function renderRows(rows: readonly PodRow[], capturedHeader = 'via ztunnel'): string {
  const odd = rows.some((r) => r.counts.unexplained > 0);
  const head = ['pod', 'namespace', 'enrolled', capturedHeader, 'direct', 'dropped', ...(odd ? ['unexplained'] : [])];
  const body = rows.map((r) => [
    r.pod,
    r.namespace,
    r.enrolled ? 'yes' : 'no',
    String(r.counts.ztunnel),
    String(r.counts.direct),
    String(r.counts.dropped),
    ...(odd ? [String(r.counts.unexplained)] : []),
  ]);
  return renderTable(head, body);
}

/**
 * One connection from what the servers recorded of it: ztunnel's new records of the pod
 * (`captured`, `stray`), the destination's (`direct`), and the client's result.
 */
export function classify(d: { captured: number; stray: number; direct: number }, r: ConnectResult): Route {
  if (d.direct > 0) return 'direct';
  if (d.stray > 0) return 'unexplained';
  if (d.captured > 0) return 'ztunnel';
  return r.ok ? 'unexplained' : 'dropped';
}

/** Checks a step: each pod's connections all went the expected way. */
export function judge(expected: Record<string, Route>, rows: readonly PodRow[]): string[] {
  const problems: string[] = [];
  for (const r of rows) {
    const want = expected[r.pod]!;
    const total = ROUTES.reduce((n, k) => n + r.counts[k], 0);
    if (r.enrolled && r.counts.direct > 0) problems.push(`${r.pod} is enrolled but ${r.counts.direct} connection(s) went around ztunnel`);
    else if (r.counts[want] !== total) problems.push(`${r.pod}: expected every connection ${want}, saw ${JSON.stringify(r.counts)}`);
  }
  return problems;
}

/** Istio's enrollment rule as the story uses it: the pod's own label wins, else its namespace's. */
export function isEnrolled(podLabels: Record<string, string>, nsLabels: Record<string, string>): boolean {
  const own = podLabels[LABEL];
  if (own === 'none') return false;
  return own === AMBIENT || nsLabels[LABEL] === AMBIENT;
}

const srcIp = (src: string) => src.slice(0, src.lastIndexOf(':')).replace(/^\[|\]$/g, '');

async function until(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(20);
}

export async function runStory(sim: SimNode, world: StoryWorld, opts: StoryOptions): Promise<{ steps: StepResult[]; ok: boolean; capture: string[] }> {
  const say = (line: string) => opts.print(`- ${line}\n`);
  const kube = world.kube;
  const steps: StepResult[] = [];
  let outside: SimServer | undefined;
  let app: SimServer | undefined;
  const dst = `${sim.outside.ip}:${sim.outside.port}`;
  let failed = false;
  const nsLabels: Record<string, Record<string, string>> = { shop: {}, plain: {} };

  const actors: Actor[] = sim.pods.map((pod, i) => ({
    pod,
    name: ['web', 'cart', 'batch', 'legacy'][i % 4] + `-${i}`,
    namespace: i === sim.pods.length - 1 ? 'plain' : 'shop',
    labels: {},
    uid: '',
  }));
  const enrolled = (a: Actor) => isEnrolled(a.labels, nsLabels[a.namespace] ?? {});
  const direct = (a: Actor) => outside!.accepted.filter((x) => srcIp(x.src) === a.pod.ip).length;

  /** One connection from every pod at once, each classified by the servers' records. */
  async function round(): Promise<Route[]> {
    opts.signal?.throwIfAborted();
    const before = actors.map((a) => ({ ...world.outbound(a, dst), direct: direct(a) }));
    const results = await Promise.all(actors.map(async (a) => (await sim.connect(a.pod, sim.outside, 1, CONNECT_TIMEOUT_MS))[0]!));
    const delta = () =>
      actors.map((a, i) => {
        const now = world.outbound(a, dst);
        return { captured: now.captured - before[i]!.captured, stray: now.stray - before[i]!.stray, direct: direct(a) - before[i]!.direct };
      });
    // The servers report asynchronously: wait until each answered connection is on record.
    await until(() => delta().every((d, i) => !results[i]!.ok || d.captured + d.stray + d.direct > 0), 2_000);
    const d = delta();
    return results.map((r, i) => classify(d[i]!, r));
  }

  /** Waits until every pod's connections go the expected way (the agent converged). */
  async function settle(expected: Record<string, Route>, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const routes = await round();
      if (actors.every((a, i) => routes[i] === expected[a.name])) return;
      if (Date.now() > deadline) return; // measured as it is: the verdict will say what is wrong
      await sleep(300, opts.signal);
    }
  }

  /** Runs `work` while `background` (if any) runs; its error is rethrown after, and it is always awaited. */
  async function withBackground<T>(work: (busy: () => boolean) => Promise<T>, background?: () => Promise<string[]>): Promise<{ value: T; problems: string[] }> {
    let busy = background !== undefined;
    let backgroundError: unknown;
    let problems: string[] = [];
    // Its error is taken at once and rethrown after the traffic: a rejection left without
    // a handler while the rounds run would end the process before any cleanup.
    const bg = background?.()
      .then((p) => {
        problems = p;
      })
      .catch((err: unknown) => {
        backgroundError = err ?? new Error('the step failed');
      })
      .finally(() => (busy = false));
    try {
      const value = await work(() => busy);
      await bg;
      if (backgroundError !== undefined) throw backgroundError;
      return { value, problems };
    } finally {
      await bg;
    }
  }

  /** `want` is read after `act`: it sees the labels the step set. */
  async function step(title: string, want: (a: Actor) => Route, act: () => Promise<void>, duringTraffic?: () => Promise<string[]>): Promise<void> {
    say(title);
    await act();
    const expected = Object.fromEntries(actors.map((a) => [a.name, want(a)]));
    await settle(expected);
    const rows: PodRow[] = actors.map((a) => ({
      pod: a.name,
      namespace: a.namespace,
      enrolled: enrolled(a),
      counts: { ztunnel: 0, direct: 0, dropped: 0, unexplained: 0 },
    }));
    const draw = () => opts.print((opts.live ? `\x1b[${rows.length + 2}A` : '') + renderRows(rows, world.capturedHeader) + '\n');
    if (opts.live) opts.print('\n'.repeat(rows.length + 2));
    const { problems: around } = await withBackground(async (busy) => {
      for (let n = 0; n < opts.rounds || busy(); n++) {
        const routes = await round();
        routes.forEach((r, i) => rows[i]!.counts[r]++);
        if (opts.live) draw();
      }
    }, duringTraffic);
    if (!opts.live) draw();
    const { facts, problems: held } = await world.check(actors.filter(enrolled));
    for (const f of facts) opts.print(`  ${f}\n`);
    const problems = [...judge(expected, rows), ...around, ...held];
    steps.push({ title, table: renderRows(rows, world.capturedHeader), ok: problems.length === 0, problems });
    for (const p of problems) opts.print(`  ! ${p}\n`);
  }

  /** The probe step: the node and the outside server each connect to `target`'s app. */
  async function probeStep(target: Actor): Promise<void> {
    const title = `a kubelet-style probe from the node reaches ${target.name}'s app (port ${APP_PORT}) uncaptured; the outside server's connection to it goes through ztunnel (15006)`;
    say(title);
    const to = { ip: target.pod.ip, port: APP_PORT };
    const appDst = `${to.ip}:${to.port}`;
    const sources: { label: string; from: SimSource; want: Route }[] = [
      { label: 'kubelet (the node)', from: 'node', want: 'direct' },
      { label: 'the outside server', from: 'outside', want: 'ztunnel' },
    ];
    const rows = sources.map(() => ({ ztunnel: 0, direct: 0, dropped: 0, unexplained: 0 }) as Record<Route, number>);
    const seenBy: string[] = [];
    for (let n = 0; n < opts.rounds; n++) {
      // One source at a time: the app's record says who connected only by address.
      for (const [i, s] of sources.entries()) {
        opts.signal?.throwIfAborted();
        const before = { app: app!.accepted.length, zt: world.inbound(target, appDst) };
        const [r] = await sim.connect(s.from, to, 1, CONNECT_TIMEOUT_MS);
        const d = () => ({ app: app!.accepted.length - before.app, zt: world.inbound(target, appDst) - before.zt });
        await until(() => !r!.ok || d().app + d().zt > 0, 2_000);
        const got = d();
        if (got.app > 0 && s.from === 'node') seenBy.push(...app!.accepted.slice(before.app).map((x) => srcIp(x.src)));
        const route: Route = got.app > 0 ? 'direct' : got.zt > 0 ? 'ztunnel' : r!.ok ? 'unexplained' : 'dropped';
        rows[i]![route]++;
      }
    }
    const odd = rows.some((r) => r.unexplained > 0);
    const table = renderTable(
      ['from', 'expected', 'reached the app', world.capturedHeader, 'dropped', ...(odd ? ['unexplained'] : [])],
      sources.map((s, i) => [
        s.label,
        s.want === 'direct' ? 'the app' : 'ztunnel',
        ...(['direct', 'ztunnel', 'dropped', ...(odd ? ['unexplained'] : [])] as Route[]).map((k) => String(rows[i]![k])),
      ]),
    );
    opts.print(`${table}\n`);
    if (seenBy.length) opts.print(`  the app saw the probes come from ${[...new Set(seenBy)].join(', ')}\n`);
    const problems: string[] = [];
    sources.forEach((s, i) => {
      const total = ROUTES.reduce((t, k) => t + rows[i]![k], 0);
      if (rows[i]![s.want] !== total)
        problems.push(
          `${s.label} -> ${target.name}:${APP_PORT}: expected every connection ${s.want === 'direct' ? 'at the app' : 'through ztunnel'}, saw ${JSON.stringify(rows[i])}`,
        );
    });
    steps.push({ title, table, ok: problems.length === 0, problems });
    for (const p of problems) opts.print(`  ! ${p}\n`);
  }

  const meshOrDirect = (a: Actor): Route => (enrolled(a) ? 'ztunnel' : 'direct');
  const setPodLabels = (a: Actor, labels: Record<string, string>) => {
    a.labels = labels;
    kube.updatePod(a.namespace, a.name, (o) => {
      (o.metadata as { labels: Record<string, string> }).labels = { ...labels };
    });
  };

  try {
    say(`starting the Kubernetes API double's namespaces, the outside server, ztunnel and the agent (${world.topology} topology)`);
    kube.upsertNamespace('istio-system');
    kube.upsertNamespace('shop');
    kube.upsertNamespace('plain');
    outside = await sim.startOutside();
    await world.start();
    const capture = await world.capture();
    for (const line of capture) say(line);

    await step(
      'pods start in namespaces "shop" and "plain"; nothing is enrolled yet: all direct',
      () => 'direct',
      async () => {
        for (const a of actors) {
          const obj = kube.createPod({
            name: a.name,
            namespace: a.namespace,
            nodeName: NODE_NAME,
            ip: a.pod.ip,
            hostIp: sim.node.ip,
            serviceAccount: 'default',
          });
          a.uid = (obj.metadata as { uid: string }).uid;
        }
      },
    );

    await step(
      `label namespace "shop" ${LABEL}=${AMBIENT}: its pods go through ztunnel${world.topology === 'inpod' ? ', inside their own netns' : ''}`,
      meshOrDirect,
      async () => {
        nsLabels.shop = { [LABEL]: AMBIENT };
        kube.upsertNamespace('shop', nsLabels.shop);
      },
    );
    if (world.topology === 'inpod') for (const line of await world.capture()) opts.print(`  ${line}\n`);

    const optOut = actors.find((a) => a.namespace === 'shop' && actors.indexOf(a) > 0) ?? actors[0]!;
    await step(`pod ${optOut.name} opts out (${LABEL}=none): it goes direct`, meshOrDirect, async () => setPodLabels(optOut, { [LABEL]: 'none' }));

    const own = actors.find((a) => a.namespace === 'plain')!;
    await step(`pod ${own.name} in the unlabelled namespace "plain" is labelled ${LABEL}=${AMBIENT} itself: it goes through ztunnel`, meshOrDirect, async () =>
      setPodLabels(own, { [LABEL]: AMBIENT }),
    );

    await step(
      'the agent is killed (SIGKILL) under traffic and restarted 3 s later: no connection is lost or goes around ztunnel',
      meshOrDirect,
      async () => {},
      () => world.restartAgent(opts.signal),
    );

    const probed = actors.find(enrolled)!;
    app = await sim.startPodServer(probed.pod, APP_PORT);
    await probeStep(probed);

    await step(
      'ztunnel goes away: enrolled pods fail closed (dropped, never direct)',
      (a) => (enrolled(a) ? 'dropped' : 'direct'),
      () => world.ztunnelAway(),
    );

    await step('ztunnel comes back: capture resumes', meshOrDirect, () => world.ztunnelBack());

    say('stopping the agent (SIGTERM leaves the data path) and uninstalling');
    const removed = await world.finish();
    for (const line of removed.trim().split('\n').filter(Boolean)) opts.print(`  uninstall: ${line}\n`);
    return { steps, ok: steps.every((s) => s.ok), capture };
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    // Every part of the cleanup runs, whatever another part throws. A cleanup that fails
    // is said, and fails the story when nothing else did.
    await Promise.allSettled([app?.stop(), outside?.stop()]);
    const cleanupError = await world.cleanup().then(
      () => undefined,
      (err: unknown) => err,
    );
    if (cleanupError !== undefined) {
      opts.print(`- cleanup failed: ${cleanupError instanceof Error ? cleanupError.message : String(cleanupError)}\n`);
      // biome-ignore lint/correctness/noUnsafeFinally: a failed cleanup must fail a story that otherwise passed
      if (!failed) throw cleanupError;
    }
  }
}
