/**
 * Live traffic through the data path (figures, not a test). One simulated node, one run,
 * the same traffic from a pod under each scenario:
 *
 *   direct         no controller, pod A -> the stand-in's own server on ztunnel's address
 *                  (the plain path to a server at the capture's distance: one veth hop)
 *   ebpf-term      ebpf mode, pod A enrolled -> outside address; captured and answered by
 *                  the stand-in itself (the capture path, no relay)
 *   iptables-term  iptables mode, the same
 *   none           no controller, pod A -> the outside server
 *   ebpf           ebpf mode, pod A enrolled -> outside; the stand-in relays (as ztunnel would)
 *   iptables       iptables mode, the same
 *   none-b         no controller, pod B (the baseline of the next one)
 *   unenrolled     ebpf mode running (pod A enrolled), pod B not enrolled
 *
 * Workloads (`traffic-peer.ts`): connections/s (connect, small request, response, close;
 * a few loops at once), request/response on one connection (64-byte ping-pong), stream
 * throughput (bulk bytes from the pod). The stand-in (`traffic-peer.js ztunnel`) answers
 * terminated and direct connections with the same handlers as the outside server. The
 * machine is shared and noisy: scenarios are interleaved over rounds (the order rotating
 * each round, workloads too) and compared round by round.
 *
 * Each workload also checks who carried it, from the stand-in's counters: every connection
 * that succeeded went where its scenario says (relayed, terminated, direct) and none
 * anywhere else.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess, type LogEvent } from '../sim/controller.js';
import { createSimNode, type SimPod } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { ZTUNNEL_PORTS } from '../sim/names.js';
import { createInterface } from 'node:readline';
import type { PeerResult, StandInCounts } from './traffic-peer.js';
import type { SelectedMode } from '../../src/core/modes.js';

export const SCENARIOS = ['direct', 'ebpf-term', 'iptables-term', 'none', 'ebpf', 'iptables', 'none-b', 'unenrolled'] as const;
export type Scenario = (typeof SCENARIOS)[number];
export const WORKLOADS = ['crr', 'rr', 'stream'] as const;
export type Workload = (typeof WORKLOADS)[number];

export interface TrafficOptions {
  rounds: number;
  /** Measured seconds per workload run. */
  seconds: number;
  warmupSeconds: number;
  /** Parallel connect loops of the connections/s workload. */
  concurrency: number;
}

export const DEFAULT_TRAFFIC: TrafficOptions = { rounds: 10, seconds: 1.5, warmupSeconds: 0.3, concurrency: 4 };

export interface TrafficSample {
  round: number;
  scenario: Scenario;
  workload: Workload;
  /** connections/s, round trips/s or bytes/s. */
  rate: number;
  errors: number;
  /** SYN retransmissions in the client's netns during the run. */
  synRetrans?: number;
}

export interface TrafficRun {
  options: TrafficOptions;
  samples: TrafficSample[];
  /** What the controller logged as its mode (ebpf variant, iptables tunnel). */
  modes: Record<string, string>;
  seconds: number;
}

/** The outside server's ports (the relay scenarios go there through the stand-in). */
const PORT = 9000;
/** Ports the stand-in answers itself when captured, and serves directly on ztunnel's address. */
const TERMINATE_PORT = 9100;
const PEER = fileURLToPath(new URL('./traffic-peer.js', import.meta.url));

type Target = 'outside' | 'outside-terminated' | 'ztunnel';
/** Which stand-in counter a scenario's connections must all land in (none: none of them). */
type Carrier = keyof StandInCounts | null;

/** Where each scenario's traffic comes from, where it goes, which mode is on, and who must carry it. */
const PLAN: Record<Scenario, { pod: 0 | 1; mode: SelectedMode | null; to: Target; carrier: Carrier }> = {
  direct: { pod: 0, mode: null, to: 'ztunnel', carrier: 'direct' },
  'ebpf-term': { pod: 0, mode: 'ebpf', to: 'outside-terminated', carrier: 'terminated' },
  'iptables-term': { pod: 0, mode: 'iptables', to: 'outside-terminated', carrier: 'terminated' },
  none: { pod: 0, mode: null, to: 'outside', carrier: null },
  ebpf: { pod: 0, mode: 'ebpf', to: 'outside', carrier: 'relayed' },
  iptables: { pod: 0, mode: 'iptables', to: 'outside', carrier: 'relayed' },
  'none-b': { pod: 1, mode: null, to: 'outside', carrier: null },
  unenrolled: { pod: 1, mode: 'ebpf', to: 'outside', carrier: null },
};

