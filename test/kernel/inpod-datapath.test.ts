/**
 * Every in-pod row of docs/datapath.md ("In-pod capture": PO, PL, PI, PR, PV, PH) through the
 * kernel's BPF_PROG_RUN: build/inpod.bpf.o on frames from the packet builder, the maps
 * written through the codec, the sockets the programs look up held by this thread inside
 * the run's netns. Each row checks the verdict the spec gives (written here by hand),
 * that the model (test/model/inpod.ts) agrees, the output bytes (loop: the destination MAC
 * becomes the source's; PH rewrites: the address and both checksums) and the mark.
 *
 * Under BPF_PROG_RUN bpf_sk_assign fails (not at TC ingress), so a `deliver` row (PL4,
 * PI9, PR9 with ztunnel's socket there) is a drop here, as for zt_assign; the real delivery is
 * test/kernel/inpod-e2e.test.ts's.
 */
import { closeSync, openSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BPF_SK_LOOKUP, closeFd, netnsLinkCreate } from '../../src/bpf/ffi.js';
import { INPOD_LOOKUP } from '../../harness/inpod/harness.js';
import { socketTable } from '../../harness/inpod/sockets.js';
import * as b from '../../harness/packet/builder.js';
import {
  inpodLookup,
  inpodVerdict,
  LOOP_MARK,
  PROBE_HEX,
  probeFlowKey,
  recordInpod,
  type InpodSockets,
  type InpodState,
  type LookupCtx,
} from '../model/inpod.js';
import { InpodHarness, inpodDisagreement } from '../model/inpod-harness.js';
import {
  APP_PORT,
  h4,
  LOOKUP_ROWS,
  lookup,
  NODE,
  OUT,
  POD,
  PROBE,
  ROW_ADDRESSES,
  ROW_SOCKETS,
  ROWS,
  TW,
  TW_FAR,
  ZT_CLOSED,
  key,
  type Row,
} from '../model/inpod-rows.js';
import { kernelDescribe } from '../support/gate.js';
import { GENERATION_NS, monotonicNs, SWEEP_GUARD_NS, sweepHandoffs } from '../../src/capture/inpod/handoffs.js';
import type { InpodProgram } from '../../harness/inpod/harness.js';

const v6 = (src: string, dst: string, l4: b.L4) => b.v6Frame({ src, dst }, l4);
const syn = (sport: number, dport: number) => b.tcp({ sport, dport, flags: 0x02 });
const sleepNs = (ns: bigint) => new Promise((r) => setTimeout(r, Number(ns / 1_000_000n) + 1));
/** Waits out the end of the handoff generation when it is near: a seeded entry and the run after it see the same one. */
async function inOneGeneration(): Promise<void> {
  const left = GENERATION_NS - (monotonicNs() % GENERATION_NS);
  if (left < 200_000_000n) await sleepNs(left + 1_000_000n);
}

