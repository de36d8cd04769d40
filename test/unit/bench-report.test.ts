/** The benchmark report's pure parts: statistics, ratios against the goals, Markdown, SVG. */
import { describe, expect, it } from 'vitest';
import { datapathFigures, goalFigures, median, RELAY_RATIOS, ratios, ratioSvg, renderMarkdown, summarize, trafficTable } from '../../harness/bench/report.js';
import type { BenchRow } from '../../harness/bench/datapath.js';
import { bootstrap, figure, figureTable, quantile, ratioInterval, splitFigures, figuresLine, verdict } from '../../harness/bench/stats.js';
import { rng } from '../../harness/lib/rng.js';
import { clientRunOf, rotate, type Scenario, type TrafficSample, type Workload, WORKLOADS } from '../../harness/bench/traffic.js';
import { synRetransmits as parseSynRetrans } from '../../harness/bench/traffic-peer.js';

/** Three rounds; the rate of each scenario × workload is base × factor, times a per-round wobble. */
function samples(factors: Partial<Record<Scenario, number>>): TrafficSample[] {
  const base: Record<Workload, number> = { crr: 1000, rr: 10_000, 'rr-conc': 40_000, stream: 1e9 };
  const wobble = [1, 1.1, 0.9];
  const out: TrafficSample[] = [];
  for (let round = 0; round < 3; round++) {
    for (const [scenario, f] of Object.entries(factors) as [Scenario, number][]) {
      for (const workload of WORKLOADS) out.push({ round, scenario, workload, rate: base[workload] * f * wobble[round]!, errors: 0 });
    }
  }
  return out;
}

describe('statistics', () => {
  it('median of odd and even counts, unsorted input left alone', () => {
    const xs = [5, 1, 3];
    expect(median(xs)).toBe(3);
    expect(xs).toEqual([5, 1, 3]);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(median([])).toBeNaN();
  });

  it('summarizes each scenario × workload', () => {
    const cell = summarize(samples({ none: 1 })).get('none/crr');
    expect(cell).toEqual({ median: 1000, min: 900, max: 1100, n: 3 });
  });

  it('rotates the order each round', () => {
    expect(rotate(['a', 'b', 'c'], 0)).toEqual(['a', 'b', 'c']);
    expect(rotate(['a', 'b', 'c'], 4)).toEqual(['b', 'c', 'a']);
    expect(rotate([], 2)).toEqual([]);
  });
});

describe('SYN retransmits', () => {
  it('reads TcpExt TCPSynRetrans from /proc/net/netstat text', () => {
    const netstat = 'TcpExt: SyncookiesSent TCPSynRetrans TCPTimeouts\nTcpExt: 0 613 7\nIpExt: InNoRoutes\nIpExt: 0\n';
    expect(parseSynRetrans(netstat)).toBe(613);
    expect(parseSynRetrans('IpExt: a\nIpExt: 1\n')).toBeNaN();
  });

  it('the table sums them per scenario and the reading explains them when ebpf mode lost SYNs', () => {
    const s = samples({ ebpf: 1, iptables: 1 }).map((x) => ({ ...x, synRetrans: x.scenario === 'ebpf' && x.workload === 'crr' ? 5 : 0 }));
    expect(trafficTable(s, 4)).toMatch(/\| ebpf mode, pod A enrolled, stand-in relays \|.*\| 15 \|$/m);
    const md = renderMarkdown({
      date: 'd',
      machine: { nproc: 2, memoryGiB: 1, kernel: 'k', cpu: 'c', node: 'n' },
      durations: {},
      svgName: 'x.svg',
      traffic: { samples: s, rounds: 3, seconds: 2, warmupSeconds: 0.3, concurrency: 4, modes: {} },
    });
    expect(md).toContain('ebpf mode lost SYNs in the connections/s runs (15 retransmitted, iptables mode 0, terminated and relayed together)');
  });

  it('control-path summaries: lines as a list, table rows as printed, a blank line between', () => {
    const md = renderMarkdown({
      date: 'd',
      machine: { nproc: 2, memoryGiB: 1, kernel: 'k', cpu: 'c', node: 'n' },
      durations: {},
      svgName: 'x.svg',
      control: { scripts: [{ script: 'harness/bench/cni.ts', lines: ['40 pods', '| a | b |', '|---|---|', '| 1 | 2 |'] }] },
    });
    expect(md).toContain('`harness/bench/cni.ts`, its own summary:\n\n- 40 pods\n\n| a | b |\n|---|---|\n| 1 | 2 |\n');
  });
});

