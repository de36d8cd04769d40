/**
 * The kernel matrix's in-pod part (docs/kernel-matrix.md): the corpus of in-pod frames and
 * lookups each kernel's runner replays (harness/matrix/vm-runner.ts, with the in-pod tests'
 * harness and sockets), and the host's judgement of what it reports against the model
 * (test/model/inpod.ts), as test/kernel/inpod-datapath.test.ts and the in-pod fuzzer judge
 * this kernel's.
 *
 * Two scenarios, each a netns of the runner's: the spec's rows (test/model/inpod-rows.ts)
 * with ztunnel's sockets, then with them closed (fail closed), each row's handoff looked up
 * afterwards, and the inpod_lookup rows; the fuzzer's three states (test/model/inpod-fuzz.ts:
 * no sockets twice, then ztunnel's sockets, a connection and TIME_WAITs) with its frames on
 * all six frame programs and its lookups.
 *
 * What a kernel's BPF_PROG_RUN cannot do is predicted from the facts its runner probed
 * (`MATRIX inpod-ctx`), never skipped: no skb->ingress_ifindex (5.10) → the frame ran with
 * 0 and the model judges it so; no SK_LOOKUP test run (before 5.14) → every lookup must be
 * refused with the probe's error; bpf_sk_assign never assigns under BPF_PROG_RUN (not at TC
 * ingress) → the model's deliver is a drop on every kernel, whether its SO_REUSEPORT check
 * (before 6.5) would have refused the listener or not (the listeners here set no SO_REUSEPORT).
 */
import { socketTable, type SocketTable } from '../../harness/inpod/sockets.js';
import { type InpodProgram, inpodVerdictOf, INPOD_PROGRAMS, type LookupOutcome } from '../../harness/inpod/harness.js';
import { applyChanges, type InpodCorpusLookup, type InpodCtx, type InpodGroup, type InpodReplay, type RunOutcome } from '../../harness/matrix/corpus.js';
import { Gen } from './generate.js';
import { inpodLookup, inpodVerdict, type InpodState, type InpodVerdict, recordInpod } from './inpod.js';
import { inpodDisagreement } from './inpod-harness.js';
import { ctxOfKey, FUZZ_ADDRESSES, FUZZ_STATES, fuzzContext, fuzzFrames, fuzzProbeFlows, lookupCtx, lookupKey } from './inpod-fuzz.js';
import { h4, LOOKUP_ROWS, ROW_ADDRESSES, ROW_SOCKETS, ROWS, ZT_CLOSED, type Row } from './inpod-rows.js';

/** The state a group's runs start from, as the model holds it. */
function groupState(g: InpodGroup): InpodState {
  return { dnsCapture: g.dnsCapture, probeFlows: new Map(g.probeFlows), overrides: new Map(g.overrides), handoffs: new Map(g.handoffs) };
}

/** ztunnel's TCP listeners a handoff may hold, and the IPv6-only ones (every tcp6 one here). */
function listenersOf(s: SocketTable): { tcp: string[]; v6only: Set<string> } {
  const tcp = [...s.listeners].filter((l) => l.startsWith('tcp'));
  return { tcp, v6only: new Set(tcp.filter((l) => l.startsWith('tcp6'))) };
}

/**
 * The model over a group's runs in order, recording what each leaves (PH4's flows, PL5/PI8's
 * handoffs) for the ones the kernel ran. `ran(i)`: whether run i ran and with which
 * skb->ingress_ifindex (null: it did not run); by default every run ran as the corpus says.
 */
function modelRuns(
  g: InpodGroup,
  programs: readonly string[],
  frameOf: (i: number) => Buffer,
  sockets: SocketTable,
  ran: (i: number) => { ingressIfindex: number } | null = (i) => ({ ingressIfindex: g.runs[i]![3] }),
): { state: InpodState; verdicts: (InpodVerdict | null)[] } {
  const state = groupState(g);
  const verdicts = g.runs.map(([prog, frameIdx, mark], i) => {
    const r = ran(i);
    if (!r) return null;
    const v = inpodVerdict(programs[prog] as InpodProgram, frameOf(frameIdx), state, { mark, ingressIfindex: r.ingressIfindex }, sockets);
    recordInpod(state, v);
    return v;
  });
  return { state, verdicts };
}

