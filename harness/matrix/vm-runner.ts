/**
 * The kernel matrix's runner (docs/kernel-matrix.md): runs inside each qemu VM (and on this
 * machine, in a netns of its own) with the controller's own code, not a copy of it: the
 * kernel facts and selectMode of `run`, probeVariant/probeDelivery of the ebpf mode, the
 * BpfObject loader over the system libbpf through koffi, the TC and XDP attach of
 * src/bpf/tc.ts and src/bpf/xdp.ts, and BPF_PROG_RUN of the kernel tests (the in-pod
 * programs through the in-pod tests' own harness/inpod/harness.ts, sockets and all). It prints what it finds on stdout (the VM's serial console) as `MATRIX ...` lines
 * (harness/matrix/corpus.ts); the host compares the outcomes with the reference model.
 *
 *   node dist/harness/matrix/vm-runner.js corpus.json
 *
 * Expects the two veths of MATRIX_VETHS in its netns (scripts/kernel-matrix.sh makes them).
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import * as ffi from '../../src/bpf/ffi.js';
import { BpfObject } from '../../src/bpf/object.js';
import { attachTc, destroyClsact, detachTc, queryTc, type Direction } from '../../src/bpf/tc.js';
import { attachXdp, detachXdp, queryXdp } from '../../src/bpf/xdp.js';
import { isNotRunnable, runProgram, runXdp } from '../bpf/testrun.js';
import { gatherKernelFacts } from '../../src/host/kernel.js';
import { probeDelivery, probeVariant } from '../../src/capture/ebpf/ebpf.js';
import { selectMode } from '../../src/capture/select.js';
import { probeReuseportAssign } from '../../src/capture/inpod/probe.js';
import { GENERATION_NS, handoffGen, monotonicNs } from '../../src/capture/inpod/handoffs.js';
import { InpodHarness, type InpodProgram } from '../inpod/harness.js';
import { systemRunner } from '../../src/host/runner.js';
import { applyMapState } from './state.js';
import {
  encodeOutcomes,
  LINE,
  LOOPBACK_IFINDEX,
  frameChanges,
  MATRIX_VETHS,
  type Corpus,
  type InpodCtx,
  type InpodProbeReport,
  type InpodScenario,
  type NegativeControl,
  type ProgramLoad,
  type RunnerFacts,
  type RunOutcome,
} from './corpus.js';

const say = (tag: string, value: unknown) => process.stdout.write(`${LINE} ${tag} ${JSON.stringify(value)}\n`);

/** The tail of an error (a load error carries the whole verifier log). */
function tail(err: unknown, lines = 25): string {
  const text = err instanceof Error ? err.message : String(err);
  const all = text.split('\n');
  return all.length <= lines ? text : [all[0], '...', ...all.slice(-lines)].join('\n');
}

function facts(): RunnerFacts {
  const f = gatherKernelFacts();
  let selection: RunnerFacts['selection'];
  try {
    const s = selectMode('auto', f);
    selection = { mode: s.mode, reason: s.reason };
  } catch (err) {
    selection = { error: err instanceof Error ? err.message : String(err) };
  }
  return {
    release: f.release,
    libbpf: ffi.libbpfVersion(),
    probes: f.probes ? { ...f.probes } : null,
    ...(f.probeError ? { probeError: f.probeError } : {}),
    variant: probeVariant(),
    delivery: probeDelivery(),
    selection,
  };
}

// struct bpf_prog_info (linux/bpf.h): xlated_prog_len at 20, verified_insns (5.16) at 216.
const PROG_INFO_LEN = 232;

/** Where the ebpf mode attaches each program (docs/datapath.md), on the runner's veths. */
function hookOf(name: string): { ifindex: number; direction: Direction } {
  // In-pod: the pod's interface (a) both ways, its host veth (b) both ways.
  if (name === 'inpod_out') return { ifindex: MATRIX_VETHS.a, direction: 'egress' };
  if (name === 'inpod_in') return { ifindex: MATRIX_VETHS.a, direction: 'ingress' };
  if (name === 'inpod_host_in') return { ifindex: MATRIX_VETHS.b, direction: 'egress' };
  if (name === 'inpod_host_out') return { ifindex: MATRIX_VETHS.b, direction: 'ingress' };
  // A VM's tap listed in reroute-virtual-interfaces: its ingress (here veth b's).
  if (name === 'inpod_vm_in') return { ifindex: MATRIX_VETHS.b, direction: 'ingress' };
  // lo of the pod's netns: its ingress (here the runner's own lo).
  if (name === 'inpod_lo_in') return { ifindex: LOOPBACK_IFINDEX, direction: 'ingress' };
  if (name.startsWith('zt_')) return { ifindex: MATRIX_VETHS.b, direction: 'ingress' };
  return { ifindex: MATRIX_VETHS.a, direction: name === 'in_redirect' ? 'egress' : 'ingress' };
}