/** Synthetic paired rounds: den ~ 1000 with noise, num = den × true ratio × its own noise (log-normal-ish, seeded). */
function pairs(trueRatio: number, rounds: number, noise: number, seed: number): { num: number; den: number }[] {
  const r = rng(seed);
  const wob = () => 1 + noise * (r() + r() + r() - 1.5);
  return Array.from({ length: rounds }, () => {
    const den = 1000 * (1 + 0.5 * (r() - 0.5));
    return { num: den * trueRatio * wob(), den: den * wob() };
  });
}

describe('intervals and verdicts', () => {
  const atLeast = { kind: 'atLeast', value: 1.3 } as const;
  const band = { kind: 'within', lo: 0.98, hi: 1.02 } as const;

  it('met: a ratio well above its bound with many quiet rounds', () => {
    const i = ratioInterval(pairs(1.5, 20, 0.05, 1));
    expect(i.lo).toBeGreaterThan(1.3);
    expect(i.lo).toBeLessThan(i.value);
    expect(i.hi).toBeGreaterThan(i.value);
    expect(verdict(atLeast, i)).toBe('met');
  });

  it('not met: a ratio well below its bound', () => {
    const i = ratioInterval(pairs(1.0, 20, 0.05, 2));
    expect(i.hi).toBeLessThan(1.3);
    expect(verdict(atLeast, i)).toBe('not met');
  });

  it('undecided: the same true ratio near the bound, few noisy rounds; many quiet rounds decide it', () => {
    const noisy = ratioInterval(pairs(1.3, 5, 0.4, 3));
    expect(noisy.lo).toBeLessThan(1.3);
    expect(noisy.hi).toBeGreaterThan(1.3);
    expect(verdict(atLeast, noisy)).toBe('undecided');
    // Per-round ratios spread around 1.0: a band goal straddled, whatever the point estimate.
    const spread = [0.9, 1.1, 0.95, 1.05, 1.0].map((r) => ({ num: 1000 * r, den: 1000 }));
    expect(verdict(band, ratioInterval(spread))).toBe('undecided');
    expect(verdict(band, ratioInterval(pairs(1.0, 200, 0.01, 4)))).toBe('met');
  });

  it('paired ratios cancel a drift of the whole machine between rounds', () => {
    // Both sides halve from round to round; their ratio stays exactly 1.2.
    const drift = Array.from({ length: 8 }, (_, i) => ({ num: (1.2 * 1000) / 2 ** i, den: 1000 / 2 ** i }));
    const i = ratioInterval(drift);
    expect(i.value).toBeCloseTo(1.2, 9);
    expect(i.lo).toBeCloseTo(1.2, 9);
    expect(i.hi).toBeCloseTo(1.2, 9);
  });

  it('each kind of goal judged from the interval at its bounds', () => {
    expect(verdict({ kind: 'atLeast', value: 1 }, { lo: 1, hi: 2 })).toBe('met');
    expect(verdict({ kind: 'atLeast', value: 1 }, { lo: 0.5, hi: 0.99 })).toBe('not met');
    expect(verdict({ kind: 'atMost', value: 20 }, { lo: 10, hi: 20 })).toBe('met');
    expect(verdict({ kind: 'atMost', value: 20 }, { lo: 19, hi: 21 })).toBe('undecided');
    expect(verdict({ kind: 'atMost', value: 20 }, { lo: 21, hi: 30 })).toBe('not met');
    expect(verdict(band, { lo: 1.03, hi: 1.1 })).toBe('not met');
    expect(verdict(band, { lo: 0.97, hi: 1.1 })).toBe('undecided');
    expect(verdict(band, { lo: NaN, hi: 1 })).toBe('undecided');
  });

  it('bootstrap is deterministic for a seed, zero-width for one sample, quantiles by nearest rank', () => {
    const xs = [5, 7, 9, 30, 6];
    expect(bootstrap(xs, median, 3)).toEqual(bootstrap(xs, median, 3));
    expect(bootstrap([4], median)).toEqual({ value: 4, lo: 4, hi: 4, n: 1 });
    expect(
      quantile(
        Array.from({ length: 40 }, (_, i) => i + 1),
        0.99,
      ),
    ).toBe(40);
    expect(quantile([3, 1, 2], 0.5)).toBe(2);
  });

  it('figures cross the process boundary as one line and render with their verdicts', () => {
    const f = figure('scrape', 'ms', { kind: 'atMost', value: 50 }, { value: 30, lo: 25, hi: 60, n: 9 });
    const { lines, figures } = splitFigures(['a line', figuresLine([f])]);
    expect(lines).toEqual(['a line']);
    expect(figures).toEqual([f]);
    expect(figureTable(figures)).toContain('| scrape | 30.0 ms | 25.0–60.0 | 9 | ≤ 50 ms | _undecided_ |');
  });
});

