/**
 * Statistics that can say "met": a figure is an estimate with a bootstrap confidence
 * interval, and its verdict against a goal comes from the interval, not from the point
 * estimate. Pure and deterministic (a seeded generator), so the unit tests can feed it
 * synthetic samples whose verdict is known.
 *
 * Ratios are taken round by round (paired: both sides measured in the same round, close
 * together) and summarised by their geometric mean; the interval is a percentile bootstrap
 * over the rounds. A drift of the whole machine within a round cancels in the ratio.
 */

import { rng } from '../lib/rng.js';

export type Goal =
  | { kind: 'atLeast'; value: number }
  | { kind: 'atMost'; value: number }
  | { kind: 'within'; lo: number; hi: number }
  /** A figure shown for information, with no goal. */
  | { kind: 'none' };

export type Verdict = 'met' | 'not met' | 'undecided' | '–';

export interface Interval {
  /** The point estimate. */
  value: number;
  lo: number;
  hi: number;
  /** Samples (rounds, runs) it was computed from. */
  n: number;
}

export interface Figure extends Interval {
  label: string;
  /** Unit for display: '×' for ratios, 'ms', 'MiB'. */
  unit: string;
  goal: Goal;
  verdict: Verdict;
}

/** The confidence level of every interval in the report. */
export const CONFIDENCE = 0.95;
const RESAMPLES = 4000;

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

export function geomean(xs: readonly number[]): number {
  return Math.exp(mean(xs.map(Math.log)));
}

/** The q-quantile (0..1) by nearest rank: p99 of 40 samples is the largest. */
export function quantile(xs: readonly number[], q: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))]!;
}

/**
 * Percentile bootstrap of `stat` over `xs`: the point estimate on the samples themselves,
 * the interval from `RESAMPLES` resamples with replacement. One sample gives a zero-width
 * interval: report it, but it cannot be trusted (the table shows n).
 */
export function bootstrap(xs: readonly number[], stat: (xs: readonly number[]) => number, seed = 1): Interval {
  const value = stat(xs);
  if (xs.length < 2) return { value, lo: value, hi: value, n: xs.length };
  const next = rng(seed);
  const draws = new Float64Array(RESAMPLES);
  const buf = new Array<number>(xs.length);
  for (let r = 0; r < RESAMPLES; r++) {
    for (let i = 0; i < xs.length; i++) buf[i] = xs[Math.floor(next() * xs.length)]!;
    draws[r] = stat(buf);
  }
  draws.sort();
  const tail = (1 - CONFIDENCE) / 2;
  const at = (p: number) => draws[Math.min(RESAMPLES - 1, Math.max(0, Math.floor(p * RESAMPLES)))]!;
  return { value, lo: at(tail), hi: at(1 - tail), n: xs.length };
}

/** Paired ratios num[i]/den[i] (rounds where both exist), their geometric mean and its interval. */
export function ratioInterval(pairs: readonly { num: number; den: number }[], seed = 1): Interval {
  const rs = pairs.filter((p) => p.num > 0 && p.den > 0 && Number.isFinite(p.num / p.den)).map((p) => p.num / p.den);
  return bootstrap(rs, geomean, seed);
}

/**
 * The verdict from the interval: met when all of it satisfies the goal, not met when none
 * of it does, undecided when it straddles a bound (more rounds, or a quieter machine).
 */
export function verdict(goal: Goal, i: Pick<Interval, 'lo' | 'hi'>): Verdict {
  if (goal.kind === 'none') return '–';
  if (!Number.isFinite(i.lo) || !Number.isFinite(i.hi)) return 'undecided';
  switch (goal.kind) {
    case 'atLeast':
      return i.lo >= goal.value ? 'met' : i.hi < goal.value ? 'not met' : 'undecided';
    case 'atMost':
      return i.hi <= goal.value ? 'met' : i.lo > goal.value ? 'not met' : 'undecided';
    case 'within':
      if (i.lo >= goal.lo && i.hi <= goal.hi) return 'met';
      return i.hi < goal.lo || i.lo > goal.hi ? 'not met' : 'undecided';
  }
}

/** Fewer samples than this and the interval decides nothing: the verdict stays undecided. */
export const MIN_SAMPLES = 3;

export function figure(label: string, unit: string, goal: Goal, i: Interval): Figure {
  const v = verdict(goal, i);
  return { label, unit, goal, ...i, verdict: v !== '–' && i.n < MIN_SAMPLES ? 'undecided' : v };
}

export function goalText(goal: Goal, unit = ''): string {
  const u = unit === '×' ? '×' : unit ? ` ${unit}` : '';
  const n = (v: number) => (unit === '×' ? v.toFixed(2) : String(v));
  if (goal.kind === 'atLeast') return `≥ ${n(goal.value)}${u}`;
  if (goal.kind === 'atMost') return `≤ ${n(goal.value)}${u}`;
  if (goal.kind === 'none') return '–';
  return `${n(goal.lo)}–${n(goal.hi)}${u}`;
}

function num(v: number, unit: string): string {
  if (!Number.isFinite(v)) return '–';
  if (unit === '×') return v.toFixed(3);
  return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(1);
}

export const VERDICT_TEXT: Record<Verdict, string> = { met: 'met', 'not met': '**not met**', undecided: '_undecided_', '–': '–' };

/** One table of figures: estimate, 95 % interval, n, goal, verdict. */
export function figureTable(fs: readonly Figure[]): string {
  return [
    `| figure | estimate | ${Math.round(CONFIDENCE * 100)} % interval | n | goal | verdict |`,
    '|---|---:|---:|---:|---:|---|',
    ...fs.map(
      (f) =>
        `| ${f.label} | ${num(f.value, f.unit)}${f.unit === '×' ? '' : ` ${f.unit}`} | ${num(f.lo, f.unit)}–${num(f.hi, f.unit)} | ${f.n} | ${goalText(f.goal, f.unit)} | ${VERDICT_TEXT[f.verdict]} |`,
    ),
  ].join('\n');
}

/** How the control-path scripts hand their figures to the report: one line, this prefix, JSON. */
export const FIGURES_PREFIX = 'figures: ';

export function figuresLine(fs: readonly Figure[]): string {
  return `${FIGURES_PREFIX}${JSON.stringify(fs)}`;
}

/** The figures of a script's output, and the output without that line. */
export function splitFigures(lines: readonly string[]): { lines: string[]; figures: Figure[] } {
  const figures: Figure[] = [];
  const rest: string[] = [];
  for (const l of lines) {
    if (l.startsWith(FIGURES_PREFIX)) figures.push(...(JSON.parse(l.slice(FIGURES_PREFIX.length)) as Figure[]));
    else rest.push(l);
  }
  return { lines: rest, figures };
}
