/**
 * The kernel matrix's wire formats (docs/kernel-matrix.md): the corpus the host writes for
 * the in-VM runner (map states, frames, and which program runs on which frame in which
 * context), and the runner's report on the serial console (kernel facts, per-program load
 * results, the negative control, and one outcome per run). Pure: no kernel, no files.
 */
import { gunzipSync, gzipSync } from 'node:zlib';
import type { MapState } from './state.js';
import type { LookupQuery } from '../inpod/harness.js';
import type { SocketStep } from '../inpod/sockets.js';

/** The runner's two veths (made by scripts/kernel-matrix.sh with these ifindexes). */
export const MATRIX_VETHS = { a: 12, b: 13 } as const;

/** A map state, as test/model/harness.ts's StateSpec (plain JSON). */
export interface CorpusState extends MapState {
  name: string;
}

/** One BPF_PROG_RUN: [state, program, frame, skb->ifindex, skb->ingress_ifindex, skb->mark]. */
export type CorpusRun = [state: number, program: number, frame: number, ifindex: number, ingressIfindex: number, mark: number];

export interface Corpus {
  version: 1;
  /** The object whose programs are loaded and replayed, relative to the runner's cwd. */
  object: string;
  /** The negative control: an object every verifier must reject. */
  broken: string;
  programs: string[];
  states: CorpusState[];
  /** Frames in hex, each run names one by index. */
  frames: string[];
  /** Grouped by state (the runner fills the maps once per group). */
  runs: CorpusRun[];
  /**
   * The in-pod capture's object: its programs are loaded and attached, and its delivery probe
   * run; `replay`'s frames and lookups run through them (their outcomes follow the XDP runs').
   */
  inpod?: { object: string; programs: string[]; replay?: InpodReplay };
  /**
   * The XDP hook's object (`run --hook xdp`): its programs are loaded and attached to a
   * veth's XDP hook, and `xdp_out` replays `runs` (their outcomes follow the TC runs').
   */
  xdp?: { object: string; programs: string[]; runs?: XdpCorpusRun[] };
}

/**
 * One BPF_PROG_RUN of `xdp_out`: [state, frame, xdp_md->ingress_ifindex]. Its outcome is a
 * RunOutcome with mark 0; code 3 when the kernel's BPF_PROG_RUN takes no xdp_md for XDP
 * (5.10), so the frame ran as arriving on the runner's loopback (ifindex 1).
 */
export type XdpCorpusRun = [state: number, frame: number, ingressIfindex: number];

/**
 * The in-pod replay: each scenario in a netns of its own (harness/inpod/harness.ts, these
 * addresses on its lo), its phases in order, each setting up sockets (added to the previous
 * phases') before its groups run. Outcomes, in this order: per group, its runs', then its lookups'.
 */
export interface InpodReplay {
  /** The frame programs runs name by index. */
  programs: string[];
  scenarios: InpodScenario[];
}

export interface InpodScenario {
  name: string;
  addresses: string[];
  phases: InpodPhase[];
}

export interface InpodPhase {
  name: string;
  /** Sockets opened (or closed) in the scenario's netns before the phase's groups. */
  steps: SocketStep[];
  groups: InpodGroup[];
}

/** A map state (written once, handoffs emptied), the frames run under it, then the lookups. */
export interface InpodGroup {
  name: string;
  dnsCapture: boolean;
  /** inpod_overrides: [address key (16-byte hex), flags]. */
  overrides: [string, number][];
  /** probe_flows: [probeFlowKey, node address (hex)]. */
  probeFlows: [string, string][];
  /** inpod_handoff entries put there (now's generation) before the runs: [handoffKey, the listener by name]. */
  handoffs?: [string, string][];
  runs: InpodCorpusRun[];
  lookups: InpodCorpusLookup[];
}

/** One BPF_PROG_RUN of an in-pod frame program: [program, frame, skb->mark, skb->ingress_ifindex]. */
export type InpodCorpusRun = [program: number, frame: number, mark: number, ingressIfindex: number];

/**
 * One BPF_PROG_RUN of inpod_lookup: the handoffs put in inpod_handoff first ([handoffKey, the
 * listener by name]), then the lookup. Its outcome: [0, 0, 0, the result as JSON
 * ({verdict, selected?})], or [2, message].
 */
