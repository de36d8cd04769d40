/**
 * A numeric command-line option of the bench parts: `dflt` when absent, else a number in
 * min..max (an integer where asked), or an error naming the option.
 */
export function numberOption(name: string, raw: string | undefined, dflt: number, min: number, max: number, integer: boolean): number {
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n)))
    throw new Error(`--${name}: "${raw}" is not ${integer ? 'an integer' : 'a number'} in ${min}..${max}`);
  return n;
}

/** The rounds and their length, as every live-traffic part takes them. */
export interface RoundOptions {
  rounds: number;
  /** Measured seconds per workload run. */
  seconds: number;
  warmupSeconds: number;
  /** Connect loops of crr, and connections of rr-conc. */
  concurrency: number;
}

/** parseArgs' spec of RoundOptions' flags: --rounds, --seconds, --warmup, --concurrency. */
export const ROUND_FLAGS = {
  rounds: { type: 'string' },
  seconds: { type: 'string' },
  warmup: { type: 'string' },
  concurrency: { type: 'string' },
} as const;

/** The largest values a part accepts (the smallest are 1 round, 0 s of warm-up, 1 loop). */
export interface RoundLimits {
  rounds: number;
  /** The shortest and longest round, s. */
  seconds: readonly [number, number];
  concurrency: number;
}

/** RoundOptions from ROUND_FLAGS' values: `d`'s where a flag is absent, else checked against `limits`. */
export function roundOptions(
  values: { rounds?: string; seconds?: string; warmup?: string; concurrency?: string },
  d: RoundOptions,
  limits: RoundLimits = { rounds: 50, seconds: [0.2, 30], concurrency: 64 },
): RoundOptions {
  return {
    rounds: numberOption('rounds', values.rounds, d.rounds, 1, limits.rounds, true),
    seconds: numberOption('seconds', values.seconds, d.seconds, limits.seconds[0], limits.seconds[1], false),
    warmupSeconds: numberOption('warmup', values.warmup, d.warmupSeconds, 0, 10, false),
    concurrency: numberOption('concurrency', values.concurrency, d.concurrency, 1, limits.concurrency, true),
  };
}