/** The socket lookup program: a link on the runner's own netns, read back, closed (detached). */
function attachLookupCheck(fd: number): string {
  const ns = openSync('/proc/self/ns/net', 'r');
  try {
    const link = ffi.netnsLinkCreate(ns, ffi.BPF_SK_LOOKUP, fd, 'the runner netns');
    try {
      const seen = ffi.netnsQuery(ns, ffi.BPF_SK_LOOKUP, 'the runner netns');
      const id = ffi.objGetInfo(fd, 'inpod_lookup', 8).readUInt32LE(4); // bpf_prog_info: type, id
      if (!seen.includes(id)) return `attached program ${id}, the netns shows ${seen.join(', ') || 'none'}`;
    } finally {
      ffi.closeFd(link);
    }
    return 'ok';
  } catch (err) {
    return tail(err, 5);
  } finally {
    closeSync(ns);
  }
}

/**
 * The XDP programs on a veth's XDP hook in native mode, as the agent attaches them
 * (src/bpf/xdp.ts): xdp_out on the pod's host veth (a), xdp_pass on ztunnel's eth0 (b).
 */
function attachXdpCheck(name: string, fd: number): string {
  const ifindex = name === 'xdp_pass' ? MATRIX_VETHS.b : MATRIX_VETHS.a;
  try {
    const id = ffi.objGetInfo(fd, name, 8).readUInt32LE(4); // bpf_prog_info: type, id
    attachXdp(ifindex, fd, null);
    const seen = queryXdp(ifindex);
    const detached = detachXdp(ifindex, id);
    if (seen?.id !== id || seen.mode !== 'native') return `attached program ${id}, the hook shows ${seen ? `${seen.mode} ${seen.id}` : 'none'}`;
    if (!detached) return `program ${id} could not be detached`;
    return queryXdp(ifindex) === null ? 'ok' : 'the hook is not empty after detach';
  } catch (err) {
    return tail(err, 5);
  }
}

/** Attaches with the loader's netlink TC (src/bpf/tc.ts), reads it back, detaches. */
function attachCheck(name: string, fd: number): string {
  if (name === 'inpod_lookup') return attachLookupCheck(fd);
  if (name.startsWith('xdp_')) return attachXdpCheck(name, fd);
  const { ifindex, direction } = hookOf(name);
  try {
    const a = attachTc(ifindex, direction, fd);
    try {
      const seen = queryTc(ifindex, direction);
      if (seen !== a.progId) return `attached program ${a.progId}, the hook shows ${seen}`;
    } finally {
      detachTc(ifindex, direction);
      if (a.createdQdisc) destroyClsact(ifindex);
    }
    return 'ok';
  } catch (err) {
    return tail(err, 5);
  }
}

function loadOne(path: string, name: string): ProgramLoad {
  let obj: BpfObject | null = null;
  try {
    obj = BpfObject.openAndLoad(path, { programs: [name] });
    const fd = obj.programFd(name);
    const info = ffi.objGetInfo(fd, name, PROG_INFO_LEN);
    const verified = info.readUInt32LE(216);
    return { name, loaded: true, xlatedInsns: info.readUInt32LE(20) / 8, verifiedInsns: verified === 0 ? null : verified, attached: attachCheck(name, fd) };
  } catch (err) {
    return { name, loaded: false, error: tail(err) };
  } finally {
    obj?.close();
  }
}

