/** The handoff generations and the agent's sweep (src/capture/inpod/handoffs.ts), on a map double. */
import { describe, expect, it } from 'vitest';
import { encodeHandoffKey } from '../../src/bpf/inpod-codec.js';
import { GENERATION_NS, genBefore, handoffGen, SWEEP_GUARD_NS, sweepableGen, sweepHandoffs, type SweepableMap } from '../../src/capture/inpod/handoffs.js';

/** A map of keys, as inpod_handoff's keys() and delete() see it. */
function mapOf(keys: Buffer[]): SweepableMap & { held: Buffer[] } {
  const held = [...keys];
  return {
    held,
    keys: () => held.map((k) => Buffer.from(k)),
    delete(key) {
      const i = held.findIndex((k) => k.equals(key));
      if (i < 0) return false;
      held.splice(i, 1);
      return true;
    },
  };
}

const key = (port: number, gen: number) => encodeHandoffKey({ remote: '198.19.0.2', remotePort: port, local: '198.18.0.10', localPort: 8080, family: 4, gen });

describe('handoff generations', () => {
  it('are 2^31 ns of CLOCK_MONOTONIC, modulo 4, as the programs compute them', () => {
    expect(GENERATION_NS).toBe(2_147_483_648n);
    expect(handoffGen(0n)).toBe(0);
    expect(handoffGen(GENERATION_NS - 1n)).toBe(0);
    expect(handoffGen(GENERATION_NS)).toBe(1);
    expect(handoffGen(5n * GENERATION_NS + 7n)).toBe(1);
    // (ktime >> 31) & 3 for a ktime of some days
    const t = 123_456_789_012_345n;
    expect(handoffGen(t)).toBe(Number((t >> 31n) & 3n));
    expect(genBefore(0, 1)).toBe(3);
    expect(genBefore(1, 2)).toBe(3);
    expect(genBefore(3, 2)).toBe(1);
  });

  it('a sweep may delete only two generations back, never within the guard after a boundary', () => {
    const start = 10n * GENERATION_NS; // generation 2
    expect(sweepableGen(start)).toBeNull();
    expect(sweepableGen(start + SWEEP_GUARD_NS - 1n)).toBeNull();
    expect(sweepableGen(start + SWEEP_GUARD_NS)).toBe(0);
    expect(sweepableGen(start + GENERATION_NS - 1n)).toBe(0);
    expect(sweepableGen(start + GENERATION_NS + SWEEP_GUARD_NS)).toBe(1);
  });
});

describe('sweepHandoffs', () => {
  const now = 10n * GENERATION_NS + GENERATION_NS / 2n; // generation 2, past the guard

  it('deletes the entries two generations back and keeps now’s, the one before and the next', () => {
    const m = mapOf([key(1, 2), key(2, 1), key(3, 0), key(4, 3), key(5, 0)]);
    expect(sweepHandoffs(m, now)).toEqual({ deleted: 2, kept: 3, skipped: false });
    expect(m.held).toEqual([key(1, 2), key(2, 1), key(4, 3)]);
    // A second sweep finds nothing more to delete.
    expect(sweepHandoffs(m, now)).toEqual({ deleted: 0, kept: 3, skipped: false });
  });

  it('within the guard it reads nothing and deletes nothing', () => {
    const m = mapOf([key(3, 0)]);
    let read = 0;
    const counting: SweepableMap = {
      keys: () => {
        read++;
        return m.keys();
      },
      delete: (k) => m.delete(k),
    };
    expect(sweepHandoffs(counting, 10n * GENERATION_NS + 1n)).toEqual({ deleted: 0, kept: 0, skipped: true });
    expect(read).toBe(0);
    expect(m.held).toHaveLength(1);
  });

  it('an entry gone between the listing and its delete (the kernel took its closed listener) is not counted', () => {
    const m = mapOf([key(3, 0)]);
    const racing: SweepableMap = { keys: () => m.keys(), delete: () => false };
    expect(sweepHandoffs(racing, now)).toEqual({ deleted: 0, kept: 1, skipped: false });
  });
});
