/**
 * `ambient-redirect-harness bench`: figures, not tests. The data path's cost per packet
 * (BPF_PROG_RUN), live traffic through each capture mode on a simulated node, and the
 * control-path benchmark; with `--write` the Markdown report and its SVG chart.
 */
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, resolveFlags } from '../../src/lib/flags.js';
import { DEFAULT_TRAFFIC, type TrafficRun } from '../bench/traffic.js';
import { syscallCostNs } from '../bench/peers.js';
import { goalFigures, RELAY_RATIOS, ratios, ratioSvg, ratioTable, renderMarkdown, trafficTable, type ReportInput } from '../bench/report.js';
import { figureTable, splitFigures, type Figure } from '../bench/stats.js';

// Defaults of the data-path part, repeated here so that `--help` needs no libbpf.
const DATAPATH_DEFAULTS = { repeat: 100_000, rounds: 15, objectPath: 'build/redirect.bpf.o', sizes: [10, 1000, 65536] };

/** Rounds of each in-pod run of `make bench` (CONTROL_SCRIPTS). */
const INPOD_ROUNDS = 20;

const PARTS = ['datapath', 'traffic', 'control'] as const;
type Part = (typeof PARTS)[number];

const FLAGS = {
  only: { env: 'BENCH_ONLY', help: 'parts to run, comma-separated: datapath,traffic,control', default: PARTS.join(',') },
  write: { env: 'BENCH_WRITE', help: 'write the Markdown report here (and the chart beside it, .svg)', default: '' },
  repeat: { env: 'BENCH_REPEAT', help: 'runs per measurement (BPF_PROG_RUN repeat)', default: String(DATAPATH_DEFAULTS.repeat) },
  rounds: { env: 'BENCH_ROUNDS', help: 'interleaved rounds of the data-path part; figures are medians', default: String(DATAPATH_DEFAULTS.rounds) },
  object: { env: 'BENCH_OBJECT', help: 'compiled programs', default: DATAPATH_DEFAULTS.objectPath },
  'traffic-rounds': { env: 'BENCH_TRAFFIC_ROUNDS', help: 'interleaved rounds of the traffic part', default: String(DEFAULT_TRAFFIC.rounds) },
  seconds: { env: 'BENCH_SECONDS', help: 'measured seconds per traffic workload', default: String(DEFAULT_TRAFFIC.seconds) },
  concurrency: { env: 'BENCH_CONCURRENCY', help: 'parallel connect loops of the connections/s workload', default: String(DEFAULT_TRAFFIC.concurrency) },
};

export const benchUsage = `usage: ambient-redirect-harness bench [--only datapath,traffic,control] [--write FILE.md]
                              [--repeat N] [--rounds N] [--object PATH]
                              [--traffic-rounds N] [--seconds S] [--concurrency N]

Figures, not tests; each part compares side by side in one run (interleaved rounds, medians).
  datapath  ns/packet of each program under BPF_PROG_RUN beside an empty TC program, with
            ${DATAPATH_DEFAULTS.sizes.join(', ')} entries in the pods map (loads programs; attaches and pins nothing)
  traffic   connections/s, request/response and stream throughput from a pod of a simulated
            node: direct to a server at ztunnel's distance, ebpf and iptables capture to a
            stand-in that terminates, the same through a relaying stand-in, an unenrolled pod
            beside ebpf mode (builds network namespaces; tears them down)
  control   harness/bench/control.ts: initial sync, RSS, event -> map entry (no kernel);
            harness/bench/cni.ts where present: the CNI plugin's ADD overhead (network namespaces);
            harness/bench/scrape.ts: a /metrics scrape at full maps, and CNI ADDs on its loop with and without scrapes;
            harness/bench/inpod.ts: in-pod eBPF beside in-pod iptables (and no capture, and the loopback ceiling), same stand-in,
            ${INPOD_ROUNDS} rounds, then again with every end on one CPU (--one-cpu);
            harness/bench/inpod-cost.ts: ns/packet of the in-pod programs beside the empty program (BPF_PROG_RUN);
            harness/bench/hooks.ts: ebpf mode with --hook tc beside --hook xdp (traffic, small-frame floods)
All parts by default. Tables on stdout, progress on stderr; last, every goal of issue 19
that was measured, with its 95 % interval and its verdict (met, not met, undecided). --write FILE.md also writes
the chart as FILE.svg. Root (BPF, network namespaces); Ctrl-C tears down what it built.
`;

