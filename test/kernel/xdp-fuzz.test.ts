/**
 * Differential fuzzing of the XDP hook (build/xdp.bpf.o's xdp_out) against its reference
 * model (test/model/xdp.ts, which is the TC model's outbound rows carried out as XDP
 * actions), on the generator of the TC fuzzer (test/model/generate.ts: random bytes, valid
 * frames of every class, mutations, truncation at every offset, odd header lengths,
 * extension-header chains) under the node programs' map states (fuzzStates, test/model/rows.ts). For
 * every frame the kernel runs, its action and output bytes must equal the model's; after
 * each state the counters of both veths must equal the model's sums and host_flows must be
 * as written (xdp_out reads it, never writes). Seed fixed; FUZZ_SEED=<n> replays a run,
 * FUZZ_FRAMES=<n> sizes it (per state).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { counterOf } from '../model/datapath.js';
import { modelStateOf } from '../model/harness.js';
import { Gen, truncationSeeds } from '../model/generate.js';
import { fuzzStates, OUTSIDE, POD_A } from '../model/rows.js';
import { fold, onesSum, pseudoHeader, xdpOutbound, xdpRunnable } from '../model/xdp.js';
import { parse } from '../model/datapath.js';
import { XdpHarness, xdpDisagreement } from '../model/xdp-harness.js';
import * as b from '../../harness/packet/builder.js';
import { truncate } from '../../harness/packet/builder.js';
import { kernelDescribe } from '../support/gate.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20261130);
const FRAMES_PER_STATE = Number(process.env.FUZZ_FRAMES ?? 800);

/**
 * Frames that reach the redirect (and its checksum completion): pod A's TCP and UDP to port
 * 53 of any length, half with the checksum an offloading pod leaves (the pseudo-header
 * sum), some with IPv4 options, an IPv6 extension header, a fragment flag, Ethernet
 * padding, cut short or mutated.
 */
function redirectFrame(gen: Gen): Buffer {
  const v6 = gen.chance(0.5);
  const payload = gen.bytes(gen.pick([0, 1, 2, 3, 17, 64, 255, 512, 513, 1024, gen.int(1460)]));
  const l4 = gen.chance(0.7)
    ? b.tcp({ sport: 40000 + gen.int(1000), dport: gen.pick([443, 53, 15001, 8080]), flags: gen.int(256), payload })
    : b.udp({ sport: 40000 + gen.int(1000), dport: 53, payload });
  let f = v6
    ? b.v6Frame({ src: POD_A.v6, dst: OUTSIDE.v6, ext: gen.chance(0.1) ? [{ type: gen.pick(['hop', 'dest', 'fragment'] as const) }] : [] }, l4)
    : b.v4Frame({ src: POD_A.v4, dst: OUTSIDE.v4, options: gen.chance(0.1) ? b.Ipv4Option.recordRoute(2) : undefined, moreFragments: gen.chance(0.05) }, l4);
  const l2 = parse(f);
  if (l2.kind === 'ip' && gen.chance(0.5) && !l2.ip.badChain) {
    const ip = l2.ip;
    const len = (ip.family === 4 ? 14 + f.readUInt16BE(16) : 14 + 40 + f.readUInt16BE(18)) - ip.l4Off;
    const at = ip.l4Off + (ip.proto === 6 ? 16 : 6);
    if (at + 2 <= f.length) f.writeUInt16BE(fold(onesSum(pseudoHeader(ip.family, ip.srcRaw, ip.dstRaw, ip.proto, len))), at);
  }
  if (gen.chance(0.1)) f = Buffer.concat([f, gen.bytes(1 + gen.int(20))]);
  if (gen.chance(0.1)) f = truncate(f, gen.int(f.length + 1));
  if (gen.chance(0.1)) f = gen.mutate(f);
  return f;
}

type Sums = Record<'redirected' | 'dropped' | 'passed', [bigint, bigint]>;
const zero = (): Sums => ({ redirected: [0n, 0n], dropped: [0n, 0n], passed: [0n, 0n] });

