/**
 * In-pod captures side by side (figures, not a test): the same traffic from one enrolled
 * pod of a simulated node with no capture and under each in-pod capture named, through the
 * in-pod ztunnel stand-in (harness/sim/ztunnel-inpod.ts: ZDS, listeners inside the pod's
 * netns), which either has each captured connection answered as the server would
 * (terminating: the capture path alone, the goals' figures) or relays it to its original
 * destination by a socket marked 0x539, as ztunnel does (`<capture>-relay`: the relay's
 * cost included). The pod's netns reaches the stand-in over a real ZDS socket.
 *
 * Ends: `none` and the terminating scenarios run native ends (tools/trafficpeer): its
 * client in the pod, its server outside, and, for a terminating capture, the listeners
 * the capture finds are the native stand-in's (`trafficpeer ztunnel --netns-fd 3`, spawned
 * on the ZDS add with the pod's netns fd inherited, which it enters with setns; SO_MARK
 * 0x539, SO_REUSEPORT, transparent, as ztunnel's), so no JavaScript event loop sets the
 * pace. The relay keeps Node.js at both ends. `--endpoints native,js` adds `none-js` and
 * `<capture>-js`: the terminating pair with traffic-peer.js ends, for comparison.
 * `loopback` is the ceiling (LOOPBACK below): the pod's client to the native stand-in in
 * the pod's own netns over 127.0.0.1, no capture; its ratio to iptables is reported beside
 * each goal.
 *
 *   node dist/harness/bench/inpod.js [--captures iptables,ebpf] [--workloads crr,rr,rr-conc,stream]
 *                                    [--rounds N] [--seconds S]
 *                                    [--warmup S] [--concurrency N] [--endpoints native,js] [--one-cpu]
 *
 * Workloads are traffic.ts's (traffic-peer.ts): connections/s, request/response on one
 * connection, stream; and `rr-conc`: request/response on --concurrency connections at once,
 * as many as the connections/s workload's connect loops. One connection's ping-pong on two
 * otherwise idle CPUs waits mostly for the other CPU to wake (docs/inpod.md, "Reading
 * the in-pod request/response figures"); with several at once the CPUs stay busy and the
 * rate follows what each round trip costs.
 * Scenarios are interleaved over rounds, the order rotating each round, and every figure
 * is the median. Each capture is installed for its slot (init, install, ZDS add) and taken
 * out after it (ZDS del, remove, the host half uninstalled), so the captures never meet.
 * Every workload checks who carried it: under a capture the scenario's stand-in (native or
 * JS) accepted every connection that succeeded and the other none; with no capture, no
 * stand-in any connection.
 *
 * A capture plugs in by name in CAPTURES below.
 */
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { InPodCapture } from '../../src/capture/inpod.js';
import { createEbpfInPodCapture, uninstallInpod } from '../../src/capture/inpod/ebpf.js';
import { InpodIptables, uninstallInpodIptablesHost } from '../../src/capture/inpod/iptables.js';
import { systemRunner } from '../../src/host/runner.js';
import { createLogger, type Logger } from '../../src/log.js';
import { ZdsServer } from '../../src/zds/server.js';
import { createSimNode, type SimNode } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { INPOD_PORTS, type StandInEvent, ZtunnelInpod } from '../sim/ztunnel-inpod.js';
import { cpuNow, cpuSleepsNow, processCpuNow, progDelta, tcProgStats, withBpfStats } from './cost.js';
import { median } from './report.js';
import { figure, figuresLine, ratioInterval, type Figure, type Goal } from './stats.js';
import { clientRunOf, formatRate, rotate, WORKLOADS, type Workload } from './traffic.js';
import { PEER_KINDS, parseEndpoints, type PeerKind, type PeerProcess, runClient, standInCounts, startPeer } from './peers.js';
import { accept as answerAs, BY_OFFSET, type StandInCounts } from './traffic-peer.js';
import { ROUND_FLAGS, type RoundOptions, roundOptions } from './options.js';

/** The workloads a run had (--workloads), in WORKLOADS' order. */
const workloadsIn = (samples: readonly InpodSample[]): Workload[] => WORKLOADS.filter((w) => samples.some((s) => s.workload === w));

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

