/**
 * TC against XDP for the pods' outbound capture (issue 20; figures, not a test): ebpf mode
 * on one simulated node run with `--hook tc` and with `--hook xdp` in turn (the agent's
 * flag, src/core/modes.ts selectHook), the same traffic under each:
 *
 *   crr, rr, stream  native ends (tools/trafficpeer): pod A's client to the outside
 *                    address, captured and answered by the native stand-in in ztunnel's
 *                    netns (the capture path, no relay), as traffic.ts's ebpf-term
 *   flood-udp        pod A (enrolled) writes 64-byte UDP frames on its eth0 as fast as it
 *                    can (AF_PACKET, `trafficpeer flood udp`) to the outside address: not
 *                    captured (O15b), delivered to the outside netns
 *   flood-syn        pod A writes TCP SYNs to the terminating port: captured, delivered
 *                    to ztunnel's netns
 *   flood-spoof      pod B (enrolled) writes 64-byte UDP frames from an address that is not
 *                    its own: dropped (O8)
 *   flood-spoof-syn  pod B writes TCP SYNs from that address to the outside: dropped (O8)
 *
 * For each flood: frames sent (the sender's count), frames delivered (the receiving netns's
 * eth0 rx_packets over the window; for SYNs less the resets the pod sent meanwhile, its
 * answers to ztunnel's SYN-ACKs, captured as well), and CPU per frame two ways: the sender's own CPU time
 * (getrusage: its writes, and whatever the veth's receive path does in its context) and the
 * whole machine's system + irq + softirq time (/proc/stat; this machine is shared, so that
 * one carries everyone's noise). Hooks alternate over rounds, the order rotating, and each
 * figure is a per-round paired ratio xdp / tc through stats.ts.
 *
 *   node dist/harness/bench/hooks.js [--rounds N] [--seconds S] [--flood-seconds S]
 *                                    [--concurrency N] [--bpf-stats]
 *
 * --bpf-stats turns the kernel's BPF run statistics on for the run (and puts the switch
 * back): the outbound program's own run time per run during each flood, at either hook.
 *
 * Needs an agent with `--hook` (the xdp branch's `run --hook tc|xdp|auto`): each slot checks
 * that the agent logged the hook it was asked for, and says so clearly when it did not.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from '../sim/controller.js';
import { ZTUNNEL_PORTS } from '../sim/names.js';
import { createSimNode, type SimNode } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { cpuNow, progDelta, tcProgStats, withBpfStats } from './cost.js';
import { median } from './report.js';
import { figure, figuresLine, ratioInterval, type Figure } from './stats.js';
import { eventLine, type PeerProcess, peerCommand, runClient, standInCounts, startPeer } from './peers.js';
import { formatRate, rotate } from './traffic.js';
import { numberOption, ROUND_FLAGS, type RoundOptions, roundOptions } from './options.js';

export const HOOKS = ['tc', 'xdp'] as const;
export type HookName = (typeof HOOKS)[number];
export const HOOK_WORKLOADS = ['crr', 'rr', 'stream', 'flood-udp', 'flood-syn', 'flood-spoof', 'flood-spoof-syn'] as const;
export type HookWorkload = (typeof HOOK_WORKLOADS)[number];

export interface HookOptions extends RoundOptions {
  floodSeconds: number;
  /** Turn the kernel's BPF run statistics on for the run (and back) and report the outbound program's own time per frame. */
  bpfStats?: boolean;
}

export const DEFAULT_HOOKS: HookOptions = { rounds: 3, seconds: 1.5, warmupSeconds: 0.3, concurrency: 4, floodSeconds: 1 };

