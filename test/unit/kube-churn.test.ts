/**
 * Churn property test against a map double (no root): see churn.ts for the histories and
 * the properties; test/kernel/churn-maps.test.ts runs the same seeds against the real
 * pinned pods map.
 */
import { describe, expect, it } from 'vitest';
import { EVENTS, SEEDS, describeFailure, runSeed } from './churn.js';

describe('churn', () => {
  it(`keeps the map equal to the desired state (${SEEDS.length} seeds x ${EVENTS} events)`, async () => {
    const failures: string[] = [];
    for (const seed of SEEDS) {
      const r = await runSeed(seed);
      if (!r.ok) failures.push(describeFailure(seed, r, 'test/unit/kube-churn.test.ts'));
    }
    process.stdout.write(`churn: ${SEEDS.length} seeds x ${EVENTS} events, ${failures.length} failures\n`);
    expect(failures, failures.join('\n')).toEqual([]);
  }, 120_000);
});
