/**
 * The counters slots' allocator (src/core/slots.ts): one slot per veth, stable while the
 * veth is wanted, never 0, reused only from the pass after it was given back, and rebuilt
 * from what the pinned pods map records.
 */
import { describe, expect, it } from 'vitest';
import { SlotAllocator } from '../../src/core/slots.js';

describe('SlotAllocator', () => {
  it('gives each veth one slot from 1 on, keeps it while wanted, and reports only what changed', () => {
    const a = new SlotAllocator(8);
    const first = a.assign([12, 13, 12, 0, -1]);
    expect([...first.slots]).toEqual([
      [12, 1],
      [13, 2],
    ]);
    expect(first.fresh).toEqual([
      { ifindex: 12, slot: 1 },
      { ifindex: 13, slot: 2 },
    ]);
    expect(first.freed).toEqual([]);
    const again = a.assign([13, 12, 14]);
    expect(again.fresh).toEqual([{ ifindex: 14, slot: 3 }]);
    expect(again.freed).toEqual([]);
    expect(a.slotOf(12)).toBe(1);
    expect(a.slotOf(13)).toBe(2);
  });

  it('add (the CNI fast path, one pod) gives slots and takes none back; the next assign decides what goes', () => {
    const a = new SlotAllocator(8);
    a.assign([12, 13]);
    const fast = a.add([20, 20, 0]);
    expect(fast.fresh).toEqual([{ ifindex: 20, slot: 3 }]);
    expect(fast.freed).toEqual([]);
    expect([12, 13, 20].map((i) => a.slotOf(i))).toEqual([1, 2, 3]);
    expect(a.add([12]).fresh).toEqual([]);
    const pass = a.assign([12, 20]);
    expect(pass.freed).toEqual([{ ifindex: 13, slot: 2 }]);
    expect(pass.fresh).toEqual([]);
    expect(a.slotOf(20)).toBe(3);
  });

  it('reuses a slot given back only from the next pass on, the longest given back first', () => {
    const a = new SlotAllocator(8);
    a.assign([10, 11, 12]);
    const drop = a.assign([12, 20]);
    expect(drop.freed).toEqual([
      { ifindex: 10, slot: 1 },
      { ifindex: 11, slot: 2 },
    ]);
    // The entries naming 1 and 2 are deleted at the end of this pass: a new veth may not have them yet.
    expect(drop.fresh).toEqual([{ ifindex: 20, slot: 4 }]);
    const next = a.assign([12, 20, 30, 31, 32]);
    expect(next.fresh).toEqual([
      { ifindex: 30, slot: 1 },
      { ifindex: 31, slot: 2 },
      { ifindex: 32, slot: 5 },
    ]);
  });

  it('a veth beyond the capacity gets no slot (its frames count in slot 0) until one is given back', () => {
    const a = new SlotAllocator(2);
    const full = a.assign([1, 2, 3]);
    expect(full.slots.get(3)).toBeUndefined();
    expect(full.fresh.map((f) => f.slot)).toEqual([1, 2]);
    a.assign([2, 3]);
    expect(a.assign([2, 3]).fresh).toEqual([{ ifindex: 3, slot: 1 }]);
    expect(a.size).toBe(2);
  });

  it('is rebuilt from the pods map’s records: their slots kept, conflicting and out-of-range ones ignored, the gaps handed out', () => {
    const a = new SlotAllocator(8, [
      { ifindex: 12, slot: 5 },
      { ifindex: 12, slot: 5 }, // a dual-stack pod's second address
      { ifindex: 13, slot: 2 },
      { ifindex: 14, slot: 2 }, // slot taken: gets another when next assigned
      { ifindex: 15, slot: 0 }, // no slot recorded
      { ifindex: 16, slot: 9 }, // beyond the capacity
    ]);
    expect(a.slotOf(12)).toBe(5);
    expect(a.slotOf(13)).toBe(2);
    expect(a.slotOf(14)).toBeUndefined();
    const r = a.assign([12, 13, 14, 15, 16, 17]);
    expect(r.fresh).toEqual([
      { ifindex: 14, slot: 1 },
      { ifindex: 15, slot: 3 },
      { ifindex: 16, slot: 4 },
      { ifindex: 17, slot: 6 },
    ]);
    expect(r.freed).toEqual([]);
  });

  it('never hands out one slot to two veths through churn', () => {
    const a = new SlotAllocator(64);
    let seed = 7;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let pass = 0; pass < 500; pass++) {
      const want = new Set(Array.from({ length: rand() % 64 }, () => 1 + (rand() % 200)));
      const { slots } = a.assign(want);
      const used = [...slots.values()];
      expect(new Set(used).size).toBe(used.length);
      expect(used.every((s) => s >= 1 && s <= 64)).toBe(true);
      expect(slots.size).toBe(want.size);
    }
  });
});
