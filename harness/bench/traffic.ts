/**
 * Live traffic through the data path (figures, not a test). One simulated node, one run,
 * the same traffic from a pod under each scenario:
 *
 *   direct         no controller, pod A -> the stand-in's own server on ztunnel's address
 *                  (the plain path to a server at the capture's distance: one veth hop)
 *   ebpf-term      ebpf mode, pod A enrolled -> outside address; captured and answered by
 *                  the stand-in itself (the capture path, no relay)
 *   iptables-term  iptables mode, the same
 *   (these three with native ends: tools/trafficpeer's client in the pod and its
 *   terminating stand-in in ztunnel's netns, so that a JavaScript event loop does not
 *   set the pace; `--endpoints native,js` adds direct-js, ebpf-term-js, iptables-term-js,
 *   the same with traffic-peer.ts at both ends, for comparison)
 *   none           no controller, pod A -> the outside server
 *   ebpf           ebpf mode, pod A enrolled -> outside; the stand-in relays (as ztunnel would)
 *   iptables       iptables mode, the same
 *   none-b         no controller, pod B (the baseline of the next one)
 *   unenrolled     ebpf mode running (pod A enrolled), pod B not enrolled
 *
 * The relay scenarios and their baselines keep traffic-peer.ts at both ends (its relay is
 * ztunnel's stand-in there). Workloads (`traffic-peer.ts`): connections/s (connect, small
 * request, response, close; a few loops at once), request/response on one connection
 * (64-byte ping-pong) and on --concurrency connections at once (`rr-conc`), stream
 * throughput (bulk bytes from the pod). The stand-ins answer terminated and direct
 * connections as the outside server would; only one holds ztunnel's transparent
 * listeners at a time (the other is told to release them), the one the scenario needs. The
 * machine is shared and noisy: scenarios are interleaved over rounds (the order rotating
 * each round, workloads too) and compared round by round.
 *
 * Each workload also checks who carried it, from both stand-ins' counters: every
 * connection that succeeded went where its scenario says (which stand-in; relayed,
 * terminated, direct) and none anywhere else.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runInNode, startController, type ControllerProcess, type LogEvent } from '../sim/controller.js';
import { createSimNode } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { ZTUNNEL_PORTS } from '../sim/names.js';
import { parseEndpoints, type PeerKind, type PeerProcess, runClient, standInCounts, startPeer } from './peers.js';
import type { PeerResult, StandInCounts } from './traffic-peer.js';
import type { SelectedMode } from '../../src/core/modes.js';
import { ROUND_FLAGS, type RoundOptions, roundOptions } from './options.js';

export const SCENARIOS = [
  'direct',
  'ebpf-term',
  'iptables-term',
  'none',
  'ebpf',
  'iptables',
  'none-b',
  'unenrolled',
  'direct-js',
  'ebpf-term-js',
  'iptables-term-js',
] as const;
export type Scenario = (typeof SCENARIOS)[number];
/**
 * The workloads: connections/s, request/response on one connection and on --concurrency
 * connections at once (`rr-conc`), stream. One connection's ping-pong on two otherwise
 * idle CPUs waits mostly for the other CPU to wake (docs/inpod.md, "Reading the in-pod
 * request/response figures"); with several at once the CPUs stay busy and the rate follows
 * what each round trip costs.
 */
export const WORKLOADS = ['crr', 'rr', 'rr-conc', 'stream'] as const;
export type Workload = (typeof WORKLOADS)[number];
/** What the peers run (rr-conc is rr with more connections). */
export type ClientWorkload = PeerResult['workload'];

const CLIENT_WORKLOAD: Record<Workload, ClientWorkload> = { crr: 'crr', rr: 'rr', 'rr-conc': 'rr', stream: 'stream' };

/** The client run of a workload: rr on one connection, rr-conc on `concurrency` at once. */
export function clientRunOf(workload: Workload, concurrency: number): { workload: ClientWorkload; rrConnections?: number } {
  const client = CLIENT_WORKLOAD[workload];
  return client === 'rr' ? { workload: client, rrConnections: workload === 'rr-conc' ? concurrency : 1 } : { workload: client };
}

export interface TrafficOptions extends RoundOptions {
  /** Ends of the terminating and direct scenarios: native always; js adds the `-js` ones. */
  endpoints: readonly PeerKind[];
}

export const DEFAULT_TRAFFIC: TrafficOptions = { rounds: 10, seconds: 1.5, warmupSeconds: 0.3, concurrency: 4, endpoints: ['native'] };

export interface TrafficSample {
  round: number;
  scenario: Scenario;
  workload: Workload;
  /** connections/s, round trips/s or bytes/s. */
  rate: number;
  errors: number;
  /** SYN retransmissions in the client's netns during the run. */
  synRetrans?: number;
  /**
   * Native ends: the client's and the native stand-in's own CPU time (getrusage: their work
   * and the kernel's done in their context) per operation over the whole run, ns.
   */
  endsNsPerOp?: number;
}

export interface TrafficRun {
  options: TrafficOptions;
  samples: TrafficSample[];
  /** What the controller logged as its mode (ebpf variant, iptables tunnel). */
  modes: Record<string, string>;
  seconds: number;
}