function negativeControl(path: string): NegativeControl {
  let obj: BpfObject | null = null;
  try {
    obj = BpfObject.openAndLoad(path);
    return { rejected: false, detail: 'the kernel loaded a program without a bounds check' };
  } catch (err) {
    const lines = (err instanceof Error ? err.message : String(err))
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
    // The verifier's reason is the line before its "processed N insns" summary.
    const reason = lines.find((l) => /invalid access to packet|invalid mem access|out of range|R\d+ .*(invalid|not allowed)/.test(l));
    return { rejected: true, detail: reason ?? lines[0] ?? 'rejected' };
  } finally {
    obj?.close();
  }
}

/**
 * Whether BPF_PROG_RUN takes skb->ingress_ifindex: 5.10 refuses any context with it set
 * (EINVAL), whatever the frame. Probed with a full-size IPv4 frame, which every kernel runs.
 */
function probeIngressCtx(fd: number): boolean {
  const frame = Buffer.alloc(64);
  frame.writeUInt16BE(0x0800, 12);
  frame[14] = 0x45;
  runProgram(fd, frame, { ctx: { ingressIfindex: 0 } }); // throws if even this is refused
  try {
    runProgram(fd, frame, { ctx: { ingressIfindex: 5 } });
    return true;
  } catch (err) {
    if (err instanceof Error && /errno 22$/.test(err.message)) return false;
    throw err;
  }
}

function replay(corpus: Corpus, loadable: string[]): RunOutcome[] {
  const obj = BpfObject.openAndLoad(corpus.object, { programs: loadable });
  try {
    const ingressCtx = probeIngressCtx(obj.programFd(loadable[0]!));
    say('ctx', { ingressIfindex: ingressCtx });
    const fds = corpus.programs.map((p) => (loadable.includes(p) ? obj.programFd(p) : -1));
    const frames = corpus.frames.map((h) => Buffer.from(h, 'hex'));
    const out: RunOutcome[] = [];
    let state = -1;
    for (const [st, prog, frameIdx, ifindex, ingressIfindex, mark] of corpus.runs) {
      if (st !== state) {
        applyMapState(obj, corpus.states[st]!);
        state = st;
      }
      const fd = fds[prog]!;
      if (fd < 0) {
        out.push([2, `${corpus.programs[prog]} did not load`]);
        continue;
      }
      const frame = frames[frameIdx]!;
      // A kernel that refuses skb->ingress_ifindex runs the frame without it (outcome 3).
      const fallback = ingressIfindex !== 0 && !ingressCtx;
      try {
        const r = runProgram(fd, frame, { ctx: { ifindex, ingressIfindex: fallback ? 0 : ingressIfindex, mark } });
        if (isNotRunnable(r)) out.push([1, r.notRunnable]);
        else out.push([fallback ? 3 : 0, r.retval, r.mark, frameChanges(frame, r.dataOut)]);
      } catch (err) {
        out.push([2, err instanceof Error ? err.message : String(err)]);
      }
    }
    return out;
  } finally {
    obj.close();
  }
}

/**
 * Whether BPF_PROG_RUN takes an xdp_md for XDP programs here (where it does not, any context is
 * refused with EINVAL). Probed with a full-size frame, which every kernel runs.
 */
function probeXdpCtx(fd: number): boolean {
  const frame = Buffer.alloc(64);
  frame.writeUInt16BE(0x0800, 12);
  runXdp(fd, frame, { noCtx: true }); // throws if even this is refused
  try {
    runXdp(fd, frame, { ingressIfindex: MATRIX_VETHS.a });
    return true;
  } catch (err) {
    if (err instanceof Error && /errno 22$/.test(err.message)) return false;
    throw err;
  }
}

/**
 * xdp_out on the corpus's XDP runs, under the same map states as the TC runs (the XDP
 * object's maps are its own here, written the same way). Where the kernel takes no xdp_md,
 * each frame runs without one (outcome code 3: it arrived on loopback).
 */
