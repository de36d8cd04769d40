/**
 * ns/packet of the in-pod programs under BPF_PROG_RUN, beside the empty TC program measured
 * in the same run (figures, not a test): build/inpod.bpf.o loaded without pins in a netns
 * of the run's own (harness/inpod/harness.ts), which holds the sockets the programs look
 * up: ztunnel's 15001 and 15006 listeners and one connection of the pod's to an outside
 * address, over lo. Each program runs on the frames of its common cases (CASES), interleaved
 * with the empty program over rounds, the order rotating each round; every figure is the
 * median of the rounds. Before measuring, each case's frame is run once and must give the
 * verdict its case names: a figure of another path is an error, not a number.
 *
 *   node dist/harness/bench/inpod-cost.js [--rounds N] [--repeat N]
 *
 * BPF_PROG_RUN never runs a program at TC ingress: `bpf_sk_assign` fails there, so a SYN
 * that would be delivered is measured up to and including its socket lookups, then dropped.
 */
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BpfObject } from '../../src/bpf/object.js';
import { constants } from '../../src/bpf/inpod-layout.generated.js';
import { isNotRunnable, TcAct } from '../bpf/testrun.js';
import { interleavedRuns } from './datapath.js';
import { InpodHarness, type InpodProgram } from '../inpod/harness.js';
import { connection, type SocketStep } from '../inpod/sockets.js';
import * as b from '../packet/builder.js';
import { median } from './stats.js';

const POD = '198.18.0.10';
const OUT = '203.0.113.5';
/** The pod's connection to the outside (a captured one: the programs' lookups find it). */
const CONN = { podPort: 41000, outPort: 9443 };
const PAYLOAD = Buffer.alloc(64);
const ACK = 0x10;
const SYN = 0x02;
/** A forwarded frame's skb->ingress_ifindex (any device but 0). */
const FORWARDED = 5;

const SOCKETS: SocketStep[] = [
  { listen: 'tcp4', port: constants.INPOD_PORT_OUTBOUND },
  { listen: 'tcp4', port: constants.INPOD_PORT_INBOUND },
  connection([POD, CONN.podPort], [OUT, CONN.outPort]),
];

const tcp4 = (src: string, dst: string, sport: number, dport: number, flags: number) =>
  b.v4Frame({ src, dst }, b.tcp({ sport, dport, flags, payload: flags & SYN ? undefined : PAYLOAD }));

export interface CostCase {
  program: InpodProgram;
  /** What the frame is, in the rows' words. */
  what: string;
  row: string;
  frame: Buffer;
  ctx: { mark?: number; ingressIfindex?: number };
  /** The verdict BPF_PROG_RUN must give: its TC return code. */
  retval: number;
}

/** Each program's common cases: the segment of a captured connection first, then the rest. */
export const CASES: readonly CostCase[] = [
  {
    program: 'inpod_lo_in',
    what: 'a segment of a captured connection (over lo)',
    row: 'PR6',
    frame: tcp4(POD, OUT, CONN.podPort, CONN.outPort, ACK),
    ctx: {},
    retval: TcAct.OK,
  },
  {
    program: 'inpod_lo_in',
    what: 'a new connection’s SYN (two socket lookups)',
    row: 'PR9',
    frame: tcp4(POD, OUT, 41100, 443, SYN),
    ctx: {},
    retval: TcAct.SHOT,
  },
  {
    program: 'inpod_out',
    what: 'a segment of a captured connection (one socket lookup, loop)',
    row: 'PO7',
    frame: tcp4(POD, OUT, CONN.podPort, CONN.outPort, ACK),
    ctx: {},
    retval: TcAct.REDIRECT,
  },
  {
    program: 'inpod_out',
    what: 'UDP it does not capture',
    row: 'PO5',
    frame: b.v4Frame({ src: POD, dst: OUT }, b.udp({ sport: 41200, dport: 5000, payload: PAYLOAD })),
    ctx: {},
    retval: TcAct.OK,
  },
  {
    program: 'inpod_in',
    what: 'a looped segment of a captured connection',
    row: 'PL2',
    frame: tcp4(POD, OUT, CONN.podPort, CONN.outPort, ACK),
    ctx: { mark: constants.INPOD_MARK_LOOP },
    retval: TcAct.OK,
  },
  {
    program: 'inpod_in',
    what: 'a reply on a connection (one socket lookup)',
    row: 'PI7',
    frame: tcp4(OUT, POD, CONN.outPort, CONN.podPort, ACK),
    ctx: {},
    retval: TcAct.OK,
  },
  {
    program: 'inpod_vm_in',
    what: 'a segment of a connection (one socket lookup)',
    row: 'PV3',
    frame: tcp4(POD, OUT, CONN.podPort, CONN.outPort, ACK),
    ctx: {},
    retval: TcAct.OK,
  },
  {
    program: 'inpod_host_in',
    what: 'forwarded TCP to the pod',
    row: 'PH3',
    frame: tcp4(OUT, POD, CONN.outPort, CONN.podPort, ACK),
    ctx: { ingressIfindex: FORWARDED },
    retval: TcAct.OK,
  },
  {
    program: 'inpod_host_out',
    what: 'TCP from the pod, not to the probe address',
    row: 'PH7',
    frame: tcp4(POD, OUT, CONN.podPort, CONN.outPort, ACK),
    ctx: {},
    retval: TcAct.OK,
  },
];