/** The slots of one round: scenarios sharing a mode run in the same slot. */
const SLOTS: { mode: 'ebpf' | 'iptables' | null; scenarios: Scenario[] }[] = [
  { mode: null, scenarios: ['direct', 'none', 'none-b'] },
  { mode: 'ebpf', scenarios: ['ebpf-term', 'ebpf', 'unenrolled'] },
  { mode: 'iptables', scenarios: ['iptables-term', 'iptables'] },
];

/** `xs` rotated left by `k`: round r starts with a different element. */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  const n = xs.length;
  return n === 0 ? [] : xs.map((_, i) => xs[(i + k) % n]!);
}

/** Starts a traffic-peer process in `ns`; resolves once it says it listens. */
async function startPeer(ns: string, args: string[]): Promise<{ child: ReturnType<typeof startProcess>; lines: AsyncIterator<string>; stop: () => void }> {
  const child = startProcess(['ip', 'netns', 'exec', ns, process.execPath, PEER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2048)));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`bench ${args[0]}: not listening after 10 s`)), 10_000);
    child.once('close', (code) => reject(new Error(`bench ${args[0]} exited (${code}): ${stderr.trim()}`)));
    void (async () => {
      for (;;) {
        const r = await lines.next();
        if (r.done) return;
        if (r.value.includes('"listening"')) {
          clearTimeout(timer);
          return resolve();
        }
      }
    })();
  });
  return { child, lines, stop: () => child.kill('SIGKILL') };
}

/** The stand-in's counters, asked over its stdin. */
async function standInCounts(p: Awaited<ReturnType<typeof startPeer>>): Promise<StandInCounts> {
  p.child.stdin!.write('counts\n');
  for (;;) {
    const r = await p.lines.next();
    if (r.done) throw new Error('ztunnel stand-in: exited');
    if (r.value.includes('"counts"')) return JSON.parse(r.value) as StandInCounts;
  }
}

async function runPeer(pod: SimPod, workload: Workload, to: string, port: number, o: TrafficOptions): Promise<PeerResult> {
  const argv = [
    'ip',
    'netns',
    'exec',
    pod.ns,
    process.execPath,
    PEER,
    workload,
    '--to',
    to,
    '--port',
    String(port),
    '--seconds',
    String(o.seconds),
    '--warmup',
    String(o.warmupSeconds),
    '--concurrency',
    String(o.concurrency),
  ];
  const out = await systemRunner.run(argv, { timeoutMs: (o.seconds + o.warmupSeconds) * 1000 + 30_000 });
  const line = out.split('\n').find((l) => l.includes('"result"'));
  if (!line) throw new Error(`${workload} from ${pod.name}: no result (${out.trim()})`);
  return JSON.parse(line) as PeerResult;
}

/**
 * Runs every scenario `rounds` times on a fresh simulated node and tears it down, also
 * on failure. `signal` aborts between steps and kills what runs.
 */