/** The outside server's ports (the relay scenarios go there through the JS stand-in). */
const PORT = 9000;
/** Ports each stand-in answers itself when captured, and serves directly on ztunnel's address. */
const TERMINATE_PORT: Record<PeerKind, number> = { native: 9100, js: 9200 };

type Target = 'outside' | 'outside-terminated' | 'ztunnel';
/** Which stand-in counter a scenario's connections must all land in (none: none of them). */
type Carrier = keyof StandInCounts | null;

interface Plan {
  pod: 0 | 1;
  mode: SelectedMode | null;
  to: Target;
  carrier: Carrier;
  /** The client, and the stand-in that must carry the connections (the relay is JS). */
  peer: PeerKind;
}

/** Where each scenario's traffic comes from, where it goes, which mode is on, and who must carry it. */
export const PLAN: Record<Scenario, Plan> = {
  direct: { pod: 0, mode: null, to: 'ztunnel', carrier: 'direct', peer: 'native' },
  'ebpf-term': { pod: 0, mode: 'ebpf', to: 'outside-terminated', carrier: 'terminated', peer: 'native' },
  'iptables-term': { pod: 0, mode: 'iptables', to: 'outside-terminated', carrier: 'terminated', peer: 'native' },
  none: { pod: 0, mode: null, to: 'outside', carrier: null, peer: 'js' },
  ebpf: { pod: 0, mode: 'ebpf', to: 'outside', carrier: 'relayed', peer: 'js' },
  iptables: { pod: 0, mode: 'iptables', to: 'outside', carrier: 'relayed', peer: 'js' },
  'none-b': { pod: 1, mode: null, to: 'outside', carrier: null, peer: 'js' },
  unenrolled: { pod: 1, mode: 'ebpf', to: 'outside', carrier: null, peer: 'js' },
  'direct-js': { pod: 0, mode: null, to: 'ztunnel', carrier: 'direct', peer: 'js' },
  'ebpf-term-js': { pod: 0, mode: 'ebpf', to: 'outside-terminated', carrier: 'terminated', peer: 'js' },
  'iptables-term-js': { pod: 0, mode: 'iptables', to: 'outside-terminated', carrier: 'terminated', peer: 'js' },
};

/** The slots of one round: scenarios sharing a mode run in the same slot. */
const SLOTS: { mode: 'ebpf' | 'iptables' | null; scenarios: Scenario[] }[] = [
  { mode: null, scenarios: ['direct', 'none', 'none-b', 'direct-js'] },
  { mode: 'ebpf', scenarios: ['ebpf-term', 'ebpf', 'unenrolled', 'ebpf-term-js'] },
  { mode: 'iptables', scenarios: ['iptables-term', 'iptables', 'iptables-term-js'] },
];

/** The slots with the scenarios these endpoints run (the `-js` ones only with js). */
export function slotsFor(endpoints: readonly PeerKind[]): typeof SLOTS {
  const js = endpoints.includes('js');
  return SLOTS.map((slot) => ({ ...slot, scenarios: slot.scenarios.filter((s) => js || !s.endsWith('-js')) }));
}

/**
 * Which stand-in must hold ztunnel's transparent listeners for a scenario: the relay is the
 * JS one's, a terminating scenario its peer's; null when it does not matter.
 */
export function holderFor(plan: Plan): PeerKind | null {
  if (plan.carrier === 'relayed') return 'js';
  if (plan.carrier === 'terminated') return plan.peer;
  return null;
}

/**
 * The oracle: for each stand-in and counter, how many connections it took in one run, and
 * the plan's carrier; every connection that succeeded went to the carrier (of its peer's
 * stand-in), none anywhere else. Returns the complaint, or null.
 */
export function carriedAsPlanned(plan: Plan, delta: Record<PeerKind, StandInCounts>, r: { connections: number; errors: number }): string | null {
  // Connections that failed (timed out, reset) may never have reached a stand-in.
  const succeeded = r.connections - r.errors;
  for (const kind of ['native', 'js'] as const) {
    for (const k of ['relayed', 'terminated', 'direct', 'refused'] as const) {
      const n = delta[kind][k];
      const mine = kind === plan.peer && k === plan.carrier;
      if (mine ? n < succeeded || n > r.connections : n !== 0)
        return `the ${kind} ztunnel stand-in counted ${n} ${k} of ${r.connections} connections (${r.errors} failed; want ${mine ? 'every one that succeeded' : 'none'})`;
    }
  }
  return null;
}

