/**
 * ZDS end to end on the real kernel: the agent's server hands real network namespaces
 * (made by this test, per-run prefix) to the in-pod ztunnel stand-in over a real
 * SOCK_SEQPACKET socket, and the stand-in opens its listeners inside each of them. Every
 * check of the listeners is made from inside the netns with `ss`, never from the
 * stand-in's word. Sequences: first snapshot, two ztunnels (upgrade), ztunnel restart,
 * agent restart. Ends with the line `zds: <N> pods sent, <M> acks with error, <K> reconnections survived`.
 */
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { distEntry } from '../../harness/sim/dist.js';
import { closeFd, recvDatagram, seqpacketListen, sendDatagram, acceptConn } from '../../src/host/libc.js';
import { createLogger } from '../../src/log.js';
import { newPrefix } from '../../harness/sim/names.js';
import { INPOD_PORTS, type StandInEvent, ZtunnelInpod } from '../../harness/sim/ztunnel-inpod.js';
import { decodeHello, decodeResponse, encodeRequest } from '../../src/zds/codec.js';
import { ZdsServer } from '../../src/zds/server.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep, until } from '../support/wait.js';

interface Listener {
  port: number;
  addr: string;
  inode: string;
  mark: string | null;
}

/** The TCP listeners in a netns, as the kernel lists them from inside it. */
async function listeners(ns: string): Promise<Listener[]> {
  const out = await systemRunner.run(['ip', 'netns', 'exec', ns, 'ss', '-H', '-tlne']);
  return out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      const local = l.trim().split(/\s+/)[3]!;
      const i = local.lastIndexOf(':');
      return {
        addr: local.slice(0, i),
        port: Number(local.slice(i + 1)),
        inode: /ino:(\d+)/.exec(l)?.[1] ?? '',
        mark: /fwmark:(0x[0-9a-f]+)/.exec(l)?.[1] ?? null,
      };
    });
}

/** Ports listened on in `ns` with ztunnel's mark, each on IPv4 and IPv6, sorted. */
async function markedPorts(ns: string): Promise<string[]> {
  return (await listeners(ns))
    .filter((l) => l.mark === '0x539')
    .map((l) => `${l.addr.includes('[') || l.addr === '*' ? '6' : '4'}/${l.port}`)
    .sort();
}

const FULL = INPOD_PORTS.flatMap((p) => [`4/${p}`, `6/${p}`]).sort();

kernelDescribe('ZDS: agent server and in-pod ztunnel stand-in', 'network namespaces need root', suite);

