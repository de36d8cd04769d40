/**
 * The benchmarks' choice of ends (harness/bench/peers.ts, traffic.ts, inpod.ts): which peer
 * each scenario runs, which stand-in must hold ztunnel's listeners, the oracle over both
 * stand-ins' counters, and the parsing of results and flags. Pure; the peers themselves run
 * in test/kernel/trafficpeer.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { cpuNs, processCpuSeconds, progDelta } from '../../harness/bench/cost.js';
import { type HookSample, hookFigures, hookTable, outRsts, parseFlood, parseHookOptions } from '../../harness/bench/hooks.js';
import { inpodFigures, inpodTable, type InpodSample, parseOptions, scenarioNames, scenarioOf } from '../../harness/bench/inpod.js';
import { parseEndpoints, parseResult, parseSyscallCost } from '../../harness/bench/peers.js';
import { CPU_RATIOS, JS_RATIOS, ratios, renderMarkdown } from '../../harness/bench/report.js';
import { carriedAsPlanned, holderFor, PLAN, parseTrafficOptions, SCENARIOS, slotsFor, type TrafficSample, WORKLOADS } from '../../harness/bench/traffic.js';
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

describe('the cost of a system call', () => {
  const line = '{"event":"syscall-cost","count":200000,"nsPerCall":1078.1,"runs":[1078.1,1052.4]}';

  it("is the line's nsPerCall, and the report says it beside the machine", () => {
    expect(parseSyscallCost(`x\n${line}\n`)).toBe(1078.1);
    const input = { date: 'd', machine: { nproc: 2, memoryGiB: 1, kernel: 'k', cpu: 'c', node: 'n' }, durations: {}, svgName: 'b.svg' };
    expect(renderMarkdown({ ...input, machine: { ...input.machine, syscallNs: 1078.1 } })).toContain('One system call takes 1078 ns here');
    expect(renderMarkdown(input)).not.toContain('One system call takes');
  });

  it('refuses a missing line and a missing, zero or non-numeric figure', () => {
    expect(() => parseSyscallCost('nothing')).toThrow('trafficpeer syscall-cost: no result (nothing)');
    expect(() => parseSyscallCost(line.replace('"nsPerCall":1078.1,', ''))).toThrow('nsPerCall is undefined');
    expect(() => parseSyscallCost(line.replace('1078.1,"runs"', '0,"runs"'))).toThrow('nsPerCall is 0');
    expect(() => parseSyscallCost(line.replace('1078.1,"runs"', '"fast","runs"'))).toThrow('nsPerCall is fast');
  });
});

describe('in-pod bench ends', () => {
  it('scenario names say the capture, the ends and the relay', () => {
    expect(scenarioOf('none')).toEqual({ capture: null, ends: 'native', relay: false, loopback: false });
    expect(scenarioOf('none-js')).toEqual({ capture: null, ends: 'js', relay: false, loopback: false });
    expect(scenarioOf('ebpf')).toEqual({ capture: 'ebpf', ends: 'native', relay: false, loopback: false });
    expect(scenarioOf('ebpf-js')).toEqual({ capture: 'ebpf', ends: 'js', relay: false, loopback: false });
    expect(scenarioOf('iptables-relay')).toEqual({ capture: 'iptables', ends: 'js', relay: true, loopback: false });
    // The ceiling: no capture, native ends, both in the pod.
    expect(scenarioOf('loopback')).toEqual({ capture: null, ends: 'native', relay: false, loopback: true });
    expect(scenarioNames(['ebpf'], ['native'])).toEqual(['none', 'loopback', 'ebpf', 'ebpf-relay']);
    expect(scenarioNames(['ebpf'], ['native', 'js'])).toEqual(['none', 'loopback', 'ebpf', 'ebpf-relay', 'none-js', 'ebpf-js']);
    expect(parseOptions(['--endpoints', 'native,js']).endpoints).toEqual(['native', 'js']);
    expect(() => parseOptions(['--endpoints', 'js'])).toThrow('native is always measured');
  });

  it('the table compares the JS-ended captures with the JS-ended baseline', () => {
    const s = (scenario: string, rate: number): InpodSample[] =>
      (['crr', 'rr', 'stream'] as const).map((workload) => ({ round: 0, scenario, workload, rate, errors: 0, synRetrans: 0 }));
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
    expect(md).not.toContain('The same comparisons in CPU');
    // With the ends' CPU measured: iptables / ebpf of it, per round, as its own table.
    const withCpu = samples.map((s) => (s.scenario.endsWith('-js') ? s : { ...s, endsNsPerOp: s.scenario === 'iptables-term' ? 300 : 200 }));
    expect(ratios(withCpu, CPU_RATIOS).map((r) => [r.label, r.value])).toContainEqual(["ends' CPU per connection: iptables / ebpf (terminated)", 1.5]);
    expect(renderMarkdown({ ...input, traffic: { ...traffic, samples: withCpu } })).toContain('The same comparisons in CPU');
    const nativeOnly = renderMarkdown({ ...input, traffic: { ...traffic, samples: samples.filter((s) => !s.scenario.endsWith('-js')) } });
    expect(nativeOnly).not.toContain('The terminating pair again');
  });
});

describe('TC/XDP hooks bench and cost readings', () => {
  it('reads /proc/stat busy and kernel time, and refuses a line it does not know', () => {
    expect(cpuNs('cpu  10 2 30 400 5 6 7 0 0 0\ncpu0 1 1 1 1 1 1 1\n')).toEqual({ busy: (10 + 2 + 30 + 6 + 7) * 1e7, kernel: (30 + 6 + 7) * 1e7 });
    expect(() => cpuNs('intr 1 2 3')).toThrow('/proc/stat: unexpected first line "intr 1 2 3"');
    // utime 150 and stime 50 ticks, after a command name with a space and a parenthesis.
    expect(processCpuSeconds('4242 (traffic peer) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 3 0 1')).toBeCloseTo(2, 9);
    expect(() => processCpuSeconds('garbage')).toThrow('/proc/PID/stat: unexpected');
    expect(progDelta({ a: { runTimeNs: 10, runCount: 1 } }, { a: { runTimeNs: 25, runCount: 4 }, b: { runTimeNs: 3, runCount: 1 } })).toEqual({
      a: { runTimeNs: 15, runCount: 3 },
      b: { runTimeNs: 3, runCount: 1 },
    });
  });

  it("reads the flood's line and the pod's resets, field by field", () => {
    const line = '{"event":"flood","kind":"udp","sent":100,"errors":0,"seconds":1.000000,"rate":100.000,"cpuUser":0.010000,"cpuSystem":0.200000}';
    expect(parseFlood(`x\n${line}\n`)).toMatchObject({ sent: 100, cpuSystem: 0.2 });
    expect(() => parseFlood('nothing')).toThrow('flood: no result');
    expect(() => parseFlood(line.replace('"sent":100', '"sent":"many"'))).toThrow('flood: field sent is many');
    const snmp = 'Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm ActiveOpens OutRsts InCsumErrors\nTcp: 1 5 42 0\n';
    expect(outRsts(snmp)).toBe(42);
    expect(() => outRsts('Ip: Forwarding\nIp: 1\n')).toThrow('no Tcp OutRsts');
  });

  it('figures are per-round paired xdp / tc ratios, with CPU per frame for each flood', () => {
    const samples: HookSample[] = [0, 1, 2].flatMap((round) => [
      { round, hook: 'tc' as const, workload: 'crr' as const, rate: 100 },
      { round, hook: 'xdp' as const, workload: 'crr' as const, rate: 150 },
      { round, hook: 'tc' as const, workload: 'flood-spoof' as const, rate: 1000, sent: 1000, delivered: 0, senderNsPerFrame: 800, machineNsPerFrame: 1600 },
      { round, hook: 'xdp' as const, workload: 'flood-spoof' as const, rate: 2000, sent: 2000, delivered: 0, senderNsPerFrame: 400, machineNsPerFrame: 1600 },
    ]);
    const f = hookFigures(samples);
    expect(f.map((x) => [x.label, x.value, x.n])).toEqual([
      ['xdp / tc hook: connections/s', 1.5, 3],
      ['xdp / tc hook: UDP flood, forged source: frames sent/s', 2, 3],
      ['xdp / tc hook: UDP flood, forged source: sender CPU per frame', 0.5, 3],
      ['xdp / tc hook: UDP flood, forged source: kernel CPU per frame (machine)', 1, 3],
    ]);
    // With --bpf-stats: the outbound program's own run time, xdp over tc.
    const withProg = samples.map((x) =>
      x.workload === 'flood-spoof'
        ? { ...x, prog: { name: x.hook === 'xdp' ? 'xdp_out' : 'out_redir_peer', runsPerFrame: 1, nsPerRun: x.hook === 'xdp' ? 50 : 100 } }
        : x,
    );
    expect(hookFigures(withProg).map((x) => [x.label, x.value])).toContainEqual(["xdp / tc hook: UDP flood, forged source: outbound program's run time", 0.5]);
    expect(hookTable(samples)).toMatch(/^flood-spoof\s+1000\/s 0% 800ns\s+2000\/s 0% 400ns$/m);
    expect(parseHookOptions(['--rounds', '2', '--flood-seconds', '0.5'])).toMatchObject({ rounds: 2, floodSeconds: 0.5 });
    expect(() => parseHookOptions(['--flood-seconds', '0'])).toThrow('--flood-seconds: "0" is not a number in 0.2..30');
  });
});

describe('in-pod figures in CPU', () => {
  it("adds iptables / ebpf of the native ends' CPU per operation when the run measured it", () => {
    const s = (scenario: string, round: number, rate: number, endsNsPerOp?: number): InpodSample[] =>
      WORKLOADS.map((workload) => ({
        round,
        scenario,
        workload,
        rate,
        errors: 0,
        synRetrans: 0,
        ...(endsNsPerOp !== undefined && { endsNsPerOp }),
      }));
    const withCpu = [0, 1, 2].flatMap((r) => [...s('ebpf', r, 110, 100), ...s('iptables', r, 100, 150)]);
    const f = inpodFigures(withCpu, { concurrency: 4 });
    expect(f.map((x) => [x.label, Number(x.value.toFixed(3)), x.goal])).toEqual([
      ['in-pod ebpf / in-pod iptables: connections/s', 1.1, { kind: 'atLeast', value: 1.3 }],
      ['in-pod ebpf / in-pod iptables: request/response, one connection', 1.1, { kind: 'none' }],
      ['in-pod ebpf / in-pod iptables: request/response, 4 connections at once', 1.1, { kind: 'atLeast', value: 1.15 }],
      ['in-pod ebpf / in-pod iptables: stream throughput', 1.1, { kind: 'none' }],
      ["in-pod iptables / in-pod ebpf: ends' CPU per connection", 1.5, { kind: 'none' }],
      ["in-pod iptables / in-pod ebpf: ends' CPU per round trip, one connection", 1.5, { kind: 'none' }],
      ["in-pod iptables / in-pod ebpf: ends' CPU per round trip, 4 connections at once", 1.5, { kind: 'none' }],
    ]);
    expect(inpodFigures([0, 1].flatMap((r) => [...s('ebpf', r, 110), ...s('iptables', r, 100)]))).toHaveLength(4);
    // Only the workloads the run had (--workloads).
    expect(inpodFigures(withCpu.filter((x) => x.workload === 'crr')).map((x) => x.label)).toEqual([
      'in-pod ebpf / in-pod iptables: connections/s',
      "in-pod iptables / in-pod ebpf: ends' CPU per connection",
    ]);
    // The connections of rr-conc are the run's --concurrency.
    expect(inpodFigures(withCpu, { concurrency: 8 })[2]!.label).toBe('in-pod ebpf / in-pod iptables: request/response, 8 connections at once');
    // A --one-cpu run's figures say so, beside the unpinned run's in one report.
    expect(inpodFigures(withCpu, { oneCpu: true, concurrency: 4 }).map((x) => x.label)).toEqual([
      'in-pod ebpf / in-pod iptables: connections/s (one CPU)',
      'in-pod ebpf / in-pod iptables: request/response, one connection (one CPU)',
      'in-pod ebpf / in-pod iptables: request/response, 4 connections at once (one CPU)',
      'in-pod ebpf / in-pod iptables: stream throughput (one CPU)',
      "in-pod iptables / in-pod ebpf: ends' CPU per connection (one CPU)",
      "in-pod iptables / in-pod ebpf: ends' CPU per round trip, one connection (one CPU)",
      "in-pod iptables / in-pod ebpf: ends' CPU per round trip, 4 connections at once (one CPU)",
    ]);
  });

  it('with the loopback ceiling in the run: its ratio to iptables beside each goal, without a goal of its own', () => {
    const s = (scenario: string, round: number, rate: number): InpodSample[] =>
      WORKLOADS.map((workload) => ({ round, scenario, workload, rate, errors: 0, synRetrans: 0 }));
    const run = [0, 1, 2].flatMap((r) => [...s('ebpf', r, 110), ...s('iptables', r, 100), ...s('loopback', r, 125), ...s('none', r, 120)]);
    const f = inpodFigures(run, { concurrency: 4 });
    expect(f.filter((x) => x.label.startsWith('in-pod ceiling')).map((x) => [x.label, Number(x.value.toFixed(3)), x.goal, x.verdict])).toEqual([
      ['in-pod ceiling (loopback, no capture) / in-pod iptables: connections/s', 1.25, { kind: 'none' }, '–'],
      ['in-pod ceiling (loopback, no capture) / in-pod iptables: request/response, 4 connections at once', 1.25, { kind: 'none' }, '–'],
    ]);
    // The goals' figures come first and are unchanged by it.
    expect(f.slice(0, 4).map((x) => x.label)).toEqual(inpodFigures(run.filter((x) => x.scenario !== 'loopback')).map((x) => x.label));
    expect(inpodFigures(run.filter((x) => x.workload === 'stream')).some((x) => x.label.startsWith('in-pod ceiling'))).toBe(false);
    const text = inpodTable(run, ['ebpf', 'iptables']);
    expect(text.split('\n')[2]).toMatch(/^loopback\s+125 conn\/s/);
    expect(text).toContain('inpod ebpf/loopback (terminating stand-in): crr 0.88x');
    expect(text).toContain('inpod iptables/loopback (terminating stand-in): crr 0.80x');
    expect(text).not.toContain('inpod loopback/');
  });
});