kernelDescribe('in-pod data path verdicts (BPF_PROG_RUN, one row per spec row)', 'loads BPF programs', () => {
  let h: InpodHarness;
  // The sockets the rows' netns holds, as the model sees them (ROW_SOCKETS, then ZT_CLOSED).
  const sockets = socketTable(ROW_SOCKETS);
  // The probe flows the PH rows share: PH4 records, PH5/PH8 use (rows run in order).
  const state: InpodState = { dnsCapture: false, probeFlows: new Map(), handoffs: new Map() };

  beforeAll(async () => {
    h = await InpodHarness.create(ROW_ADDRESSES);
    await h.setUp(ROW_SOCKETS);
  });

  afterAll(async () => {
    await h?.close();
  });

  async function check(r: Row, sockets: InpodSockets): Promise<void> {
    const s: InpodState = { ...state, dnsCapture: !!r.dns, overrides: new Map((r.overrides ?? []).map(([ip, f]) => [h4(ip), f])) };
    h.applyState(s);
    if (r.handoffs) await inOneGeneration();
    for (const [k, sock] of r.handoffs ?? []) {
      h.seedHandoff(k, sock);
      state.handoffs!.set(k, sock);
    }
    const mark = r.mark ?? 0;
    const ingressIfindex = r.ingressIfindex ?? 0;
    const mv = inpodVerdict(r.program, r.frame, s, { mark, ingressIfindex }, sockets);
    expect([mv.row, mv.verdict], 'the model disagrees with the table').toEqual([r.id, r.verdict]);
    const k = h.run(r.program, r.frame, { mark, ingressIfindex });
    expect(k, `${r.id} not runnable`).not.toBeNull();
    const diff = inpodDisagreement(mv, k!, r.frame, mark);
    expect(diff, `${r.id} ${r.name}\nframe ${b.hex(r.frame)}`).toBeNull();
    recordInpod(state, mv);
    // What the kernel recorded, the model recorded: the probe flows, and the handoff (its
    // key and the listener in it), emptied after each row.
    expect(h.probeFlows()).toEqual(state.probeFlows);
    expect(await h.handoffs()).toEqual(state.handoffs);
    h.clearHandoffs();
    state.handoffs!.clear();
  }

  describe("with ztunnel's sockets", () => {
    it.each(ROWS.filter((r) => !r.noZtunnel).map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r) => check(r, sockets));

    it('PL5, PI8 and PR10 leave the listener the socket lookup then takes (PK1); a copy of the SYN meeting the entry is dropped', async () => {
      const cases: [InpodProgram, Buffer, number, LookupCtx, string][] = [
        ['inpod_in', v6(OUT.v6, POD.v6, syn(TW.outPort, TW.podPort)), 0, lookup(6, OUT.v6, TW.outPort, POD.v6, TW.podPort), 'tcp6:15006'],
        [
          'inpod_in',
          v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
          LOOP_MARK,
          lookup(6, POD.v6, TW_FAR.podPort, OUT.v6, TW_FAR.outPort),
          'tcp6:15001',
        ],
        ['inpod_lo_in', v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)), 0, lookup(6, POD.v6, TW_FAR.podPort, OUT.v6, TW_FAR.outPort), 'tcp6:15001'],
      ];
      for (const [program, frame, mark, ctx, socket] of cases) {
        await inOneGeneration();
        expect(h.run(program, frame, { mark })?.verdict).toBe('pass');
        const left = await h.handoffs();
        expect([...left.values()]).toEqual([socket]);
        // Another copy on its way while the first has not reached its lookup: were it to
        // pass, one lookup would take the one entry and the other be the kernel's own.
        expect(h.run(program, frame, { mark })?.verdict).toBe('drop');
        expect(await h.handoffs()).toEqual(left);
        expect(await h.runLookup(ctx)).toEqual({ verdict: 'pass', selected: socket });
        expect(await h.handoffs()).toEqual(new Map());
        // Once taken, the next copy (the client's retransmission) is handed over again.
        expect(h.run(program, frame, { mark })?.verdict).toBe('pass');
        expect([...(await h.handoffs()).values()]).toEqual([socket]);
        h.clearHandoffs();
      }
    });

    it('a lookup made by a TC program’s own socket lookup (nested) neither takes an entry nor is given its listener', async () => {
      // inpod_in's connection lookup of a frame with no socket falls through to the
      // listener lookup, which runs inpod_lookup inside it. Were it to take the entry of a
      // SYN still on its way (its TIME_WAIT killed meanwhile, by a reset), that SYN's own
      // lookup would find none: the kernel's, the app's listener.
      const t = lookup(4, OUT.v4, 40_100, POD.v4, APP_PORT);
      const nsFd = openSync(`/var/run/netns/${h.netns}`, 'r');
      const link = netnsLinkCreate(nsFd, BPF_SK_LOOKUP, h.obj.programFd(INPOD_LOOKUP), 'the test link');
      try {
        h.clearHandoffs();
        h.seedHandoff(key(t), 'tcp4:15006');
        // An ACK of that 4-tuple: no connection socket, so the lookup reaches the listeners.
        const frame = b.v4Frame({ src: OUT.v4, dst: POD.v4 }, b.tcp({ sport: 40_100, dport: APP_PORT, flags: 0x10 }));
        expect(h.run('inpod_in', frame, { mark: 0 })?.verdict, 'PI9: to 15006 (a drop under BPF_PROG_RUN)').toBe('drop');
        expect([...(await h.handoffs()).keys()], 'the entry is still there for its SYN').toEqual([key(t)]);
        // The SYN's own lookup (the stack's; here BPF_PROG_RUN's) takes it.
        expect(await h.runLookup(t)).toEqual({ verdict: 'pass', selected: 'tcp4:15006' });
        expect(await h.handoffs()).toEqual(new Map());
      } finally {
        closeFd(link);
        closeSync(nsFd);
        h.clearHandoffs();
      }
    });

    it('generations: the lookup takes an entry of its generation or the one before, never an older one; a sweep deletes only two back', async () => {
      const m = h.map('inpod_handoff');
      const at = (port: number) => lookup(4, OUT.v4, port, POD.v4, APP_PORT);
      // Well inside one generation, so that the seeds and the lookups see the same one.
      const into = monotonicNs() % GENERATION_NS;
      if (into < SWEEP_GUARD_NS || GENERATION_NS - into < 300_000_000n) await sleepNs(GENERATION_NS - into + SWEEP_GUARD_NS);
      const now = monotonicNs();
      h.clearHandoffs();
      for (const back of [0, 1, 2, 3]) h.seedHandoff(key(at(41_000 + back)), 'tcp4:15006', back);
      // Three back is the next generation's number: written by no program yet, found by none.
      expect(await h.runLookup(at(41_002))).toEqual({ verdict: 'pass' });
      expect(await h.runLookup(at(41_003))).toEqual({ verdict: 'pass' });
      expect(m.keys()).toHaveLength(4);
      expect(sweepHandoffs(m, now)).toEqual({ deleted: 1, kept: 3, skipped: false });
      expect([...(await h.handoffs()).keys()].sort(), 'the sweep left now’s, the one before and the next').toEqual(
        [key(at(41_000)), key(at(41_001)), key(at(41_003))].sort(),
      );
      expect(await h.runLookup(at(41_000))).toEqual({ verdict: 'pass', selected: 'tcp4:15006' });
      expect(await h.runLookup(at(41_001))).toEqual({ verdict: 'pass', selected: 'tcp4:15006' });
      expect([...(await h.handoffs()).keys()], 'each lookup took its entry').toEqual([key(at(41_003))]);
      h.clearHandoffs();
    });

    describe('inpod_lookup (PK rows)', () => {
      const v6only = new Set(['tcp6:15001', 'tcp6:15006', 'tcp6:15053']);
      it.each(LOOKUP_ROWS.map((r) => [`${r.id} ${r.name}`, r] as const))('%s', async (_, r) => {
        h.clearHandoffs();
        for (const [k, sock] of r.seed) h.seedHandoff(k, sock);
        const handoffs = new Map(r.seed);
        const mv = inpodLookup(r.ctx, handoffs, v6only);
        expect(mv.row).toBe(r.id);
        const k = await h.runLookup(r.ctx);
        expect(k).toEqual(mv.selected ? { verdict: mv.verdict, selected: mv.selected } : { verdict: mv.verdict });
        if (mv.takes) handoffs.delete(mv.takes);
        expect(await h.handoffs()).toEqual(handoffs);
        expect(handoffs.size).toBe(r.left);
        h.clearHandoffs();
      });
    });

    it('PH4 recorded the flows PH5 and PH8 use, from the node’s addresses', () => {
      expect(state.probeFlows).toEqual(
        new Map([
          [probeFlowKey(h4(POD.v4), APP_PORT, 50000, 4), h4(NODE.v4)],
          [probeFlowKey(h4(POD.v6), APP_PORT, 50001, 6), h4(NODE.v6)],
        ]),
      );
      expect(PROBE_HEX[4]).toBe(h4(PROBE.v4));
    });
  });

  describe("without ztunnel's sockets (fail closed)", () => {
    beforeAll(async () => {
      await h.setUp(ZT_CLOSED);
      socketTable(ZT_CLOSED, sockets);
    });
    it.each(ROWS.filter((r) => r.noZtunnel).map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r) => check(r, sockets));
  });

  it('covers every row of the spec', () => {
    const ids = new Set(ROWS.map((r) => r.id));
    const spec = [
      ...Array.from({ length: 10 }, (_, i) => `PO${i + 1}`),
      ...Array.from({ length: 5 }, (_, i) => `PL${i + 1}`),
      ...Array.from({ length: 9 }, (_, i) => `PI${i + 1}`),
      'PI7b',
      ...Array.from({ length: 10 }, (_, i) => `PR${i + 1}`),
      ...Array.from({ length: 5 }, (_, i) => `PV${i + 1}`),
      ...Array.from({ length: 9 }, (_, i) => `PH${i + 1}`),
    ];
    for (const r of LOOKUP_ROWS) ids.add(r.id);
    expect([...ids].sort()).toEqual([...spec, 'PK1', 'PK2', 'PK3'].sort());
  });
});