export type InpodCorpusLookup = [seeds: [string, string][], query: LookupQuery];

/**
 * What BPF_PROG_RUN can do with the in-pod programs on a kernel (`MATRIX inpod-ctx`):
 * whether it takes skb->ingress_ifindex for TC (5.10: no, frames then run with 0, outcome
 * code 3), and whether it runs an SK_LOOKUP program (5.14+), else the error it gives.
 */
export interface InpodCtx {
  ingressIfindex: boolean;
  skLookupRun: true | string;
}

/** The runner's loopback: where an XDP frame run without an xdp_md arrives. */
export const LOOPBACK_IFINDEX = 1;

/** The in-pod delivery probe's answer on a kernel (src/capture/inpod/probe.ts), or its error. */
export type InpodProbeReport = { reuseportAssign: boolean; reason?: string } | { error: string };

/**
 * A run's outcome: [0, retval, mark, changes] when it ran, [3, ...] when it ran with
 * skb->ingress_ifindex 0 because the kernel's BPF_PROG_RUN refuses that field (5.10),
 * [1, errno] when the kernel refused the input as too short (not runnable), [2, message]
 * on any other error.
 * `changes` is '' for a frame left as it came in, `o=v,...` (hex offsets and bytes) for
 * the bytes that changed at an unchanged length, else `L<hex of the whole frame>`.
 */
export type RunOutcome = [0 | 3, number, number, string] | [1, number] | [2, string];

export function frameChanges(input: Buffer, output: Buffer): string {
  if (input.length !== output.length) return `L${output.toString('hex')}`;
  const parts: string[] = [];
  for (let i = 0; i < input.length; i++) if (input[i] !== output[i]) parts.push(`${i.toString(16)}=${output[i]!.toString(16)}`);
  return parts.join(',');
}

export function applyChanges(input: Buffer, changes: string): Buffer {
  if (changes.startsWith('L')) return Buffer.from(changes.slice(1), 'hex');
  const out = Buffer.from(input);
  if (changes === '') return out;
  for (const p of changes.split(',')) {
    const [o, v] = p.split('=');
    out[parseInt(o!, 16)] = parseInt(v!, 16);
  }
  return out;
}

/** What the runner found out about a kernel (printed as `MATRIX facts <json>`). */
export interface RunnerFacts {
  release: string;
  libbpf: string;
  probes: Record<string, boolean> | null;
  probeError?: string;
  /** probeVariant() / probeDelivery() of src/capture/ebpf/ebpf.ts, run on this kernel. */
  variant: string;
  delivery: string;
  /** selectMode('auto', gatherKernelFacts()) on this kernel, or the error it threw. */
  selection: { mode: string; reason: string } | { error: string };
}

/** One program loaded on its own (printed as `MATRIX prog <json>`). */
export interface ProgramLoad {
  name: string;
  loaded: boolean;
  /** Instructions after the verifier's rewrites (bpf_prog_info.xlated_prog_len / 8). */
  xlatedInsns?: number;
  /** The verifier's processed-instruction count (bpf_prog_info.verified_insns, 5.16+); null when the kernel cannot tell. */
  verifiedInsns?: number | null;
  /** Netlink TC attach at its hook, read back and detached: 'ok' or the error. */
  attached?: string;
  /** The load error with the verifier log (loaded false). */
  error?: string;
}

export interface NegativeControl {
  rejected: boolean;
  /** The verifier's reason (the log's last meaningful line), or why it was not rejected. */
  detail: string;
}

