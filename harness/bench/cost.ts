/**
 * Where a benchmark's CPU goes, for the figures' reading (not their goals): the machine's
 * CPU time from /proc/stat, and the BPF programs' own run time from the kernel's statistics
 * (`kernel.bpf_stats_enabled`, read through bpftool). This machine is shared: CPU time over
 * a window includes everyone's, so these are per-operation estimates to compare side by
 * side, never alone.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { systemRunner } from '../../src/host/runner.js';

/** USER_HZ: /proc/stat's unit is 1/100 s on Linux. */
const TICK_NS = 1e7;

/** /proc/stat's first line: busy (user + nice + system + irq + softirq) and kernel (system + irq + softirq) time of all CPUs, ns. */
export function cpuNs(stat: string): { busy: number; kernel: number } {
  const first = stat.split('\n')[0] ?? '';
  const f = first.trim().split(/\s+/);
  if (f[0] !== 'cpu' || f.length < 8 || f.slice(1, 8).some((x) => !/^\d+$/.test(x))) throw new Error(`/proc/stat: unexpected first line "${first}"`);
  const [user, nice, system, , , irq, softirq] = f.slice(1, 8).map(Number) as [number, number, number, number, number, number, number];
  return { busy: (user + nice + system + irq + softirq) * TICK_NS, kernel: (system + irq + softirq) * TICK_NS };
}

export const cpuNow = (): { busy: number; kernel: number } => cpuNs(readFileSync('/proc/stat', 'utf8'));

/** utime + stime of a process (all its threads) from /proc/PID/stat, seconds. */
export function processCpuSeconds(stat: string): number {
  // The command name may hold spaces and parentheses: fields count from the last ')'.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) throw new Error(`/proc/PID/stat: unexpected "${stat.slice(0, 80)}"`);
  return (utime + stime) * (TICK_NS / 1e9);
}

export const processCpuNow = (pid: number): number => processCpuSeconds(readFileSync(`/proc/${pid}/stat`, 'utf8'));

/** One cpuidle state of one CPU: its name and how many times a CPU entered it. */
export interface IdleState {
  name: string;
  usage: number;
}

/** Entries into a sleeping idle state: every state but POLL, which spins instead of halting. */
export function sleepsOf(states: readonly IdleState[]): number {
  return states.filter((s) => s.name !== 'POLL').reduce((n, s) => n + s.usage, 0);
}

const CPU_DIR = '/sys/devices/system/cpu';

/**
 * How many times the machine's CPUs have gone to sleep (cpuidle's per-state entry counts,
 * summed), or undefined without cpuidle in sysfs. Over a run, sleeps per operation say how
 * often an end waited for a halted CPU to wake.
 */
export function cpuSleepsNow(): number | undefined {
  if (!existsSync(`${CPU_DIR}/cpu0/cpuidle`)) return undefined;
  const states: IdleState[] = [];
  for (const cpu of readdirSync(CPU_DIR).filter((d) => /^cpu\d+$/.test(d))) {
    const dir = `${CPU_DIR}/${cpu}/cpuidle`;
    if (!existsSync(dir)) continue;
    for (const st of readdirSync(dir).filter((d) => /^state\d+$/.test(d))) {
      states.push({ name: readFileSync(`${dir}/${st}/name`, 'utf8').trim(), usage: Number(readFileSync(`${dir}/${st}/usage`, 'utf8')) });
    }
  }
  return sleepsOf(states);
}

export interface ProgStats {
  /** Program name -> cumulative run time (ns) and runs, summed over the programs of that name. */
  [name: string]: { runTimeNs: number; runCount: number };
}

/**
 * The run statistics of the TC and XDP programs on the devices `devs` in `ns` (zero unless
 * bpf_stats_enabled); a program attached to several of them counts once.
 */
export async function tcProgStats(ns: string, devs: readonly string[]): Promise<ProgStats> {
  const ids = new Set<number>();
  for (const dev of devs) {
    const [net] = JSON.parse(await systemRunner.run(['ip', 'netns', 'exec', ns, 'bpftool', '-j', 'net', 'show', 'dev', dev])) as {
      tc?: { id: number }[];
      xdp?: { id?: number; multi_attachments?: { id: number }[] }[];
    }[];
    for (const t of net?.tc ?? []) ids.add(t.id);
    for (const x of net?.xdp ?? []) for (const id of x.multi_attachments ? x.multi_attachments.map((m) => m.id) : x.id !== undefined ? [x.id] : []) ids.add(id);
  }
  const out: ProgStats = {};
  for (const id of ids) {
    const p = JSON.parse(await systemRunner.run(['bpftool', '-j', 'prog', 'show', 'id', String(id)])) as {
      name: string;
      run_time_ns?: number;
      run_cnt?: number;
    };
    const s = (out[p.name] ??= { runTimeNs: 0, runCount: 0 });
    s.runTimeNs += p.run_time_ns ?? 0;
    s.runCount += p.run_cnt ?? 0;
  }
  return out;
}

/** b - a, per program present in b. */
export function progDelta(a: ProgStats, b: ProgStats): ProgStats {
  return Object.fromEntries(
    Object.entries(b).map(([name, s]) => [name, { runTimeNs: s.runTimeNs - (a[name]?.runTimeNs ?? 0), runCount: s.runCount - (a[name]?.runCount ?? 0) }]),
  );
}

/**
 * Runs `f` with the kernel's BPF run statistics on (`kernel.bpf_stats_enabled`, a
 * kernel-wide switch that costs every program two clock reads per run), and puts the
 * switch back as it was, also on failure.
 */
export async function withBpfStats<T>(f: () => Promise<T>): Promise<T> {
  const was = (await systemRunner.run(['sysctl', '-n', 'kernel.bpf_stats_enabled'])).trim();
  if (!/^[01]$/.test(was)) throw new Error(`kernel.bpf_stats_enabled reads "${was}"`);
  await systemRunner.run(['sysctl', '-q', '-w', 'kernel.bpf_stats_enabled=1']);
  try {
    return await f();
  } finally {
    await systemRunner.run(['sysctl', '-q', '-w', `kernel.bpf_stats_enabled=${was}`]);
  }
}
