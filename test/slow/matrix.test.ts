/**
 * The kernel matrix (docs/kernel-matrix.md, issue 10): Debian's 5.10, 6.1 and 6.12 cloud
 * kernels booted under qemu (TCG), and this machine's kernel, each running the controller's
 * own code (harness/matrix/vm-runner.ts): the kernel probes and mode selection, every program of
 * ours loaded with the real loader, a negative control the verifier must reject, and the
 * packet corpus (every spec row and the fuzzer's frames) through BPF_PROG_RUN, the XDP
 * hook's xdp_out and the in-pod programs included (test/model/inpod-matrix.ts: the in-pod rows
 * and fuzzer's frames and lookups, with ztunnel's sockets held in the runner's netns and
 * without). The host compares every outcome with the reference model and prints the table.
 *
 * Runs when the kernel images are cached under build/kernels/ or Debian's archive answers;
 * otherwise it skips with the reason printed, and under CI=true (or from `make
 * kernel-matrix`) it fails instead.
 * MATRIX_FRAMES=<n> sizes the fuzz part of the corpus (frames per map state).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as m from '../model/datapath.js';
import { disagreement, modelStateOf, OBJECT_PATH as OBJECT, PROGRAMS, type KernelOutcome, type ProgramName, type StateSpec } from '../model/harness.js';
import { Gen, truncationSeeds } from '../model/generate.js';
import { baseState, NODE_IFINDEX, POD_A, ROWS, stateOf, ZT, ZT_HOST_IFINDEX, type Veths } from '../model/rows.js';
import { truncate } from '../../harness/packet/builder.js';
import { BpfObject } from '../../src/bpf/object.js';
import { TcAct, XdpAction } from '../../harness/bpf/testrun.js';
import { xdpOutbound, xdpRunnable, type XdpActionName } from '../model/xdp.js';
import { xdpDisagreement } from '../model/xdp-harness.js';
import { systemRunner } from '../../src/host/runner.js';
import {
  applyChanges,
  LOOPBACK_IFINDEX,
  MATRIX_VETHS,
  parseReport,
  type Corpus,
  type CorpusRun,
  type CorpusState,
  type RunnerReport,
  type RunOutcome,
  type XdpCorpusRun,
} from '../../harness/matrix/corpus.js';
import { formatTable, problemsOf, type KernelRow } from '../../harness/matrix/report.js';
import { kernelDescribe } from '../support/gate.js';
import { buildInpodReplay, inpodRunCount, judgeInpod, type InpodJudgement } from '../model/inpod-matrix.js';

const BROKEN = 'build/tests/broken.bpf.o';
/** The in-pod capture (docs/datapath.md, "In-pod capture"): loaded, attached, and its delivery probe run. */
const INPOD_OBJECT = 'build/inpod.bpf.o';
const INPOD_PROGRAMS = ['inpod_out', 'inpod_in', 'inpod_host_in', 'inpod_host_out', 'inpod_vm_in', 'inpod_lo_in', 'inpod_lookup'] as const;
/**
 * The XDP hook (`run --hook xdp`, docs/datapath.md "The outbound hook"): loaded and attached
 * to a veth's XDP hook in native mode, and xdp_out replayed on the rows' and the fuzzer's
 * frames against test/model/xdp.ts.
 */
const XDP_OBJECT = 'build/xdp.bpf.o';
const XDP_PROGRAMS = ['xdp_out', 'xdp_pass'] as const;
const SEED = 20240611;
const FRAMES_PER_STATE = Number(process.env.MATRIX_FRAMES ?? 1500);
/** The in-pod fuzz part (test/model/inpod-matrix.ts): frames per state (each on the six frame programs) and lookups per state. */
const INPOD_FRAMES_PER_STATE = Number(process.env.MATRIX_INPOD_FRAMES ?? 1500);
const INPOD_LOOKUPS_PER_STATE = Math.ceil(INPOD_FRAMES_PER_STATE / 1.5);
const CACHE = process.env.KERNEL_MATRIX_CACHE ?? 'build/kernels';
const SCRIPT = 'scripts/kernel-matrix.sh';
/** CI=true, and `make kernel-matrix` (KERNEL_MATRIX=1): a matrix that cannot run fails, never skips. */
const REQUIRED = process.env.CI === 'true' || process.env.KERNEL_MATRIX === '1';
/** Kernels booted at once (2 cores, no KVM). */
const PARALLEL = 2;
const NO_SOCKETS: m.SocketTable = { listeners: new Set(), established: new Set() };

