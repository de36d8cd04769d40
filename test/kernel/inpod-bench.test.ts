/**
 * The in-pod bench on the kernel (harness/bench/inpod.ts), briefly: one short round of every
 * scenario with both captures. The run throws where a scenario's traffic took another path
 * than its own (a stand-in that accepted what it should not, the ceiling's server taking
 * a connection captured or refusing one), so a run that returns is a run whose checks held;
 * here the samples are held to the scenarios, the captures' programs to the pod's interfaces
 * they sit on (lo's inpod_lo_in carries the eBPF capture's connections), and the node to
 * what it was.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { withBpfStats } from '../../harness/bench/cost.js';
import { DEFAULT_INPOD_BENCH, inpodFigures, runInpodBench, scenarioNames } from '../../harness/bench/inpod.js';
import { kernelDescribe } from '../support/gate.js';

const netnsList = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
const bpffs = () => readdirSync('/sys/fs/bpf').sort();

kernelDescribe('in-pod bench', 'creates network namespaces, loads BPF programs and installs iptables rules in them', () => {
  describe('runInpodBench', () => {
    it('runs every scenario with both captures on the path it names, counts the eBPF programs on lo, leaves the node as it was', {
      timeout: 180_000,
    }, async () => {
      const netns = netnsList();
      const pins = bpffs();
      const captures = ['iptables', 'ebpf'];
      const samples = await withBpfStats(() =>
        runInpodBench({
          ...DEFAULT_INPOD_BENCH,
          captures,
          workloads: ['crr', 'rr-conc'],
          rounds: 1,
          seconds: 0.3,
          warmupSeconds: 0.1,
          concurrency: 2,
          endpoints: ['native'],
          bpfStats: true,
        }),
      );
      const names = scenarioNames(captures, ['native']);
      expect(names).toEqual(['none', 'loopback', 'iptables', 'ebpf', 'iptables-relay', 'ebpf-relay']);
      expect(samples.map((s) => `${s.scenario} ${s.workload}`).sort()).toEqual(names.flatMap((n) => [`${n} crr`, `${n} rr-conc`]).sort());
      for (const s of samples) {
        expect(s.rate, `${s.scenario} ${s.workload}`).toBeGreaterThan(0);
        // The terminating scenarios are the goals' figures: not one failed connection.
        if (!s.scenario.endsWith('-relay')) expect(s.errors, `${s.scenario} ${s.workload}`).toBe(0);
      }
      // Only the eBPF capture has programs in the pod; its connections go by lo, where
      // inpod_lo_in assigns the SYNs (a run that read eth0 alone would see none of them).
      for (const s of samples) {
        if (s.scenario === 'ebpf') {
          expect(s.bpf?.programs.inpod_lo_in?.runsPerOp ?? 0, s.workload).toBeGreaterThan(0);
        } else if (!s.scenario.startsWith('ebpf')) {
          expect(s.bpf, `${s.scenario} ${s.workload}`).toBeUndefined();
        }
      }
      // The goals' figures come out of such a run, each with its goal's verdict.
      const labels = inpodFigures(samples).map((f) => f.label);
      expect(labels).toContain('in-pod ebpf / in-pod iptables: connections/s');
      expect(labels).toContain('in-pod ceiling (loopback, no capture) / in-pod iptables: connections/s');
      expect(netnsList()).toBe(netns);
      expect(bpffs()).toEqual(pins);
    });
  });
});
