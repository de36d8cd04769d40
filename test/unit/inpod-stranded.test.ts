/**
 * Which sockets the local route strands (src/capture/inpod/stranded.ts): the pure choice
 * the install makes before ending them (the kernel test is test/kernel/inpod-e2e.test.ts,
 * "the connections the pod had open before its capture").
 */
import { describe, expect, it } from 'vitest';
import { bypassesRules, listeningPorts, STRANDED_STATES, strandedSockets, TcpState, wireAddr, type SocketEnds } from '../../src/capture/inpod/stranded.js';
import { PROBE_SNAT } from '../../src/capture/inpod/iptables-rules.js';

const POD = '198.18.0.10';
const OUT = '203.0.113.5';
const sock = (over: Partial<SocketEnds> = {}): SocketEnds => ({
  state: TcpState.ESTABLISHED,
  src: POD,
  sport: 41000,
  dst: OUT,
  dport: 443,
  mark: 0,
  ...over,
});
const always = () => true;

describe('strandedSockets', () => {
  it('takes an established connection of the pod that the local route sends to lo, with no other end in the netns', () => {
    const s = sock();
    expect(strandedSockets([s], always)).toEqual([s]);
  });

  it('asks the route for each candidate with its mark, and keeps what the route does not send to lo', () => {
    const asked: SocketEnds[] = [];
    const marked = sock({ mark: 0x539, sport: 41001 });
    const plain = sock();
    expect(
      strandedSockets([plain, marked], (s) => {
        asked.push(s);
        return (s.mark & 0xfff) === 0;
      }),
    ).toEqual([plain]);
    expect(asked).toEqual([plain, marked]);
  });

  it('takes only states with something left to send', () => {
    const all = Object.values(TcpState).map((state, i) => sock({ state, sport: 42000 + i }));
    expect(strandedSockets(all, always).map((s) => s.state)).toEqual([
      TcpState.ESTABLISHED,
      TcpState.FIN_WAIT1,
      TcpState.CLOSE_WAIT,
      TcpState.LAST_ACK,
      TcpState.CLOSING,
    ]);
    expect([...STRANDED_STATES].sort((a, b) => a - b)).toEqual([1, 4, 8, 9, 11]);
  });

  it('leaves a socket whose mark the kernel did not give (its route cannot be asked)', () => {
    expect(strandedSockets([sock({ mark: undefined })], always)).toEqual([]);
  });

  it('leaves a captured connection: its other end (ztunnel’s socket, or its TIME_WAIT) is in the netns', () => {
    const app = sock();
    const ztunnelEnd = sock({ src: OUT, sport: 443, dst: POD, dport: 41000, mark: 0x539 });
    const tw = sock({ state: TcpState.TIME_WAIT, src: OUT, sport: 443, dst: POD, dport: 41001, mark: undefined });
    const appClosing = sock({ state: TcpState.CLOSE_WAIT, sport: 41001 });
    expect(strandedSockets([app, ztunnelEnd, tw, appClosing], always)).toEqual([]);
  });

  it('matches the other end across families: an IPv6 socket on an IPv4 connection (as netlink.ts formats its addresses)', () => {
    const app = sock({ src: '::ffff:c612:a', dst: '::ffff:cb00:7105' });
    const ztunnelEnd = sock({ src: OUT, sport: 443, dst: POD, dport: 41000, mark: 0x539 });
    expect(strandedSockets([app, ztunnelEnd], always)).toEqual([]);
    expect(strandedSockets([app], always)).toEqual([app]);
  });

  it('does not take a listener for another end', () => {
    const app = sock({ src: POD, sport: 8080, dst: OUT, dport: 0 });
    const listener = sock({ state: TcpState.LISTEN, src: OUT, sport: 0, dst: POD, dport: 8080 });
    expect(strandedSockets([app, listener], always)).toEqual([app]);
  });

  it('takes the app’s end of an inbound connection from before the capture too (its answers go to lo)', () => {
    const inbound = sock({ src: POD, sport: 8080, dst: OUT, dport: 50000 });
    expect(strandedSockets([inbound], always)).toEqual([inbound]);
  });
});

