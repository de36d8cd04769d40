/**
 * Differential fuzzing: every program against the reference model (test/model/datapath.ts)
 * on generated frames (random bytes, valid frames of every class, mutations, truncation at
 * every offset, odd header lengths, extension-header chains) under several map states
 * (fuzzStates, test/model/rows.ts). The kernel's verdict, its output bytes and (zt_*) its
 * mark must equal the model's for every frame the kernel runs; frames it refuses (too
 * short, see refusedAsShort) are counted as not runnable. Seed fixed in CI;
 * FUZZ_SEED=<n> replays a run, FUZZ_FRAMES=<n> sizes it.
 *
 * The run's netns has no ztunnel sockets, so for zt_assign the model's Z11 (no socket:
 * drop) is the expectation of every row that wants one.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as m from '../model/datapath.js';
import { DatapathHarness, disagreement, modelStateOf, type ProgramName } from '../model/harness.js';
import { Gen, truncationSeeds } from '../model/generate.js';
import { fuzzStates, NODE_IFINDEX, ZT_HOST_IFINDEX } from '../model/rows.js';
import { ipBytes, truncate } from '../../harness/packet/builder.js';
import { socketTable } from '../../harness/inpod/sockets.js';
import { inpodLookup, inpodVerdict, recordInpod, type InpodState } from '../model/inpod.js';
import { INPOD_LOOKUP, INPOD_PROGRAMS, InpodHarness, inpodDisagreement } from '../model/inpod-harness.js';
import { ctxOfKey, FUZZ_ADDRESSES, FUZZ_STATES, fuzzContext, fuzzFrames, fuzzProbeFlows, lookupCtx, lookupKey } from '../model/inpod-fuzz.js';
import { kernelDescribe } from '../support/gate.js';
import { handoffGen, monotonicNs } from '../../src/capture/inpod/handoffs.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20240611);
const FRAMES_PER_STATE = Number(process.env.FUZZ_FRAMES ?? 1500);

const PROGRAMS: readonly ProgramName[] = ['out_redir_peer', 'out_redirect', 'in_redirect', 'zt_mark', 'zt_assign'];
const NO_SOCKETS: m.SocketTable = { listeners: new Set(), established: new Set() };

kernelDescribe('differential fuzzing: kernel vs the reference model', 'loads BPF programs', () => {
  let h: DatapathHarness;
  beforeAll(async () => {
    h = await DatapathHarness.create();
  });
  afterAll(async () => {
    await h?.close();
  });

  it(`agrees with the model on every runnable frame (seed ${SEED})`, { timeout: 120_000 }, () => {
    const v = { a: h.vethA, b: h.vethB };
    const stats = new Map(PROGRAMS.map((p) => [p, { frames: 0, notRunnable: 0, disagreements: [] as string[], rows: new Map<string, number>() }]));
    const gen = new Gen(SEED);
    const cuts = truncationSeeds();

    for (const st of fuzzStates(v)) {
      h.applyState(st.spec);
      const model = modelStateOf(st.spec, h.maxPods);
      const frames: Buffer[] = [];
      for (const f of cuts) for (let n = 0; n <= f.length; n++) frames.push(truncate(f, n));
      while (frames.length < FRAMES_PER_STATE) frames.push(gen.next());

      for (const frame of frames) {
        const ingress = gen.pick([NODE_IFINDEX, NODE_IFINDEX, ZT_HOST_IFINDEX, 0]);
        for (const program of PROGRAMS) {
          const s = stats.get(program)!;
          s.frames++;
          let expected: m.Verdict;
          let ctx: { ifindex: number; ingressIfindex: number };
          if (program === 'zt_mark' || program === 'zt_assign') {
            ctx = { ifindex: h.vethB, ingressIfindex: NODE_IFINDEX };
            expected = program === 'zt_mark' ? m.ztunnelMark(frame, model) : m.ztunnelAssign(frame, model, NO_SOCKETS);
          } else {
            ctx = { ifindex: h.vethA, ingressIfindex: ingress };
            expected = program === 'in_redirect' ? m.inbound(frame, model, ctx) : m.outbound(frame, model, ctx);
          }
          const k = h.run(program, frame, ctx);
          s.rows.set(expected.row, (s.rows.get(expected.row) ?? 0) + 1);
          if (k === null) {
            s.notRunnable++;
            continue;
          }
          // What the kernel's run wrote (host flows), the model writes too.
          m.record(model, expected);
          // A dropped frame's mark goes nowhere: compare marks only when the frame lives on.
          const diff = disagreement(expected, k.verdict === 'drop' && expected.verdict === 'drop' ? { ...k, mark: 0 } : k, frame);
          if (diff && s.disagreements.length < 2000) {
            s.disagreements.push(
              `FUZZ_SEED=${SEED} ${program} [${st.name}] ctx ${JSON.stringify(ctx)}\n  frame ${frame.toString('hex')}\n  model ${expected.verdict} ${expected.row}${expected.mark ? ` mark 0x${expected.mark.toString(16)}` : ''}; ${diff}`,
            );
          }
        }
      }
    }

    for (const [program, s] of stats) {
      const rows = [...s.rows].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([r, n]) => `${r}:${n}`);
      console.log(`fuzz ${program}: ${s.frames} frames, ${s.disagreements.length} disagreements (${s.notRunnable} not runnable; rows ${rows.join(' ')})`);
    }
    const all = [...stats.values()].flatMap((s) => s.disagreements);
    for (const d of all.slice(0, 20)) console.log(d);
    for (const s of stats.values()) expect(s.frames).toBeGreaterThanOrEqual(10_000);
    expect(all, `${all.length} disagreements; first:\n${all.slice(0, 5).join('\n')}`).toEqual([]);
  });
});

// --- the in-pod programs (docs/datapath.md, "In-pod capture") ------------------------------

const INPOD_FRAMES_PER_STATE = Number(process.env.FUZZ_FRAMES ?? 1500) * 2 + 500;
/** inpod_lookup's runs per state: over the three states, more than 10,000. */
const LOOKUPS_PER_STATE = Math.max(3400, Math.ceil(INPOD_FRAMES_PER_STATE / 1.5));

