/**
 * The reference model against the hand-written table of spec rows (test/model/rows.ts),
 * without a kernel: each row's verdict, the row that decided, and the mark.
 */
import { describe, expect, it } from 'vitest';
import * as m from '../model/datapath.js';
import { modelStateOf } from '../model/harness.js';
import { EST, NODE, OUTSIDE, POD_A, ROWS, stateOf, type Row, type ZtRow } from '../model/rows.js';
import * as b from '../../harness/packet/builder.js';
import { ipBytes } from '../../harness/packet/builder.js';

const veths = { a: 2, b: 3 };
const MAX_PODS = 65536;
const ctxOf = (r: Row) => ({ ifindex: veths.a, ingressIfindex: r.ingressIfindex ?? 5 });
const rowId = (id: string) => expect.stringMatching(new RegExp(`^${id.replace(/\d+[a-z]?$/, '')}\\d+[a-z]?$`));

const allSockets: m.SocketTable = {
  listeners: new Set([
    'tcp4:15001',
    'tcp6:15001',
    'tcp4:15006',
    'tcp6:15006',
    'tcp4:15008',
    'tcp6:15008',
    'udp4:15053',
    'udp6:15053',
    'tcp4:15053',
    'tcp6:15053',
  ]),
  established: new Set([m.tupleKey(4, m.addrKeyHex(ipBytes(OUTSIDE.v4)), EST.outsidePort, m.addrKeyHex(ipBytes(POD_A.v4)), EST.podPort)]),
};
const noListeners: m.SocketTable = { listeners: new Set(), established: allSockets.established };

describe('model: outbound rows', () => {
  it.each(ROWS.outbound.map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r) => {
    const v = m.outbound(r.frame, modelStateOf(stateOf(veths, r), MAX_PODS), ctxOf(r));
    expect(v.verdict).toBe(r.verdict);
    // The row that decides is the one the table names (or, for "is fine" rows, a later one).
    if (!r.name.includes('(')) expect(v.row).toBe(r.id);
    else expect(v.row).toEqual(rowId(r.id));
    if (v.verdict === 'redirect') expect(v.rewrittenDstMac).toBe('0a:58:c6:12:00:02');
  });
});

describe('model: inbound rows', () => {
  it.each(ROWS.inbound.map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r) => {
    const v = m.inbound(r.frame, modelStateOf(stateOf(veths, r), MAX_PODS), ctxOf(r));
    expect(v.verdict).toBe(r.verdict);
    if (!r.name.includes('(')) expect(v.row).toBe(r.id);
  });
});

describe('model: ztunnel rows', () => {
  it.each(ROWS.ztunnel.map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r: ZtRow) => {
    const s = modelStateOf(stateOf(veths, r), MAX_PODS);
    if (!r.assignOnly) {
      const v = m.ztunnelMark(r.frame, s);
      expect(v.verdict).toBe(r.verdict);
      expect(v.mark).toBe(r.mark);
      if (!r.name.includes('(')) expect(v.row).toBe(r.id);
    }
    const a = m.ztunnelAssign(r.frame, s, r.assignOnly ? noListeners : allSockets);
    expect(a.verdict).toBe(r.verdict);
    expect(a.mark).toBe(r.mark);
    if (r.needs === 'established') expect(a.socket).toBe('established');
  });

  it('finds the established socket without any listener', () => {
    const r = ROWS.ztunnel.find((x) => x.needs === 'established')!;
    expect(m.ztunnelAssign(r.frame, modelStateOf(stateOf(veths, r), MAX_PODS), noListeners)).toMatchObject({ verdict: 'deliver', socket: 'established' });
  });
});

describe('model: map states', () => {
  it('treats a full pods map like any other (the filler never matches)', () => {
    const r = ROWS.outbound.find((x) => x.id === 'O17')!;
    const s = modelStateOf({ ...stateOf(veths, r), fillPods: true }, MAX_PODS);
    expect(s.pods.size).toBe(MAX_PODS);
    expect(m.outbound(r.frame, s, { ifindex: veths.a }).verdict).toBe('redirect');
  });

  it('counts a verdict in its counter', () => {
    expect(m.counterOf({ verdict: 'redirect', row: 'O17' })).toBe('redirected');
    expect(m.counterOf({ verdict: 'drop', row: 'O8' })).toBe('dropped');
    expect(m.counterOf({ verdict: 'pass', row: 'O2' })).toBe('passed');
  });
});

describe('model: host flows', () => {
  it('I11 records the node’s flow; O10 passes only its answers on the same veth', () => {
    const state = modelStateOf(stateOf(veths, { state: { hostFlows: [] } }), MAX_PODS);
    const syn = b.v6Frame({ src: NODE.v6, dst: POD_A.v6 }, b.tcp({ sport: 51000, dport: 8080, flags: 0x02 }));
    const answer = b.v6Frame({ src: POD_A.v6, dst: NODE.v6 }, b.tcp({ sport: 8080, dport: 51000, flags: 0x12 }));
    expect(m.outbound(answer, state, { ifindex: veths.a }).row).toBe('O17');
    const forwarded = m.inbound(syn, state, { ifindex: veths.a, ingressIfindex: 5 });
    expect(forwarded).toMatchObject({ verdict: 'redirect', row: 'I18' });
    expect(forwarded.recordFlow).toBeUndefined();
    const v = m.inbound(syn, state, { ifindex: veths.a, ingressIfindex: 0 });
    expect(v).toMatchObject({ verdict: 'pass', row: 'I11' });
    m.record(state, v);
    expect(m.outbound(answer, state, { ifindex: veths.a })).toMatchObject({ verdict: 'pass', row: 'O10' });
    expect(m.outbound(answer, state, { ifindex: veths.b }).verdict).toBe('drop'); // pod A's IP on veth B: O8
  });
});