describe('wireAddr', () => {
  it('gives an IPv4-mapped address as IPv4 and leaves the rest', () => {
    expect(wireAddr('::ffff:10.0.0.1')).toBe('10.0.0.1');
    expect(wireAddr('::FFFF:10.0.0.1')).toBe('10.0.0.1');
    expect(wireAddr('10.0.0.1')).toBe('10.0.0.1');
    expect(wireAddr('fd00::1')).toBe('fd00::1');
    expect(wireAddr('::ffff:a00:1')).toBe('10.0.0.1');
    expect(wireAddr('::ffff:c612:a')).toBe('198.18.0.10');
    expect(wireAddr('::1')).toBe('::1');
    expect(wireAddr('::ffff:0:a00:1')).toBe('::ffff:0:a00:1');
  });
});

describe('bypassesRules (the iptables capture, after its first install in a family)', () => {
  const o = { families: new Set<4 | 6>([4, 6]), local: new Set([POD, 'fd00:10:244::a']), probe: PROBE_SNAT };
  const m = (over: Partial<SocketEnds>) => ({ ...sock(over), mark: over.mark ?? 0 });

  it('takes the pod’s connections to anything but itself, either family, either direction', () => {
    expect(bypassesRules(m({}), o)).toBe(true);
    expect(bypassesRules(m({ src: 'fd00:10:244::a', dst: '2001:db8::5' }), o)).toBe(true);
    expect(bypassesRules(m({ sport: 8080, dport: 50000 }), o)).toBe(true);
    expect(bypassesRules(m({ src: '::ffff:c612:a', dst: '::ffff:cb00:7105' }), o)).toBe(true);
    // Another mark than ztunnel's is the pod's own.
    expect(bypassesRules(m({ mark: 0x538 }), o)).toBe(true);
    expect(bypassesRules(m({ mark: 0x2000 }), o)).toBe(true);
  });

  it('leaves ztunnel’s own (0x539 under 0xfff, whatever the bits above)', () => {
    expect(bypassesRules(m({ mark: 0x539 }), o)).toBe(false);
    expect(bypassesRules(m({ mark: 0x10539 }), o)).toBe(false);
  });

  it('leaves the pod calling itself: loopback, its own addresses', () => {
    for (const dst of ['127.0.0.1', '127.3.2.1', '::1', POD, 'fd00:10:244::a', '::ffff:127.0.0.1']) expect(bypassesRules(m({ dst }), o)).toBe(false);
  });

  it('leaves the app’s end of a kubelet probe (from the SNAT source), IPv4 and IPv6', () => {
    expect(bypassesRules(m({ sport: 8080, dst: PROBE_SNAT[4], dport: 40000 }), o)).toBe(false);
    expect(bypassesRules(m({ src: 'fd00:10:244::a', sport: 8080, dst: PROBE_SNAT[6], dport: 40000 }), o)).toBe(false);
  });

  it('with keepInbound (a pod whose inbound capture is bypassed), leaves the app’s ends of connections to its listeners, and only those', () => {
    const listener = sock({ state: TcpState.LISTEN, src: '0.0.0.0', sport: 8080, dst: '0.0.0.0', dport: 0 });
    const inbound = m({ sport: 8080, dport: 50000 });
    const outbound = m({ sport: 41000 });
    const keepInbound = listeningPorts([listener, inbound, outbound]);
    expect([...keepInbound]).toEqual([8080]);
    expect(bypassesRules(inbound, { ...o, keepInbound })).toBe(false);
    expect(bypassesRules(outbound, { ...o, keepInbound })).toBe(true);
    expect(bypassesRules(inbound, o)).toBe(true);
  });

  it('leaves a family whose rules were there already', () => {
    const only6 = { ...o, families: new Set<4 | 6>([6]) };
    expect(bypassesRules(m({}), only6)).toBe(false);
    expect(bypassesRules(m({ src: 'fd00:10:244::a', dst: '2001:db8::5' }), only6)).toBe(true);
  });
});
