/**
 * The kernel matrix's verdicts on one kernel's report, and the table printed at the end
 * (docs/kernel-matrix.md). Pure: the host's comparison of outcomes with the model happens
 * in the test, which hands the counts in.
 */
import { parseRelease, selectMode } from '../../src/capture/select.js';
import type { RunnerReport } from './corpus.js';
import type { Delivery } from '../../src/core/modes.js';

/** docs/design.md ("Kernel floor"): fewer than 4096 instructions per program (4.20's BPF_MAXINSNS). */
export const MAX_INSNS = 4096;
/** 4.20's verifier gives up after 131072 processed instructions; we keep under half. */
export const MAX_PROCESSED = 131072 / 2;
/**
 * The XDP hook's programs are held to the kernel's own limit from 5.2 (1,000,000 processed
 * instructions): xdp_out's checksum completion costs the verifier 300,000-700,000, so the
 * XDP hook needs 5.2 or later (src/core/modes.ts XDP_FLOOR) and is not held to 4.20's.
 */
export const MAX_PROCESSED_XDP = 1_000_000;

export interface KernelRow {
  label: string;
  release: string;
  report: RunnerReport;
  /** Instructions of each program in the object (symbol size / 8), from the host. */
  objectInsns: ReadonlyMap<string, number>;
  frames: number;
  /** Of `frames`: the in-pod frame programs' runs, and inpod_lookup's (harness/matrix/corpus.ts InpodReplay). */
  inpodFrames?: number;
  inpodLookups?: number;
  notRunnable: number;
  /** Runs made with skb->ingress_ifindex 0 because the kernel's BPF_PROG_RUN refuses it. */
  ctxFallback: number;
  disagreements: number;
  /** Outcomes the runner could not produce (errors other than a refused input). */
  errors: number;
  seconds: number;
}

export interface Expected {
  variant: 'redirect_peer' | 'redirect';
  delivery: Delivery;
  mode: 'ebpf';
  /** libbpf 1.1 has no tcx links (1.3): netlink TC on every kernel. */
  attach: 'netlink tc';
  /** The in-pod delivery probe: bpf_sk_assign takes a SO_REUSEPORT socket from 6.5 (kernel commit 9c02bec95954). */
  inpodReuseportAssign: boolean;
}

/** What the controller should pick on a kernel, from its release alone (the cross-check). */
export function expectedFor(release: string): Expected {
  const v = parseRelease(release);
  const atLeast = (major: number, minor: number) => !!v && (v.major > major || (v.major === major && v.minor >= minor));
  return {
    variant: atLeast(5, 10) ? 'redirect_peer' : 'redirect',
    delivery: atLeast(5, 7) ? 'sk_assign' : 'tproxy',
    mode: 'ebpf',
    attach: 'netlink tc',
    inpodReuseportAssign: atLeast(6, 5),
  };
}

/** tcx needs libbpf >= 1.3 (bpf_program__attach_tcx); below it the loader attaches with netlink TC. */
export function attachOf(libbpf: string): 'netlink tc' | 'tcx' {
  const m = /^(\d+)\.(\d+)/.exec(libbpf);
  return m && (Number(m[1]) > 1 || Number(m[2]) >= 3) ? 'tcx' : 'netlink tc';
}

/**
 * Every reason this kernel's row fails; empty when it passes. `inpod`: the in-pod object's
 * programs; `xdp`: the XDP object's (loaded and attached to a veth's XDP hook).
 */