export interface CostOptions {
  rounds: number;
  repeat: number;
  emptyPath: string;
}

export const DEFAULT_COST: CostOptions = { rounds: 15, repeat: 100_000, emptyPath: 'build/bench_empty.bpf.o' };

export interface CostRow {
  program: string;
  what: string;
  row: string;
  /** Per round, ns/packet of this case and of the empty program (same order). */
  rounds: number[];
  emptyRounds: number[];
}

/** Runs the cases and the empty program interleaved; throws if a case's frame takes another path. */
export async function runInpodCost(o: CostOptions = DEFAULT_COST, log: (l: string) => void = () => undefined): Promise<CostRow[]> {
  const h = await InpodHarness.create([POD, OUT]);
  const empty = BpfObject.openAndLoad(o.emptyPath);
  try {
    await h.setUp(SOCKETS);
    h.applyState({ dnsCapture: false, probeFlows: new Map() });
    const emptyFd = empty.programFd('bench_empty');
    const ctxOf = (c: { mark?: number; ingressIfindex?: number }) => ({ mark: c.mark ?? 0, ingressIfindex: c.ingressIfindex ?? 0, ifindex: h.ifindex });
    for (const c of CASES) {
      const r = h.runFrame(c.program, c.frame, c.ctx);
      const got = isNotRunnable(r) ? 'not runnable' : r.retval;
      if (got !== c.retval) throw new Error(`${c.program} (${c.row}): the benchmark frame takes another path (retval ${got}, want ${c.retval})`);
    }
    const subjects = [
      { key: 'empty', fd: emptyFd, frame: CASES[0]!.frame, ctx: ctxOf({}) },
      ...CASES.map((c, i) => ({ key: String(i), fd: h.obj.programFd(c.program), frame: c.frame, ctx: ctxOf(c.ctx) })),
    ];
    const samples = interleavedRuns(subjects, o.rounds, o.repeat, (round) => log(`inpod-cost: round ${round + 1}/${o.rounds}`));
    return CASES.map((c, i) => ({ program: c.program, what: c.what, row: c.row, rounds: samples.get(String(i))!, emptyRounds: samples.get('empty')! }));
  } finally {
    empty.close();
    await h.close();
  }
}

/** The table: ns/packet, the empty program's, the overhead and the ratio to it (medians). */
export function costTable(rows: readonly CostRow[]): string {
  const lines = ['| program | frame (row) | ns/packet | empty ns/packet | overhead ns | ratio to empty |', '|---|---|---:|---:|---:|---:|'];
  for (const r of rows) {
    const ns = median(r.rounds);
    const e = median(r.emptyRounds);
    lines.push(`| ${r.program} | ${r.what} (${r.row}) | ${ns.toFixed(1)} | ${e.toFixed(1)} | ${(ns - e).toFixed(1)} | ${(ns / e).toFixed(2)} |`);
  }
  return lines.join('\n');
}

export function parseCostOptions(argv: string[]): CostOptions {
  const { values } = parseArgs({ args: argv, options: { rounds: { type: 'string' }, repeat: { type: 'string' } }, strict: true });
  const int = (name: string, v: string | undefined, d: number, min: number, max: number) => {
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name}: "${v}" is not a whole number from ${min} to ${max}`);
    return n;
  };
  return {
    ...DEFAULT_COST,
    rounds: int('rounds', values.rounds, DEFAULT_COST.rounds, 1, 1000),
    repeat: int('repeat', values.repeat, DEFAULT_COST.repeat, 1, 10_000_000),
  };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  let options: CostOptions;
  try {
    options = parseCostOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`inpod-cost bench: ${(err as Error).message}\n`);
    process.exit(2);
  }
  runInpodCost(options, (l) => process.stderr.write(`${l}\n`)).then(
    (rows) => {
      process.stdout.write(
        `in-pod programs under BPF_PROG_RUN (repeat ${options.repeat.toLocaleString('en-US')}, ${options.rounds} rounds, interleaved with the empty program, medians; IPv4, 64-byte payloads; a delivered SYN is measured up to bpf_sk_assign, which BPF_PROG_RUN refuses)\n`,
      );
      process.stdout.write(`${costTable(rows)}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`inpod-cost bench: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
