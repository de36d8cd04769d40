/**
 * ns/packet of each data-path program under BPF_PROG_RUN, beside an empty TC program
 * measured in the same run, at several sizes of the pods map. The machine is shared and
 * noisy: programs are measured interleaved (A/B/A/B, the order rotating each round) and
 * each figure is the median of the rounds. Nothing is attached and nothing is sent; the
 * maps are the loaded object's own (no pins). Runs in the calling thread's netns, with
 * the pod's veth standing in as loopback (ifindex 1): BPF_PROG_RUN needs a device there.
 */
import * as codec from '../../src/bpf/codec.js';
import { BpfObject } from '../../src/bpf/object.js';
import { runProgram, isNotRunnable } from '../bpf/testrun.js';
import * as b from '../packet/builder.js';
import { median } from './stats.js';

export interface BenchOptions {
  objectPath: string;
  emptyPath: string;
  sizes: readonly number[];
  repeat: number;
  rounds: number;
}

export const DEFAULT_BENCH: BenchOptions = {
  objectPath: 'build/redirect.bpf.o',
  emptyPath: 'build/bench_empty.bpf.o',
  sizes: [10, 1000, 65536],
  repeat: 100_000,
  rounds: 15,
};

const POD = '198.18.0.10';
const OUTSIDE = '203.0.113.5';
const IFINDEX = 1;

/** What each program is measured on: its common case (a captured TCP segment). */
export const CASES: readonly { program: string; frame: Buffer; ctx: { ifindex: number; ingressIfindex: number }; retval?: number }[] = [
  {
    program: 'out_redir_peer',
    frame: b.v4Frame({ src: POD, dst: OUTSIDE }, b.tcp({ dport: 443, flags: 0x10, payload: Buffer.alloc(64) })),
    ctx: { ifindex: IFINDEX, ingressIfindex: 0 },
    retval: 7,
  },
  {
    program: 'out_redirect',
    frame: b.v4Frame({ src: POD, dst: OUTSIDE }, b.tcp({ dport: 443, flags: 0x10, payload: Buffer.alloc(64) })),
    ctx: { ifindex: IFINDEX, ingressIfindex: 0 },
    retval: 7,
  },
  {
    program: 'in_redirect',
    frame: b.v4Frame({ src: OUTSIDE, dst: POD }, b.tcp({ sport: 443, dport: 40000, flags: 0x10, payload: Buffer.alloc(64) })),
    ctx: { ifindex: IFINDEX, ingressIfindex: 5 },
    retval: 7,
  },
  {
    program: 'zt_mark',
    frame: b.v4Frame({ src: POD, dst: OUTSIDE }, b.tcp({ dport: 443, flags: 0x10, payload: Buffer.alloc(64) })),
    ctx: { ifindex: IFINDEX, ingressIfindex: 5 },
    retval: 0,
  },
  // Under BPF_PROG_RUN bpf_sk_assign is EOPNOTSUPP (not at TC ingress): the whole path up
  // to and including the socket lookups runs, then the program fails closed (2).
  {
    program: 'zt_assign',
    frame: b.v4Frame({ src: POD, dst: OUTSIDE }, b.tcp({ dport: 443, flags: 0x10, payload: Buffer.alloc(64) })),
    ctx: { ifindex: IFINDEX, ingressIfindex: 5 },
    retval: 2,
  },
];

export interface BenchRow {
  entries: number;
  program: string;
  /** Median ns/packet over the rounds. */
  ns: number;
  /** The empty program's median in the same interleaved run. */
  emptyNs: number;
  /** Per round (same order as the empty program's): ns/packet of this program and of the empty one. */
  rounds: number[];
  emptyRounds: number[];
  /** Time to fill the pods map to `entries` the agent's way (each of `fills` runs), and with one update per entry (once). */
  fillMs: FillTimes;
}

export interface FillTimes {
  /** Packing and the batch update, each run. */
  batch: number[];
  /** Of which packing the keys and values in JS, and the one batch-update call (koffi and the kernel). */
  pack: number[];
  call: number[];
  /** CPU time (user + system) of the packing and of the call, each run: the machine may be shared. */
  packCpu?: number[];
  callCpu?: number[];
  /** One encode and one update per entry. */
  oneByOne: number;
}

/** Batch fills timed at each size (each from an empty map). */
export const FILLS = 7;

export { median };

/**
 * Fills the pods map with `entries` entries (the benchmark's pod first) the way the agent
 * does (src/capture/ebpf/ebpf.ts: the desired pods as a Map, packed by codec.packPods, one
 * BpfMap.updateBatch), `fills` times from an empty map, timing the packing and the call
 * apart; and once, for comparison, one encode and one update per entry.
 */