kernelDescribe('differential fuzzing: the XDP hook vs the reference model', 'loads BPF programs', () => {
  let h: XdpHarness;
  beforeAll(async () => {
    h = await XdpHarness.create();
  });
  afterAll(async () => {
    await h?.close();
  });

  it(`agrees with the model on every runnable frame (seed ${SEED})`, { timeout: 120_000 }, () => {
    const v = { a: h.vethA, b: h.vethB };
    const s = { frames: 0, notRunnable: 0, disagreements: [] as string[], rows: new Map<string, number>(), actions: new Map<string, number>(), completed: 0 };
    const gen = new Gen(SEED);
    const cuts = truncationSeeds();
    const counters = (ifindex: number): Sums => {
      const c = h.counters(ifindex);
      if (!c) return zero();
      return {
        redirected: [c.redirectedPackets, c.redirectedBytes],
        dropped: [c.droppedPackets, c.droppedBytes],
        passed: [c.passedPackets, c.passedBytes],
      };
    };

    for (const st of fuzzStates(v)) {
      h.applyState(st.spec);
      const model = modelStateOf(st.spec, h.maxPods);
      const flowEntries = () =>
        (['host_flows', 'host_flows4'] as const).flatMap((name) =>
          h.obj
            .map(name)
            .entries()
            .map(([k, x]) => `${name} ${k.toString('hex')}=${x.toString('hex')}`),
        );
      const flowsBefore = flowEntries();
      const want = new Map([
        [v.a, counters(v.a)],
        [v.b, counters(v.b)],
      ]);
      const frames: Buffer[] = [];
      for (const f of cuts) for (let n = 0; n <= f.length; n++) frames.push(truncate(f, n));
      while (frames.length < FRAMES_PER_STATE) frames.push(gen.chance(0.3) ? redirectFrame(gen) : gen.next());

      for (const frame of frames) {
        // Mostly pod A's veth; sometimes B's, where pod A's frames are spoofed (O8).
        const ifindex = gen.chance(0.85) ? v.a : v.b;
        s.frames++;
        const expected = xdpOutbound(frame, model, { ifindex });
        s.rows.set(expected.row, (s.rows.get(expected.row) ?? 0) + 1);
        const k = h.run('xdp_out', frame, ifindex);
        if (k === null) {
          s.notRunnable++;
          if (xdpRunnable(frame)) s.disagreements.push(`FUZZ_SEED=${SEED} [${st.name}] refused a runnable frame ${frame.toString('hex')}`);
          continue;
        }
        s.actions.set(k.action, (s.actions.get(k.action) ?? 0) + 1);
        if (!expected.frameOut.subarray(6).equals(frame.subarray(6))) s.completed++;
        const field = counterOf({ verdict: expected.action === 'XDP_PASS' ? 'pass' : expected.action === 'XDP_DROP' ? 'drop' : 'redirect', row: expected.row });
        const c = want.get(ifindex)![field];
        c[0] += 1n;
        c[1] += BigInt(frame.length);
        const diff = xdpDisagreement(expected, k);
        if (diff && s.disagreements.length < 2000) {
          s.disagreements.push(
            `FUZZ_SEED=${SEED} xdp_out [${st.name}] ifindex ${ifindex === v.a ? 'A' : 'B'}\n  frame ${frame.toString('hex')}\n  model ${expected.action} ${expected.row}; ${diff}`,
          );
        }
      }
      for (const [ifindex, sums] of want) expect(counters(ifindex), `counters of veth ${ifindex === v.a ? 'A' : 'B'} after [${st.name}]`).toEqual(sums);
      const flowsAfter = flowEntries();
      expect(flowsAfter.sort(), `host_flows after [${st.name}]`).toEqual(flowsBefore.sort());
      expect(flowsAfter.length, `host_flows after [${st.name}]`).toBe(st.spec.hostFlows?.length ?? 0);
    }

    const rows = [...s.rows].sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true })).map(([r, n]) => `${r}:${n}`);
    const actions = [...s.actions].map(([a, n]) => `${a}:${n}`).join(' ');
    console.log(
      `fuzz xdp_out: ${s.frames} frames, ${s.disagreements.length} disagreements (${s.notRunnable} not runnable; ${actions}; ${s.completed} checksums completed; rows ${rows.join(' ')})`,
    );
    for (const d of s.disagreements.slice(0, 20)) console.log(d);
    expect(s.frames).toBeGreaterThanOrEqual(10_000);
    expect(s.completed).toBeGreaterThan(100);
    // Every outbound row but the not-runnable O1 is reached by a frame the kernel ran.
    for (const row of ['O2', 'O3', 'O4', 'O5', 'O6', 'O7', 'O8', 'O9', 'O10', 'O11', 'O12', 'O13', 'O14', 'O15', 'O15b', 'O16', 'O17'])
      expect(s.rows.get(row) ?? 0, `row ${row} reached`).toBeGreaterThan(0);
    expect(s.disagreements, `${s.disagreements.length} disagreements; first:\n${s.disagreements.slice(0, 5).join('\n')}`).toEqual([]);
  });
});