export async function runTraffic(o: TrafficOptions = DEFAULT_TRAFFIC, log: (line: string) => void = () => {}, signal?: AbortSignal): Promise<TrafficRun> {
  const t0 = Date.now();
  const sim = await createSimNode({ pods: 2 });
  log(`traffic: built simulated node ${sim.prefix} with 2 pods`);
  const pinRoot = pinRootFor(sim);
  let controller: ControllerProcess | undefined;
  let server: { stop: () => void } | undefined;
  let standIn: Awaited<ReturnType<typeof startPeer>> | undefined;
  const onAbort = () => {
    void controller?.stop('SIGKILL');
    void sim.teardown().catch(() => {});
  };
  signal?.addEventListener('abort', onAbort, { once: true });
  const check = () => {
    if (signal?.aborted) throw new Error('traffic: interrupted');
  };
  const samples: TrafficSample[] = [];
  const modes: Record<string, string> = {};
  try {
    standIn = await startPeer(sim.ztunnel.ns, ['ztunnel', '--port', String(PORT), '--terminate', String(TERMINATE_PORT), '--listen', ZTUNNEL_PORTS.join(',')]);
    server = await startPeer(sim.outside.ns, ['serve', '--port', String(PORT)]);
    const targets: Record<Target, [string, number]> = {
      outside: [sim.outside.ip, PORT],
      'outside-terminated': [sim.outside.ip, TERMINATE_PORT],
      ztunnel: [sim.ztunnel.ip, TERMINATE_PORT],
    };
    const pods = [sim.pods[0]!, sim.pods[1]!] as const;
    for (let round = 0; round < o.rounds; round++) {
      for (const slot of rotate(SLOTS, round)) {
        check();
        if (slot.mode) {
          mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
          controller = startController(sim.nodeNs, [
            '--mode',
            slot.mode,
            '--pin-root',
            pinRoot,
            '--ztunnel-ip',
            sim.ztunnel.ip,
            '--enroll',
            pods[0].ip,
            '--log-level',
            'info',
          ]);
          await controller.waitFor('programmed');
          modes[slot.mode] ??= describeMode(controller.events);
        }
        try {
          // Workloads rotate too; the scenarios of a slot alternate within each workload.
          for (const workload of rotate(WORKLOADS, round)) {
            for (const scenario of rotate(slot.scenarios, round)) {
              check();
              const plan = PLAN[scenario];
              const before = await standInCounts(standIn);
              const r = await runPeer(pods[plan.pod], workload, ...targets[plan.to], o);
              // Connections that failed (timed out, reset) may never have reached the stand-in.
              const succeeded = r.connections - r.errors;
              const after = await standInCounts(standIn);
              const delta = (k: keyof StandInCounts) => after[k] - before[k];
              for (const k of ['relayed', 'terminated', 'direct', 'refused'] as const) {
                const n = delta(k);
                if (k === plan.carrier ? n < succeeded || n > r.connections : n !== 0) {
                  throw new Error(
                    `${scenario} ${workload}: the ztunnel stand-in counted ${n} ${k} of ${r.connections} connections (${r.errors} failed; want ${k === plan.carrier ? 'every one that succeeded' : 'none'})`,
                  );
                }
              }
              samples.push({ round, scenario, workload, rate: r.rate, errors: r.errors, synRetrans: r.synRetrans });
              const notes = [r.errors && `${r.errors} errors`, r.synRetrans && `${r.synRetrans} SYN retransmits`].filter(Boolean).join(', ');
              log(
                `traffic: round ${round + 1}/${o.rounds} ${scenario.padEnd(10)} ${workload.padEnd(6)} ${formatRate(workload, r.rate)}${notes ? ` (${notes})` : ''}`,
              );
            }
          }
        } finally {
          if (controller) {
            const c = controller;
            controller = undefined;
            await c.stop('SIGTERM');
            await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
            rmSync(pinRoot, { recursive: true, force: true });
          }
        }
      }
    }
    return { options: o, samples, modes, seconds: (Date.now() - t0) / 1000 };
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await controller?.stop('SIGKILL');
    server?.stop();
    standIn?.stop();
    await sim.teardown();
    rmSync(pinRoot, { recursive: true, force: true });
  }
}

/** "ebpf (redirect_peer, sk_assign)", "iptables (vxlan)": from the controller's log. */
function describeMode(events: readonly LogEvent[]): string {
  const find = (msg: string) => events.find((e) => e.msg.startsWith(msg));
  const mode = String(find('capture mode selected')?.mode ?? '?');
  const detail = [find('ebpf data path')?.variant, find('ebpf data path')?.delivery, find('iptables mode tunnel selected')?.tunnel].filter(
    (x) => typeof x === 'string',
  );
  return detail.length ? `${mode} (${detail.join(', ')})` : mode;
}

export function formatRate(workload: Workload, rate: number): string {
  if (workload === 'stream') return `${((rate * 8) / 1e9).toFixed(2)} Gbit/s`;
  return `${Math.round(rate)} ${workload === 'crr' ? 'conn/s' : 'rt/s'}`;
}