/**
 * The in-pod replay. `frameOf` interns a frame in the corpus's frame list, `frameAt` reads
 * one back. `framesPerState`, `lookupsPerState`: the fuzz part's size per state.
 */
export function buildInpodReplay(
  frameOf: (f: Buffer) => number,
  frameAt: (i: number) => Buffer,
  seed: number,
  framesPerState: number,
  lookupsPerState: number,
): InpodReplay {
  const programs = [...INPOD_PROGRAMS];
  const replay: InpodReplay = { programs, scenarios: [] };

  // The rows: consecutive rows with the same map state share a group; the probe flows PH4
  // records carry over to the next group (PH5, PH8 use them), as the rows test runs them. A
  // row with handoffs there before it has a group of its own, which starts with them.
  let flows = new Map<string, string>();
  const rowGroups = (rows: Row[], sockets: SocketTable): InpodGroup[] => {
    const groups: InpodGroup[] = [];
    for (const r of rows) {
      const overrides = (r.overrides ?? []).map(([ip, f]): [string, number] => [h4(ip), f]);
      let g = groups.at(-1);
      if (!g || g.handoffs || r.handoffs || g.dnsCapture !== !!r.dns || JSON.stringify(g.overrides) !== JSON.stringify(overrides)) {
        if (g) flows = closeRowGroup(g, programs, frameAt, sockets);
        g = { name: `rows from ${r.id}`, dnsCapture: !!r.dns, overrides, probeFlows: [...flows], runs: [], lookups: [] };
        if (r.handoffs) g.handoffs = r.handoffs;
        groups.push(g);
      }
      g.runs.push([programs.indexOf(r.program), frameOf(r.frame), r.mark ?? 0, r.ingressIfindex ?? 0]);
    }
    if (groups.length > 0) flows = closeRowGroup(groups.at(-1)!, programs, frameAt, sockets);
    return groups;
  };
  const withZt = socketTable(ROW_SOCKETS);
  const rowsZt = rowGroups(
    ROWS.filter((r) => !r.noZtunnel),
    withZt,
  );
  // The inpod_lookup rows, each on its seeded handoffs (the entries the others left stay).
  rowsZt.push({
    name: 'inpod_lookup rows',
    dnsCapture: false,
    overrides: [],
    probeFlows: [...flows],
    runs: [],
    lookups: LOOKUP_ROWS.map((r): InpodCorpusLookup => [r.seed, r.ctx]),
  });
  const withoutZt = socketTable(ZT_CLOSED, socketTable(ROW_SOCKETS));
  replay.scenarios.push({
    name: 'rows',
    addresses: ROW_ADDRESSES,
    phases: [
      { name: "rows, ztunnel's sockets", steps: ROW_SOCKETS, groups: rowsZt },
      {
        name: "rows, ztunnel's sockets closed (fail closed)",
        steps: ZT_CLOSED,
        groups: rowGroups(
          ROWS.filter((r) => r.noZtunnel),
          withoutZt,
        ),
      },
    ],
  });

  // The fuzzer's states, one group each: its frames on every frame program, then lookups
  // near the handoffs (the ones the runs leave and a few seeded); a lookup that takes an
  // entry has it put back (seeded again before the next lookup).
  const gen = new Gen(seed);
  const sockets = socketTable([]);
  const phases = FUZZ_STATES.map((st) => {
    socketTable(st.steps, sockets);
    const g: InpodGroup = {
      name: st.name,
      dnsCapture: st.dns,
      overrides: st.overrides.map(([ip, f]): [string, number] => [h4(ip), f]),
      probeFlows: [...fuzzProbeFlows()],
      runs: [],
      lookups: [],
    };
    for (const frame of fuzzFrames(gen, framesPerState)) {
      const f = frameOf(frame);
      for (const [p, program] of programs.entries()) {
        const { mark, ingressIfindex } = fuzzContext(gen, program);
        g.runs.push([p, f, mark, ingressIfindex]);
      }
    }
    const handoffs = modelRuns(g, programs, frameAt, sockets).state.handoffs!;
    const { tcp, v6only } = listenersOf(sockets);
    let seeds: [string, string][] = [];
    if (tcp.length > 0) {
      for (let i = 0; i < 24; i++) {
        const k = lookupKey(lookupCtx(gen));
        const sock = gen.pick(tcp);
        seeds.push([k, sock]);
        handoffs.set(k, sock);
      }
    }
    for (let i = 0; i < lookupsPerState; i++) {
      const ctx = gen.chance(0.5) && handoffs.size > 0 ? ctxOfKey(gen.pick([...handoffs.keys()]), gen) : lookupCtx(gen);
      g.lookups.push([seeds, ctx]);
      const mv = inpodLookup(ctx, handoffs, v6only);
      seeds = mv.takes ? [[mv.takes, handoffs.get(mv.takes)!]] : [];
    }
    return { name: `fuzz: ${st.name}`, steps: st.steps, groups: [g] };
  });
  replay.scenarios.push({ name: 'fuzz', addresses: FUZZ_ADDRESSES, phases });
  return replay;
}