interface Expectation {
  verdict: m.Verdict;
}

/** The corpus: every spec row on its programs, then the fuzzer's frames under its map states. */
function buildCorpus(maxPods: number): { corpus: Corpus; expected: Expectation[]; models: Map<number, m.ModelState> } {
  const v: Veths = MATRIX_VETHS;
  const states: CorpusState[] = [];
  const stateIndex = new Map<string, number>();
  const frames: string[] = [];
  const frameIndex = new Map<string, number>();
  const runs: CorpusRun[] = [];
  const expected: Expectation[] = [];
  const models = new Map<number, m.ModelState>();

  const stateOfSpec = (name: string, spec: StateSpec): number => {
    const key = JSON.stringify(spec);
    let i = stateIndex.get(key);
    if (i === undefined) {
      i = states.length;
      states.push({ name, ...structuredClone(spec) } as CorpusState);
      stateIndex.set(key, i);
      models.set(i, modelStateOf(spec, maxPods));
    }
    return i;
  };
  const frameOf = (f: Buffer): number => {
    const h = f.toString('hex');
    let i = frameIndex.get(h);
    if (i === undefined) {
      i = frames.length;
      frames.push(h);
      frameIndex.set(h, i);
    }
    return i;
  };
  const groups = new Map<number, { program: string; frame: Buffer; ingress: number }[]>();
  const add = (st: number, program: string, frame: Buffer, ingress: number) => {
    if (!groups.has(st)) groups.set(st, []);
    groups.get(st)!.push({ program, frame, ingress });
  };

  // xdp_out's runs (after the TC runs): the frame arrives on pod A's veth, or on B's.
  const xdpRuns: XdpCorpusRun[] = [];
  const addXdp = (st: number, frame: Buffer, ingress: number) => xdpRuns.push([st, frameOf(frame), ingress]);

  // Every spec row (test/model/rows.ts) on the programs the kernel test runs it on.
  for (const r of ROWS.outbound) {
    const st = stateOfSpec(`row ${r.id}`, stateOf(v, r));
    for (const p of ['out_redir_peer', 'out_redirect']) add(st, p, r.frame, r.ingressIfindex ?? NODE_IFINDEX);
    addXdp(st, r.frame, v.a);
  }
  for (const r of ROWS.inbound) add(stateOfSpec(`row ${r.id}`, stateOf(v, r)), 'in_redirect', r.frame, r.ingressIfindex ?? NODE_IFINDEX);
  for (const r of ROWS.ztunnel) {
    const st = stateOfSpec(`row ${r.id}`, stateOf(v, r));
    if (!r.assignOnly) add(st, 'zt_mark', r.frame, NODE_IFINDEX);
    add(st, 'zt_assign', r.frame, NODE_IFINDEX);
  }

  // The fuzzer's map states and frames (test/kernel/fuzz.test.ts), at MATRIX_FRAMES per state.
  const base = baseState(v);
  const fuzzStates: [string, StateSpec][] = [
    ['base', base],
    ['ztunnel missing', { ...base, ztunnel: null }],
    ['DNS capture on', { ...base, ztunnel: ZT.dns }],
    ['slot not PRESENT', { ...base, ztunnel: ZT.notPresent }],
    ['slot not PRESENT, DNS capture set', { ...base, ztunnel: ZT.notPresentDns }],
    ['PRESENT with ifindex 0', { ...base, ztunnel: ZT.presentIfindex0 }],
    ['pods map full', { ...base, ztunnel: ZT.dns, fillPods: true }],
    ['no DNS servers, no host flows', { ...base, dnsServers: [], hostFlows: [] }],
    ['stale ifindex (pod A on veth B)', { ...base, pods: base.pods.map((p) => (p.ip === POD_A.v4 || p.ip === POD_A.v6 ? { ...p, ifindex: v.b } : p)) }],
  ];
  const gen = new Gen(SEED);
  const cuts = truncationSeeds();
  for (const [name, spec] of fuzzStates) {
    const st = stateOfSpec(`fuzz ${name}`, spec);
    const fs: Buffer[] = [];
    for (const f of cuts) for (let n = 0; n <= f.length; n++) fs.push(truncate(f, n));
    while (fs.length < FRAMES_PER_STATE) fs.push(gen.next());
    for (const frame of fs) {
      const ingress = gen.pick([NODE_IFINDEX, NODE_IFINDEX, ZT_HOST_IFINDEX, 0]);
      for (const p of PROGRAMS) add(st, p, frame, ingress);
      addXdp(st, frame, gen.chance(0.85) ? v.a : v.b);
    }
  }

  for (const [st, items] of groups) {
    // A working copy: in_redirect's host flows pile up within the group, as in the kernel.
    const model = workingCopy(models.get(st)!);
    for (const { program, frame, ingress } of items) {
      const zt = program === 'zt_mark' || program === 'zt_assign';
      const ifindex = zt ? v.b : v.a;
      const ingressIfindex = zt ? NODE_IFINDEX : ingress;
      const ctx = { ifindex, ingressIfindex };
      let verdict: m.Verdict;
      if (program === 'zt_mark') verdict = m.ztunnelMark(frame, model);
      else if (program === 'zt_assign') verdict = m.ztunnelAssign(frame, model, NO_SOCKETS);
      else if (program === 'in_redirect') verdict = m.inbound(frame, model, ctx);
      else verdict = m.outbound(frame, model, ctx);
      m.record(model, verdict);
      runs.push([st, PROGRAMS.indexOf(program as ProgramName), frameOf(frame), ifindex, ingressIfindex, 0]);
      expected.push({ verdict });
    }
  }
  // The in-pod rows and fuzzer's frames and lookups, after the XDP runs.
  const frameAt = (i: number) => Buffer.from(frames[i]!, 'hex');
  const inpodReplay = buildInpodReplay(frameOf, frameAt, SEED + 1, INPOD_FRAMES_PER_STATE, INPOD_LOOKUPS_PER_STATE);
  return {
    corpus: {
      version: 1,
      object: OBJECT,
      broken: BROKEN,
      programs: [...PROGRAMS],
      states,
      frames,
      runs,
      inpod: { object: INPOD_OBJECT, programs: [...INPOD_PROGRAMS], replay: inpodReplay },
      xdp: { object: XDP_OBJECT, programs: [...XDP_PROGRAMS], runs: xdpRuns },
    },
    expected,
    models,
  };
}