export interface RunnerReport {
  facts: RunnerFacts | null;
  programs: ProgramLoad[];
  negative: NegativeControl | null;
  outcomes: RunOutcome[] | null;
  /** Whether BPF_PROG_RUN took skb->ingress_ifindex on this kernel. */
  ingressCtx: boolean | null;
  /** Whether BPF_PROG_RUN took an xdp_md for XDP on this kernel (null: no XDP runs). */
  xdpCtx?: boolean | null;
  /** The in-pod object's programs, loaded one at a time (`MATRIX inpod-prog`). */
  inpodPrograms: ProgramLoad[];
  /** The in-pod delivery probe (`MATRIX inpod-probe`). */
  inpodProbe: InpodProbeReport | null;
  /** The XDP object's programs, loaded and attached one at a time (`MATRIX xdp-prog`). */
  xdpPrograms: ProgramLoad[];
  /** What BPF_PROG_RUN does with the in-pod programs here (`MATRIX inpod-ctx`; null: no in-pod replay). */
  inpodCtx?: InpodCtx | null;
  /** Per in-pod group, after its runs: probe_flows and inpod_handoff as the model keys them (`MATRIX inpod-maps`). */
  inpodMaps?: [probeFlows: [string, string][], handoffs: [string, string][]][];
  /** The runner finished (`MATRIX done`). */
  done: boolean;
  /** The runner's own fatal error, if it printed one. */
  fatal?: string;
}

export const LINE = 'MATRIX';

/** The outcomes as console lines: gzip, base64, 76 characters a line. */
export function encodeOutcomes(outcomes: RunOutcome[]): string[] {
  const b64 = gzipSync(Buffer.from(JSON.stringify(outcomes))).toString('base64');
  const lines = [`${LINE} outcomes-begin ${outcomes.length}`];
  for (let i = 0; i < b64.length; i += 76) lines.push(`${LINE} b64 ${b64.slice(i, i + 76)}`);
  lines.push(`${LINE} outcomes-end`);
  return lines;
}

/** Reads the runner's lines out of a console log (kernel messages and all). */
export function parseReport(log: string): RunnerReport {
  const report: RunnerReport = {
    facts: null,
    programs: [],
    negative: null,
    outcomes: null,
    ingressCtx: null,
    xdpCtx: null,
    inpodPrograms: [],
    inpodProbe: null,
    xdpPrograms: [],
    inpodCtx: null,
    inpodMaps: [],
    done: false,
  };
  let b64: string[] | null = null;
  let expected = 0;
  for (const raw of log.split('\n')) {
    const at = raw.indexOf(`${LINE} `);
    if (at < 0) continue;
    const line = raw.slice(at + LINE.length + 1).replace(/\r$/, '');
    const sp = line.indexOf(' ');
    const tag = sp < 0 ? line : line.slice(0, sp);
    const rest = sp < 0 ? '' : line.slice(sp + 1);
    switch (tag) {
      case 'facts':
        report.facts = JSON.parse(rest) as RunnerFacts;
        break;
      case 'prog':
        report.programs.push(JSON.parse(rest) as ProgramLoad);
        break;
      case 'negative':
        report.negative = JSON.parse(rest) as NegativeControl;
        break;
      case 'inpod-prog':
        report.inpodPrograms.push(JSON.parse(rest) as ProgramLoad);
        break;
      case 'xdp-prog':
        report.xdpPrograms.push(JSON.parse(rest) as ProgramLoad);
        break;
      case 'inpod-probe':
        report.inpodProbe = JSON.parse(rest) as InpodProbeReport;
        break;
      case 'ctx':
        report.ingressCtx = (JSON.parse(rest) as { ingressIfindex: boolean }).ingressIfindex;
        break;
      case 'inpod-ctx':
        report.inpodCtx = JSON.parse(rest) as InpodCtx;
        break;
      case 'inpod-maps':
        report.inpodMaps!.push(JSON.parse(rest) as [[string, string][], [string, string][]]);
        break;
      case 'xdp-ctx':
        report.xdpCtx = (JSON.parse(rest) as { ingressIfindex: boolean }).ingressIfindex;
        break;
      case 'outcomes-begin':
        b64 = [];
        expected = Number(rest);
        break;
      case 'b64':
        b64?.push(rest.trim());
        break;
      case 'outcomes-end':
        if (b64) {
          const outcomes = JSON.parse(gunzipSync(Buffer.from(b64.join(''), 'base64')).toString('utf8')) as RunOutcome[];
          if (outcomes.length !== expected) throw new Error(`runner said ${expected} outcomes, sent ${outcomes.length}`);
          report.outcomes = outcomes;
        }
        b64 = null;
        break;
      case 'fatal':
        report.fatal = JSON.parse(rest) as string;
        break;
      case 'done':
        report.done = true;
        break;
      default:
        break;
    }
  }
  return report;
}
