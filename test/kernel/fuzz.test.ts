/**
 * Differential fuzzing: every program against the reference model (test/model/datapath.ts)
 * on generated frames (random bytes, valid frames of every class, mutations, truncation at
 * every offset, odd header lengths, extension-header chains) under several map states. The
 * kernel's verdict, its output bytes and (zt_*) its mark must equal the model's for every
 * frame the kernel runs; frames it refuses (too short, see refusedAsShort) are counted as
 * not runnable. Seed fixed in CI; FUZZ_SEED=<n> replays a run, FUZZ_FRAMES=<n> sizes it.
 *
 * The run's netns has no ztunnel sockets, so for zt_assign the model's Z11 (no socket:
 * drop) is the expectation of every row that wants one.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as m from '../model/datapath.js';
import { DatapathHarness, disagreement, modelStateOf, type ProgramName, type StateSpec } from '../model/harness.js';
import { Gen, truncationSeeds } from '../model/generate.js';
import { baseState, FLOW, NODE, NODE_IFINDEX, OUTSIDE, POD_A, PROBE, ZT, ZT_HOST_IFINDEX, type Veths } from '../model/rows.js';
import * as b from '../../harness/packet/builder.js';
import { ipBytes, truncate } from '../../harness/packet/builder.js';
import {
  connKey,
  handoffKey,
  inpodHostIn,
  inpodLookup,
  inpodHostOut,
  inpodVmIn,
  inpodIn,
  inpodOut,
  LOOP_MARK,
  probeFlowKey,
  recordInpod,
  type ConnState,
  type InpodState,
  type LookupCtx,
  Override,
} from '../model/inpod.js';
import { InpodHarness, inpodDisagreement, type InpodProgram } from '../model/inpod-harness.js';
import { kernelDescribe } from '../support/gate.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20240611);
const FRAMES_PER_STATE = Number(process.env.FUZZ_FRAMES ?? 1500);

function states(v: Veths): { name: string; spec: StateSpec }[] {
  const base = baseState(v);
  return [
    { name: 'base', spec: base },
    { name: 'ztunnel missing', spec: { ...base, ztunnel: null } },
    { name: 'DNS capture on', spec: { ...base, ztunnel: ZT.dns } },
    { name: 'slot not PRESENT', spec: { ...base, ztunnel: ZT.notPresent } },
    { name: 'slot not PRESENT, DNS capture set', spec: { ...base, ztunnel: ZT.notPresentDns } },
    { name: 'PRESENT with ifindex 0', spec: { ...base, ztunnel: ZT.presentIfindex0 } },
    { name: 'pods map full', spec: { ...base, ztunnel: ZT.dns, fillPods: true } },
    { name: 'non-TCP drop', spec: { ...base, ztunnel: ZT.nonTcpDrop } },
    { name: 'non-TCP drop, DNS capture on', spec: { ...base, ztunnel: ZT.dnsNonTcpDrop } },
    { name: 'slot not PRESENT, non-TCP drop', spec: { ...base, ztunnel: ZT.notPresentNonTcpDrop } },
    {
      name: 'per-pod flags: pod A DNS capture on and inbound bypassed, pod B DNS capture off, node capture on',
      spec: {
        ...base,
        ztunnel: ZT.dns,
        pods: base.pods.map((p) => (p.ip === POD_A.v4 || p.ip === POD_A.v6 ? { ...p, flags: 1 | 2 | 8 } : p.flags === 1 ? { ...p, flags: 1 | 4 } : p)),
      },
    },
    { name: 'no DNS servers, no host flows', spec: { ...base, dnsServers: [], hostFlows: [] } },
    {
      name: 'stale ifindex (pod A on veth B)',
      spec: { ...base, pods: base.pods.map((p) => (p.ip === POD_A.v4 || p.ip === POD_A.v6 ? { ...p, ifindex: v.b } : p)) },
    },
  ];
}

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

    for (const st of states(v)) {
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
const IP_POD = { v4: POD_A.v4, v6: POD_A.v6 };
const IP_NODE = { v4: NODE.v4, v6: NODE.v6 };
/** The generator's flow ports (FLOW): its frames between pod A and the node meet these sockets. */
const CONN = { podPort: FLOW.podPort, outPort: FLOW.nodePort };
/** Ports inpodFrame also picks: a TIME_WAIT at the node's end and the pod connecting on it. */
const FAR = { podPort: 9090, peerPort: 50000 };