/** A model state whose host flows can grow without touching the group's pristine one. */
function workingCopy(s: m.ModelState): m.ModelState {
  return { ...s, hostFlows: new Map(s.hostFlows) };
}

/**
 * The host's judgement of one kernel's outcomes (as fuzz.test.ts judges this kernel's).
 * The model replays each state group in the runner's order, on the context each run
 * really had, and records the host flows of the runs the kernel ran.
 */
function compare(
  corpus: Corpus,
  expected: Expectation[],
  models: Map<number, m.ModelState>,
  report: RunnerReport,
): { notRunnable: number; ctxFallback: number; disagreements: string[]; errors: string[]; inpod: InpodJudgement | null } {
  const out = { notRunnable: 0, ctxFallback: 0, disagreements: [] as string[], errors: [] as string[], inpod: null as InpodJudgement | null };
  const outcomes = report.outcomes ?? [];
  let group = { st: -1, model: null as m.ModelState | null };
  corpus.runs.forEach(([st, prog, frameIdx, ifindex, ingressIfindex], i) => {
    if (group.st !== st) group = { st, model: workingCopy(models.get(st)!) };
    const model = group.model!;
    const o = outcomes[i];
    const program = corpus.programs[prog]!;
    const frame = Buffer.from(corpus.frames[frameIdx]!, 'hex');
    const where = () => `${program} [${corpus.states[st]!.name}] ctx ${JSON.stringify({ ifindex, ingressIfindex })} frame ${frame.toString('hex')}`;
    if (!o) return;
    if (o[0] === 1) {
      out.notRunnable++;
      return;
    }
    if (o[0] === 2) {
      out.errors.push(`${where()}: ${o[1]}`);
      return;
    }
    const [code, retval, mark, changes] = o;
    const zt = program.startsWith('zt_');
    let want = expected[i]!.verdict;
    // Ran without skb->ingress_ifindex when code is 3 (5.10's BPF_PROG_RUN refuses it): the model on the same context.
    if (code === 3) out.ctxFallback++;
    const ctx = { ifindex, ingressIfindex: code === 3 ? 0 : ingressIfindex };
    if (program === 'in_redirect') want = m.inbound(frame, model, ctx);
    else if (!zt) want = m.outbound(frame, model, ctx);
    m.record(model, want);
    let verdict: KernelOutcome['verdict'];
    if (retval === TcAct.SHOT) verdict = 'drop';
    else if (retval === TcAct.REDIRECT && !zt) verdict = 'redirect';
    // The pod programs pass with TC_ACT_UNSPEC (the hook's next filter decides); ztunnel's with TC_ACT_OK.
    else if (retval === TcAct.UNSPEC && !zt) verdict = 'pass';
    else if (retval === TcAct.OK && zt) verdict = mark !== 0 ? 'deliver' : 'pass';
    else verdict = `retval ${retval}`;
    const k: KernelOutcome = { verdict, mark, dataOut: applyChanges(frame, changes) };
    // A dropped frame's mark goes nowhere: compare marks only when the frame lives on.
    const diff = disagreement(want, verdict === 'drop' && want.verdict === 'drop' ? { ...k, mark: 0 } : k, frame);
    if (diff) out.disagreements.push(`${where()}\n  model ${want.verdict} ${want.row}; ${diff}`);
  });
  // xdp_out's runs, after the TC runs' outcomes. xdp_out records no flows: each group's
  // model state is the pristine one.
  const xdpActions: Record<number, XdpActionName> = { [XdpAction.PASS]: 'XDP_PASS', [XdpAction.DROP]: 'XDP_DROP', [XdpAction.REDIRECT]: 'XDP_REDIRECT' };
  (corpus.xdp?.runs ?? []).forEach(([st, frameIdx, ingressIfindex], j) => {
    const o = outcomes[corpus.runs.length + j];
    const frame = Buffer.from(corpus.frames[frameIdx]!, 'hex');
    const where = () => `xdp_out [${corpus.states[st]!.name}] ingress ${ingressIfindex} frame ${frame.toString('hex')}`;
    if (!o) return;
    if (o[0] === 1) {
      // Only a frame shorter than an Ethernet header may be refused.
      if (xdpRunnable(frame)) out.errors.push(`${where()}: refused as too short (errno ${o[1]})`);
      else out.notRunnable++;
      return;
    }
    if (o[0] === 2) {
      out.errors.push(`${where()}: ${o[1]}`);
      return;
    }
    const [code, retval, , changes] = o;
    // Code 3: the kernel took no xdp_md, so the frame arrived on the runner's loopback.
    if (code === 3) out.ctxFallback++;
    const want = xdpOutbound(frame, models.get(st)!, { ifindex: code === 3 ? LOOPBACK_IFINDEX : ingressIfindex });
    const diff = xdpDisagreement(want, { action: xdpActions[retval] ?? `retval ${retval}`, dataOut: applyChanges(frame, changes) });
    if (diff) out.disagreements.push(`${where()}\n  model ${want.action} ${want.row}; ${diff}`);
  });
  // The in-pod runs and lookups, after the XDP runs' outcomes.
  const replay = corpus.inpod?.replay;
  if (replay) {
    const start = corpus.runs.length + (corpus.xdp?.runs?.length ?? 0);
    const j = judgeInpod(replay, (i) => Buffer.from(corpus.frames[i]!, 'hex'), outcomes.slice(start), report.inpodCtx, report.inpodMaps ?? []);
    out.notRunnable += j.notRunnable;
    out.ctxFallback += j.noIngressCtx;
    out.disagreements.push(...j.disagreements);
    out.errors.push(...j.errors);
    out.inpod = j;
  }
  return out;
}

