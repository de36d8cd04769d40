/**
 * The benchmarks' choice of ends (harness/bench/peers.ts, traffic.ts, inpod.ts): which peer
 * each scenario runs, which stand-in must hold ztunnel's listeners, the oracle over both
 * stand-ins' counters, and the parsing of results and flags. Pure; the peers themselves run
 * in test/kernel/trafficpeer.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { inpodTable, type InpodSample, parseOptions, scenarioNames, scenarioOf } from '../../harness/bench/inpod.js';
import { parseEndpoints, parseResult } from '../../harness/bench/peers.js';
import { JS_RATIOS, ratios, renderMarkdown } from '../../harness/bench/report.js';
import { carriedAsPlanned, holderFor, PLAN, parseTrafficOptions, SCENARIOS, slotsFor, type TrafficSample } from '../../harness/bench/traffic.js';
import type { StandInCounts } from '../../harness/bench/traffic-peer.js';

const zero: StandInCounts = { relayed: 0, terminated: 0, direct: 0, refused: 0 };

describe('traffic bench ends', () => {
  it('the goals are measured between native ends; the relay and its baselines keep JS', () => {
    for (const s of ['direct', 'ebpf-term', 'iptables-term'] as const) expect(PLAN[s].peer, s).toBe('native');
    for (const s of ['none', 'ebpf', 'iptables', 'none-b', 'unenrolled', 'direct-js', 'ebpf-term-js', 'iptables-term-js'] as const)
      expect(PLAN[s].peer, s).toBe('js');
    expect(holderFor(PLAN['ebpf-term'])).toBe('native');
    expect(holderFor(PLAN['iptables-term-js'])).toBe('js');
    expect(holderFor(PLAN.ebpf)).toBe('js');
    expect(holderFor(PLAN.direct)).toBeNull();
    expect(holderFor(PLAN.unenrolled)).toBeNull();
  });

  it('the -js scenarios run only when asked; every scenario sits in the slot of its mode', () => {
    const native = slotsFor(['native']).flatMap((s) => s.scenarios);
    expect(native).not.toContain('ebpf-term-js');
    const both = slotsFor(['native', 'js']);
    expect(both.flatMap((s) => s.scenarios).sort()).toEqual([...SCENARIOS].sort());
    for (const slot of both) for (const s of slot.scenarios) expect(PLAN[s].mode === null ? null : PLAN[s].mode, s).toBe(slot.mode);
  });

  it('the oracle: the carrier of the right stand-in took every connection that succeeded, no other counter moved', () => {
    const r = { connections: 10, errors: 1 };
    const ok = { native: { ...zero, terminated: 9 }, js: zero };
    expect(carriedAsPlanned(PLAN['ebpf-term'], ok, r)).toBeNull();
    expect(carriedAsPlanned(PLAN['ebpf-term'], { native: { ...zero, terminated: 10 }, js: zero }, r)).toBeNull();
    expect(carriedAsPlanned(PLAN['ebpf-term'], { native: { ...zero, terminated: 8 }, js: zero }, r)).toMatch(
      /native ztunnel stand-in counted 8 terminated of 10/,
    );
    // The wrong stand-in carried it: the JS one terminated what the native one should have.
    expect(carriedAsPlanned(PLAN['ebpf-term'], { native: zero, js: { ...zero, terminated: 9 } }, r)).toMatch(/native ztunnel stand-in counted 0 terminated/);
    expect(carriedAsPlanned(PLAN['ebpf-term-js'], { native: zero, js: { ...zero, terminated: 9 } }, r)).toBeNull();
    expect(carriedAsPlanned(PLAN.ebpf, { native: zero, js: { ...zero, relayed: 9, refused: 1 } }, r)).toMatch(/js ztunnel stand-in counted 1 refused/);
    // No capture: nothing anywhere (a bypass of the stand-ins is the point there).
    expect(carriedAsPlanned(PLAN.none, { native: zero, js: zero }, r)).toBeNull();
    expect(carriedAsPlanned(PLAN.none, { native: { ...zero, direct: 1 }, js: zero }, r)).toMatch(/counted 1 direct/);
  });

  it('flags: --endpoints takes native and js, native always; numbers are checked', () => {
    expect(parseEndpoints(undefined)).toEqual(['native']);
    expect(parseEndpoints('native,js,js')).toEqual(['native', 'js']);
    expect(() => parseEndpoints('js')).toThrow('native is always measured');
    expect(() => parseEndpoints('native,go')).toThrow('--endpoints: "go" is not one of native, js');
    expect(parseTrafficOptions(['--rounds', '2', '--endpoints', 'native,js'])).toMatchObject({ rounds: 2, endpoints: ['native', 'js'] });
    expect(() => parseTrafficOptions(['--seconds', '0'])).toThrow('--seconds: "0" is not a number in 0.2..30');
    expect(() => parseTrafficOptions(['--rounds', ''])).toThrow('--rounds');
  });
});

describe('peer results', () => {
  const line = '{"event":"result","workload":"crr","count":10,"seconds":1,"rate":10,"connections":12,"errors":0,"synRetrans":0}';

  it('takes the result line among others, whichever peer printed it', () => {
    expect(parseResult(`noise\n${line}\n`, 'x')).toMatchObject({ workload: 'crr', count: 10, connections: 12 });
  });

  it('refuses a missing line, a missing or negative field, an unknown workload', () => {
    expect(() => parseResult('nothing', 'native crr in pod')).toThrow('native crr in pod: no result (nothing)');
    expect(() => parseResult(line.replace('"errors":0,', ''), 'x')).toThrow('result field errors is undefined');
    expect(() => parseResult(line.replace('"count":10', '"count":-1'), 'x')).toThrow('result field count is -1');
    expect(() => parseResult(line.replace('"crr"', '"ping"'), 'x')).toThrow('result workload is ping');
  });
});

describe('in-pod bench ends', () => {
  it('scenario names say the capture, the ends and the relay', () => {
    expect(scenarioOf('none')).toEqual({ capture: null, ends: 'native', relay: false });
    expect(scenarioOf('none-js')).toEqual({ capture: null, ends: 'js', relay: false });
    expect(scenarioOf('ebpf')).toEqual({ capture: 'ebpf', ends: 'native', relay: false });
    expect(scenarioOf('ebpf-js')).toEqual({ capture: 'ebpf', ends: 'js', relay: false });
    expect(scenarioOf('iptables-relay')).toEqual({ capture: 'iptables', ends: 'js', relay: true });
    expect(scenarioNames(['ebpf'], ['native'])).toEqual(['none', 'ebpf', 'ebpf-relay']);
    expect(scenarioNames(['ebpf'], ['native', 'js'])).toEqual(['none', 'ebpf', 'ebpf-relay', 'none-js', 'ebpf-js']);
    expect(parseOptions(['--endpoints', 'native,js']).endpoints).toEqual(['native', 'js']);
    expect(() => parseOptions(['--endpoints', 'js'])).toThrow('native is always measured');
  });

  it('the table compares the JS-ended captures with the JS-ended baseline', () => {
    const s = (scenario: string, rate: number): InpodSample[] =>
      (['crr', 'rr', 'stream'] as const).map((workload) => ({ round: 0, scenario, workload, rate, errors: 0 }));
    const text = inpodTable(
      [...s('none', 100), ...s('ebpf', 80), ...s('iptables', 50), ...s('none-js', 10), ...s('ebpf-js', 9), ...s('iptables-js', 6)],
      ['ebpf', 'iptables'],
    );
    expect(text).toContain('inpod ebpf/iptables (terminating stand-in): crr 1.60x');
    expect(text).toContain('inpod ebpf-js/none-js (terminating stand-in, JS ends): crr 0.90x');
    expect(text).toContain('inpod ebpf-js/iptables-js (terminating stand-in, JS ends): crr 1.50x');
    expect(text).not.toContain('relaying');
  });
});

describe('report with JS ends beside the native ones', () => {
  const samples: TrafficSample[] = [0, 1, 2].flatMap((round) =>
    (['direct', 'ebpf-term', 'iptables-term', 'direct-js', 'ebpf-term-js', 'iptables-term-js'] as const).flatMap((scenario) =>
      (['crr', 'rr', 'stream'] as const).map((workload) => ({ round, scenario, workload, rate: scenario.startsWith('iptables') ? 50 : 100, errors: 0 })),
    ),
  );

  it('JS ratios are figures of their own, with no goal, and only when the -js scenarios ran', () => {
    const js = ratios(samples, JS_RATIOS);
    expect(js.map((r) => [r.label, r.value, r.verdict])).toContainEqual(['JS ends: ebpf / iptables (terminated): connections/s', 2, '–']);
    expect(
      ratios(
        samples.filter((s) => !s.scenario.endsWith('-js')),
        JS_RATIOS,
      ),
    ).toEqual([]);
    const input = { date: 'd', machine: { nproc: 2, memoryGiB: 1, kernel: 'k', cpu: 'c', node: 'n' }, durations: {}, svgName: 'b.svg' };
    const traffic = { rounds: 3, seconds: 1, warmupSeconds: 0.1, concurrency: 4, modes: {} };
    const md = renderMarkdown({ ...input, traffic: { ...traffic, samples } });
    expect(md).toContain('native ends (`tools/trafficpeer`');
    expect(md).toContain('| JS ends: ebpf mode, pod A enrolled, stand-in terminates |');
    expect(md).toContain('The terminating pair again with Node.js at both ends');
    const nativeOnly = renderMarkdown({ ...input, traffic: { ...traffic, samples: samples.filter((s) => !s.scenario.endsWith('-js')) } });
    expect(nativeOnly).not.toContain('The terminating pair again');
  });
});
