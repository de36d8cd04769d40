/** The benchmark report's pure parts: statistics, ratios against the goals, Markdown, SVG. */
import { describe, expect, it } from 'vitest';
import { median, meets, ratios, ratioSvg, renderMarkdown, summarize, trafficTable } from '../../harness/bench/report.js';
import { rotate, type Scenario, type TrafficSample, type Workload } from '../../harness/bench/traffic.js';
import { synRetransmits as parseSynRetrans } from '../../harness/bench/traffic-peer.js';

/** Three rounds; the rate of each scenario × workload is base × factor, times a per-round wobble. */
function samples(factors: Partial<Record<Scenario, number>>): TrafficSample[] {
  const base: Record<Workload, number> = { crr: 1000, rr: 10_000, stream: 1e9 };
  const wobble = [1, 1.1, 0.9];
  const out: TrafficSample[] = [];
  for (let round = 0; round < 3; round++) {
    for (const [scenario, f] of Object.entries(factors) as [Scenario, number][]) {
      for (const workload of ['crr', 'rr', 'stream'] as const) out.push({ round, scenario, workload, rate: base[workload] * f * wobble[round]!, errors: 0 });
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
    expect(trafficTable(s)).toMatch(/\| ebpf mode, pod A enrolled \|.*\| 15 \|$/m);
    const md = renderMarkdown({
      date: 'd',
      machine: { nproc: 2, memoryGiB: 1, kernel: 'k', cpu: 'c', node: 'n' },
      durations: {},
      svgName: 'x.svg',
      traffic: { samples: s, rounds: 3, seconds: 2, warmupSeconds: 0.3, concurrency: 4, modes: {} },
    });
    expect(md).toContain('ebpf mode lost SYNs in the connections/s runs (15 retransmitted, iptables mode 0)');
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

describe('ratios against the goals', () => {
  it('computes ratios of medians and judges each against its goal', () => {
    const rs = ratios(samples({ none: 1, 'none-b': 1, ebpf: 1.4, iptables: 1, unenrolled: 0.97 }));
    const by = Object.fromEntries(rs.map((r) => [r.label, r]));
    expect(by['ebpf / iptables: connections/s']).toMatchObject({ met: true });
    expect(by['ebpf / iptables: connections/s']!.value).toBeCloseTo(1.4);
    expect(by['ebpf / no capture: stream throughput']!.met).toBe(true);
    // 0.97 is outside the 2 % band.
    expect(by['unenrolled / no capture: request/response']).toMatchObject({ met: false });
    expect(by['unenrolled / no capture: request/response']!.perRound.min).toBeCloseTo(0.97);
  });

  it('an "at least" goal is met at the bound, a band at both ends only inside', () => {
    expect(meets({ kind: 'atLeast', value: 1.3 }, 1.3)).toBe(true);
    expect(meets({ kind: 'atLeast', value: 1.3 }, 1.29)).toBe(false);
    expect(meets({ kind: 'within', lo: 0.98, hi: 1.02 }, 1.021)).toBe(false);
    expect(meets({ kind: 'within', lo: 0.98, hi: 1.02 }, 0.99)).toBe(true);
  });

  it('leaves out ratios whose scenarios were not measured', () => {
    expect(ratios(samples({ none: 1, ebpf: 1 })).map((r) => r.label)).toEqual(['ebpf / no capture: stream throughput']);
  });
});

describe('rendering', () => {
  const s = samples({ none: 1, 'none-b': 1, ebpf: 1.4, iptables: 1, unenrolled: 0.97 });

  it('the traffic table shows medians with their range, throughput in Gbit/s', () => {
    const t = trafficTable(s);
    expect(t).toContain('| ebpf mode, pod A enrolled | 1,400 <sub>(1,260–1,540)</sub> | 14,000 <sub>(12,600–15,400)</sub> | 11.20 <sub>(10.08–12.32)</sub> |');
  });

  it('the SVG is well-formed, one bar per ratio, coloured by the verdict, labels escaped', () => {
    const rs = ratios(s);
    const svg = ratioSvg(rs, 'a <title> & more');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trim().endsWith('</svg>')).toBe(true);
    expect(svg).toContain('a &lt;title&gt; &amp; more');
    expect(svg.match(/<rect x="330"/g)).toHaveLength(rs.length);
    expect(svg.match(/fill="#c62828"\/>/g)).toHaveLength(rs.filter((r) => !r.met).length);
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
    expect(md).toContain('| unenrolled / no capture: request/response | 0.970 | 0.97–0.97 | 0.98–1.02 | **no** |');
    expect(md).toContain('Not run: no control-path benchmark');
    expect(md).not.toContain('## Data path');
  });
});
