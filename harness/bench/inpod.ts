/**
 * In-pod captures side by side (figures, not a test): the same traffic from one enrolled
 * pod of a simulated node with no capture and under each in-pod capture named, through the
 * in-pod ztunnel stand-in (harness/sim/ztunnel-inpod.ts: listeners inside the pod's netns),
 * which either answers each captured connection itself as the server would (terminating:
 * the capture path alone, the goals' figures) or relays it to its original destination by
 * a socket marked 0x539, as ztunnel does (`<capture>-relay`: the relay's cost included).
 * The pod's netns reaches the stand-in over a real ZDS socket.
 *
 *   node dist/harness/bench/inpod.js [--captures iptables,ebpf] [--rounds N] [--seconds S]
 *                                    [--warmup S] [--concurrency N]
 *
 * Workloads are traffic.ts's (traffic-peer.js): connections/s, request/response, stream.
 * Scenarios are interleaved over rounds, the order rotating each round, and every figure
 * is the median. Each capture is installed for its slot (init, install, ZDS add) and taken
 * out after it (ZDS del, remove, the host half uninstalled), so the captures never meet.
 * Every workload checks who carried it: under a capture the stand-in accepted every
 * connection that succeeded; with none, no connection.
 *
 * A capture plugs in by name in CAPTURES below.
 */
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { InPodCapture } from '../../src/capture/inpod.js';
import { createEbpfInPodCapture, uninstallInpod } from '../../src/capture/inpod/ebpf.js';
import { InpodIptables, uninstallInpodIptablesHost } from '../../src/capture/inpod/iptables.js';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { createLogger, type Logger } from '../../src/log.js';
import { ZdsServer } from '../../src/zds/server.js';
import { createSimNode, type SimNode, type SimPod } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { type StandInEvent, ZtunnelInpod } from '../sim/ztunnel-inpod.js';
import { median } from './report.js';
import { figure, figuresLine, ratioInterval, type Figure, type Goal } from './stats.js';
import { formatRate, rotate, WORKLOADS, type Workload } from './traffic.js';
import { accept as answerAs, BY_OFFSET, type PeerResult } from './traffic-peer.js';

/** One in-pod capture as the bench uses it: the capture, and how to take its host half out. */
export interface BenchCapture {
  capture: InPodCapture;
  uninstallHost(): Promise<void>;
}

export type CaptureFactory = (ctx: { sim: SimNode; log: Logger }) => BenchCapture;

/** The in-pod captures by name. */
export const CAPTURES: Record<string, CaptureFactory> = {
  iptables: ({ sim, log }) => ({
    capture: new InpodIptables({ runner: systemRunner, log, hostNetns: sim.nodeNs }),
    async uninstallHost() {
      const r = await uninstallInpodIptablesHost(systemRunner, sim.nodeNs);
      if (r.failed.length) throw new Error(`uninstalling the in-pod iptables host half: ${r.failed.map((f) => `${f.step}: ${f.error}`).join('; ')}`);
    },
  }),
  ebpf: ({ sim, log }) => {
    // The run's own folder of the host bpffs, as every simulated node pins (harness/sim/names.ts).
    const pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    const hostNetns = `/var/run/netns/${sim.nodeNs}`;
    return {
      capture: createEbpfInPodCapture({ pinRoot, runner: systemRunner, log, hostNetns }),
      async uninstallHost() {
        const r = await uninstallInpod({ pinRoot, hostNetns });
        rmSync(pinRoot, { recursive: true, force: true });
        if (r.failed.length) throw new Error(`uninstalling the eBPF in-pod capture: ${r.failed.map((f) => `${f.step}: ${f.error}`).join('; ')}`);
      },
    };
  },
};

export interface InpodBenchOptions {
  captures: string[];
  rounds: number;
  seconds: number;
  warmupSeconds: number;
  concurrency: number;
}

/** The suffix of a capture's scenario with the relaying stand-in. */
const RELAY = '-relay';

export const DEFAULT_INPOD_BENCH: InpodBenchOptions = { captures: Object.keys(CAPTURES), rounds: 5, seconds: 2, warmupSeconds: 0.3, concurrency: 4 };

export interface InpodSample {
  round: number;
  /** 'none' or a capture's name. */
  scenario: string;
  workload: Workload;
  rate: number;
  errors: number;
}

const PORT = 9000;
const PEER = fileURLToPath(new URL('./traffic-peer.js', import.meta.url));
const UID = 'bench-pod0';

