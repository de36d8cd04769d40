/**
 * The in-pod programs' cost bench (harness/bench/inpod-cost.ts): its table and its flags.
 * The measuring runs on the kernel (test/kernel/inpod-cost.test.ts).
 */
import { describe, expect, it } from 'vitest';
import { CASES, costTable, DEFAULT_COST, parseCostOptions } from '../../harness/bench/inpod-cost.js';

describe('in-pod cost bench', () => {
  it('tabulates medians, the overhead over the empty program and the ratio to it', () => {
    const t = costTable([{ program: 'inpod_lo_in', what: 'a segment', row: 'PR6', rounds: [30, 10, 20], emptyRounds: [8, 12, 10] }]);
    expect(t.split('\n')).toEqual([
      '| program | frame (row) | ns/packet | empty ns/packet | overhead ns | ratio to empty |',
      '|---|---|---:|---:|---:|---:|',
      '| inpod_lo_in | a segment (PR6) | 20.0 | 10.0 | 10.0 | 2.00 |',
    ]);
  });

  it('covers every in-pod TC program, the new one first', () => {
    expect(CASES[0]!.program).toBe('inpod_lo_in');
    expect(new Set(CASES.map((c) => c.program))).toEqual(new Set(['inpod_lo_in', 'inpod_out', 'inpod_in', 'inpod_vm_in', 'inpod_host_in', 'inpod_host_out']));
  });

  it('takes --rounds and --repeat, and says clearly what is wrong with them', () => {
    expect(parseCostOptions([])).toEqual(DEFAULT_COST);
    expect(parseCostOptions(['--rounds', '3', '--repeat', '1000'])).toEqual({ ...DEFAULT_COST, rounds: 3, repeat: 1000 });
    expect(() => parseCostOptions(['--rounds', '0'])).toThrow(/--rounds: "0" is not a whole number from 1 to 1000/);
    expect(() => parseCostOptions(['--repeat', 'x'])).toThrow(/--repeat/);
    expect(() => parseCostOptions(['--nope'])).toThrow();
  });
});