export function problemsOf(row: KernelRow, programs: readonly string[], inpod: readonly string[] = [], xdp: readonly string[] = []): string[] {
  const p: string[] = [];
  const r = row.report;
  if (r.fatal) p.push(`runner failed: ${r.fatal.split('\n')[0]}`);
  if (!r.done) p.push('runner did not finish (see the console log)');
  if (!r.facts) {
    p.push('no kernel facts reported');
  } else {
    const want = expectedFor(r.facts.release);
    if (r.facts.variant !== want.variant) p.push(`variant ${r.facts.variant}, expected ${want.variant}`);
    if (r.facts.delivery !== want.delivery) p.push(`delivery ${r.facts.delivery}, expected ${want.delivery}`);
    if (attachOf(r.facts.libbpf) !== want.attach) p.push(`attach ${attachOf(r.facts.libbpf)}, expected ${want.attach}`);
    if ('error' in r.facts.selection) p.push(`selectMode threw in the VM: ${r.facts.selection.error}`);
    else if (r.facts.selection.mode !== want.mode) p.push(`mode ${r.facts.selection.mode}, expected ${want.mode}: ${r.facts.selection.reason}`);
    // The host's selectMode on the facts the VM reported must agree with the VM's.
    if (r.facts.probes) {
      const host = selectMode('auto', { release: r.facts.release, probes: r.facts.probes as never, geneve: null });
      if (!('error' in r.facts.selection) && host.mode !== r.facts.selection.mode)
        p.push(`host selectMode says ${host.mode}, the VM ${r.facts.selection.mode}`);
    }
  }
  if (inpod.length > 0) {
    const probe = r.inpodProbe;
    if (!probe) p.push('no in-pod delivery probe reported');
    else if ('error' in probe) p.push(`in-pod delivery probe failed: ${probe.error}`);
    else if (r.facts && probe.reuseportAssign !== expectedFor(r.facts.release).inpodReuseportAssign)
      p.push(
        `in-pod probe says bpf_sk_assign ${probe.reuseportAssign ? 'takes' : 'refuses'} SO_REUSEPORT sockets, expected the opposite on ${r.facts.release}`,
      );
  }
  const loads = (name: string) =>
    r.programs.find((x) => x.name === name) ?? r.inpodPrograms.find((x) => x.name === name) ?? (r.xdpPrograms ?? []).find((x) => x.name === name);
  for (const name of [...programs, ...inpod, ...xdp]) {
    const l = loads(name);
    if (!l) p.push(`${name}: no load result`);
    else if (!l.loaded) p.push(`${name} rejected:\n${l.error}`);
    else {
      const obj = row.objectInsns.get(name) ?? 0;
      if (obj >= MAX_INSNS) p.push(`${name}: ${obj} instructions in the object (limit ${MAX_INSNS})`);
      if ((l.xlatedInsns ?? 0) >= MAX_INSNS) p.push(`${name}: ${l.xlatedInsns} instructions after the verifier (limit ${MAX_INSNS})`);
      if (l.attached !== 'ok') p.push(`${name}: ${xdp.includes(name) ? 'XDP' : 'netlink TC'} attach failed: ${l.attached ?? 'not tried'}`);
      const budget = xdp.includes(name) ? MAX_PROCESSED_XDP : MAX_PROCESSED;
      if ((l.verifiedInsns ?? 0) >= budget) p.push(`${name}: verifier processed ${l.verifiedInsns} instructions (keep under ${budget})`);
    }
  }
  if (!r.negative) p.push('no negative control reported');
  else if (!r.negative.rejected) p.push(`negative control loaded: ${r.negative.detail}`);
  if (!r.outcomes) p.push('no outcomes reported');
  if (row.disagreements > 0) p.push(`${row.disagreements} disagreements with the model`);
  if (row.errors > 0) p.push(`${row.errors} runs failed in the kernel`);
  return p;
}

function pad(cells: string[][]): string {
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** The matrix as two plain-text tables: per kernel, and instructions per program. */
export function formatTable(rows: readonly KernelRow[], programs: readonly string[], inpod: readonly string[] = [], xdp: readonly string[] = []): string {
  const head = [
    'kernel',
    'libbpf',
    'loaded',
    'neg. control',
    'variant',
    'delivery',
    'attach (tc)',
    'mode',
    'in-pod loaded',
    'xdp attached',
    'reuseport assign',
    'frames',
    'in-pod frames',
    'lookups',
    'not runnable',
    'no ingress ctx',
    'disagree',
    'result',
    'time',
  ];
  const body = rows.map((row) => {
    const r = row.report;
    const f = r.facts;
    const loaded = r.programs.filter((l) => l.loaded).length;
    const sel = f ? ('error' in f.selection ? 'error' : f.selection.mode) : '-';
    return [
      row.release,
      f?.libbpf ?? '-',
      `${loaded}/${programs.length}`,
      r.negative ? (r.negative.rejected ? 'rejected' : 'LOADED') : '-',
      f?.variant ?? '-',
      f?.delivery ?? '-',
      f ? `${attachOf(f.libbpf)} ${r.programs.filter((l) => l.attached === 'ok').length}/${programs.length}` : '-',
      sel,
      `${r.inpodPrograms.filter((l) => l.loaded && l.attached === 'ok').length}/${inpod.length}`,
      `${(r.xdpPrograms ?? []).filter((l) => l.loaded && l.attached === 'ok').length}/${xdp.length}`,
      !r.inpodProbe ? '-' : 'error' in r.inpodProbe ? 'error' : r.inpodProbe.reuseportAssign ? 'yes' : 'no',
      String(row.frames),
      String(row.inpodFrames ?? '-'),
      String(row.inpodLookups ?? '-'),
      String(row.notRunnable),
      String(row.ctxFallback),
      String(row.disagreements),
      problemsOf(row, programs, inpod, xdp).length === 0 ? 'ok' : 'FAIL',
      `${row.seconds.toFixed(0)} s`,
    ];
  });
  const insHead = ['instructions: object / after verifier / processed', ...rows.map((r) => r.release)];
  const insBody = [...programs, ...inpod, ...xdp].map((name) => [
    name,
    ...rows.map((row) => {
      const r = row.report;
      const l = r.programs.find((x) => x.name === name) ?? r.inpodPrograms.find((x) => x.name === name) ?? (r.xdpPrograms ?? []).find((x) => x.name === name);
      const obj = row.objectInsns.get(name) ?? 0;
      if (!l?.loaded) return `${obj} / rejected`;
      return `${obj} / ${l.xlatedInsns} / ${l.verifiedInsns ?? 'n/a'}`;
    }),
  ]);
  return `${pad([head, ...body])}\n\n${pad([insHead, ...insBody])}\n(limits: < ${MAX_INSNS} instructions per program; processed < ${MAX_PROCESSED}${xdp.length ? `, the XDP hook's < ${MAX_PROCESSED_XDP} (it needs 5.2+)` : ''}; "n/a": the kernel does not report it, < 5.16)`;
}