async function startPeerServer(sim: SimNode): Promise<{ stop: () => void }> {
  const child = startProcess(['ip', 'netns', 'exec', sim.outside.ns, process.execPath, PEER, 'serve', '--port', String(PORT)]);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2048)));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('bench server: not listening after 10 s')), 10_000);
    child.once('close', (code) => reject(new Error(`bench server exited (${code}): ${stderr.trim()}`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line.includes('"listening"')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { stop: () => child.kill('SIGKILL') };
}

async function runPeer(pod: SimPod, workload: Workload, to: string, o: InpodBenchOptions): Promise<PeerResult> {
  const argv = ['ip', 'netns', 'exec', pod.ns, process.execPath, PEER, workload, '--to', to, '--port', String(PORT)];
  argv.push('--seconds', String(o.seconds), '--warmup', String(o.warmupSeconds), '--concurrency', String(o.concurrency));
  const out = await systemRunner.run(argv, { timeoutMs: (o.seconds + o.warmupSeconds) * 1000 + 30_000 });
  const line = out.split('\n').find((l) => l.includes('"result"'));
  if (!line) throw new Error(`${workload} from ${pod.name}: no result (${out.trim()})`);
  return JSON.parse(line) as PeerResult;
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`inpod bench: ${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Runs every scenario `rounds` times on a fresh simulated node and tears it down, also on failure. */
export async function runInpodBench(o: InpodBenchOptions, say: (line: string) => void = () => {}): Promise<InpodSample[]> {
  for (const name of o.captures) if (!CAPTURES[name]) throw new Error(`unknown in-pod capture "${name}" (have: ${Object.keys(CAPTURES).join(', ')})`);
  const sim = await createSimNode({ pods: 1 });
  const log = createLogger('warn', (l) => process.stderr.write(l));
  const dir = mkdtempSync(join(tmpdir(), 'inpod-bench-'));
  const pod = sim.pods[0]!;
  let fd = -1;
  let server: { stop: () => void } | undefined;
  let zds: ZdsServer | undefined;
  let z: ZtunnelInpod | undefined;
  const samples: InpodSample[] = [];
  try {
    fd = openSync(`/var/run/netns/${pod.ns}`, 'r');
    const podNetns = { uid: UID, namespace: 'bench', name: pod.name, ips: [pod.ip, pod.ip6], fd };
    server = await startPeerServer(sim);
    zds = new ZdsServer({ path: join(dir, 'ztunnel.sock'), log });
    let accepted = 0;
    const onEvent = (e: StandInEvent) => {
      if (e.event === 'accepted') accepted++;
    };
    // Terminating for a capture's own scenario, relaying for `<capture>-relay`.
    let terminate = true;
    const answer = (sock: Socket, origDst: string): boolean => {
      if (!terminate) return false;
      const w = BY_OFFSET[Number(origDst.slice(origDst.lastIndexOf(':') + 1)) - PORT];
      if (!w) return false;
      answerAs(sock, w);
      return true;
    };
    z = new ZtunnelInpod({ socket: join(dir, 'ztunnel.sock'), proxy: true, answer, onEvent });
    const zt = z;
    await until('the stand-in connected', () => zt.ready);
    const scenarios = ['none', ...o.captures, ...o.captures.map((c) => `${c}${RELAY}`)];
    for (let round = 0; round < o.rounds; round++) {
      for (const scenario of rotate(scenarios, round)) {
        terminate = !scenario.endsWith(RELAY);
        const bench = scenario === 'none' ? null : CAPTURES[scenario.replace(RELAY, '')]!({ sim, log });
        if (bench) {
          // The ZDS flow's order: capture in place, then the pod's add.
          await bench.capture.init();
          await bench.capture.install(podNetns);
          zds.addPod(UID, { name: pod.name, namespace: 'bench', serviceAccount: 'default' }, fd);
          await until('the stand-in holds the pod', () => zt.held().some((h) => h.uid === UID));
        }
        try {
          for (const workload of rotate(WORKLOADS, round)) {
            const before = accepted;
            const r = await runPeer(pod, workload, sim.outside.ip, o);
            const succeeded = r.connections - r.errors;
            if (bench) await until(`${scenario} ${workload}: the stand-in accepted what succeeded`, () => accepted - before >= succeeded);
            const via = accepted - before;
            if (bench ? via < succeeded || via > r.connections : via !== 0)
              throw new Error(`${scenario} ${workload}: the stand-in saw ${via} of ${r.connections} connections (${r.errors} failed)`);
            samples.push({ round, scenario, workload, rate: r.rate, errors: r.errors });
            say(
              `inpod: round ${round + 1}/${o.rounds} ${scenario.padEnd(10)} ${workload.padEnd(6)} ${formatRate(workload, r.rate)}${r.errors ? ` (${r.errors} errors)` : ''}`,
            );
          }
        } finally {
          if (bench) {
            zds.removePod(UID);
            await until('the stand-in let the pod go', () => !zt.held().some((h) => h.uid === UID));
            await bench.capture.remove(podNetns);
            bench.capture.close();
            await bench.uninstallHost();
          }
        }
      }
    }
    return samples;
  } finally {
    z?.close();
    zds?.close();
    server?.stop();
    if (fd >= 0) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
    await sim.teardown();
  }
}

/** Medians per scenario and workload, and each capture's ratio to every other (and to none). */
export function inpodTable(samples: readonly InpodSample[], captures: readonly string[]): string {
  const med = (scenario: string, w: Workload) => median(samples.filter((s) => s.scenario === scenario && s.workload === w).map((s) => s.rate));
  const lines = [`${'scenario'.padEnd(16)}${WORKLOADS.map((w) => w.padStart(16)).join('')}`];
  const relayed = captures.map((c) => `${c}${RELAY}`).filter((c) => samples.some((s) => s.scenario === c));
  for (const s of ['none', ...captures, ...relayed]) lines.push(`${s.padEnd(16)}${WORKLOADS.map((w) => formatRate(w, med(s, w)).padStart(16)).join('')}`);
  for (const [set, label] of [
    [captures, 'terminating stand-in'],
    [relayed, 'relaying stand-in'],
  ] as const) {
    for (const a of set) {
      for (const b of [...set.filter((x) => x !== a), 'none']) {
        lines.push(`inpod ${a}/${b} (${label}): ${WORKLOADS.map((w) => `${w} ${(med(a, w) / med(b, w)).toFixed(2)}x`).join(', ')}`);
      }
    }
  }
  return lines.join('\n');
}

/** Issue 18's goals for in-pod eBPF over in-pod iptables, by workload. */
const INPOD_GOALS: Record<Workload, Goal> = { crr: { kind: 'atLeast', value: 1.3 }, rr: { kind: 'atLeast', value: 1.15 }, stream: { kind: 'none' } };
const WORKLOAD_TEXT: Record<Workload, string> = { crr: 'connections/s', rr: 'request/response', stream: 'stream throughput' };

/** In-pod ebpf / in-pod iptables per workload: per-round ratios, their interval and verdict (both captures run). */
export function inpodFigures(samples: readonly InpodSample[]): Figure[] {
  const rounds = [...new Set(samples.map((s) => s.round))];
  const rate = (scenario: string, w: Workload, r: number) => samples.find((s) => s.scenario === scenario && s.workload === w && s.round === r)?.rate;
  if (!samples.some((s) => s.scenario === 'ebpf') || !samples.some((s) => s.scenario === 'iptables')) return [];
  return WORKLOADS.map((w) => {
    const pairs = rounds.flatMap((r) => {
      const num = rate('ebpf', w, r);
      const den = rate('iptables', w, r);
      return num !== undefined && den !== undefined ? [{ num, den }] : [];
    });
    return figure(`in-pod ebpf / in-pod iptables: ${WORKLOAD_TEXT[w]}`, '×', INPOD_GOALS[w], ratioInterval(pairs));
  });
}

export function parseOptions(argv: string[]): InpodBenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      captures: { type: 'string' },
      rounds: { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string' },
    },
    strict: true,
  });
  const num = (name: string, raw: string | undefined, dflt: number, min: number, max: number, integer: boolean) => {
    if (raw === undefined) return dflt;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
      throw new Error(`--${name}: "${raw}" is not ${integer ? 'an integer' : 'a number'} in ${min}..${max}`);
    return n;
  };
  const d = DEFAULT_INPOD_BENCH;
  const captures =
    values.captures === undefined
      ? d.captures
      : values.captures
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
  for (const c of captures) if (!CAPTURES[c]) throw new Error(`--captures: "${c}" is not one of ${Object.keys(CAPTURES).join(', ')}`);
  if (captures.length === 0) throw new Error('--captures: name at least one');
  return {
    captures,
    rounds: num('rounds', values.rounds, d.rounds, 1, 100, true),
    seconds: num('seconds', values.seconds, d.seconds, 0.1, 60, false),
    warmupSeconds: num('warmup', values.warmup, d.warmupSeconds, 0, 10, false),
    concurrency: num('concurrency', values.concurrency, d.concurrency, 1, 256, true),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let options: InpodBenchOptions;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`inpod bench: ${(err as Error).message}\n`);
    process.exit(2);
  }
  runInpodBench(options, (l) => process.stderr.write(`${l}\n`)).then(
    (samples) => {
      process.stdout.write(`${inpodTable(samples, options.captures)}\n`);
      const figures = inpodFigures(samples);
      if (figures.length) process.stdout.write(`${figuresLine(figures)}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`inpod bench: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