function suite(): void {
  const prefix = newPrefix();
  const made: string[] = [];
  const fds = new Map<string, number>();
  const dir = mkdtempSync(join(tmpdir(), 'zds-kernel-'));
  const sock = join(dir, 'ztunnel.sock');
  const logLines: string[] = [];
  const log = createLogger('info', (l) => logLines.push(l));
  const standIns: ZtunnelInpod[] = [];
  let server: ZdsServer | undefined;
  const totals = { podsSent: 0, ackErrors: 0, reconnections: 0 };
  const pods = [0, 1, 2, 3].map((i) => ({ uid: `uid-${i}`, ns: `${prefix}-zp${i}`, info: { name: `pod-${i}`, namespace: 'shop', serviceAccount: 'default' } }));
  const late = { uid: 'uid-late', ns: `${prefix}-zplate`, info: { name: 'pod-late', namespace: 'shop', serviceAccount: 'default' } };
  const plainNs = `${prefix}-zplain`;

  const newServer = () => {
    const s = new ZdsServer({ path: sock, log });
    return s;
  };
  const retireServer = (s: ZdsServer) => {
    totals.podsSent += s.counters.requests.add;
    totals.ackErrors += s.counters.ackErrors;
    s.close();
  };
  const startStandIn = () => {
    const z = new ZtunnelInpod({ socket: sock });
    standIns.push(z);
    return z;
  };

  beforeAll(async () => {
    for (const ns of [...pods.map((p) => p.ns), late.ns, plainNs]) {
      await systemRunner.run(['ip', 'netns', 'add', ns]);
      made.push(ns);
    }
    for (const p of [...pods, late]) fds.set(p.uid, openSync(`/var/run/netns/${p.ns}`, 'r'));
    // Loopback up in one pod, so that a client inside it can reach ztunnel's listeners.
    await systemRunner.run(['ip', '-n', pods[1]!.ns, 'link', 'set', 'lo', 'up']);
    server = newServer();
    for (const p of pods) server.addPod(p.uid, p.info, fds.get(p.uid)!);
  });

  afterAll(async () => {
    const errors: string[] = [];
    for (const z of standIns) z.close();
    if (server) retireServer(server);
    for (const fd of fds.values()) closeSync(fd);
    for (const ns of made) {
      try {
        await systemRunner.run(['ip', 'netns', 'del', ns]);
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    rmSync(dir, { recursive: true, force: true });
    console.log(`zds: ${totals.podsSent} pods sent, ${totals.ackErrors} acks with error, ${totals.reconnections} reconnections survived`);
    if (errors.length) throw new Error(`teardown: ${errors.join('; ')}`);
  });

  it('snapshot: every pod netns holds the marked 15001/15006/15008 listeners, the plain netns none', async () => {
    const z = startStandIn();
    // Both sides: the stand-in handled snapshot_sent and the agent read its ack.
    await until('the first snapshot', () => z.ready && server!.counters.snapshots === 1);
    expect(server!.counters.snapshots).toBe(1);
    expect(server!.counters.requests).toMatchObject({ add: 4, snapshot_sent: 1 });
    for (const p of pods) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
    expect(await listeners(plainNs)).toEqual([]);
    expect(await listeners(late.ns)).toEqual([]);
    // Each netns got its own sockets: distinct inodes.
    const inodes = new Set<string>();
    for (const p of pods) for (const l of await listeners(p.ns)) inodes.add(l.inode);
    expect(inodes.size).toBe(pods.length * FULL.length);
    expect(server!.connections()).toEqual([{ id: 1, phase: 'ready', podsSent: 4 }]);
  });

  it('two ztunnels (upgrade): a new pod goes to the newest only, a del reaches both', async () => {
    const [old] = standIns;
    const fresh = startStandIn();
    await until('the second snapshot', () => fresh.ready);
    // SO_REUSEPORT: both ztunnels listen in each pod's netns at once.
    for (const p of pods) expect((await listeners(p.ns)).filter((l) => l.mark === '0x539').length, p.ns).toBe(2 * FULL.length);
    server!.addPod(late.uid, late.info, fds.get(late.uid)!);
    await until('the late pod at the newest ztunnel', () => fresh.held().some((h) => h.uid === late.uid));
    expect(old!.held().map((h) => h.uid)).not.toContain(late.uid);
    expect(await markedPorts(late.ns)).toEqual(FULL);
    server!.removePod(pods[0]!.uid);
    await until('the del at both ztunnels', () => !old!.held().some((h) => h.uid === pods[0]!.uid) && !fresh.held().some((h) => h.uid === pods[0]!.uid));
    expect(await listeners(pods[0]!.ns)).toEqual([]);
    // The old ztunnel leaves; the new one keeps serving.
    old!.close();
    await until('the old connection gone', () => server!.connections().length === 1);
    for (const p of pods.slice(1)) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
    expect(await markedPorts(late.ns)).toEqual(FULL);
  });

  it('ztunnel restart: the new ztunnel gets the full snapshot and holds exactly the enrolled set', async () => {
    const before = standIns[standIns.length - 1]!;
    before.close();
    for (const p of pods.slice(1)) expect(await listeners(p.ns), `${p.ns} after ztunnel stopped`).toEqual([]);
    const z = startStandIn();
    await until('the snapshot after the restart', () => z.ready);
    totals.reconnections++;
    expect(z.held().map((h) => h.uid)).toEqual([...pods.slice(1).map((p) => p.uid), late.uid].sort());
    for (const p of pods.slice(1)) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
    expect(await markedPorts(late.ns)).toEqual(FULL);
    expect(await listeners(pods[0]!.ns)).toEqual([]);
  });

  it('agent restart: the stand-in reconnects, gets the snapshot, no pod loses its listeners, and one the snapshot omits is dropped', async () => {
    const z = standIns[standIns.length - 1]!;
    // The late pod leaves while the agent is down: the new agent's snapshot omits it.
    const enrolled = pods.slice(1);
    const inodesBefore = new Map<string, string[]>();
    for (const p of enrolled) inodesBefore.set(p.ns, (await listeners(p.ns)).map((l) => l.inode).sort());
    expect(await markedPorts(late.ns)).toEqual(FULL);
    const connectionsBefore = z.stats.connections;
    const snapshotsBefore = z.stats.snapshots;
    retireServer(server!);
    server = undefined;
    await until('the stand-in sees the agent gone', () => !z.connected());
    // While no agent listens, ztunnel keeps every pod's listeners.
    for (const p of [...enrolled, late]) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
    await sleep(200); // the stand-in is retrying meanwhile
    server = newServer();
    for (const p of enrolled) server.addPod(p.uid, p.info, fds.get(p.uid)!);
    await until('the snapshot from the restarted agent', () => z.stats.snapshots === snapshotsBefore + 1 && z.ready && server!.counters.snapshots === 1);
    expect(z.stats.connections).toBe(connectionsBefore + 1);
    totals.reconnections += z.stats.connections - connectionsBefore;
    expect(server.connections()).toEqual([{ id: 1, phase: 'ready', podsSent: enrolled.length }]);
    // The very same sockets: none was closed and reopened.
    for (const p of enrolled) expect((await listeners(p.ns)).map((l) => l.inode).sort(), p.ns).toEqual(inodesBefore.get(p.ns));
    expect(z.held().map((h) => h.uid)).toEqual(enrolled.map((p) => p.uid).sort());
    expect(await listeners(late.ns)).toEqual([]);
  });

  it('ztunnel killed (SIGKILL) as a process and started again: listeners go with it and come back with the snapshot', async () => {
    // The in-process stand-in leaves first; a process takes its place.
    standIns[standIns.length - 1]!.close();
    const enrolled = pods.slice(1);
    const start = () => {
      const child = startProcess(['node', distEntry('ztunnel-inpod.js'), '--socket', sock]);
      const events: { event: string }[] = [];
      let buf = '';
      child.stdout!.on('data', (d: Buffer) => {
        buf += d.toString('utf8');
        for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
          events.push(JSON.parse(buf.slice(0, i)) as { event: string });
          buf = buf.slice(i + 1);
        }
      });
      return { child, events };
    };
    const first = start();
    try {
      await until('the process snapshot', () => first.events.some((e) => e.event === 'snapshot'));
      for (const p of enrolled) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
      first.child.kill('SIGKILL');
      await until('the agent sees the connection gone', () => server!.connections().length === 0);
      // The kernel closed its sockets: nothing listens in the pods any more.
      for (const p of enrolled) expect(await listeners(p.ns), p.ns).toEqual([]);
    } finally {
      first.child.kill('SIGKILL');
    }
    const second = start();
    try {
      await until('the snapshot after the crash', () => second.events.some((e) => e.event === 'snapshot'));
      totals.reconnections++;
      expect(second.events.filter((e) => e.event === 'add').length).toBe(enrolled.length);
      for (const p of enrolled) expect(await markedPorts(p.ns), p.ns).toEqual(FULL);
      for (const ns of [pods[0]!.ns, late.ns, plainNs]) expect(await listeners(ns), ns).toEqual([]);
      // The listeners serve: a client inside the pod reaches each port, and the stand-in
      // reports the connection under that pod.
      for (const port of INPOD_PORTS) {
        const out = await systemRunner.run([
          'ip',
          'netns',
          'exec',
          pods[1]!.ns,
          'node',
          distEntry('agent.js'),
          'connect',
          '--to',
          `127.0.0.1:${port}`,
          '--count',
          '1',
          '--timeout-ms',
          '3000',
        ]);
        expect(JSON.parse(out.trim()), `port ${port}`).toEqual({ event: 'result', ok: true, reply: 'ztunnel' });
        await until(`the stand-in reports the connection to ${port}`, () =>
          second.events.some((e) => e.event === 'accepted' && (e as { uid?: string }).uid === pods[1]!.uid && (e as { port?: number }).port === port),
        );
      }
    } finally {
      second.child.kill('SIGTERM');
      await new Promise((r) => (second.child.exitCode !== null ? r(null) : second.child.once('exit', r)));
    }
    for (const p of enrolled) expect(await listeners(p.ns), `${p.ns} after SIGTERM`).toEqual([]);
  });

  it('an agent that closes with the stand-in’s hello unread resets the connection: the stand-in takes it as lost and connects again', async () => {
    const path = join(dir, 'reset.sock');
    const lfd = seqpacketListen(path);
    const events: StandInEvent[] = [];
    const z = new ZtunnelInpod({ socket: path, onEvent: (e) => events.push(e) });
    standIns.push(z);
    const conns: number[] = [];
    try {
      let conn: number | null = null;
      await until('the stand-in connects', () => (conn = acceptConn(lfd)) !== null);
      conns.push(conn!);
      await sleep(50); // its hello is queued, unread
      closeFd(conns.pop()!);
      await until('the stand-in connects again', () => (conn = acceptConn(lfd)) !== null, 5_000);
      conns.push(conn!);
      const reasons = events.flatMap((e) => (e.event === 'disconnected' ? [e.reason] : []));
      expect(reasons).toHaveLength(1);
      expect(reasons[0]).toMatch(/^receive failed: recvmsg\(\d+\): ECONNRESET$/);
      expect(z.stats.connections).toBe(2);
    } finally {
      z.close();
      conns.forEach(closeFd);
      closeFd(lfd);
    }
  });

  it('the stand-in acks a bad request with an error, as ztunnel does, and keeps the connection', async () => {
    // A raw agent on its own socket: sends what our server never would.
    const rawPath = join(dir, 'raw.sock');
    const lfd = seqpacketListen(rawPath);
    const z = new ZtunnelInpod({ socket: rawPath });
    standIns.push(z);
    let conn: number | null = null;
    await until('the stand-in connects', () => (conn = acceptConn(lfd)) !== null);
    const next = async (): Promise<Buffer> => {
      for (;;) {
        const got = recvDatagram(conn!, 1024);
        if (got.kind === 'datagram') return got.data;
        await sleep(5);
      }
    };
    expect(decodeHello(await next())).toEqual({ version: 1 });
    const netns = openSync(`/var/run/netns/${plainNs}`, 'r');
    const cases: [string, Buffer, number[]][] = [
      ['add without a netns fd', encodeRequest({ kind: 'add', uid: 'x', workloadInfo: late.info }), []],
      ['add with two fds', encodeRequest({ kind: 'add', uid: 'x', workloadInfo: late.info }), [netns, netns]],
      ['add without workload_info', Buffer.from('0a030a0178', 'hex'), [netns]],
      ['del with an fd', encodeRequest({ kind: 'del', uid: 'x' }), [netns]],
      ['unknown oneof member', Buffer.from('2200', 'hex'), []],
      ['truncated', Buffer.from('0a7f', 'hex'), []],
    ];
    try {
      for (const [name, data, withFds] of cases) {
        sendDatagram(conn!, data, withFds);
        const ack = decodeResponse(await next());
        expect(ack.error, name).not.toBe('');
        totals.ackErrors++;
      }
      expect(z.held()).toEqual([]);
      expect(await listeners(plainNs)).toEqual([]);
      // Still connected and well: a good add is taken.
      sendDatagram(conn!, encodeRequest({ kind: 'add', uid: 'x', workloadInfo: late.info }), [netns]);
      expect(decodeResponse(await next())).toEqual({ error: '' });
      expect(await markedPorts(plainNs)).toEqual(FULL);
      z.close();
      expect(await listeners(plainNs)).toEqual([]);
      expect(z.stats.nacks).toBe(cases.length);
    } finally {
      closeSync(netns);
      if (conn !== null) closeFd(conn);
      closeFd(lfd);
    }
  });
}