/** `xs` rotated left by `k`: round r starts with a different element. */
export function rotate<T>(xs: readonly T[], k: number): T[] {
  const n = xs.length;
  return n === 0 ? [] : xs.map((_, i) => xs[(i + k) % n]!);
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
  let server: PeerProcess | undefined;
  const standIns: Partial<Record<PeerKind, PeerProcess>> = {};
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
    const listen = ZTUNNEL_PORTS.join(',');
    // Both stand-ins start without the transparent listeners; `hold` gives them to one.
    standIns.js = await startPeer(sim.ztunnel.ns, 'js', [
      'ztunnel',
      '--port',
      String(PORT),
      '--terminate',
      String(TERMINATE_PORT.js),
      '--listen',
      listen,
      '--standby',
    ]);
    standIns.native = await startPeer(sim.ztunnel.ns, 'native', [
      'ztunnel',
      '--terminate',
      String(TERMINATE_PORT.native),
      '--listen',
      listen,
      '--direct',
      '--standby',
    ]);
    let holder: PeerKind | null = null;
    const hold = async (kind: PeerKind) => {
      if (holder === kind) return;
      if (holder) await standIns[holder]!.ask('release', 'released');
      holder = null;
      await standIns[kind]!.ask('listen', 'listening');
      holder = kind;
    };
    const counts = async (): Promise<Record<PeerKind, StandInCounts>> => ({
      native: await standInCounts(standIns.native!),
      js: await standInCounts(standIns.js!),
    });
    server = await startPeer(sim.outside.ns, 'js', ['serve', '--port', String(PORT)]);
    const targets = (peer: PeerKind): Record<Target, [string, number]> => ({
      outside: [sim.outside.ip, PORT],
      'outside-terminated': [sim.outside.ip, TERMINATE_PORT[peer]],
      ztunnel: [sim.ztunnel.ip, TERMINATE_PORT[peer]],
    });
    const pods = [sim.pods[0]!, sim.pods[1]!] as const;
    for (let round = 0; round < o.rounds; round++) {
      for (const slot of rotate(slotsFor(o.endpoints), round)) {
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
              const needs = holderFor(plan);
              if (needs) await hold(needs);
              const before = await counts();
              const run = clientRunOf(workload, o.concurrency);
              const r = await runClient(pods[plan.pod].ns, plan.peer, run.workload, ...targets(plan.peer)[plan.to], { ...o, ...run });
              const after = await counts();
              const delta = (kind: PeerKind) =>
                Object.fromEntries(
                  (Object.keys(after[kind]) as (keyof StandInCounts)[]).map((k) => [k, after[kind][k] - before[kind][k]]),
                ) as unknown as StandInCounts;
              const wrong = carriedAsPlanned(plan, { native: delta('native'), js: delta('js') }, r);
              if (wrong) throw new Error(`${scenario} ${workload}: ${wrong}`);
              // The native stand-in answers every native scenario (terminated or direct).
              const cpuOf = (c: StandInCounts) => (c as StandInCounts & { cpuSeconds?: number }).cpuSeconds ?? NaN;
              const ends = (r.cpuSeconds ?? NaN) + cpuOf(after.native) - cpuOf(before.native);
              const ops = r.rate * (o.seconds + o.warmupSeconds);
              const cost = plan.peer === 'native' && Number.isFinite(ends) && ops > 0 ? { endsNsPerOp: (ends * 1e9) / ops } : {};
              samples.push({ round, scenario, workload, rate: r.rate, errors: r.errors, synRetrans: r.synRetrans, ...cost });
              const notes = [r.errors && `${r.errors} errors`, r.synRetrans && `${r.synRetrans} SYN retransmits`].filter(Boolean).join(', ');
              log(
                `traffic: round ${round + 1}/${o.rounds} ${scenario.padEnd(16)} ${workload.padEnd(7)} ${formatRate(workload, r.rate)}${notes ? ` (${notes})` : ''}`,
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
    standIns.js?.stop();
    standIns.native?.stop();
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

/** Options of traffic.ts run on its own (the bench command's part takes its own flags). */
export function parseTrafficOptions(argv: string[]): TrafficOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...ROUND_FLAGS,
      endpoints: { type: 'string' },
    },
    strict: true,
  });
  return {
    ...roundOptions(values, DEFAULT_TRAFFIC),
    endpoints: parseEndpoints(values.endpoints),
  };
}

// node dist/harness/bench/traffic.js [--rounds N] [--seconds S] [--warmup S] [--concurrency N]
//                                    [--endpoints native,js]: this part alone, its tables on stdout.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  // The report first: it imports this module too, so a cycle between them shows at once,
  // whatever the flags (test/build/cli.test.ts).
  const { CPU_RATIOS, JS_RATIOS, RELAY_RATIOS, ratios, ratioTable, trafficTable } = await import('./report.js');
  let options: TrafficOptions;
  try {
    options = parseTrafficOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`traffic bench: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const abort = new AbortController();
  process.once('SIGINT', () => abort.abort());
  process.once('SIGTERM', () => abort.abort());
  runTraffic(options, (l) => process.stderr.write(`${l}\n`), abort.signal).then(
    (run) => {
      const out = [
        trafficTable(run.samples, run.options.concurrency),
        ratioTable(ratios(run.samples)),
        ratioTable(ratios(run.samples, RELAY_RATIOS)),
        ratioTable(ratios(run.samples, CPU_RATIOS)),
      ];
      if (options.endpoints.includes('js')) out.push(ratioTable(ratios(run.samples, JS_RATIOS)));
      process.stdout.write(`${out.join('\n\n')}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`traffic bench: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