function fillPods(obj: BpfObject, entries: number, fills = 1): FillTimes {
  const pods = obj.map('pods');
  const clear = () => {
    for (const k of pods.keys()) pods.delete(k);
  };
  // One veth, so one counters slot (src/core/slots.ts hands out 1 first).
  const info = { ifindex: IFINDEX, mac: '0a:58:c6:12:00:0a', flags: codec.PodFlags.ENROLLED, slot: 1 };
  const desired = new Map([[POD, info]]);
  for (let i = 1; i < entries; i++) desired.set(`fd99::${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}`, info);
  clear();
  let t = performance.now();
  for (const [ip, v] of desired) pods.update(codec.encodeAddrKey(ip), codec.encodePodInfo(v));
  const oneByOne = performance.now() - t;
  const out = { batch: [] as number[], pack: [] as number[], call: [] as number[], packCpu: [] as number[], callCpu: [] as number[], oneByOne };
  const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;
  for (let i = 0; i < fills; i++) {
    clear();
    const c0 = process.cpuUsage();
    t = performance.now();
    const p = codec.packPods(desired);
    const packed = performance.now();
    out.packCpu.push(cpuMs(process.cpuUsage(c0)));
    const c1 = process.cpuUsage();
    pods.updateBatch(p.keys, p.values, p.count);
    const done = performance.now();
    out.callCpu.push(cpuMs(process.cpuUsage(c1)));
    out.batch.push(done - t);
    out.pack.push(packed - t);
    out.call.push(done - packed);
  }
  return out;
}

/** A program and the frame and context it runs on, under a name. */
export interface RunSubject {
  key: string;
  fd: number;
  frame: Buffer;
  ctx: { mark?: number; ingressIfindex?: number; ifindex?: number };
}

/**
 * ns/packet of each subject under BPF_PROG_RUN (`repeat` runs, the kernel's average), over
 * `rounds`, the order rotating each round so that no program always runs first or after
 * another: each key's figure per round.
 */
export function interleavedRuns(
  subjects: readonly RunSubject[],
  rounds: number,
  repeat: number,
  onRound: (round: number) => void = () => undefined,
): Map<string, number[]> {
  const samples = new Map(subjects.map((s) => [s.key, [] as number[]]));
  for (let round = 0; round < rounds; round++) {
    for (let i = 0; i < subjects.length; i++) {
      const s = subjects[(i + round) % subjects.length]!;
      const r = runProgram(s.fd, s.frame, { ctx: s.ctx, repeat });
      if (isNotRunnable(r)) throw new Error(`${s.key}: the kernel would not run the benchmark frame`);
      samples.get(s.key)!.push(r.durationNs);
    }
    onRound(round);
  }
  return samples;
}

export function runBench(opts: BenchOptions = DEFAULT_BENCH, log: (line: string) => void = () => undefined): BenchRow[] {
  const obj = BpfObject.openAndLoad(opts.objectPath, { programs: CASES.map((c) => c.program) });
  const empty = BpfObject.openAndLoad(opts.emptyPath);
  try {
    obj
      .map('ztunnel')
      .update(
        codec.encodeSlot(0),
        codec.encodeZtunnelInfo({ ifindex: 7, peerIfindex: 2, mac: '0a:58:c6:12:00:02', flags: codec.ZtunnelFlags.PRESENT, netnsCookie: 0n }),
      );
    obj.map('dns_servers').update(codec.encodeAddrKey('10.96.0.10'), codec.encodeDnsInfo());
    const emptyFd = empty.programFd('bench_empty');
    const subjects = [
      { program: 'empty', fd: emptyFd, frame: CASES[0]!.frame, ctx: CASES[0]!.ctx },
      ...CASES.map((c) => ({ ...c, fd: obj.programFd(c.program) })),
    ];
    for (const c of CASES) {
      fillPods(obj, 1);
      const r = runProgram(obj.programFd(c.program), c.frame, { ctx: c.ctx });
      if (isNotRunnable(r) || r.retval !== c.retval)
        throw new Error(`${c.program}: the benchmark frame takes another path (retval ${isNotRunnable(r) ? 'not runnable' : r.retval}, want ${c.retval})`);
    }
    const rows: BenchRow[] = [];
    for (const entries of opts.sizes) {
      const fillMs = fillPods(obj, Math.min(entries, obj.map('pods').maxEntries), FILLS);
      const samples = interleavedRuns(
        subjects.map((s) => ({ ...s, key: s.program })),
        opts.rounds,
        opts.repeat,
      );
      const emptyNs = median(samples.get('empty')!);
      for (const c of CASES)
        rows.push({
          entries,
          program: c.program,
          ns: median(samples.get(c.program)!),
          emptyNs,
          rounds: samples.get(c.program)!,
          emptyRounds: samples.get('empty')!,
          fillMs,
        });
      log(`measured ${entries} entries (filled in ${median(fillMs.batch).toFixed(1)} ms by one batch update, ${fillMs.oneByOne.toFixed(1)} ms one by one)`);
    }
    return rows;
  } finally {
    obj.close();
    empty.close();
  }
}

/** The table: ns/packet, overhead over the empty program, ratio to it, and to 10 entries. */
export function formatBench(rows: readonly BenchRow[]): string {
  const smallest = Math.min(...rows.map((r) => r.entries));
  const base = new Map(rows.filter((r) => r.entries === smallest).map((r) => [r.program, r.ns]));
  const lines = [
    `| pods entries | program | ns/packet | empty ns/packet | overhead ns | ratio to empty | vs ${smallest} entries |`,
    '|---:|---|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.entries} | ${r.program} | ${r.ns.toFixed(1)} | ${r.emptyNs.toFixed(1)} | ${(r.ns - r.emptyNs).toFixed(1)} | ${(r.ns / r.emptyNs).toFixed(2)} | ${(r.ns / base.get(r.program)!).toFixed(2)} |`,
    );
  }
  return lines.join('\n');
}
