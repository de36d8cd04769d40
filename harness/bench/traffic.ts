/**
 * Live traffic through the data path (figures, not a test). One simulated node, one run,
 * the same traffic from a pod under each scenario:
 *
 *   none        no controller at all, pod A
 *   ebpf        ebpf mode, pod A enrolled
 *   iptables    iptables mode, pod A enrolled
 *   none-b      no controller, pod B (the baseline of the next one)
 *   unenrolled  ebpf mode running (pod A enrolled), pod B not enrolled
 *
 * Workloads (`traffic-peer.ts`): connections/s (connect, small request, response, close;
 * a few loops at once), request/response on one connection (64-byte ping-pong), stream
 * throughput (bulk bytes pod -> outside). The server sits in the outside netns; in the
 * captured scenarios the ztunnel stand-in relays to it (`agent.js ztunnel --proxy`), as
 * ztunnel would. The machine is shared and noisy: scenarios are interleaved over rounds
 * (the order rotating each round, workloads too) and every figure is the median.
 *
 * Each workload also checks who carried it: in captured scenarios the stand-in must have
 * accepted every connection that succeeded, in the others none.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess, type LogEvent } from '../sim/controller.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { createInterface } from 'node:readline';
import type { PeerResult } from './traffic-peer.js';
import type { SelectedMode } from '../../src/core/modes.js';

export const SCENARIOS = ['none', 'ebpf', 'iptables', 'none-b', 'unenrolled'] as const;
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

export const DEFAULT_TRAFFIC: TrafficOptions = { rounds: 7, seconds: 2, warmupSeconds: 0.3, concurrency: 4 };

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

const PORT = 9000;
const PEER = fileURLToPath(new URL('./traffic-peer.js', import.meta.url));

/** Where each scenario's traffic comes from and which mode is on. */
const PLAN: Record<Scenario, { pod: 0 | 1; mode: SelectedMode | null; captured: boolean }> = {
  none: { pod: 0, mode: null, captured: false },
  ebpf: { pod: 0, mode: 'ebpf', captured: true },
  iptables: { pod: 0, mode: 'iptables', captured: true },
  'none-b': { pod: 1, mode: null, captured: false },
  unenrolled: { pod: 1, mode: 'ebpf', captured: false },
};

/** The slots of one round: scenarios sharing a mode run in the same slot. */
const SLOTS: { mode: 'ebpf' | 'iptables' | null; scenarios: Scenario[] }[] = [
  { mode: null, scenarios: ['none', 'none-b'] },
  { mode: 'ebpf', scenarios: ['ebpf', 'unenrolled'] },
  { mode: 'iptables', scenarios: ['iptables'] },
];

/** `xs` rotated left by `k`: round r starts with a different element. */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  const n = xs.length;
  return n === 0 ? [] : xs.map((_, i) => xs[(i + k) % n]!);
}

/** Starts the sink/echo/short-connection server in the outside netns. */
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

async function runPeer(pod: SimPod, workload: Workload, to: string, o: TrafficOptions): Promise<PeerResult> {
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
    String(PORT),
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
    const zt: SimServer = await sim.startZtunnel({ proxy: true });
    server = await startPeerServer(sim);
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
              const before = zt.accepted.length;
              const r = await runPeer(pods[plan.pod], workload, sim.outside.ip, o);
              // Connections that failed (timed out, reset) may never have reached the stand-in.
              const succeeded = r.connections - r.errors;
              if (plan.captured) await zt.waitForAccepted(before + succeeded, 10_000);
              else await new Promise((res) => setTimeout(res, 50));
              const via = zt.accepted.length - before;
              if (plan.captured ? via < succeeded || via > r.connections : via !== 0) {
                throw new Error(
                  `${scenario} ${workload}: the ztunnel stand-in saw ${via} of ${r.connections} connections (${r.errors} failed; want ${plan.captured ? 'every one that succeeded' : 'none'})`,
                );
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