export interface HookSample {
  round: number;
  hook: HookName;
  workload: HookWorkload;
  /** connections/s, round trips/s, bytes/s; frames sent per second for a flood. */
  rate: number;
  /** Floods: frames sent, delivered, and CPU time per frame sent (ns). */
  sent?: number;
  delivered?: number;
  senderNsPerFrame?: number;
  machineNsPerFrame?: number;
  /** With --bpf-stats: the outbound program on the sender's host veth (TC or XDP), its runs and run time per frame sent. */
  prog?: { name: string; runsPerFrame: number; nsPerRun: number };
}

/** The outside port of the floods' UDP (nothing listens: the outside netns counts NoPorts). */
const UDP_PORT = 9999;
/** Ports the native stand-in terminates when captured. */
const TERMINATE_PORT = 9100;
/** pod B's forged source: in the pods' range, nobody's. */
const SPOOFED_SOURCE = '198.18.0.250';

interface Flood {
  from: 0 | 1;
  kind: 'udp' | 'syn';
  to: 'outside' | 'ztunnel';
  spoof: boolean;
}

const FLOODS: Record<Extract<HookWorkload, `flood-${string}`>, Flood> = {
  'flood-udp': { from: 0, kind: 'udp', to: 'outside', spoof: false },
  'flood-syn': { from: 0, kind: 'syn', to: 'ztunnel', spoof: false },
  'flood-spoof': { from: 1, kind: 'udp', to: 'outside', spoof: true },
  'flood-spoof-syn': { from: 1, kind: 'syn', to: 'outside', spoof: true },
};

/** eth0's received frames in `ns` (the kernel's own count). */
async function rxPackets(ns: string): Promise<number> {
  const [link] = JSON.parse(await systemRunner.run(['ip', '-n', ns, '-j', '-s', 'link', 'show', 'dev', 'eth0'])) as {
    stats64?: { rx?: { packets?: number } };
  }[];
  const n = link?.stats64?.rx?.packets;
  if (typeof n !== 'number') throw new Error(`no rx packet count for eth0 in ${ns}`);
  return n;
}

/** A Tcp counter (`OutRsts`, `InSegs`, ...) of a netns's /proc/net/snmp. */
export function tcpCounter(snmp: string, name: string): number {
  const lines = snmp.split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const i = names.indexOf(name);
  const n = i > 0 ? Number(values[i]) : NaN;
  if (!Number.isFinite(n)) throw new Error(`/proc/net/snmp: no Tcp ${name}`);
  return n;
}

/** Tcp OutRsts of a netns's /proc/net/snmp. */
export const outRsts = (snmp: string): number => tcpCounter(snmp, 'OutRsts');