function number(name: string, value: string, min: number, max: number, integer = true): number {
  const n = Number(value);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n < min || n > max)
    throw new ConfigError(`--${name}: "${value}" is not ${integer ? 'an integer' : 'a number'} in ${min}..${max}`);
  return n;
}

function parts(value: string): Set<Part> {
  const names = value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const n of names) if (!(PARTS as readonly string[]).includes(n)) throw new ConfigError(`--only: "${n}" is not one of ${PARTS.join(', ')}`);
  if (names.length === 0) throw new ConfigError('--only: name at least one part');
  return new Set(names as Part[]);
}

/**
 * The control-path benchmarks this build has (`harness/bench/control.ts`, `harness/bench/cni.ts`;
 * a new one is one more entry here): each run as its own process, its summary kept as
 * printed.
 */
const CONTROL_SCRIPTS: readonly (readonly [script: string, ...args: string[]])[] = [
  ['control.js'],
  ['cni.js'],
  ['scrape.js'],
  // 20 rounds (the script's own default is 5): with 5 the in-pod goals' intervals straddled
  // their bounds run after run; with 8 and with 12 the connections/s intervals began within
  // 0.07 of 1.3 while single rounds ranged 1.10-1.75 (docs/inpod.md), so the interval, not
  // the estimate, was what left the verdict open.
  ['inpod.js', '--rounds', String(INPOD_ROUNDS)],
  // One connection's request/response on one CPU: its rate is the path's cost rather than
  // an idle CPU's wake-up (docs/inpod.md, "Reading the in-pod request/response figures").
  ['inpod.js', '--one-cpu', '--rounds', String(INPOD_ROUNDS)],
  // The in-pod programs' ns/packet beside the empty program (BPF_PROG_RUN).
  ['inpod-cost.js'],
  ['hooks.js'],
];

async function runControl(signal: AbortSignal): Promise<{ scripts: { script: string; lines: string[]; figures: Figure[] }[] } | { missing: string }> {
  const scripts: { script: string; lines: string[]; figures: Figure[] }[] = [];
  for (const [name, ...args] of CONTROL_SCRIPTS) {
    const script = fileURLToPath(new URL(`../bench/${name}`, import.meta.url));
    if (!existsSync(script) || signal.aborted) continue;
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    const onAbort = () => child.kill('SIGTERM');
    signal.addEventListener('abort', onAbort, { once: true });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    signal.removeEventListener('abort', onAbort);
    if (code !== 0) throw new Error(`${name} exited with ${code}${signal.aborted ? ' (interrupted)' : ''}`);
    const { lines, figures } = splitFigures(
      out
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    );
    scripts.push({ script: [`harness/bench/${name.replace(/\.js$/, '.ts')}`, ...args].join(' '), lines, figures });
  }
  return scripts.length ? { scripts } : { missing: 'this build has no control-path benchmark (`harness/bench/control.ts`).' };
}