/** Frames near the in-pod rows: pod A with the node, the probe address and the outside, on the flow's ports. */
function inpodFrame(gen: Gen): Buffer {
  const v6 = gen.chance(0.5);
  const pod = v6 ? IP_POD.v6 : IP_POD.v4;
  const peer = gen.pick(v6 ? [IP_NODE.v6, PROBE.v6, OUTSIDE.v6] : [IP_NODE.v4, PROBE.v4, OUTSIDE.v4]);
  const toPod = gen.chance(0.5);
  const podPort = gen.pick([CONN.podPort, CONN.podPort, 53, 15008, FAR.podPort]);
  const peerPort = gen.pick([CONN.outPort, CONN.outPort, 53, FAR.peerPort]);
  const [sport, dport] = toPod ? [peerPort, podPort] : [podPort, peerPort];
  const l4 = gen.chance(0.8) ? b.tcp({ sport, dport, flags: gen.pick([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, gen.int(256)]) }) : b.udp({ sport, dport });
  const ip = { src: toPod ? peer : pod, dst: toPod ? pod : peer };
  if (v6) return b.v6Frame({ ...ip, ext: gen.chance(0.1) ? [{ type: 'fragment', offset: gen.pick([0, 5]), more: gen.chance(0.5) }] : [] }, l4);
  return b.v4Frame({ ...ip, moreFragments: gen.chance(0.05), fragOffset: gen.chance(0.05) ? 5 : 0 }, l4);
}

/** inpod_lookup's runs per state: over the three states, more than 10,000. */
const LOOKUPS_PER_STATE = Math.max(3400, Math.ceil(INPOD_FRAMES_PER_STATE / 1.5));

/** A listener lookup near the generator's flows: its family, protocol, ends and ports. */
function lookupCtx(gen: Gen): LookupCtx {
  const v6 = gen.chance(0.5);
  const addrs = v6 ? [IP_POD.v6, IP_NODE.v6, OUTSIDE.v6] : [IP_POD.v4, IP_NODE.v4, OUTSIDE.v4];
  const ports = [CONN.podPort, CONN.outPort, FAR.podPort, FAR.peerPort, 53, 15006, 8080];
  return {
    family: v6 ? 6 : 4,
    protocol: gen.pick([6, 6, 6, 17, 132]),
    remoteHex: m.addrKeyHex(ipBytes(gen.pick(addrs))),
    remotePort: gen.pick(ports),
    localHex: m.addrKeyHex(ipBytes(gen.pick(addrs))),
    localPort: gen.pick(ports),
  };
}

const lookupKey = (c: LookupCtx) => handoffKey(c.family, c.remoteHex, c.remotePort, c.localHex, c.localPort);

/** The lookup of a handed-over tuple, sometimes as UDP. */
function ctxOfKey(key: string, gen: Gen): LookupCtx {
  const [family, remoteHex, rport, localHex, lport] = key.split('|');
  return {
    family: Number(family) as 4 | 6,
    protocol: gen.pick([6, 6, 6, 17]),
    remoteHex: remoteHex!,
    remotePort: Number(rport),
    localHex: localHex!,
    localPort: Number(lport),
  };
}