const podRsts = async (ns: string) => outRsts(await systemRunner.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/snmp']));

/** The flood's JSON line. */
export function parseFlood(out: string): { sent: number; errors: number; seconds: number; rate: number; cpuUser: number; cpuSystem: number } {
  const { line, r } = eventLine(out, 'flood', 'flood');
  for (const k of ['sent', 'errors', 'seconds', 'rate', 'cpuUser', 'cpuSystem'])
    if (typeof r[k] !== 'number' || !Number.isFinite(r[k]) || (r[k] as number) < 0) throw new Error(`flood: field ${k} is ${String(r[k])}: ${line}`);
  return r as unknown as ReturnType<typeof parseFlood>;
}

async function runFlood(sim: SimNode, f: Flood, port: number, seconds: number, bpfStats: boolean): Promise<Omit<HookSample, 'round' | 'hook' | 'workload'>> {
  const pod = sim.pods[f.from]!;
  const [neigh] = JSON.parse(await systemRunner.run(['ip', '-n', pod.ns, '-j', 'neigh', 'show', 'dev', 'eth0', 'to', '169.254.1.1'])) as { lladdr?: string }[];
  if (!neigh?.lladdr) throw new Error(`flood: no gateway neighbour in ${pod.ns}`);
  const rxNs = f.to === 'outside' ? sim.outside.ns : sim.ztunnel.ns;
  const rx0 = await rxPackets(rxNs);
  const prog0 = bpfStats ? await tcProgStats(sim.nodeNs, [pod.hostVeth]) : {};
  // ztunnel answers each SYN with a SYN-ACK, which the pod resets; those resets are captured too.
  const rst0 = f.kind === 'syn' ? await podRsts(pod.ns) : 0;
  const cpu0 = cpuNow().kernel;
  const argv = ['ip', 'netns', 'exec', pod.ns, ...peerCommand('native'), 'flood', f.kind, '--dev', 'eth0', '--dst-mac', neigh.lladdr];
  argv.push('--to', sim.outside.ip, '--port', String(port), '--seconds', String(seconds), ...(f.spoof ? ['--src', SPOOFED_SOURCE] : []));
  const r = parseFlood(await systemRunner.run(argv, { timeoutMs: seconds * 1000 + 30_000 }));
  const cpu1 = cpuNow().kernel;
  // The outbound program: xdp_out at XDP, else the TC ingress one (its name starts out_).
  const progs = bpfStats
    ? Object.entries(progDelta(prog0, await tcProgStats(sim.nodeNs, [pod.hostVeth]))).filter(([name]) => /^(xdp_out|out_)/.test(name))
    : [];
  const prog = progs.find(([, s]) => s.runCount > 0);
  // Frames still on their way (the backlog, a NAPI poll) arrive within a moment.
  await new Promise((res) => setTimeout(res, 200));
  const resets = f.kind === 'syn' ? (await podRsts(pod.ns)) - rst0 : 0;
  const delivered = (await rxPackets(rxNs)) - rx0 - resets;
  const sent = r.sent;
  return {
    rate: r.rate,
    sent,
    delivered,
    senderNsPerFrame: sent ? ((r.cpuUser + r.cpuSystem) * 1e9) / sent : NaN,
    machineNsPerFrame: sent ? (cpu1 - cpu0) / sent : NaN,
    ...(prog && sent && { prog: { name: prog[0], runsPerFrame: prog[1].runCount / sent, nsPerRun: prog[1].runTimeNs / prog[1].runCount } }),
  };
}

/** Runs every hook `rounds` times on a fresh simulated node and tears it down, also on failure. */
export async function runHooks(o: HookOptions, say: (line: string) => void = () => {}): Promise<HookSample[]> {
  const sim = await createSimNode({ pods: 2 });
  say(`hooks: built simulated node ${sim.prefix} with 2 pods`);
  const pinRoot = pinRootFor(sim);
  let controller: ControllerProcess | undefined;
  const peers: PeerProcess[] = [];
  const samples: HookSample[] = [];
  try {
    const standIn = await startPeer(sim.ztunnel.ns, 'native', ['ztunnel', '--terminate', String(TERMINATE_PORT), '--listen', ZTUNNEL_PORTS.join(',')]);
    peers.push(standIn);
    const pods = [sim.pods[0]!, sim.pods[1]!] as const;
    for (let round = 0; round < o.rounds; round++) {
      for (const hook of rotate(HOOKS, round)) {
        mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
        controller = startController(sim.nodeNs, [
          '--mode',
          'ebpf',
          '--hook',
          hook,
          '--pin-root',
          pinRoot,
          '--ztunnel-ip',
          sim.ztunnel.ip,
          '--enroll',
          `${pods[0].ip},${pods[1].ip}`,
          '--log-level',
          'info',
        ]);
        try {
          await controller.waitFor('programmed').catch((err: unknown) => {
            const unknown = controller?.events.some((e) => JSON.stringify(e).includes('hook'));
            throw new Error(
              `hooks: the agent did not start with --hook ${hook}${unknown ? '' : ' (this build has no --hook: the xdp branch adds run --hook tc|xdp|auto)'}: ${(err as Error).message}`,
            );
          });
          const selected = controller.events.find((e) => e.msg === 'outbound hook selected');
          if (selected?.hook !== hook)
            throw new Error(
              `hooks: asked for --hook ${hook}, the agent logged ${selected ? `hook ${String(selected.hook)} (${String(selected.reason)})` : 'no hook (it needs run --hook)'}`,
            );
          for (const workload of rotate(HOOK_WORKLOADS, round)) {
            let sample: Omit<HookSample, 'round' | 'hook' | 'workload'>;
            if (workload === 'crr' || workload === 'rr' || workload === 'stream') {
              const before = await standInCounts(standIn);
              const r = await runClient(pods[0].ns, 'native', workload, sim.outside.ip, TERMINATE_PORT, o);
              const after = await standInCounts(standIn);
              const n = after.terminated - before.terminated;
              if (n < r.connections - r.errors || n > r.connections || after.refused !== before.refused)
                throw new Error(`hooks ${hook} ${workload}: the stand-in terminated ${n} of ${r.connections} connections (${r.errors} failed)`);
              sample = { rate: r.rate };
            } else {
              sample = await runFlood(sim, FLOODS[workload], workload === 'flood-syn' ? TERMINATE_PORT : UDP_PORT, o.floodSeconds, o.bpfStats === true);
              // The outside's eth0 may see a stray frame of its own (neighbour discovery); a bypass is thousands.
              if (FLOODS[workload].spoof && sample.delivered! > Math.max(10, sample.sent! / 100))
                throw new Error(
                  `hooks ${hook} ${workload}: ${sample.delivered} of ${sample.sent} frames from a forged source reached the outside (O8 drops them)`,
                );
            }
            samples.push({ round, hook, workload, ...sample });
            say(`hooks: round ${round + 1}/${o.rounds} ${hook.padEnd(4)} ${workload.padEnd(12)} ${describe(workload, sample)}`);
          }
        } finally {
          const c = controller;
          controller = undefined;
          await c.stop('SIGTERM');
          await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
          rmSync(pinRoot, { recursive: true, force: true });
        }
      }
    }
    return samples;
  } finally {
    await controller?.stop('SIGKILL');
    for (const p of peers) p.stop();
    await sim.teardown();
    rmSync(pinRoot, { recursive: true, force: true });
  }
}

function describe(w: HookWorkload, s: Omit<HookSample, 'round' | 'hook' | 'workload'>): string {
  if (w === 'crr' || w === 'rr' || w === 'stream') return formatRate(w, s.rate);
  const prog = s.prog ? `, ${s.prog.name} ${s.prog.nsPerRun.toFixed(0)} ns/run (${s.prog.runsPerFrame.toFixed(2)} runs/frame)` : '';
  return `${Math.round(s.rate)} frames/s sent, ${s.delivered}/${s.sent} delivered, ${s.senderNsPerFrame!.toFixed(0)} ns sender CPU/frame, ${s.machineNsPerFrame!.toFixed(0)} ns kernel CPU/frame (machine)${prog}`;
}

const TEXT: Record<HookWorkload, string> = {
  crr: 'connections/s',
  rr: 'request/response',
  stream: 'stream',
  'flood-udp': 'UDP flood, enrolled pod',
  'flood-syn': 'SYN flood, enrolled pod',
  'flood-spoof': 'UDP flood, forged source',
  'flood-spoof-syn': 'SYN flood, forged source',
};

/** xdp / tc, per round, for each workload's rate and each flood's CPU per frame. */
export function hookFigures(samples: readonly HookSample[]): Figure[] {
  const rounds = [...new Set(samples.map((s) => s.round))];
  const at = (hook: HookName, w: HookWorkload, r: number) => samples.find((s) => s.hook === hook && s.workload === w && s.round === r);
  const pairs = (w: HookWorkload, value: (s: HookSample) => number | undefined) =>
    rounds.flatMap((r) => {
      const x = at('xdp', w, r);
      const t = at('tc', w, r);
      const num = x && value(x);
      const den = t && value(t);
      return num !== undefined && den !== undefined ? [{ num, den }] : [];
    });
  const out: Figure[] = [];
  let seed = 300;
  for (const w of HOOK_WORKLOADS) {
    const rate = pairs(w, (s) => s.rate);
    if (rate.length === 0) continue;
    const what = w.startsWith('flood') ? `${TEXT[w]}: frames sent/s` : TEXT[w];
    out.push(figure(`xdp / tc hook: ${what}`, '×', { kind: 'none' }, ratioInterval(rate, seed++)));
    if (w.startsWith('flood')) {
      out.push(
        figure(
          `xdp / tc hook: ${TEXT[w]}: sender CPU per frame`,
          '×',
          { kind: 'none' },
          ratioInterval(
            pairs(w, (s) => s.senderNsPerFrame),
            seed++,
          ),
        ),
      );
      out.push(
        figure(
          `xdp / tc hook: ${TEXT[w]}: kernel CPU per frame (machine)`,
          '×',
          { kind: 'none' },
          ratioInterval(
            pairs(w, (s) => s.machineNsPerFrame),
            seed++,
          ),
        ),
      );
      const prog = pairs(w, (s) => s.prog?.nsPerRun);
      if (prog.length) out.push(figure(`xdp / tc hook: ${TEXT[w]}: outbound program's run time`, '×', { kind: 'none' }, ratioInterval(prog, seed++)));
    }
  }
  return out;
}

/** Medians per hook and workload, floods with what was delivered. */
export function hookTable(samples: readonly HookSample[]): string {
  const lines = [`${'workload'.padEnd(14)}${HOOKS.map((h) => h.padStart(28)).join('')}`];
  for (const w of HOOK_WORKLOADS) {
    const cell = (h: HookName) => {
      const xs = samples.filter((s) => s.hook === h && s.workload === w);
      if (xs.length === 0) return '–';
      const m = (f: (s: HookSample) => number) => median(xs.map(f));
      if (!w.startsWith('flood'))
        return formatRate(
          w as 'crr' | 'rr' | 'stream',
          m((s) => s.rate),
        );
      return `${Math.round(m((s) => s.rate))}/s ${(100 * m((s) => s.delivered! / s.sent!)).toFixed(0)}% ${m((s) => s.senderNsPerFrame!).toFixed(0)}ns`;
    };
    lines.push(`${w.padEnd(14)}${HOOKS.map((h) => cell(h).padStart(28)).join('')}`);
  }
  lines.push('floods: frames sent/s, share delivered, sender CPU ns per frame (medians)');
  return lines.join('\n');
}

export function parseHookOptions(argv: string[]): HookOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      ...ROUND_FLAGS,
      'flood-seconds': { type: 'string' },
      'bpf-stats': { type: 'boolean' },
    },
    strict: true,
  });
  const d = DEFAULT_HOOKS;
  return {
    ...roundOptions(values, d),
    floodSeconds: numberOption('flood-seconds', values['flood-seconds'], d.floodSeconds, 0.2, 30, false),
    bpfStats: values['bpf-stats'] === true,
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let options: HookOptions;
  try {
    options = parseHookOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`hooks bench: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const run = () => runHooks(options, (l) => process.stderr.write(`${l}\n`));
  (options.bpfStats ? withBpfStats(run) : run()).then(
    (samples) => {
      process.stdout.write(
        `ebpf mode with --hook tc and --hook xdp, ${options.rounds} rounds alternating; crr, rr, stream between native ends (build/trafficpeer), the stand-in terminating; floods written by trafficpeer flood (AF_PACKET) as fast as it can for ${options.floodSeconds} s: 64-byte UDP and 54-byte TCP SYNs from an enrolled pod, 64-byte UDP and TCP SYNs from an enrolled pod forging its source; CPU per frame: the sender's getrusage, and the machine's system+irq+softirq (/proc/stat, everyone's)\n`,
      );
      process.stdout.write(`${hookTable(samples)}\n${figuresLine(hookFigures(samples))}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`hooks bench: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