export interface InpodBenchOptions extends RoundOptions {
  captures: string[];
  /** The workloads to run, a subset of WORKLOADS in its order. */
  workloads: readonly Workload[];
  /** Ends of `none` and the terminating scenarios: native always; js adds `none-js`, `<capture>-js`. */
  endpoints: readonly PeerKind[];
  /** Turn the kernel's BPF run statistics on for the run (and back) and report the capture programs' share. */
  bpfStats?: boolean;
  /**
   * --one-cpu: every native end (the pod's client, the outside server, the native stand-in)
   * on CPU 0 only, so the kernel's work of a round trip runs there too and no wake-up
   * crosses to an idle CPU. request/response is one connection's ping-pong: spread over
   * two CPUs of an idle VM its rate is the cross-CPU wake-up (no capture came out slower
   * than iptables' capture), on one CPU it is the path's cost. Figures get "(one CPU)".
   */
  cpu?: number;
}

/**
 * The ceiling: no capture, the pod's client and the native stand-in both in the pod's
 * netns, over 127.0.0.1, with no netfilter and no program on the way. The stand-in is the
 * same program with the same listeners as the captures' (`trafficpeer ztunnel`), serving
 * the workloads' ports directly (`--direct`) and asking each connection its original
 * destination as it asks a captured one. Every terminating capture hands its connection
 * to a TCP socket in the same netns, so this is the cheapest path such a capture could
 * give it, short of bypassing TCP: `loopback / iptables` is the most any of them can reach
 * against Istio's rules on the machine it runs on.
 */
const LOOPBACK = 'loopback';
/** The pod's interfaces the captures' programs sit on: eth0, and lo (the local route's inpod_lo_in). */
const CAPTURE_DEVS = ['eth0', 'lo'] as const;
/** The suffix of a capture's scenario with the relaying stand-in. */
const RELAY = '-relay';
/** The suffix of a scenario with traffic-peer.js ends instead of native ones. */
const JS = '-js';

export const DEFAULT_INPOD_BENCH: InpodBenchOptions = {
  captures: Object.keys(CAPTURES),
  workloads: WORKLOADS,
  rounds: 5,
  seconds: 2,
  warmupSeconds: 0.3,
  concurrency: 4,
  endpoints: ['native'],
};

/** What a scenario's name says: the capture (or none), its ends, and whether the stand-in relays. */
export function scenarioOf(name: string): { capture: string | null; ends: PeerKind; relay: boolean; loopback: boolean } {
  if (name === LOOPBACK) return { capture: null, ends: 'native', relay: false, loopback: true };
  const relay = name.endsWith(RELAY);
  const js = name.endsWith(JS);
  const base = relay ? name.slice(0, -RELAY.length) : js ? name.slice(0, -JS.length) : name;
  return { capture: base === 'none' ? null : base, ends: relay || js ? 'js' : 'native', relay, loopback: false };
}

/** Every scenario of a run, in its base order (rounds rotate it). */
export function scenarioNames(captures: readonly string[], endpoints: readonly PeerKind[]): string[] {
  const js = endpoints.includes('js') ? ['none', ...captures].map((c) => `${c}${JS}`) : [];
  return ['none', LOOPBACK, ...captures, ...captures.map((c) => `${c}${RELAY}`), ...js];
}

export interface InpodSample {
  round: number;
  /** 'none' or a capture's name. */
  scenario: string;
  workload: Workload;
  rate: number;
  errors: number;
  /** SYNs the pod's client sent again (its netns's TcpExtTCPSynRetrans over the run): each one a connection that waited a second. */
  synRetrans: number;
  /** The machine's busy CPU time over the client's run per operation (connection, round trip, byte), ns. */
  cpuNsPerOp?: number;
  /** Native ends: the client's and the answering end's (server or stand-in) own CPU time per operation, ns. */
  endsNsPerOp?: number;
  /** The machine's CPUs' sleeps (cpuidle entries) over the run per operation; absent without cpuidle. */
  sleepsPerOp?: number;
  /** With --bpf-stats: the capture's TC programs in the pod, runs and run time per operation. */
  bpf?: { runsPerOp: number; nsPerOp: number; programs: Record<string, { runsPerOp: number; nsPerOp: number }> };
}