kernelDescribe('differential fuzzing: in-pod programs vs the reference model', 'loads BPF programs', () => {
  let h: InpodHarness;
  const h4 = (ip: string) => m.addrKeyHex(ipBytes(ip));
  beforeAll(async () => {
    h = await InpodHarness.create([IP_POD.v4, IP_POD.v6, IP_NODE.v4, IP_NODE.v6]);
  });
  afterAll(async () => {
    await h?.close();
  });

  it(`agrees with the model on every runnable frame (seed ${SEED})`, { timeout: 180_000 }, async () => {
    const programs: InpodProgram[] = ['inpod_out', 'inpod_in', 'inpod_host_in', 'inpod_host_out', 'inpod_vm_in'];
    const stats = new Map(
      [...programs, 'inpod_lookup'].map((p) => [p, { frames: 0, notRunnable: 0, disagreements: [] as string[], rows: new Map<string, number>() }]),
    );
    const gen = new Gen(SEED + 1);
    const cuts = truncationSeeds();
    const flows = () =>
      new Map([
        [probeFlowKey(h4(IP_POD.v4), CONN.podPort, CONN.outPort, 4), h4(IP_NODE.v4)],
        [probeFlowKey(h4(IP_POD.v6), CONN.podPort, CONN.outPort, 6), h4(IP_NODE.v6)],
      ]);
    const listeners = new Set<string>();
    const conns = new Map<string, ConnState>();
    const states: { name: string; dns: boolean; overrides: [string, number][]; setup?: () => Promise<void> }[] = [
      { name: 'no sockets, DNS capture off (pod A IPv4: dns-capture "true")', dns: false, overrides: [[IP_POD.v4, Override.DNS_CAPTURE]] },
      { name: 'no sockets, DNS capture on (pod A IPv6: dns-capture "false")', dns: true, overrides: [[IP_POD.v6, Override.NO_DNS_CAPTURE]] },
      {
        name: "ztunnel's sockets, an app listener, a connection and a TIME_WAIT, DNS capture on (pod A IPv4: bypass-inbound-capture)",
        dns: true,
        overrides: [[IP_POD.v4, Override.BYPASS_INBOUND]],
        setup: async () => {
          for (const [kind, port] of [
            ['tcp4', 15001],
            ['tcp6', 15001],
            ['tcp4', 15006],
            ['tcp6', 15006],
            ['tcp4', 15053],
            ['udp4', 15053],
            ['udp6', 15053],
            ['tcp6', 443],
          ] as const) {
            await h.listen(kind, port);
            listeners.add(`${kind}:${port}`);
          }
          await h.connection({ ip: IP_POD.v4, port: CONN.podPort }, { ip: IP_NODE.v4, port: CONN.outPort });
          conns.set(connKey(4, h4(IP_POD.v4), CONN.podPort, h4(IP_NODE.v4), CONN.outPort), 'open');
          conns.set(connKey(4, h4(IP_NODE.v4), CONN.outPort, h4(IP_POD.v4), CONN.podPort), 'open');
          await h.connection({ ip: IP_POD.v6, port: CONN.podPort }, { ip: IP_NODE.v6, port: CONN.outPort }, true);
          conns.set(connKey(6, h4(IP_POD.v6), CONN.podPort, h4(IP_NODE.v6), CONN.outPort), 'time_wait');
          await h.connection({ ip: IP_NODE.v6, port: CONN.outPort + 1 }, { ip: IP_POD.v6, port: CONN.podPort + 1 }, true);
          conns.set(connKey(6, h4(IP_NODE.v6), CONN.outPort + 1, h4(IP_POD.v6), CONN.podPort + 1), 'time_wait');
          // A TIME_WAIT at the far end on the generator's ports, with the pod connecting again
          // on the same 4-tuple: looped SYNs there are handed over (PL5).
          await h.connection({ ip: IP_NODE.v6, port: FAR.peerPort }, { ip: IP_POD.v6, port: FAR.podPort }, true);
          conns.set(connKey(6, h4(IP_NODE.v6), FAR.peerPort, h4(IP_POD.v6), FAR.podPort), 'time_wait');
          await h.connecting({ ip: IP_POD.v6, port: FAR.podPort }, { ip: IP_NODE.v6, port: FAR.peerPort });
          conns.set(connKey(6, h4(IP_POD.v6), FAR.podPort, h4(IP_NODE.v6), FAR.peerPort), 'syn_sent');
        },
      },
    ];

    for (const st of states) {
      await st.setup?.();
      const state: InpodState = {
        dnsCapture: st.dns,
        probeFlows: flows(),
        handoffs: new Map(),
        overrides: new Map(st.overrides.map(([ip, f]) => [h4(ip), f])),
      };
      h.clearHandoffs();
      h.applyState(state);
      const sockets = { listeners, conns };
      const frames: Buffer[] = [];
      for (const f of cuts) for (let n = 0; n <= f.length; n++) frames.push(truncate(f, n));
      // SYNs on the tuples the TIME_WAITs hold (PL5, PI8), rare in the random mix.
      for (let i = 0; i < 60; i++) {
        const flags = gen.pick([0x02, 0x02, 0x12, 0x10]);
        frames.push(
          gen.chance(0.5)
            ? b.v6Frame({ src: IP_POD.v6, dst: IP_NODE.v6 }, b.tcp({ sport: FAR.podPort, dport: FAR.peerPort, flags }))
            : b.v6Frame({ src: IP_NODE.v6, dst: IP_POD.v6 }, b.tcp({ sport: CONN.outPort, dport: CONN.podPort, flags })),
        );
      }
      while (frames.length < INPOD_FRAMES_PER_STATE) frames.push(gen.chance(0.4) ? inpodFrame(gen) : gen.next());

      for (const frame of frames) {
        for (const program of programs) {
          const s = stats.get(program)!;
          s.frames++;
          const mark =
            program === 'inpod_out' ? gen.pick([0, 0, 0x539, 0x1539, 0x538, LOOP_MARK]) : gen.pick([0, 0, LOOP_MARK, LOOP_MARK, LOOP_MARK | 1, 0x539]);
          const ingressIfindex = gen.pick([0, 0, NODE_IFINDEX]);
          const expected =
            program === 'inpod_out'
              ? inpodOut(frame, state, { mark }, sockets)
              : program === 'inpod_in'
                ? inpodIn(frame, state, { mark }, sockets)
                : program === 'inpod_host_in'
                  ? inpodHostIn(frame, state, { ingressIfindex })
                  : program === 'inpod_vm_in'
                    ? inpodVmIn(frame, sockets)
                    : inpodHostOut(frame, state);
          const k = h.run(program, frame, { mark, ingressIfindex });
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
      // What the kernel recorded (PH4, PL5/PI8) is what the model recorded.
      expect(h.probeFlows(), `probe_flows after [${st.name}]`).toEqual(state.probeFlows);
      expect(await h.handoffs(), `inpod_handoff after [${st.name}]`).toEqual(state.handoffs);

      // inpod_lookup on lookups near those handoffs, with the ones left by inpod_in and a
      // few seeded here; a lookup that takes an entry has it put back, in both.
      const ls = stats.get('inpod_lookup')!;
      const handoffs = state.handoffs!;
      const zt = [...listeners].filter((l) => l.startsWith('tcp'));
      if (zt.length > 0) {
        for (let i = 0; i < 24; i++) {
          const k = lookupKey(lookupCtx(gen));
          const sock = gen.pick(zt);
          h.seedHandoff(k, sock);
          handoffs.set(k, sock);
        }
      }
      const v6only = new Set([...listeners].filter((l) => l.startsWith('tcp6')));
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