function replayXdp(corpus: Corpus): RunOutcome[] {
  const runs = corpus.xdp?.runs ?? [];
  if (runs.length === 0) return [];
  let obj: BpfObject;
  try {
    obj = BpfObject.openAndLoad(corpus.xdp!.object, { programs: ['xdp_out'] });
  } catch (err) {
    return runs.map((): RunOutcome => [2, `xdp_out did not load: ${tail(err, 2)}`]);
  }
  try {
    const fd = obj.programFd('xdp_out');
    const ctx = probeXdpCtx(fd);
    say('xdp-ctx', { ingressIfindex: ctx });
    const frames = new Map<number, Buffer>();
    const out: RunOutcome[] = [];
    let state = -1;
    for (const [st, frameIdx, ingressIfindex] of runs) {
      if (st !== state) {
        applyMapState(obj, corpus.states[st]!);
        state = st;
      }
      let frame = frames.get(frameIdx);
      if (!frame) frames.set(frameIdx, (frame = Buffer.from(corpus.frames[frameIdx]!, 'hex')));
      try {
        const r = runXdp(fd, frame, ctx ? { ingressIfindex } : { noCtx: true });
        if ('notRunnable' in r) out.push([1, r.notRunnable]);
        else out.push([ctx ? 0 : 3, r.retval, 0, frameChanges(frame, r.dataOut)]);
      } catch (err) {
        out.push([2, err instanceof Error ? err.message : String(err)]);
      }
    }
    return out;
  } finally {
    obj.close();
  }
}

/** The in-pod programs loaded and attached, and the delivery probe run on this kernel. */
async function inpod(corpus: Corpus): Promise<void> {
  if (!corpus.inpod) return;
  for (const p of corpus.inpod.programs) say('inpod-prog', loadOne(corpus.inpod.object, p));
  let probe: InpodProbeReport;
  try {
    probe = await probeReuseportAssign(corpus.inpod.object, systemRunner);
  } catch (err) {
    probe = { error: tail(err, 5) };
  }
  say('inpod-probe', probe);
}

/**
 * The in-pod replay (corpus.inpod.replay): each scenario in a netns of its own holding the
 * sockets its phases set up (the in-pod tests' harness), each group's frames through the
 * frame programs, then its lookups through inpod_lookup. Where BPF_PROG_RUN refuses
 * skb->ingress_ifindex (5.10) a frame runs with 0 (outcome code 3); where it cannot run
 * an SK_LOOKUP program (before 5.14) the lookups are still tried and report its error.
 */
async function replayInpod(corpus: Corpus): Promise<RunOutcome[]> {
  const replay = corpus.inpod?.replay;
  if (!replay) return [];
  const out: RunOutcome[] = [];
  const frames = new Map<number, Buffer>();
  const frameOf = (i: number) => frames.get(i) ?? frames.set(i, Buffer.from(corpus.frames[i]!, 'hex')).get(i)!;
  let ctx: InpodCtx | null = null;
  for (const scenario of replay.scenarios) {
    let h: InpodHarness;
    try {
      h = await InpodHarness.create(scenario.addresses);
    } catch (err) {
      const msg = `in-pod netns: ${tail(err, 3)}`;
      for (const g of scenario.phases.flatMap((p) => p.groups)) {
        out.push(...[...g.runs, ...g.lookups].map((): RunOutcome => [2, msg]));
        say('inpod-maps', [[], []]); // one per group, as the host counts them
      }
      continue;
    }
    try {
      if (!ctx) {
        ctx = { ingressIfindex: probeIngressCtx(h.obj.programFd('inpod_host_in')), skLookupRun: true };
        try {
          await h.runLookup({ family: 4, protocol: 17, remoteHex: '0'.repeat(32), remotePort: 1, localHex: '0'.repeat(32), localPort: 1 });
        } catch (err) {
          ctx.skLookupRun = tail(err, 1);
        }
        say('inpod-ctx', ctx);
      }
      await replayScenario(h, scenario, replay.programs, frameOf, ctx, out);
    } finally {
      await h.close();
    }
  }
  return out;
}

/** Waits out the end of the handoff generation when it is near (src/capture/inpod/handoffs.ts). */
async function inOneGeneration(): Promise<void> {
  const left = GENERATION_NS - (monotonicNs() % GENERATION_NS);
  if (left < 500_000_000n) await new Promise((r) => setTimeout(r, Number(left / 1_000_000n) + 1));
}