/** The JS server's ports outside (the relay and the JS ends go there). */
const PORT = 9000;
/** The native server's ports outside; a native stand-in terminates connections to them. */
const NATIVE_PORT = 9100;
const PORTS: Record<PeerKind, number> = { native: NATIVE_PORT, js: PORT };
const UID = 'bench-pod0';

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
  const servers: PeerProcess[] = [];
  let zds: ZdsServer | undefined;
  let z: ZtunnelInpod | undefined;
  const samples: InpodSample[] = [];
  try {
    fd = openSync(`/var/run/netns/${pod.ns}`, 'r');
    const podNetns = { uid: UID, namespace: 'bench', name: pod.name, ips: [pod.ip, pod.ip6], fd };
    servers.push(await startPeer(sim.outside.ns, 'js', ['serve', '--port', String(PORT)]));
    const nativeServer = await startPeer(sim.outside.ns, 'native', ['serve', '--port', String(NATIVE_PORT)], { cpu: o.cpu });
    servers.push(nativeServer);
    zds = new ZdsServer({ path: join(dir, 'ztunnel.sock'), log });
    let accepted = 0;
    const onEvent = (e: StandInEvent) => {
      if (e.event === 'accepted') accepted++;
    };
    let current = scenarioOf('none');
    // JS ends terminating: answered here; relaying: left to the stand-in's relay.
    const answer = (sock: Socket, origDst: string): boolean => {
      if (current.relay || current.ends !== 'js') return false;
      const w = BY_OFFSET[Number(origDst.slice(origDst.lastIndexOf(':') + 1)) - PORT];
      if (!w) return false;
      answerAs(sock, w);
      return true;
    };
    // Native ends terminating: the pod's listeners are the native stand-in's.
    let native: Promise<PeerProcess> | null = null;
    const listenElsewhere = (_uid: string, netnsFd: number, ports: readonly number[]) => {
      if (current.relay || current.ends !== 'native') return null;
      const args = ['ztunnel', '--terminate', String(NATIVE_PORT), '--listen', ports.join(','), '--netns-fd', '3'];
      const started = startPeer('', 'native', args, { stdio: ['pipe', 'pipe', 'pipe', netnsFd], cpu: o.cpu });
      started.catch(() => undefined); // awaited (and its failure thrown) by the scenario
      native = started;
      return {
        close: () =>
          void started.then(
            (p) => p.stop(),
            () => undefined,
          ),
      };
    };
    z = new ZtunnelInpod({ socket: join(dir, 'ztunnel.sock'), proxy: true, answer, listenElsewhere, onEvent });
    const zt = z;
    await until('the stand-in connected', () => zt.ready);
    const none: StandInCounts = { relayed: 0, terminated: 0, direct: 0, refused: 0 };
    for (let round = 0; round < o.rounds; round++) {
      for (const scenario of rotate(scenarioNames(o.captures, o.endpoints), round)) {
        current = scenarioOf(scenario);
        native = null;
        const bench = current.capture === null ? null : CAPTURES[current.capture]!({ sim, log });
        if (bench) {
          // The ZDS flow's order: capture in place, then the pod's add.
          await bench.capture.init();
          await bench.capture.install(podNetns);
          zds.addPod(UID, { name: pod.name, namespace: 'bench', serviceAccount: 'default' }, fd);
          await until('the stand-in holds the pod', () => zt.held().some((h) => h.uid === UID));
        }
        // The ceiling's server, in the pod and only for its slot (no listener of the pod's
        // own sits beside a capture's): the native stand-in itself, its listeners as on a
        // ZDS add, serving the workloads' ports directly (LOOPBACK).
        const podServer = current.loopback
          ? await startPeer(pod.ns, 'native', ['ztunnel', '--terminate', String(NATIVE_PORT), '--listen', INPOD_PORTS.join(','), '--direct'], { cpu: o.cpu })
          : null;
        try {
          const nativeStandIn = native === null ? null : await (native as Promise<PeerProcess>);
          if (bench && !current.relay && (nativeStandIn !== null) !== (current.ends === 'native'))
            throw new Error(`${scenario}: the native stand-in ${nativeStandIn ? 'started' : 'did not start'} on the pod's add`);
          for (const workload of rotate(o.workloads, round)) {
            const before = {
              js: accepted,
              native: nativeStandIn ? await standInCounts(nativeStandIn) : none,
              pod: podServer ? await standInCounts(podServer) : none,
            };
            // The answering end: the native stand-in when it terminates, the pod's own server for
            // the ceiling, else the outside server.
            const answerer = current.ends === 'native' ? (nativeStandIn ?? podServer ?? (bench ? null : nativeServer)) : null;
            const end0 = answerer?.child.pid ? processCpuNow(answerer.child.pid) : NaN;
            const cpu0 = cpuNow().busy;
            const sleeps0 = cpuSleepsNow();
            const prog0 = o.bpfStats ? await tcProgStats(pod.ns, CAPTURE_DEVS) : {};
            const run = clientRunOf(workload, o.concurrency);
            const to = current.loopback ? '127.0.0.1' : sim.outside.ip;
            const r = await runClient(pod.ns, current.ends, run.workload, to, PORTS[current.ends], { ...o, ...run });
            const cpu1 = cpuNow().busy;
            const sleeps1 = cpuSleepsNow();
            const end1 = answerer?.child.pid ? processCpuNow(answerer.child.pid) : NaN;
            const byName = o.bpfStats ? progDelta(prog0, await tcProgStats(pod.ns, CAPTURE_DEVS)) : {};
            const progs = Object.values(byName);
            // Operations over the whole run (warm-up too), as the CPU time covers it.
            const ops = r.rate * (o.seconds + o.warmupSeconds);
            const succeeded = r.connections - r.errors;
            const nativeNow = async () => (nativeStandIn ? await standInCounts(nativeStandIn) : none);
            const jsCarries = bench !== null && current.ends === 'js';
            if (jsCarries) await until(`${scenario} ${workload}: the stand-in accepted what succeeded`, () => accepted - before.js >= succeeded);
            const after = await nativeNow();
            const via = { js: accepted - before.js, native: after.terminated - before.native.terminated, refused: after.refused - before.native.refused };
            const carrier = bench === null ? null : current.ends;
            for (const kind of PEER_KINDS) {
              const n = via[kind];
              if (kind === carrier ? n < succeeded || n > r.connections : n !== 0)
                throw new Error(`${scenario} ${workload}: the ${kind} stand-in took ${n} of ${r.connections} connections (${r.errors} failed)`);
            }
            if (via.refused !== 0) throw new Error(`${scenario} ${workload}: the native stand-in refused ${via.refused} connections`);
            if (podServer) {
              // The ceiling: the pod's stand-in took every connection that succeeded, directly.
              const p = await standInCounts(podServer);
              const direct = p.direct - before.pod.direct;
              if (direct < succeeded || direct > r.connections || p.terminated !== before.pod.terminated || p.refused !== before.pod.refused)
                throw new Error(
                  `${scenario} ${workload}: the pod's stand-in took ${direct} of ${r.connections} connections directly (${r.errors} failed), ${p.terminated - before.pod.terminated} captured, ${p.refused - before.pod.refused} refused`,
                );
            }
            const ends = (r.cpuSeconds ?? NaN) + (end1 - end0);
            const cost =
              ops > 0
                ? {
                    cpuNsPerOp: (cpu1 - cpu0) / ops,
                    ...(Number.isFinite(ends) && { endsNsPerOp: (ends * 1e9) / ops }),
                    ...(sleeps0 !== undefined && sleeps1 !== undefined && { sleepsPerOp: (sleeps1 - sleeps0) / ops }),
                  }
                : {};
            const bpf = progs.length
              ? {
                  bpf: {
                    runsPerOp: progs.reduce((n, p) => n + p.runCount, 0) / ops,
                    nsPerOp: progs.reduce((n, p) => n + p.runTimeNs, 0) / ops,
                    programs: Object.fromEntries(
                      Object.entries(byName).map(([name, p]) => [name, { runsPerOp: p.runCount / ops, nsPerOp: p.runTimeNs / ops }]),
                    ),
                  },
                }
              : {};
            samples.push({ round, scenario, workload, rate: r.rate, errors: r.errors, synRetrans: r.synRetrans, ...cost, ...bpf });
            say(
              `inpod: round ${round + 1}/${o.rounds} ${scenario.padEnd(10)} ${workload.padEnd(7)} ${formatRate(workload, r.rate)}${r.errors ? ` (${r.errors} errors)` : ''}${r.synRetrans ? ` (${r.synRetrans} SYNs sent again)` : ''}`,
            );
          }
        } finally {
          if (podServer) {
            podServer.stop();
            await podServer.exited;
          }
          if (bench) {
            zds.removePod(UID);
            await until('the stand-in let the pod go', () => !zt.held().some((h) => h.uid === UID));
            // Its listeners gone before the next scenario's (SO_REUSEPORT would share the ports).
            if (native) await (await (native as Promise<PeerProcess>)).exited;
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
    for (const p of servers) p.stop();
    if (fd >= 0) closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
    await sim.teardown();
  }
}

/**
 * Medians per scenario and workload, and each capture's ratio to every other (and to none),
 * for each kind of stand-in that ran: terminating with native ends, relaying, terminating
 * with JS ends.
 */
export function inpodTable(samples: readonly InpodSample[], captures: readonly string[]): string {
  const med = (scenario: string, w: Workload) => median(samples.filter((s) => s.scenario === scenario && s.workload === w).map((s) => s.rate));
  const ran = workloadsIn(samples);
  const lines = [`${'scenario'.padEnd(16)}${ran.map((w) => w.padStart(16)).join('')}`];
  const present = (xs: string[]) => xs.filter((c) => samples.some((s) => s.scenario === c));
  const relayed = present(captures.map((c) => `${c}${RELAY}`));
  const js = present(captures.map((c) => `${c}${JS}`));
  const noneJs = present([`none${JS}`]);
  const loopback = present([LOOPBACK]);
  const scenarios = ['none', ...loopback, ...captures, ...relayed, ...noneJs, ...js];
  for (const s of scenarios) lines.push(`${s.padEnd(16)}${ran.map((w) => formatRate(w, med(s, w)).padStart(16)).join('')}`);
  // A lost SYN stalls its connection for the 1 s retransmit: a few of them move connections/s.
  const resent = (s: string) => samples.filter((x) => x.scenario === s).reduce((n, x) => n + x.synRetrans, 0);
  lines.push(`SYNs the client sent again (all rounds and workloads): ${scenarios.map((s) => `${s} ${resent(s)}`).join(', ')}`);
  // How often an operation waited for a sleeping CPU: near 2 per round trip, the rate is the
  // wake-ups' more than the path's (rr beside rr-conc).
  const sleeps = (s: string, w: Workload) =>
    median(samples.filter((x) => x.scenario === s && x.workload === w && x.sleepsPerOp !== undefined).map((x) => x.sleepsPerOp!));
  const perOp = (s: string) => (['crr', 'rr', 'rr-conc'] as const).filter((w) => Number.isFinite(sleeps(s, w))).map((w) => `${w} ${sleeps(s, w).toFixed(2)}`);
  const slept = scenarios.filter((s) => perOp(s).length > 0);
  if (slept.length)
    lines.push(
      `CPU sleeps per connection (crr) or round trip (cpuidle entries, all CPUs; medians): ${slept.map((s) => `${s} ${perOp(s).join(', ')}`).join('; ')}`,
    );
  for (const [set, bases, label] of [
    [captures, ['none', ...loopback], 'terminating stand-in'],
    [relayed, ['none'], 'relaying stand-in'],
    [js, [`none${JS}`], 'terminating stand-in, JS ends'],
  ] as const) {
    for (const a of set) {
      for (const b of [...set.filter((x) => x !== a), ...bases]) {
        lines.push(`inpod ${a}/${b} (${label}): ${ran.map((w) => `${w} ${(med(a, w) / med(b, w)).toFixed(2)}x`).join(', ')}`);
      }
    }
  }
  return lines.join('\n');
}

/**
 * Where the time goes (with --bpf-stats): per scenario and workload, the machine's busy CPU
 * per operation and the capture's TC programs' runs and run time per operation (medians).
 */
export function inpodCostTable(samples: readonly InpodSample[]): string {
  const lines = [
    "cost per operation (connection, round trip; stream: per KiB): machine busy CPU, native ends' own CPU (client + server or stand-in) | capture programs: runs, run time",
  ];
  const scenarios = [...new Set(samples.map((s) => s.scenario))];
  for (const sc of scenarios) {
    const cells = workloadsIn(samples).map((w) => {
      const xs = samples.filter((s) => s.scenario === sc && s.workload === w && s.cpuNsPerOp !== undefined);
      if (xs.length === 0) return '–';
      const k = w === 'stream' ? 1024 : 1;
      const cpu = median(xs.map((s) => s.cpuNsPerOp! * k));
      const e = xs.filter((s) => s.endsNsPerOp !== undefined);
      const endsText = e.length ? `, ends ${(median(e.map((s) => s.endsNsPerOp! * k)) / 1000).toFixed(1)} µs` : '';
      const b = xs.filter((s) => s.bpf);
      const names = [...new Set(b.flatMap((s) => Object.keys(s.bpf!.programs)))].sort();
      const each = names.map((n) => {
        const ps = b.map((s) => s.bpf!.programs[n]).filter((p) => p !== undefined);
        return `${n} ${median(ps.map((p) => p.runsPerOp * k)).toFixed(1)} runs ${median(ps.map((p) => p.nsPerOp * k)).toFixed(0)} ns`;
      });
      const bpf = b.length
        ? ` | ${median(b.map((s) => s.bpf!.runsPerOp * k)).toFixed(1)} runs ${median(b.map((s) => s.bpf!.nsPerOp * k)).toFixed(0)} ns (${each.join(', ')})`
        : '';
      return `${w} ${(cpu / 1000).toFixed(1)} µs${endsText}${bpf}`;
    });
    lines.push(`cost ${sc.padEnd(16)} ${cells.join('; ')}`);
  }
  return lines.join('\n');
}

/**
 * Issue 18's goals for in-pod eBPF over in-pod iptables, by workload. request/response's is
 * the concurrent connections' figure: one connection's ping-pong on two idle CPUs is mostly
 * the wake-up of a halted CPU (docs/inpod.md, "Reading the in-pod request/response
 * figures") and is reported beside it without a goal.
 */
const INPOD_GOALS: Record<Workload, Goal> = {
  crr: { kind: 'atLeast', value: 1.3 },
  rr: { kind: 'none' },
  'rr-conc': { kind: 'atLeast', value: 1.15 },
  stream: { kind: 'none' },
};

function workloadText(w: Workload, concurrency: number): string {
  const text: Record<Workload, string> = {
    crr: 'connections/s',
    rr: 'request/response, one connection',
    'rr-conc': `request/response, ${concurrency} connections at once`,
    stream: 'stream throughput',
  };
  return text[w];
}

/** In-pod ebpf / in-pod iptables per workload: per-round ratios, their interval and verdict (both captures run). */
export function inpodFigures(samples: readonly InpodSample[], o: { oneCpu?: boolean; concurrency?: number } = {}): Figure[] {
  const tag = o.oneCpu ? ' (one CPU)' : '';
  const concurrency = o.concurrency ?? DEFAULT_INPOD_BENCH.concurrency;
  const rounds = [...new Set(samples.map((s) => s.round))];
  const at = (scenario: string, w: Workload, r: number) => samples.find((s) => s.scenario === scenario && s.workload === w && s.round === r);
  if (!samples.some((s) => s.scenario === 'ebpf') || !samples.some((s) => s.scenario === 'iptables')) return [];
  const pairs = (w: Workload, num: string, den: string, value: (s: InpodSample) => number | undefined) =>
    rounds.flatMap((r) => {
      const a = at(num, w, r);
      const b = at(den, w, r);
      const x = a && value(a);
      const y = b && value(b);
      return x !== undefined && y !== undefined ? [{ num: x, den: y }] : [];
    });
  const rates = workloadsIn(samples).map((w) =>
    figure(
      `in-pod ebpf / in-pod iptables: ${workloadText(w, concurrency)}${tag}`,
      '×',
      INPOD_GOALS[w],
      ratioInterval(pairs(w, 'ebpf', 'iptables', (s) => s.rate)),
    ),
  );
  // The ceiling beside each goal: where its interval lies below the goal, no capture that
  // hands the connection to a TCP socket in the pod can meet it on this machine.
  const ceiling = samples.some((s) => s.scenario === LOOPBACK)
    ? workloadsIn(samples)
        .filter((w) => INPOD_GOALS[w].kind !== 'none')
        .map((w) =>
          figure(
            `in-pod ceiling (loopback, no capture) / in-pod iptables: ${workloadText(w, concurrency)}${tag}`,
            '×',
            { kind: 'none' },
            ratioInterval(pairs(w, LOOPBACK, 'iptables', (s) => s.rate)),
          ),
        )
    : [];
  // The same comparison in CPU: what the native ends (client and the stand-in, with the
  // kernel's work done in their context) spent per operation, iptables over ebpf (above 1:
  // ebpf cheaper). On a shared machine a rate follows the CPU share it gets as much as its
  // cost; this follows the cost.
  const per: Partial<Record<Workload, string>> = {
    crr: 'connection',
    rr: 'round trip, one connection',
    'rr-conc': `round trip, ${concurrency} connections at once`,
  };
  const cpu = (['crr', 'rr', 'rr-conc'] as const).flatMap((w) => {
    const p = pairs(w, 'iptables', 'ebpf', (s) => s.endsNsPerOp);
    return p.length ? [figure(`in-pod iptables / in-pod ebpf: ends' CPU per ${per[w]}${tag}`, '×', { kind: 'none' }, ratioInterval(p, 7))] : [];
  });
  return [...rates, ...ceiling, ...cpu];
}

/** --workloads: names of WORKLOADS, comma-separated; run in WORKLOADS' order. */
function parseWorkloads(v: string | undefined): readonly Workload[] {
  if (v === undefined) return WORKLOADS;
  const names = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const n of names) if (!(WORKLOADS as readonly string[]).includes(n)) throw new Error(`--workloads: "${n}" is not one of ${WORKLOADS.join(', ')}`);
  if (names.length === 0) throw new Error('--workloads: name at least one');
  return WORKLOADS.filter((w) => names.includes(w));
}

export function parseOptions(argv: string[]): InpodBenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      captures: { type: 'string' },
      workloads: { type: 'string' },
      ...ROUND_FLAGS,
      endpoints: { type: 'string' },
      'bpf-stats': { type: 'boolean' },
      'one-cpu': { type: 'boolean' },
    },
    strict: true,
  });
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
    workloads: parseWorkloads(values.workloads),
    ...roundOptions(values, d, { rounds: 100, seconds: [0.1, 60], concurrency: 256 }),
    endpoints: parseEndpoints(values.endpoints),
    bpfStats: values['bpf-stats'] === true,
    ...(values['one-cpu'] === true && { cpu: 0 }),
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
  const run = () => runInpodBench(options, (l) => process.stderr.write(`${l}\n`));
  (options.bpfStats ? withBpfStats(run) : run()).then(
    (samples) => {
      process.stdout.write(
        "ends: native (build/trafficpeer: the pod's client, the outside server, and the listeners the capture finds in the pod) for none and the terminating captures; Node.js (traffic-peer.ts, the JS stand-in's relay) for <capture>-relay\n",
      );
      if (options.cpu !== undefined)
        process.stdout.write(`--one-cpu: every end the bench starts runs on CPU ${options.cpu} only (taskset), the kernel's work of its sends with it\n`);
      process.stdout.write(`${inpodTable(samples, options.captures)}\n`);
      if (options.bpfStats) process.stdout.write(`${inpodCostTable(samples)}\n`);
      const figures = inpodFigures(samples, { oneCpu: options.cpu !== undefined, concurrency: options.concurrency });
      if (figures.length) process.stdout.write(`${figuresLine(figures)}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`inpod bench: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