export async function benchCommand(argv: string[]): Promise<number> {
  const f = resolveFlags(argv, FLAGS);
  if (f.help) {
    process.stdout.write(benchUsage);
    return 0;
  }
  const get = (k: keyof typeof FLAGS): string => f.get(k) ?? '';
  const only = parts(get('only'));
  const write = get('write');
  if (write && !write.endsWith('.md')) throw new ConfigError(`--write: "${write}" must end in .md (the chart goes beside it as .svg)`);
  const datapathOpts = {
    repeat: number('repeat', get('repeat'), 1, 10_000_000),
    rounds: number('rounds', get('rounds'), 1, 10_000),
    objectPath: get('object'),
  };
  const trafficOpts = {
    ...DEFAULT_TRAFFIC,
    rounds: number('traffic-rounds', get('traffic-rounds'), 1, 50),
    seconds: number('seconds', get('seconds'), 0.2, 30, false),
    concurrency: number('concurrency', get('concurrency'), 1, 64),
  };
  if (process.getuid?.() !== 0 && (only.has('datapath') || only.has('traffic'))) {
    process.stderr.write('ambient-redirect bench: the datapath and traffic parts need root (BPF, network namespaces); --only control does not\n');
    return 1;
  }

  const say = (line: string) => process.stderr.write(`${line}\n`);
  const print = (text: string) => process.stdout.write(`${text}\n\n`);
  const report: Omit<ReportInput, 'svgName'> = {
    date: new Date().toISOString().slice(0, 16).replace('T', ' ') + ' UTC',
    machine: await machine(say),
    durations: {},
  };
  const abort = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    say(`bench: ${sig}, tearing down`);
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const timed = async <T>(part: Part, f: () => Promise<T> | T): Promise<T> => {
    const t = Date.now();
    say(`bench: ${part}`);
    const r = await f();
    report.durations[part] = (Date.now() - t) / 1000;
    return r;
  };
  try {
    if (only.has('datapath')) {
      // Loaded only here: it loads libbpf.
      const { DEFAULT_BENCH, formatBench, runBench } = await import('../bench/datapath.js');
      const opts = { ...DEFAULT_BENCH, ...datapathOpts };
      const rows = await timed('datapath', () => runBench(opts, say));
      const table = formatBench(rows);
      report.datapath = { table, rows, rounds: opts.rounds, repeat: opts.repeat };
      print(table);
    }
    if (only.has('traffic') && !abort.signal.aborted) {
      const { runTraffic } = await import('../bench/traffic.js');
      const run: TrafficRun = await timed('traffic', () => runTraffic(trafficOpts, say, abort.signal));
      report.traffic = { ...run.options, samples: run.samples, modes: run.modes };
      print(trafficTable(run.samples, run.options.concurrency));
      print(ratioTable(ratios(run.samples)));
      print(ratioTable(ratios(run.samples, RELAY_RATIOS)));
    }
    if (only.has('control') && !abort.signal.aborted) {
      report.control = await timed('control', () => runControl(abort.signal));
      if ('scripts' in report.control) for (const c of report.control.scripts) print(c.lines.join('\n'));
      else say(`bench: control: ${report.control.missing}`);
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  if (abort.signal.aborted) return 130;
  const goals = goalFigures(report);
  if (goals.length) print(figureTable(goals));
  if (write) {
    const svgName = `${basename(write, '.md')}.svg`;
    writeFileSync(write, renderMarkdown({ ...report, svgName }));
    if (report.traffic) {
      writeFileSync(
        join(dirname(write), svgName),
        ratioSvg(ratios(report.traffic.samples), `Live traffic ratios (${report.machine.kernel}, ${report.machine.nproc} CPUs, ${report.date})`),
      );
    }
    say(`bench: wrote ${write}${report.traffic ? ` and ${join(dirname(write), svgName)}` : ''}`);
  }
  return 0;
}

async function machine(say: (line: string) => void): Promise<ReportInput['machine']> {
  let syscallNs: number | undefined;
  try {
    syscallNs = await syscallCostNs();
  } catch (e) {
    say(`bench: the cost of a system call not measured: ${(e as Error).message}`);
  }
  return {
    ...(syscallNs !== undefined && { syscallNs }),
    nproc: os.availableParallelism(),
    memoryGiB: os.totalmem() / 2 ** 30,
    kernel: os.release(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
    node: process.versions.node,
  };
}