/**
 * A row group's lookups: the handoff each of its runs leaves (PL5, PI8, PR10) and the ones it
 * started with, looked up as the SYN's TCP lookup (PK1). Returns the probe flows the group leaves.
 */
function closeRowGroup(g: InpodGroup, programs: readonly string[], frameAt: (i: number) => Buffer, sockets: SocketTable): Map<string, string> {
  const { state } = modelRuns(g, programs, frameAt, sockets);
  for (const key of state.handoffs!.keys()) {
    const [family, remoteHex, rport, localHex, lport] = key.split('|');
    g.lookups.push([
      [],
      { family: Number(family) as 4 | 6, protocol: 6, remoteHex: remoteHex!, remotePort: Number(rport), localHex: localHex!, localPort: Number(lport) },
    ]);
  }
  return state.probeFlows;
}

/** One kernel's in-pod judgement: counts by what was judged under which fact. */
export interface InpodJudgement {
  /** Frame runs the kernel ran, with ztunnel's listeners in the netns and without. */
  frames: { withListeners: number; withoutListeners: number };
  notRunnable: number;
  /** Frames run with skb->ingress_ifindex 0 (the kernel refuses it), judged on that context. */
  noIngressCtx: number;
  /** The model's deliver judged as a drop (bpf_sk_assign does not assign under BPF_PROG_RUN). */
  deliverAsDrop: number;
  /** Lookups run and judged, and lookups judged refused (no SK_LOOKUP test run on this kernel). */
  lookups: number;
  lookupsRefused: number;
  /** Groups whose probe_flows and inpod_handoff after the runs were compared with the model's. */
  mapsCompared: number;
  rows: Map<string, number>;
  disagreements: string[];
  errors: string[];
}

/**
 * Judges a kernel's in-pod outcomes (in the replay's order) with the model, on the facts
 * its runner probed. `outcomes` start at the replay's first run.
 */