kernelDescribe('differential fuzzing: in-pod programs vs the reference model', 'loads BPF programs', () => {
  let h: InpodHarness;
  beforeAll(async () => {
    h = await InpodHarness.create(FUZZ_ADDRESSES);
  });
  afterAll(async () => {
    await h?.close();
  });

  it(`agrees with the model on every runnable frame (seed ${SEED})`, { timeout: 180_000 }, async () => {
    const stats = new Map(
      [...INPOD_PROGRAMS, INPOD_LOOKUP].map((p) => [p, { frames: 0, notRunnable: 0, disagreements: [] as string[], rows: new Map<string, number>() }]),
    );
    const gen = new Gen(SEED + 1);
    const sockets = socketTable([]);

    for (const st of FUZZ_STATES) {
      await h.setUp(st.steps);
      socketTable(st.steps, sockets);
      const state: InpodState = {
        dnsCapture: st.dns,
        probeFlows: fuzzProbeFlows(),
        handoffs: new Map(),
        overrides: new Map(st.overrides.map(([ip, f]) => [m.addrKeyHex(ipBytes(ip)), f])),
      };
      h.clearHandoffs();
      h.applyState(state);
      const frames = fuzzFrames(gen, INPOD_FRAMES_PER_STATE);
      // A program meets only the handoffs of its run's generation (PL5, PI8, PV5, PR10: a copy
      // of a SYN meeting one is dropped); the model has no clock. When the generation turns,
      // the entries go from both; a run during the turn agrees with either side of it.
      let handoffGeneration = handoffGen(monotonicNs());

      for (const frame of frames) {
        for (const program of INPOD_PROGRAMS) {
          const s = stats.get(program)!;
          s.frames++;
          const { mark, ingressIfindex } = fuzzContext(gen, program);
          const before = handoffGen(monotonicNs());
          if (before !== handoffGeneration) {
            h.clearHandoffs();
            state.handoffs!.clear();
            handoffGeneration = before;
          }
          let expected = inpodVerdict(program, frame, state, { mark, ingressIfindex }, sockets);
          const k = h.run(program, frame, { mark, ingressIfindex });
          if (k !== null && handoffGen(monotonicNs()) !== before && inpodDisagreement(expected, k, frame, mark)) {
            expected = inpodVerdict(program, frame, { ...state, handoffs: new Map() }, { mark, ingressIfindex }, sockets);
          }
          s.rows.set(expected.row, (s.rows.get(expected.row) ?? 0) + 1);
          if (k === null) {
            s.notRunnable++;
            continue;
          }
          recordInpod(state, expected);
          const diff = inpodDisagreement(expected, k, frame, mark);
          if (diff && s.disagreements.length < 2000) {
            s.disagreements.push(
              `FUZZ_SEED=${SEED} ${program} [${st.name}] mark 0x${mark.toString(16)} ingress ${ingressIfindex}\n  frame ${frame.toString('hex')}\n  model ${expected.verdict} ${expected.row}; ${diff}`,
            );
          }
        }
      }
      // What the kernel recorded (PH4, PL5/PI8/PV5/PR10) is what the model recorded.
      expect(h.probeFlows(), `probe_flows after [${st.name}]`).toEqual(state.probeFlows);
      expect(await h.handoffs(), `inpod_handoff after [${st.name}]`).toEqual(state.handoffs);
      // The entries again, in now's generation: the lookups below (a generation's worth of
      // time at most) find them in it or as the one before, and a seed of the same key
      // replaces its entry rather than standing beside it in another generation.
      h.clearHandoffs();
      for (const [k, sock] of state.handoffs!) h.seedHandoff(k, sock);

      // inpod_lookup on lookups near those handoffs, with the ones left by inpod_in and a
      // few seeded here; a lookup that takes an entry has it put back, in both.
      const ls = stats.get('inpod_lookup')!;
      const handoffs = state.handoffs!;
      const zt = [...sockets.listeners].filter((l) => l.startsWith('tcp'));
      if (zt.length > 0) {
        for (let i = 0; i < 24; i++) {
          const k = lookupKey(lookupCtx(gen));
          const sock = gen.pick(zt);
          h.seedHandoff(k, sock);
          handoffs.set(k, sock);
        }
      }
      const v6only = new Set([...sockets.listeners].filter((l) => l.startsWith('tcp6')));
      for (let i = 0; i < LOOKUPS_PER_STATE; i++) {
        const ctx = gen.chance(0.5) && handoffs.size > 0 ? ctxOfKey(gen.pick([...handoffs.keys()]), gen) : lookupCtx(gen);
        const mv = inpodLookup(ctx, handoffs, v6only);
        const k = await h.runLookup(ctx);
        ls.frames++;
        ls.rows.set(mv.row, (ls.rows.get(mv.row) ?? 0) + 1);
        const want = mv.selected ? { verdict: mv.verdict, selected: mv.selected } : { verdict: mv.verdict };
        if (JSON.stringify(k) !== JSON.stringify(want) && ls.disagreements.length < 2000) {
          ls.disagreements.push(
            `FUZZ_SEED=${SEED} inpod_lookup [${st.name}] ${JSON.stringify(ctx)}\n  model ${JSON.stringify(want)} ${mv.row}; kernel ${JSON.stringify(k)}`,
          );
        }
        if (mv.takes) {
          const sock = handoffs.get(mv.takes)!;
          h.seedHandoff(mv.takes, sock);
        }
      }
      expect(await h.handoffs(), `inpod_handoff after the lookups of [${st.name}]`).toEqual(handoffs);
    }

    for (const [program, s] of stats) {
      const rows = [...s.rows].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([r, n]) => `${r}:${n}`);
      console.log(`fuzz ${program}: ${s.frames} frames, ${s.disagreements.length} disagreements (${s.notRunnable} not runnable; rows ${rows.join(' ')})`);
    }
    const all = [...stats.values()].flatMap((s) => s.disagreements);
    for (const d of all.slice(0, 20)) console.log(d);
    for (const s of stats.values()) expect(s.frames).toBeGreaterThanOrEqual(10_000);
    expect(all, `${all.length} disagreements; first:\n${all.slice(0, 5).join('\n')}`).toEqual([]);
  });
});
