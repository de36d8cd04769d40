import { describe, expect, it } from 'vitest';
import { ACK_TIMEOUT_MS, type Action, HELLO_TIMEOUT_MS, ZdsState } from '../../src/zds/state.js';

const info = (name: string) => ({ name, namespace: 'ns', serviceAccount: 'sa' });
const hello = { kind: 'hello' as const, hello: { version: 1 } };
const ok = { kind: 'ack' as const, ack: { error: '' } };

const sends = (actions: Action[]) =>
  actions
    .filter((a) => a.kind === 'send')
    .map((a) => (a.kind === 'send' ? `${a.conn}:${a.request.kind}${'uid' in a.request ? ` ${a.request.uid}` : ''}${a.netnsOf ? ' +fd' : ''}` : ''));
const closes = (actions: Action[]) => actions.filter((a) => a.kind === 'close').map((a) => (a.kind === 'close' ? a.conn : -1));
const logs = (actions: Action[]) => actions.filter((a) => a.kind === 'log').map((a) => (a.kind === 'log' ? a.msg : ''));

/** Acks every request on `conn` until nothing is outstanding; returns all the sends. */
function ackAll(s: ZdsState, conn: number, first: Action[], now = 0): string[] {
  const out = sends(first);
  let next = first;
  while (sends(next).some((x) => x.startsWith(`${conn}:`))) {
    next = s.inbound(conn, ok, now);
    out.push(...sends(next));
  }
  return out;
}

