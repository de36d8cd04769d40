/**
 * The in-pod bench's arithmetic and options (harness/bench/inpod.ts): medians per scenario,
 * each capture's ratio to the others and to no capture, and clear errors for bad flags.
 * The bench itself runs on the kernel (`node dist/harness/bench/inpod.js`), never here.
 */
import { describe, expect, it } from 'vitest';
import { CAPTURES, inpodTable, type InpodSample, parseOptions } from '../../harness/bench/inpod.js';
import { clientRunOf, WORKLOADS } from '../../harness/bench/traffic.js';
import { pinned } from '../../harness/bench/peers.js';
import { sleepsOf } from '../../harness/bench/cost.js';

const sample = (scenario: string, workload: InpodSample['workload'], rate: number, round = 0): InpodSample => ({
  round,
  scenario,
  workload,
  rate,
  errors: 0,
  synRetrans: 0,
});

describe('in-pod bench', () => {
  it('pins a command to one CPU with taskset, and leaves it alone without one', () => {
    expect(pinned(0)).toEqual(['taskset', '-c', '0']);
    expect(pinned(undefined)).toEqual([]);
  });

  it('medians and ratios: each capture against the others and against none', () => {
    const samples = [
      ...[100, 300, 200].map((r, i) => sample('none', 'crr', r, i)),
      ...[50, 60, 40].map((r, i) => sample('iptables', 'crr', r, i)),
      ...[65, 75, 70].map((r, i) => sample('ebpf', 'crr', r, i)),
      ...[30, 20].map((r, i) => sample('ebpf-relay', 'crr', r, i)),
      ...[40, 40].map((r, i) => sample('iptables-relay', 'crr', r, i)),
      ...['none', 'iptables', 'ebpf', 'ebpf-relay', 'iptables-relay'].flatMap((s) => [sample(s, 'rr', 1000), sample(s, 'stream', 1e9)]),
      ...[4000, 4400].map((r, i) => sample('ebpf', 'rr-conc', r, i)),
      ...['none', 'iptables', 'ebpf-relay', 'iptables-relay'].map((s) => sample(s, 'rr-conc', 3000)),
    ];
    const text = inpodTable(samples, ['ebpf', 'iptables']);
    expect(text.split('\n')[0]).toMatch(/^scenario\s+crr\s+rr\s+rr-conc\s+stream$/);
    expect(text).toContain('inpod ebpf/iptables (terminating stand-in): crr 1.40x, rr 1.00x, rr-conc 1.40x, stream 1.00x');
    expect(text).toContain('inpod iptables/none (terminating stand-in): crr 0.25x');
    expect(text).toContain('inpod ebpf-relay/iptables-relay (relaying stand-in): crr 0.63x');
    expect(text.split('\n')[1]).toMatch(/^none\s+200 conn\/s/);
    expect(text).toMatch(/^ebpf-relay\s+25 conn\/s/m);
    expect(text).toContain('SYNs the client sent again (all rounds and workloads): none 0, ebpf 0, iptables 0, ebpf-relay 0, iptables-relay 0');
  });

  it('request/response runs twice: on one connection, and on --concurrency connections at once', () => {
    expect(WORKLOADS).toEqual(['crr', 'rr', 'rr-conc', 'stream']);
    expect(clientRunOf('rr', 4)).toEqual({ workload: 'rr', rrConnections: 1 });
    expect(clientRunOf('rr-conc', 4)).toEqual({ workload: 'rr', rrConnections: 4 });
    expect(clientRunOf('rr-conc', 7)).toEqual({ workload: 'rr', rrConnections: 7 });
    expect(clientRunOf('crr', 4)).toEqual({ workload: 'crr' });
    expect(clientRunOf('stream', 4)).toEqual({ workload: 'stream' });
  });

  it("counts the CPUs' sleeps per round trip: every idle state but POLL, which spins", () => {
    expect(
      sleepsOf([
        { name: 'POLL', usage: 500 },
        { name: 'haltpoll idle', usage: 40 },
        { name: 'C1', usage: 2 },
      ]),
    ).toBe(42);
    expect(sleepsOf([])).toBe(0);
    const samples = [
      { ...sample('ebpf', 'rr', 100, 0), sleepsPerOp: 2.1 },
      { ...sample('ebpf', 'rr', 100, 1), sleepsPerOp: 1.9 },
      { ...sample('ebpf', 'rr-conc', 400, 0), sleepsPerOp: 0.04 },
      { ...sample('none', 'rr', 100, 0), sleepsPerOp: 2 },
      { ...sample('none', 'rr-conc', 100, 0), sleepsPerOp: 0.5 },
    ];
    expect(inpodTable(samples, ['ebpf'])).toContain(
      'CPU sleeps per connection (crr) or round trip (cpuidle entries, all CPUs; medians): none rr 2.00, rr-conc 0.50; ebpf rr 2.00, rr-conc 0.04',
    );
    // Without cpuidle the line is left out.
    expect(inpodTable([sample('none', 'rr', 1)], [])).not.toContain('CPU sleeps');
  });

  it('a run of some workloads (--workloads) shows just those', () => {
    const text = inpodTable([sample('none', 'crr', 10), sample('ebpf', 'crr', 20)], ['ebpf']);
    expect(text.split('\n')[0]).toMatch(/^scenario\s+crr$/);
    expect(text).toMatch(/^inpod ebpf\/none \(terminating stand-in\): crr 2\.00x$/m);
  });

  it('counts the SYNs each scenario sent again over all rounds (a lost SYN costs its connection a second)', () => {
    const samples = [
      { ...sample('none', 'crr', 100), synRetrans: 0 },
      { ...sample('ebpf', 'crr', 100, 0), synRetrans: 3 },
      { ...sample('ebpf', 'crr', 100, 1), synRetrans: 2 },
      { ...sample('ebpf', 'rr', 100, 1), synRetrans: 1 },
    ];
    expect(inpodTable(samples, ['ebpf'])).toContain('SYNs the client sent again (all rounds and workloads): none 0, ebpf 6');
  });

  it('iptables is registered by name; unknown captures and bad numbers are clear errors', () => {
    expect(Object.keys(CAPTURES)).toContain('iptables');
    expect(parseOptions(['--captures', 'iptables', '--rounds', '2', '--seconds', '0.5'])).toMatchObject({ captures: ['iptables'], rounds: 2, seconds: 0.5 });
    expect(() => parseOptions(['--captures', 'nope'])).toThrow('--captures: "nope" is not one of');
    expect(() => parseOptions(['--rounds', '0'])).toThrow('--rounds: "0" is not an integer in 1..100');
    expect(() => parseOptions(['--what'])).toThrow();
    expect(parseOptions(['--one-cpu']).cpu).toBe(0);
    expect(parseOptions([]).workloads).toEqual(['crr', 'rr', 'rr-conc', 'stream']);
    expect(parseOptions(['--workloads', 'stream, rr-conc']).workloads).toEqual(['rr-conc', 'stream']);
    expect(() => parseOptions(['--workloads', 'rr,udp'])).toThrow('--workloads: "udp" is not one of crr, rr, rr-conc, stream');
    expect(() => parseOptions(['--workloads', ','])).toThrow('--workloads: name at least one');
    expect(parseOptions([]).cpu).toBeUndefined();
  });
});