async function replayScenario(
  h: InpodHarness,
  scenario: InpodScenario,
  programs: string[],
  frameOf: (i: number) => Buffer,
  ctx: InpodCtx,
  out: RunOutcome[],
): Promise<void> {
  for (const phase of scenario.phases) {
    try {
      await h.setUp(phase.steps);
    } catch (err) {
      // The phase's sockets are not what the model is told: every outcome of it is an error.
      const msg = `sockets of [${phase.name}]: ${tail(err, 3)}`;
      for (const g of phase.groups) {
        out.push(...[...g.runs, ...g.lookups].map((): RunOutcome => [2, msg]));
        say('inpod-maps', [[], []]);
      }
      continue;
    }
    for (const g of phase.groups) {
      h.clearHandoffs();
      h.applyState({ dnsCapture: g.dnsCapture, probeFlows: new Map(g.probeFlows), overrides: new Map(g.overrides) });
      try {
        // Seeded well inside a handoff generation: the runs after them see the same one.
        if (g.handoffs) await inOneGeneration();
        for (const [key, socket] of g.handoffs ?? []) h.seedHandoff(key, socket);
      } catch (err) {
        // The group's maps are not what the model is told: every outcome of it is an error.
        const msg = `handoffs of [${g.name}]: ${tail(err, 3)}`;
        out.push(...[...g.runs, ...g.lookups].map((): RunOutcome => [2, msg]));
        say('inpod-maps', [[], []]);
        continue;
      }
      // The model has no clock: entries the group's runs wrote stay "there" for it. Where a
      // generation ends mid-group, they are written again under the new one, as the
      // kernel would find them had the group run within one generation.
      let gen = handoffGen(monotonicNs());
      for (const [prog, frameIdx, mark, ingressIfindex] of g.runs) {
        const now = handoffGen(monotonicNs());
        if (now !== gen) {
          const held = await h.handoffs();
          h.clearHandoffs();
          for (const [key, socket] of held) h.seedHandoff(key, socket);
          gen = now;
        }
        const frame = frameOf(frameIdx);
        const fallback = ingressIfindex !== 0 && !ctx.ingressIfindex;
        try {
          const r = h.runFrame(programs[prog] as InpodProgram, frame, { mark, ingressIfindex: fallback ? 0 : ingressIfindex });
          if (isNotRunnable(r)) out.push([1, r.notRunnable]);
          else out.push([fallback ? 3 : 0, r.retval, r.mark, frameChanges(frame, r.dataOut)]);
        } catch (err) {
          out.push([2, err instanceof Error ? err.message : String(err)]);
        }
      }
      say('inpod-maps', [[...h.probeFlows()], [...(await h.handoffs())]]);
      for (const [seeds, query] of g.lookups) {
        try {
          for (const [key, socket] of seeds) h.seedHandoff(key, socket);
          out.push([0, 0, 0, JSON.stringify(await h.runLookup(query))]);
        } catch (err) {
          out.push([2, err instanceof Error ? err.message : String(err)]);
        }
      }
    }
  }
}

async function main(): Promise<void> {
  const path = process.argv[2];
  if (!path) throw new Error('usage: vm-runner.js corpus.json');
  const corpus = JSON.parse(readFileSync(path, 'utf8')) as Corpus;
  const t0 = performance.now();
  const seconds = () => Math.round(performance.now() - t0) / 1000;
  say('facts', facts());
  const loads = corpus.programs.map((p) => loadOne(corpus.object, p));
  for (const l of loads) say('prog', l);
  say('negative', negativeControl(corpus.broken));
  say('time', { loaded: seconds(), sinceStart: process.uptime() });
  const loadable = loads.filter((l) => l.loaded).map((l) => l.name);
  const tc = loadable.length > 0 ? replay(corpus, loadable) : corpus.runs.map((): RunOutcome => [2, 'no program loaded']);
  // One list: the TC runs' outcomes, then the XDP runs'.
  const outcomes = [...tc, ...replayXdp(corpus)];
  say('time', { replayed: seconds(), runs: outcomes.length });
  await inpod(corpus);
  // Then the in-pod replay's outcomes.
  outcomes.push(...(await replayInpod(corpus)));
  say('time', { inpodReplayed: seconds(), runs: outcomes.length });
  for (const p of corpus.xdp?.programs ?? []) say('xdp-prog', loadOne(corpus.xdp!.object, p));
  process.stdout.write(encodeOutcomes(outcomes).join('\n') + '\n');
  process.stdout.write(`${LINE} done\n`);
}

main().catch((err: unknown) => {
  say('fatal', err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exitCode = 1;
});