describe('ZDS agent state machine', () => {
  it('sends the snapshot one request at a time: add with fd per pod, keep without netns, then snapshot_sent', () => {
    const s = new ZdsState();
    s.podAdded({ uid: 'b', info: info('b'), hasNetns: true }, 0);
    s.podAdded({ uid: 'a', info: info('a'), hasNetns: true }, 0);
    s.podAdded({ uid: 'c', info: info('c'), hasNetns: false }, 0);
    expect(s.connOpened(1, 0).filter((a) => a.kind === 'send')).toEqual([]);
    const first = s.inbound(1, hello, 10);
    expect(sends(first)).toEqual(['1:add a +fd']); // one outstanding at a time
    expect(ackAll(s, 1, first, 30)).toEqual(['1:add a +fd', '1:add b +fd', '1:keep c', '1:snapshot_sent']);
    expect(s.connections()).toEqual([{ id: 1, phase: 'ready', podsSent: 2 }]);
    expect(s.counters.requests).toEqual({ add: 2, keep: 1, del: 0, snapshot_sent: 1 });
    expect(s.counters.snapshots).toBe(1);
    expect(s.counters.lastSnapshotMs).toBe(20);
  });

  it('holds a snapshot until the pod set is complete (a restarted agent): nothing partial, nothing twice', () => {
    const s = new ZdsState(undefined, false);
    s.podAdded({ uid: 'a', info: info('a'), hasNetns: true }, 0);
    s.connOpened(1, 0);
    const h = s.inbound(1, hello, 1);
    expect(sends(h)).toEqual([]); // no snapshot of a pod set still being gathered
    expect(s.connections()).toEqual([{ id: 1, phase: 'waiting', podsSent: 0 }]);
    // Pods gathered meanwhile go into the snapshot, not ahead of it; one that left is not named.
    expect(sends(s.podAdded({ uid: 'b', info: info('b'), hasNetns: true }, 2))).toEqual([]);
    s.podAdded({ uid: 'gone', info: info('gone'), hasNetns: true }, 2);
    expect(sends(s.podRemoved('gone', 3))).toEqual([]);
    // A waiting connection is never closed for a missing hello.
    expect(closes(s.tick(HELLO_TIMEOUT_MS + 10))).toEqual([]);
    expect(ackAll(s, 1, s.podSetComplete(4))).toEqual(['1:add a +fd', '1:add b +fd', '1:snapshot_sent']);
    expect(s.podSetComplete(5)).toEqual([]);
    expect(s.connections()).toEqual([{ id: 1, phase: 'ready', podsSent: 2 }]);
  });

  it('sends an add to the newest connection only and a del to every connection', () => {
    const s = new ZdsState();
    s.connOpened(1, 0);
    ackAll(s, 1, s.inbound(1, hello, 0));
    s.connOpened(2, 0);
    ackAll(s, 2, s.inbound(2, hello, 0));
    s.connOpened(3, 0); // no hello yet: gets pods in its snapshot, not as adds
    const add = s.podAdded({ uid: 'p', info: info('p'), hasNetns: true }, 0);
    expect(sends(add)).toEqual(['2:add p +fd']);
    s.inbound(2, ok, 0);
    const del = s.podRemoved('p', 0);
    expect(sends(del)).toEqual(['1:del p', '2:del p']);
    expect(s.inbound(3, hello, 0).filter((a) => a.kind === 'send').length).toBe(1); // only snapshot_sent
  });

  it('queues behind an outstanding request and drops an add that a del overtakes', () => {
    const s = new ZdsState();
    s.connOpened(1, 0);
    ackAll(s, 1, s.inbound(1, hello, 0));
    expect(sends(s.podAdded({ uid: 'x', info: info('x'), hasNetns: true }, 0))).toEqual(['1:add x +fd']);
    expect(sends(s.podAdded({ uid: 'y', info: info('y'), hasNetns: true }, 0))).toEqual([]);
    expect(sends(s.podRemoved('y', 0))).toEqual([]);
    expect(sends(s.inbound(1, ok, 0))).toEqual([]); // y never sent
  });

  it('closes on a wrong version, a message before hello, an ack with an error, an ack nobody asked for', () => {
    const cases: [string, (s: ZdsState) => Action[], string][] = [
      ['version 0', (s) => s.inbound(1, { kind: 'hello', hello: { version: 0 } }, 0), 'zds unsupported version'],
      ['version 2', (s) => s.inbound(1, { kind: 'hello', hello: { version: 2 } }, 0), 'zds unsupported version'],
      ['ack before hello', (s) => s.inbound(1, ok, 0), 'zds expected hello'],
      ['malformed', (s) => s.inbound(1, { kind: 'malformed', error: 'truncated', detail: 'x' }, 0), 'zds malformed datagram'],
      [
        'ack with error',
        (s) => {
          s.inbound(1, hello, 0);
          return s.inbound(1, { kind: 'ack', ack: { error: 'boom' } }, 0);
        },
        'zds ack with error',
      ],
      [
        'unsolicited ack',
        (s) => {
          ackAll(s, 1, s.inbound(1, hello, 0));
          return s.inbound(1, ok, 0);
        },
        'zds ack without a request',
      ],
    ];
    for (const [name, run, msg] of cases) {
      const s = new ZdsState();
      s.podAdded({ uid: 'keep-me', info: info('k'), hasNetns: true }, 0);
      s.connOpened(1, 0);
      const out = run(s);
      expect(logs(out), name).toContain(msg);
      expect(closes(out), name).toEqual([1]);
      expect(s.connections(), name).toEqual([]);
      expect(
        s.podList().map((p) => p.uid),
        name,
      ).toEqual(['keep-me']);
    }
  });

  it('closes a silent peer after 5 s and a peer that does not ack within 5 s', () => {
    const s = new ZdsState();
    s.podAdded({ uid: 'p', info: info('p'), hasNetns: true }, 0);
    s.connOpened(1, 0);
    expect(s.nextDeadline()).toBe(HELLO_TIMEOUT_MS);
    expect(closes(s.tick(HELLO_TIMEOUT_MS - 1))).toEqual([]);
    expect(logs(s.tick(HELLO_TIMEOUT_MS))).toContain('zds no hello in time');
    s.connOpened(2, 10_000);
    s.inbound(2, hello, 10_000);
    expect(s.nextDeadline()).toBe(10_000 + ACK_TIMEOUT_MS);
    const out = s.tick(10_000 + ACK_TIMEOUT_MS);
    expect(logs(out)).toContain('zds no ack in time');
    expect(closes(out)).toEqual([2]);
    expect(s.counters.helloTimeouts).toBe(1);
    expect(s.counters.ackTimeouts).toBe(1);
    expect(s.podList().length).toBe(1);
  });

  it('refuses connections beyond the limit and keeps the others', () => {
    const s = new ZdsState(4);
    for (let i = 1; i <= 100; i++) s.connOpened(i, 0);
    expect(s.connections().length).toBe(4);
    expect(s.counters.connectionsRefused).toBe(96);
    expect(s.counters.connectionsAccepted).toBe(4);
  });

  it('a pod whose netns becomes available later is sent as an add', () => {
    const s = new ZdsState();
    s.connOpened(1, 0);
    s.podAdded({ uid: 'p', info: info('p'), hasNetns: false }, 0);
    expect(ackAll(s, 1, s.inbound(1, hello, 0))).toEqual(['1:keep p', '1:snapshot_sent']);
    expect(sends(s.podAdded({ uid: 'p', info: info('p'), hasNetns: true }, 0))).toEqual(['1:add p +fd']);
    s.inbound(1, ok, 0);
    expect(sends(s.podAdded({ uid: 'p', info: info('p'), hasNetns: true }, 0))).toEqual([]); // unchanged: nothing to send
  });
});
