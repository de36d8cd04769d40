/**
 * The generations of inpod_handoff (docs/datapath.md, "TIME_WAIT: the handoff"). A TC
 * program writes one entry per handed-over SYN, and that SYN's socket lookup takes it; an
 * entry whose lookup never came (a SYN the TIME_WAIT answered itself) would block its
 * 4-tuple, since a SYN that meets an entry is dropped as a copy. Each entry carries the
 * generation it was written in, a time slot of CLOCK_MONOTONIC (the clock of
 * bpf_ktime_get_ns and of process.hrtime); inpod_lookup finds entries of its own
 * generation and of the one before. The agent sweeps: it deletes the entries two
 * generations old, which no program writes or looks up any more.
 *
 * Pure except for `sweepHandoffs`, which works on the map it is given.
 */
import { decodeHandoffKey } from '../../bpf/inpod-codec.js';
import { constants } from '../../bpf/inpod-layout.generated.js';

export const HANDOFF_GENS = constants.INPOD_HANDOFF_GENS;
/** One generation's length in ns (2^INPOD_HANDOFF_GEN_SHIFT). */
export const GENERATION_NS = 1n << BigInt(constants.INPOD_HANDOFF_GEN_SHIFT);
/**
 * No sweep this long after a generation begins: a lookup that read the clock just before
 * the boundary (the generation before, so it also looks two back) may still be running.
 * A lookup runs in one softirq, in microseconds; the margin covers a stalled vCPU too.
 */
export const SWEEP_GUARD_NS = 500_000_000n;
/** How often the capture sweeps (well under a generation, so entries go soon after they may). */
export const SWEEP_EVERY_MS = 1_000;

/** The generation of a CLOCK_MONOTONIC time, as the programs compute it. */
export function handoffGen(nowNs: bigint): number {
  return Number((nowNs / GENERATION_NS) % BigInt(HANDOFF_GENS));
}

/** The generation `back` before `gen`, modulo HANDOFF_GENS. */
export function genBefore(gen: number, back: number): number {
  return (((gen - back) % HANDOFF_GENS) + HANDOFF_GENS) % HANDOFF_GENS;
}

/**
 * The generation a sweep at `nowNs` may delete (two before now's: no program writes it, no
 * lookup reads it), or null within SWEEP_GUARD_NS of a generation's start.
 */
export function sweepableGen(nowNs: bigint): number | null {
  if (nowNs % GENERATION_NS < SWEEP_GUARD_NS) return null;
  return genBefore(handoffGen(nowNs), 2);
}

export function monotonicNs(): bigint {
  return process.hrtime.bigint();
}

/** What a sweep did. `skipped`: within the guard after a boundary; nothing was read. */
export interface SweepResult {
  deleted: number;
  kept: number;
  skipped: boolean;
}

/** The map operations a sweep needs (src/bpf/object.ts BpfMap has them). */
export interface SweepableMap {
  keys(): Buffer[];
  delete(key: Buffer): boolean;
}

/** Deletes inpod_handoff's entries of the sweepable generation at `nowNs`. */
export function sweepHandoffs(map: SweepableMap, nowNs: bigint = monotonicNs()): SweepResult {
  const gen = sweepableGen(nowNs);
  if (gen === null) return { deleted: 0, kept: 0, skipped: true };
  let deleted = 0;
  let kept = 0;
  for (const k of map.keys()) {
    if (decodeHandoffKey(k).gen === gen && map.delete(k)) deleted++;
    else kept++;
  }
  return { deleted, kept, skipped: false };
}