describe('ratios against the goals', () => {
  it('computes per-round ratios and judges each against its goal from the interval', () => {
    const rs = ratios(samples({ direct: 1, 'ebpf-term': 0.96, 'iptables-term': 0.6, 'none-b': 1, unenrolled: 0.97 }));
    const by = Object.fromEntries(rs.map((r) => [r.label, r]));
    expect(by['ebpf / iptables (terminated): connections/s']).toMatchObject({ verdict: 'met', n: 3 });
    expect(by['ebpf / iptables (terminated): connections/s']!.value).toBeCloseTo(1.6);
    expect(by['ebpf capture (terminated) / direct: stream']!.verdict).toBe('met');
    // 0.97 is outside the 2 % band in every round.
    expect(by['unenrolled pod, agent running / no agent: request/response']).toMatchObject({ verdict: 'not met' });
    expect(by['unenrolled pod, agent running / no agent: request/response']!.perRound.min).toBeCloseTo(0.97);
    // The goals' nine, and the two concurrent request/response ratios without a goal.
    expect(rs).toHaveLength(11);
    expect(rs.slice(9).every((r) => r.goal.kind === 'none' && r.verdict === '–')).toBe(true);
  });

  it('leaves out ratios whose scenarios were not measured; the relay ratios carry no goal', () => {
    expect(ratios(samples({ direct: 1, 'ebpf-term': 1 })).map((r) => r.label)).toEqual([
      'ebpf capture (terminated) / direct: connections/s',
      'ebpf capture (terminated) / direct: request/response',
      'ebpf capture (terminated) / direct: stream',
      'ebpf capture (terminated) / direct: request/response, concurrent connections',
    ]);
    const relay = ratios(samples({ none: 1, ebpf: 0.5, iptables: 0.5 }), RELAY_RATIOS);
    expect(relay).toHaveLength(7);
    expect(relay.every((r) => r.verdict === '–')).toBe(true);
  });

  it('the data path: multiple of the empty program per round, flatness, fill time', () => {
    const row = (entries: number, program: string, k: number): BenchRow => ({
      entries,
      program,
      ns: 20 * k,
      emptyNs: 20,
      rounds: [20 * k, 21 * k, 19 * k],
      emptyRounds: [20, 21, 19],
      fillMs: { batch: [12, 13, 11], pack: [2, 3, 2], call: [10, 10, 9], oneByOne: 100 },
    });
    const fs = datapathFigures([row(10, 'zt_mark', 1.4), row(65536, 'zt_mark', 1.4), row(10, 'zt_assign', 4), row(65536, 'zt_assign', 5)]);
    const by = Object.fromEntries(fs.map((f) => [f.label, f]));
    expect(by['zt_mark / empty program, 10 entries (ns/packet)']).toMatchObject({ verdict: 'met' });
    expect(by['zt_assign / empty program, 10 entries (ns/packet)']).toMatchObject({ verdict: 'not met' });
    expect(by['zt_mark: multiple at 65,536 / at 10 entries']).toMatchObject({ verdict: 'met' });
    expect(by['zt_assign: multiple at 65,536 / at 10 entries']!.value).toBeCloseTo(1.25);
    expect(by['filling 65,536 pod entries (one batch update)']).toMatchObject({ value: 12, verdict: 'met' });
  });
});

