/**
 * The harness's seeded PRNG, for everything that must repeat from a seed: the bench's
 * bootstrap resampling (harness/bench/stats.ts), the fuzzer's frames (test/model/generate.ts),
 * the churn schedules of the unit tests.
 */

/** mulberry32: small, fast, seeded; uniform in [0, 1). Not for anything secret. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