/** Instructions per program in the object: its symbol's size / 8. */
async function objectInsns(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const object of [OBJECT, INPOD_OBJECT, XDP_OBJECT]) {
    const syms = await systemRunner.run(['llvm-readelf', '-s', '--wide', object]);
    for (const line of syms.split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f[3] === 'FUNC' && f[4] === 'GLOBAL') out.set(f[7]!, Number(f[2]) / 8);
    }
  }
  return out;
}

async function pool<T>(jobs: (() => Promise<T>)[], size: number): Promise<T[]> {
  const results: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: size }, async () => {
      while (next < jobs.length) {
        const i = next++;
        results[i] = await jobs[i]!();
      }
    }),
  );
  return results;
}

async function missingTools(): Promise<string[]> {
  const missing: string[] = [];
  for (const tool of ['qemu-system-x86_64', 'busybox', 'cpio', 'llvm-readelf']) {
    await systemRunner.run(['sh', '-c', `command -v ${tool}`]).catch(() => missing.push(tool));
  }
  return missing;
}

kernelDescribe('kernel matrix: our programs and loader on 5.10, 6.1, 6.12 (qemu) and this kernel', 'boots kernels under qemu and loads BPF programs', () => {
  /** Why the matrix cannot run here: a skip outside CI, a failure of every kernel's test under CI=true. */
  let skipReason: string | null = null;
  /** The matrix itself broke (a build step, the initramfs): every kernel's test fails with it. */
  let setupError: Error | null = null;
  let corpus: Corpus;
  let expected: Expectation[];
  let models: Map<number, m.ModelState>;
  const rows: KernelRow[] = [];
  const details = new Map<string, { log: string; disagreements: string[]; errors: string[]; inpod: InpodJudgement | null }>();

  beforeAll(async () => {
    const missing = await missingTools();
    if (missing.length > 0) {
      skipReason = `${missing.join(', ')} missing (scripts/setup.sh installs them)`;
      console.warn(`${REQUIRED ? 'failing' : 'skipping'} the kernel matrix: ${skipReason}`);
      return;
    }
    let fetched: string;
    try {
      fetched = await systemRunner.run(['bash', SCRIPT, 'fetch'], { timeoutMs: 240_000 });
    } catch (err) {
      skipReason = `kernel images neither cached under ${CACHE}/ nor downloadable from Debian's archive: ${err instanceof Error ? err.message.split('\n').slice(-2).join(' ') : String(err)}`;
      console.warn(`${REQUIRED ? 'failing' : 'skipping'} the kernel matrix: ${skipReason}`);
      return;
    }
    try {
      await runMatrix(fetched);
    } catch (err) {
      setupError = err instanceof Error ? err : new Error(String(err));
    }
  }, 600_000);

  async function runMatrix(fetched: string): Promise<void> {
    const lines = fetched.trim().split('\n');
    for (const note of lines.filter((l) => l.startsWith('note '))) console.warn(`kernel matrix: ${note.slice(5)}`);
    const kernels = lines.filter((l) => !l.startsWith('note ')).map((l) => l.split(' ') as [string, string]);

    await systemRunner.run(['make', '-s', BROKEN], { timeoutMs: 60_000 });
    const probe = BpfObject.open(OBJECT);
    const maxPods = probe.mapDefs().get('pods')!.maxEntries;
    probe.close();
    ({ corpus, expected, models } = buildCorpus(maxPods));
    mkdirSync(CACHE, { recursive: true });
    const corpusPath = `${CACHE}/corpus.json`;
    writeFileSync(corpusPath, JSON.stringify(corpus));
    const initramfs = `${CACHE}/initramfs.cpio`;
    await systemRunner.run(['bash', SCRIPT, 'initramfs', initramfs], { timeoutMs: 120_000 });
    const insns = await objectInsns();

    const jobs = [
      ...kernels.map(([label, dir]) => ({ label, argv: ['bash', SCRIPT, 'boot', dir, initramfs, corpusPath] })),
      { label: 'host', argv: ['bash', SCRIPT, 'host', corpusPath] },
    ].map(({ label, argv }) => async () => {
      const t0 = Date.now();
      const log = await systemRunner.run(argv, { timeoutMs: 280_000 }).catch((err: Error) => `MATRIX fatal ${JSON.stringify(err.message)}`);
      const report = parseReport(log);
      const c = compare(corpus, expected, models, report);
      const release = report.facts?.release ?? `${label} (no report)`;
      details.set(release, { log, disagreements: c.disagreements, errors: c.errors, inpod: c.inpod });
      const row: KernelRow = {
        label,
        release,
        report,
        objectInsns: insns,
        frames: (report.outcomes?.length ?? 0) - c.notRunnable,
        inpodFrames: c.inpod ? c.inpod.frames.withListeners + c.inpod.frames.withoutListeners : 0,
        inpodLookups: c.inpod ? c.inpod.lookups + c.inpod.lookupsRefused : 0,
        notRunnable: c.notRunnable,
        ctxFallback: c.ctxFallback,
        disagreements: c.disagreements.length,
        errors: c.errors.length,
        seconds: (Date.now() - t0) / 1000,
      };
      return row;
    });
    rows.push(...(await pool(jobs, PARALLEL)));
  }

  afterAll(() => {
    if (rows.length === 0) return;
    const inpodRuns = corpus.inpod?.replay ? inpodRunCount(corpus.inpod.replay) : 0;
    console.log(
      `kernel matrix: ${corpus.runs.length + (corpus.xdp?.runs?.length ?? 0) + inpodRuns} runs per kernel (${corpus.runs.length} TC, ${corpus.xdp?.runs?.length ?? 0} XDP, ${inpodRuns} in-pod; ${corpus.frames.length} distinct frames, ${corpus.states.length} map states)\n${formatTable(rows, PROGRAMS, INPOD_PROGRAMS, XDP_PROGRAMS)}`,
    );
    for (const r of rows)
      console.log(
        `kernel ${r.release}: ${r.report.programs.filter((l) => l.loaded).length + r.report.inpodPrograms.filter((l) => l.loaded).length + r.report.xdpPrograms.filter((l) => l.loaded).length} programs loaded (${r.report.inpodPrograms.filter((l) => l.loaded).length} in-pod, ${r.report.xdpPrograms.filter((l) => l.loaded && l.attached === 'ok').length} XDP attached), ${r.frames} frames, ${r.inpodFrames ?? 0} in-pod frames, ${r.disagreements} disagreements, in-pod delivery ${r.report.inpodProbe && 'reuseportAssign' in r.report.inpodProbe ? (r.report.inpodProbe.reuseportAssign ? 'sk_assign' : 'iptables (bpf_sk_assign refuses SO_REUSEPORT)') : 'unknown'}`,
      );
    for (const r of rows) {
      const j = details.get(r.release)?.inpod;
      const f = r.report.inpodCtx;
      if (!j) continue;
      const rows = [...j.rows].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([row, n]) => `${row}:${n}`);
      console.log(
        `kernel ${r.release} in-pod: ${j.frames.withListeners} frames with ztunnel's listeners, ${j.frames.withoutListeners} without (fail closed), ${j.notRunnable} not runnable; ` +
          `${j.noIngressCtx} run without skb->ingress_ifindex (fact: BPF_PROG_RUN ${f?.ingressIfindex ? 'takes' : 'refuses'} it), ` +
          `${j.deliverAsDrop} deliver judged as drop (bpf_sk_assign assigns nothing under BPF_PROG_RUN; SO_REUSEPORT assign ${r.report.inpodProbe && 'reuseportAssign' in r.report.inpodProbe ? (r.report.inpodProbe.reuseportAssign ? 'yes' : 'no') : 'unknown'}), ` +
          `${j.lookups} lookups run, ${j.lookupsRefused} judged refused (fact: SK_LOOKUP test run ${f?.skLookupRun === true ? 'yes' : `no: ${f?.skLookupRun ?? 'unknown'}`}), ` +
          `maps compared after ${j.mapsCompared} groups, ${j.disagreements.length} disagreements; rows ${rows.join(' ')}`,
      );
    }
  });

  for (const label of ['5.10', '6.1', '6.12', 'host']) {
    it(`${label === 'host' ? "this machine's kernel" : `Debian ${label}`}: loads every program, rejects the broken one, picks the expected variants, agrees with the model`, (ctx) => {
      if (setupError) throw setupError;
      if (skipReason !== null) {
        // CI=true forbids skipping: the matrix must run on CI's machines.
        if (REQUIRED) throw new Error(`kernel matrix (CI=true or make kernel-matrix: no skipping): ${skipReason}`);
        ctx.skip();
        return;
      }
      const row = rows.find((r) => r.label === label);
      expect(row, `no ${label} kernel in the matrix`).toBeDefined();
      const d = details.get(row!.release)!;
      const problems = problemsOf(row!, PROGRAMS, INPOD_PROGRAMS, XDP_PROGRAMS);
      const context = [
        ...d.disagreements.slice(0, 5),
        ...d.errors.slice(0, 5),
        ...(row!.report.done ? [] : [`console (last 40 lines):\n${d.log.split('\n').slice(-40).join('\n')}`]),
      ];
      expect(problems, `kernel ${row!.release}:\n${problems.join('\n')}\n${context.join('\n')}`).toEqual([]);
      expect(row!.frames).toBeGreaterThan(0);
      // The in-pod programs' frames were judged here, with ztunnel's listeners and without.
      const j = d.inpod;
      expect(j && j.frames.withListeners > 0 && j.frames.withoutListeners > 0 && j.lookups + j.lookupsRefused > 0, `in-pod replay on ${row!.release}`).toBe(
        true,
      );
    });
  }

  describe('the matrix can fail', () => {
    it('a kernel that loaded the broken program, picked another variant or disagreed would fail its row', (ctx) => {
      if (skipReason !== null || rows.length === 0) {
        ctx.skip();
        return;
      }
      const good = rows[0]!;
      const bad = (over: Partial<KernelRow>, report?: Partial<RunnerReport>) =>
        problemsOf({ ...good, ...over, report: { ...good.report, ...report } }, PROGRAMS, INPOD_PROGRAMS, XDP_PROGRAMS);
      expect(bad({}, { negative: { rejected: false, detail: 'loaded' } })).not.toEqual([]);
      expect(bad({}, { facts: { ...good.report.facts!, variant: 'redirect' } })).not.toEqual([]);
      expect(bad({ disagreements: 1 })).not.toEqual([]);
      expect(bad({}, { programs: good.report.programs.slice(1) })).not.toEqual([]);
      expect(bad({}, { inpodPrograms: good.report.inpodPrograms.slice(1) })).not.toEqual([]);
      expect(bad({}, { xdpPrograms: good.report.xdpPrograms.slice(1) })).not.toEqual([]);
      expect(bad({}, { xdpPrograms: good.report.xdpPrograms.map((l) => ({ ...l, attached: 'EINVAL' })) })).not.toEqual([]);
      // The XDP hook's budget is the kernel's 1,000,000 (it needs 5.2+), not 4.20's half.
      expect(bad({}, { xdpPrograms: good.report.xdpPrograms.map((l) => ({ ...l, verifiedInsns: 1_000_000 })) })).not.toEqual([]);
      const probe = good.report.inpodProbe;
      expect(probe && 'reuseportAssign' in probe).toBe(true);
      expect(bad({}, { inpodProbe: { reuseportAssign: !(probe as { reuseportAssign: boolean }).reuseportAssign } })).not.toEqual([]);
      expect(bad({}, { inpodProbe: null })).not.toEqual([]);
    });

    it('an in-pod outcome other than the model’s, or lookups run where the probe found no SK_LOOKUP test run, are disagreements', (ctx) => {
      const host = rows.find((r) => r.label === 'host');
      if (skipReason !== null || !host?.report.outcomes || !corpus.inpod?.replay) {
        ctx.skip();
        return;
      }
      const r = host.report;
      const start = corpus.runs.length + (corpus.xdp?.runs?.length ?? 0);
      expect(compare(corpus, expected, models, r).disagreements).toEqual([]);
      // The first in-pod run (PO1, an ARP frame inpod_out passes) reported as a drop.
      const first = r.outcomes![start]!;
      expect(first[0]).toBe(0);
      const flipped = r.outcomes!.map((o, i) => (i === start ? ([0, TcAct.SHOT, 0, ''] as RunOutcome) : o));
      expect(compare(corpus, expected, models, { ...r, outcomes: flipped }).disagreements).toHaveLength(1);
      const noLookupRun = compare(corpus, expected, models, { ...r, inpodCtx: { ingressIfindex: true, skLookupRun: 'errno 524' } });
      const lookups = details.get(host.release)!.inpod!.lookups;
      expect(lookups).toBeGreaterThan(0);
      expect(noLookupRun.disagreements).toHaveLength(lookups);
    });
  });
});