describe('rendering', () => {
  const s = samples({ direct: 1, 'ebpf-term': 1.4, 'iptables-term': 1, none: 1, 'none-b': 1, ebpf: 1.4, iptables: 1, unenrolled: 0.97 });

  it('the traffic table shows medians with their range, throughput in Gbit/s', () => {
    const t = trafficTable(s, 4);
    expect(t.split('\n')[0]).toContain('| request/response (round trips/s) | request/response, 4 connections (round trips/s) | stream (Gbit/s) |');
    expect(t).toContain(
      '| ebpf mode, pod A enrolled, stand-in relays | 1,400 <sub>(1,260–1,540)</sub> | 14,000 <sub>(12,600–15,400)</sub> | 56,000 <sub>(50,400–61,600)</sub> | 11.20 <sub>(10.08–12.32)</sub> |',
    );
  });

  it('request/response runs on one connection and on --concurrency at once; the concurrent figures have no goal', () => {
    expect(WORKLOADS).toEqual(['crr', 'rr', 'rr-conc', 'stream']);
    expect(clientRunOf('rr', 4)).toEqual({ workload: 'rr', rrConnections: 1 });
    expect(clientRunOf('rr-conc', 6)).toEqual({ workload: 'rr', rrConnections: 6 });
    expect(clientRunOf('crr', 4)).toEqual({ workload: 'crr' });
    const conc = ratios(s).filter((r) => r.label.includes('concurrent connections'));
    expect(conc.map((r) => [r.label, Number(r.value.toFixed(3)), r.verdict])).toEqual([
      ['ebpf capture (terminated) / direct: request/response, concurrent connections', 1.4, '–'],
      ['ebpf / iptables (terminated): request/response, concurrent connections', 1.4, '–'],
    ]);
    expect(ratios(s.filter((x) => x.workload !== 'rr-conc')).some((r) => r.label.includes('concurrent'))).toBe(false);
  });

  it('the SVG is well-formed, one bar per ratio, coloured by the verdict, labels escaped', () => {
    const rs = ratios(s);
    const svg = ratioSvg(rs, 'a <title> & more');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('a &lt;title&gt; &amp; more');
    expect(svg.match(/<rect x="330"/g)).toHaveLength(rs.length);
    expect(svg.match(/fill="#c62828"\/>/g)).toHaveLength(rs.filter((r) => r.verdict === 'not met').length);
    // Every tag opened is closed or self-closing.
    const open = (svg.match(/<(svg|text)\b/g) ?? []).length;
    const closed = (svg.match(/<\/(svg|text)>/g) ?? []).length;
    expect(open).toBe(closed);
  });

  it('the Markdown names the machine, links the chart and has each part that ran', () => {
    const md = renderMarkdown({
      date: '2026-11-27 10:00 UTC',
      machine: { nproc: 2, memoryGiB: 23.5, kernel: '6.18.0', cpu: 'AMD EPYC', node: '20.19.0' },
      durations: { traffic: 100 },
      traffic: { samples: s, rounds: 3, seconds: 2, warmupSeconds: 0.3, concurrency: 4, modes: { ebpf: 'ebpf (redirect_peer)' } },
      control: { missing: 'no control-path benchmark' },
      svgName: 'benchmarks.svg',
    });
    expect(md).toContain('Linux 6.18.0, 2 CPUs (AMD EPYC), 23.5 GiB memory');
    expect(md).toContain('![ratios](benchmarks.svg)');
    expect(md).toContain('## Live traffic (100 s)');
    expect(md).toContain('| unenrolled pod, agent running / no agent: request/response | 0.970 | 0.970–0.970 | 0.97–0.97 | 3 | 0.98–1.02× | **not met** |');
    expect(md).toContain('## Goals');
    expect(md).toContain('| relay: ebpf / iptables: stream | 1.400 |');
    expect(goalFigures({ traffic: { samples: s, rounds: 3, seconds: 2, warmupSeconds: 0.3, concurrency: 4, modes: {} } })).toHaveLength(11);
    expect(md).toContain('Not run: no control-path benchmark');
    expect(md).not.toContain('## Data path');
  });
});
