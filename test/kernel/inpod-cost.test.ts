/**
 * The in-pod programs' cost bench on the kernel (harness/bench/inpod-cost.ts), briefly: every
 * case's frame takes the path its row names (the bench refuses to time another), every
 * figure is a positive duration, and the run leaves no netns behind.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { CASES, runInpodCost } from '../../harness/bench/inpod-cost.js';
import { kernelDescribe } from '../support/gate.js';

const netnsList = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });

kernelDescribe('in-pod cost bench', 'creates a network namespace and loads BPF programs', () => {
  describe('runInpodCost', () => {
    it('times every case beside the empty program, each on the path its row names', async () => {
      const before = netnsList();
      const rows = await runInpodCost({ rounds: 2, repeat: 100, emptyPath: 'build/bench_empty.bpf.o' });
      expect(rows.map((r) => `${r.program} ${r.row}`)).toEqual(CASES.map((c) => `${c.program} ${c.row}`));
      for (const r of rows) {
        expect(r.rounds).toHaveLength(2);
        expect(r.emptyRounds).toHaveLength(2);
        expect(Math.min(...r.rounds, ...r.emptyRounds)).toBeGreaterThan(0);
      }
      expect(netnsList()).toBe(before);
    });
  });
});