export function judgeInpod(
  replay: InpodReplay,
  frameAt: (i: number) => Buffer,
  outcomes: readonly RunOutcome[],
  ctx: InpodCtx | null | undefined,
  maps: readonly [[string, string][], [string, string][]][],
): InpodJudgement {
  const j: InpodJudgement = {
    frames: { withListeners: 0, withoutListeners: 0 },
    notRunnable: 0,
    noIngressCtx: 0,
    deliverAsDrop: 0,
    lookups: 0,
    lookupsRefused: 0,
    mapsCompared: 0,
    rows: new Map(),
    disagreements: [],
    errors: [],
  };
  const count = (row: string) => j.rows.set(row, (j.rows.get(row) ?? 0) + 1);
  let at = 0;
  let groupIndex = 0;
  if (outcomes.length > 0 && !ctx) j.errors.push('in-pod outcomes without the runner’s in-pod facts (MATRIX inpod-ctx)');
  for (const scenario of replay.scenarios) {
    const sockets = socketTable([]);
    for (const phase of scenario.phases) {
      socketTable(phase.steps, sockets);
      const { v6only } = listenersOf(sockets);
      const zt = [...sockets.listeners].some((l) => /:150(01|06|53)$/.test(l));
      for (const g of phase.groups) {
        const os = outcomes.slice(at, at + g.runs.length);
        at += g.runs.length;
        const where = (i: number) => {
          const [p, f, mark, ingress] = g.runs[i]!;
          return `${replay.programs[p]} [${scenario.name}: ${g.name}] mark 0x${mark.toString(16)} ingress ${ingress} frame ${frameAt(f).toString('hex')}`;
        };
        // The model runs on the context each run really had (code 3: ingress_ifindex 0).
        const { state, verdicts } = modelRuns(g, replay.programs, frameAt, sockets, (i) => {
          const o = os[i];
          if (!o || o[0] === 1 || o[0] === 2) return null;
          return { ingressIfindex: o[0] === 3 ? 0 : g.runs[i]![3] };
        });
        os.forEach((o, i) => {
          const [p, f, mark] = g.runs[i]!;
          if (o[0] === 1) {
            j.notRunnable++;
            return;
          }
          if (o[0] === 2) {
            j.errors.push(`${where(i)}: ${o[1]}`);
            return;
          }
          const [code, retval, kmark, changes] = o;
          const want = verdicts[i]!;
          const frame = frameAt(f);
          if (code === 3) j.noIngressCtx++;
          if (want.verdict === 'deliver') j.deliverAsDrop++;
          if (zt) j.frames.withListeners++;
          else j.frames.withoutListeners++;
          count(want.row);
          const diff = inpodDisagreement(
            want,
            { verdict: inpodVerdictOf(replay.programs[p] as InpodProgram, retval), mark: kmark, dataOut: applyChanges(frame, changes) },
            frame,
            mark,
          );
          if (diff) j.disagreements.push(`${where(i)}\n  model ${want.verdict} ${want.row}; ${diff}`);
        });
        // What the kernel recorded after the runs (PH4's flows, PL5/PI8's handoffs) is what the model recorded.
        const m = maps[groupIndex++];
        // (Not when a run failed in the kernel: that is an error already, and the maps then say nothing.)
        if (m && os.length === g.runs.length && !os.some((o) => o[0] === 2)) {
          j.mapsCompared++;
          const same = (a: [string, string][], b: Map<string, string>) => JSON.stringify([...a].sort()) === JSON.stringify([...b].sort());
          if (!same(m[0], state.probeFlows))
            j.disagreements.push(
              `probe_flows after [${scenario.name}: ${g.name}]: kernel ${JSON.stringify(m[0])}, model ${JSON.stringify([...state.probeFlows])}`,
            );
          if (!same(m[1], state.handoffs!))
            j.disagreements.push(
              `inpod_handoff after [${scenario.name}: ${g.name}]: kernel ${JSON.stringify(m[1])}, model ${JSON.stringify([...state.handoffs!])}`,
            );
        }
        // The lookups, on the handoffs the runs left and the seeds; a take removes the entry.
        const handoffs = state.handoffs!;
        for (const [seeds, query] of g.lookups) {
          const o = outcomes[at++];
          if (!o) continue;
          for (const [k, sock] of seeds) handoffs.set(k, sock);
          const where = () => `inpod_lookup [${scenario.name}: ${g.name}] ${JSON.stringify(query)}`;
          if (ctx && ctx.skLookupRun !== true) {
            // Predicted from the probe: this kernel cannot run an SK_LOOKUP program at all.
            if (o[0] === 2 && o[1].endsWith(ctx.skLookupRun.replace(/^.*(errno \d+)$/, '$1'))) j.lookupsRefused++;
            else j.disagreements.push(`${where()}\n  predicted refused (${ctx.skLookupRun}); kernel ${JSON.stringify(o)}`);
            continue;
          }
          if (o[0] !== 0) {
            j.errors.push(`${where()}: ${JSON.stringify(o)}`);
            continue;
          }
          const mv = inpodLookup(query, handoffs, v6only);
          j.lookups++;
          count(mv.row);
          const want: LookupOutcome = mv.selected ? { verdict: mv.verdict, selected: mv.selected } : { verdict: mv.verdict };
          if (o[3] !== JSON.stringify(want)) j.disagreements.push(`${where()}\n  model ${JSON.stringify(want)} ${mv.row}; kernel ${o[3]}`);
          if (mv.takes) handoffs.delete(mv.takes);
        }
      }
    }
  }
  if (at !== outcomes.length) j.errors.push(`${outcomes.length} in-pod outcomes for ${at} runs and lookups`);
  return j;
}

/** How many frame runs and lookups the replay holds. */
export function inpodRunCount(replay: InpodReplay): number {
  return replay.scenarios.flatMap((s) => s.phases.flatMap((p) => p.groups)).reduce((n, g) => n + g.runs.length + g.lookups.length, 0);
}
