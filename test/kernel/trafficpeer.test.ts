/**
 * The benchmarks' native traffic peer (tools/trafficpeer, build/trafficpeer) on a
 * simulated node: each role once, briefly, with its JSON checked and the stand-in's
 * counters held against what the clients did. The benchmarks themselves are not tests;
 * this is what makes a broken peer fail before it skews their figures.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { nativePeerBin, type PeerProcess, runClient, standInCounts, startPeer } from '../../harness/bench/peers.js';
import { createSimNode, newPrefix, type SimNode } from '../../harness/sim/node.js';
import { systemRunner } from '../../src/host/runner.js';
import { kernelDescribe } from '../support/gate.js';

const TIMEOUT = 60_000;
const RUN = { seconds: 0.4, warmupSeconds: 0.1, concurrency: 3 };

kernelDescribe('native traffic peer', 'the simulated node needs root (netns, veth, iptables)', suite);

function suite(): void {
  let sim: SimNode;
  const started: PeerProcess[] = [];
  const start = async (...args: Parameters<typeof startPeer>) => {
    const p = await startPeer(...args);
    started.push(p);
    return p;
  };

  beforeAll(async () => {
    sim = await createSimNode({ pods: 1, prefix: newPrefix() });
  }, TIMEOUT);

  afterAll(async () => {
    for (const p of started) p.stop();
    await sim?.teardown();
  }, TIMEOUT);

  it(
    'clients and server: crr, rr and stream print a PeerResult with traffic and no errors',
    async () => {
      await start(sim.outside.ns, 'native', ['serve', '--port', '9300']);
      const pod = sim.pods[0]!;
      for (const workload of ['crr', 'rr', 'stream'] as const) {
        const r = await runClient(pod.ns, 'native', workload, sim.outside.ip, 9300, RUN);
        expect(r).toMatchObject({ workload, errors: 0 });
        expect(r.count).toBeGreaterThan(0);
        expect(Math.abs(r.rate / (r.count / r.seconds) - 1)).toBeLessThan(1e-4);
        expect(r.seconds).toBeGreaterThan(0.3);
        // Its own CPU time (getrusage), which the in-pod bench's cost figures use.
        expect(r.cpuSeconds).toBeGreaterThan(0);
        expect(r.cpuSeconds).toBeLessThan(r.seconds * 8);
        // crr: one connection per operation, several loops at once; rr and stream: one.
        if (workload === 'crr') expect(r.connections).toBeGreaterThanOrEqual(r.count);
        else expect(r.connections).toBe(1);
      }
    },
    TIMEOUT,
  );

  it(
    'the stand-in counts what it serves directly, and only that',
    async () => {
      const zt = await start(sim.ztunnel.ns, 'native', ['ztunnel', '--terminate', '9400', '--listen', '15001', '--direct']);
      const before = await standInCounts(zt);
      const r = await runClient(sim.pods[0]!.ns, 'native', 'crr', sim.ztunnel.ip, 9400, RUN);
      const after = await standInCounts(zt);
      expect(r.errors).toBe(0);
      expect(after.direct - before.direct).toBe(r.connections);
      expect((after as unknown as { cpuSeconds: number }).cpuSeconds).toBeGreaterThan(0);
      expect([after.terminated - before.terminated, after.refused - before.refused, after.relayed]).toEqual([0, 0, 0]);

      // It asks a direct connection its original destination too: one redirected to a direct
      // port from another port is not direct, and is reset.
      await systemRunner.run([
        'ip',
        'netns',
        'exec',
        sim.ztunnel.ns,
        'iptables',
        '-t',
        'nat',
        '-A',
        'PREROUTING',
        '-p',
        'tcp',
        '--dport',
        '9410',
        '-j',
        'REDIRECT',
        '--to-ports',
        '9400',
      ]);
      const bad = await runClient(sim.pods[0]!.ns, 'native', 'crr', sim.ztunnel.ip, 9410, { ...RUN, concurrency: 1, seconds: 0.2 });
      expect(bad.count).toBe(0);
      expect(bad.connections).toBeGreaterThan(0);
      const last = await standInCounts(zt);
      expect(last.refused - after.refused).toBe(bad.connections);
      expect(last.direct).toBe(after.direct);
    },
    TIMEOUT,
  );

  it(
    "in the pod's netns (an inherited fd): terminates a redirected connection by its original port, resets others, and gives its listeners up and back",
    async () => {
      const pod = sim.pods[0]!;
      // A capture in miniature: the pod's TCP to 9500..9502 and 9600 goes to its own 15001.
      for (const port of ['9500:9502', '9600'])
        await systemRunner.run([
          'ip',
          'netns',
          'exec',
          pod.ns,
          'iptables',
          '-t',
          'nat',
          '-A',
          'OUTPUT',
          '-p',
          'tcp',
          '--dport',
          port,
          '-j',
          'REDIRECT',
          '--to-ports',
          '15001',
        ]);
      const fd = openSync(`/var/run/netns/${pod.ns}`, 'r');
      let zt: PeerProcess;
      try {
        zt = await start('', 'native', ['ztunnel', '--terminate', '9500', '--listen', '15001', '--netns-fd', '3'], { stdio: ['pipe', 'pipe', 'pipe', fd] });
      } finally {
        closeSync(fd);
      }
      // The listeners are in the pod's netns, with ztunnel's options.
      const ss = await systemRunner.run(['ip', 'netns', 'exec', pod.ns, 'ss', '-Hltne', 'sport', '=', ':15001']);
      expect(ss.trim().split('\n')).toHaveLength(2);
      expect(ss).toContain('fwmark:0x539');

      const c0 = await standInCounts(zt);
      for (const workload of ['crr', 'rr', 'stream'] as const) {
        const r = await runClient(pod.ns, 'native', workload, sim.outside.ip, 9500, RUN);
        expect(r.errors, workload).toBe(0);
        expect(r.count, workload).toBeGreaterThan(0);
      }
      const c1 = await standInCounts(zt);
      expect(c1.terminated - c0.terminated).toBeGreaterThan(2);
      expect(c1.refused - c0.refused).toBe(0);

      // Not one of the terminating ports: reset, counted as refused.
      const bad = await runClient(pod.ns, 'native', 'crr', sim.outside.ip, 9600, { ...RUN, concurrency: 1, seconds: 0.2 });
      expect(bad.count).toBe(0);
      expect(bad.errors).toBe(bad.connections);
      const c2 = await standInCounts(zt);
      expect(c2.refused - c1.refused).toBe(bad.connections);
      expect(c2.terminated).toBe(c1.terminated);

      // Released: nothing listens (the redirect is refused); taken back: served again.
      await zt.ask('release', 'released');
      const off = await runClient(pod.ns, 'native', 'crr', sim.outside.ip, 9500, { ...RUN, concurrency: 1, seconds: 0.2 });
      expect(off.count).toBe(0);
      expect((await standInCounts(zt)).terminated).toBe(c2.terminated);
      await zt.ask('listen', 'listening');
      const on = await runClient(pod.ns, 'native', 'crr', sim.outside.ip, 9500, RUN);
      expect(on.errors).toBe(0);
      const c3 = await standInCounts(zt);
      expect(c3.terminated - c2.terminated).toBe(on.connections);

      // The hand-over traffic.ts does: the JS stand-in (traffic-peer.ts) takes the ports the
      // native one released, and gets what the native one then does not see. (It reads the
      // local port, as under TPROXY or sk_assign, not REDIRECT's original, so here it
      // resets each one as not its own: counted as refused.)
      await zt.ask('release', 'released');
      const js = await start(pod.ns, 'js', ['ztunnel', '--port', '9700', '--terminate', '9500', '--listen', '15001', '--standby']);
      await js.ask('listen', 'listening');
      const viaJs = await runClient(pod.ns, 'native', 'crr', sim.outside.ip, 9500, { ...RUN, concurrency: 1, seconds: 0.2 });
      expect(viaJs.connections).toBeGreaterThan(0);
      expect((await standInCounts(js)).refused).toBe(viaJs.connections);
      expect(await standInCounts(zt)).toMatchObject({ relayed: c3.relayed, terminated: c3.terminated, direct: c3.direct, refused: c3.refused });
      await js.ask('release', 'released');
      await zt.ask('listen', 'listening');
      const back = await runClient(pod.ns, 'native', 'rr', sim.outside.ip, 9500, RUN);
      expect(back.errors).toBe(0);
      expect((await standInCounts(zt)).terminated).toBe(c3.terminated + 1);

      // rr on several connections at once (the in-pod bench's rr-conc), from either client:
      // each connection a ping-pong of its own, every one carried by the stand-in.
      for (const kind of ['native', 'js'] as const) {
        const c4 = await standInCounts(zt);
        const many = await runClient(pod.ns, kind, 'rr', sim.outside.ip, 9500, { ...RUN, rrConnections: 3 });
        expect(many, kind).toMatchObject({ workload: 'rr', connections: 3, errors: 0 });
        expect(many.count, kind).toBeGreaterThan(3);
        expect((await standInCounts(zt)).terminated - c4.terminated, kind).toBe(3);
      }
    },
    TIMEOUT,
  );

  it(
    'flood: the frames arrive, checksums right (UDP to a closed port counts as NoPorts; SYNs as segments), at the rate asked',
    async () => {
      const pod = sim.pods[0]!;
      const [neigh] = JSON.parse(await systemRunner.run(['ip', '-n', pod.ns, '-j', 'neigh', 'show', 'dev', 'eth0', 'to', '169.254.1.1'])) as {
        lladdr: string;
      }[];
      const snmp = async (proto: 'Udp' | 'Tcp') => {
        const lines = (await systemRunner.run(['ip', 'netns', 'exec', sim.outside.ns, 'cat', '/proc/net/snmp']))
          .split('\n')
          .filter((l) => l.startsWith(`${proto}:`));
        const names = lines[0]!.split(/\s+/);
        const values = lines[1]!.split(/\s+/).map(Number);
        return Object.fromEntries(names.map((n, i) => [n, values[i]!])) as Record<string, number>;
      };
      const flood = async (kind: string, port: number) => {
        const out = await systemRunner.run([
          'ip',
          'netns',
          'exec',
          pod.ns,
          nativePeerBin(),
          'flood',
          kind,
          '--dev',
          'eth0',
          '--dst-mac',
          neigh!.lladdr,
          '--to',
          sim.outside.ip,
          '--port',
          String(port),
          '--seconds',
          '0.5',
          '--rate',
          '2000',
        ]);
        return JSON.parse(out.split('\n').find((l) => l.includes('"event":"flood"'))!) as { sent: number; rate: number; errors: number };
      };
      const u0 = await snmp('Udp');
      const udp = await flood('udp', 9999);
      await new Promise((r) => setTimeout(r, 200));
      const u1 = await snmp('Udp');
      expect(udp.errors).toBe(0);
      expect(udp.sent).toBeGreaterThan(500);
      expect(udp.sent).toBeLessThan(1300);
      expect(u1.NoPorts! - u0.NoPorts!).toBe(udp.sent);
      expect(u1.InCsumErrors).toBe(u0.InCsumErrors);
      const t0 = await snmp('Tcp');
      const syn = await flood('syn', 9300);
      await new Promise((r) => setTimeout(r, 200));
      const t1 = await snmp('Tcp');
      expect(syn.sent).toBeGreaterThan(500);
      expect(t1.InSegs! - t0.InSegs!).toBeGreaterThanOrEqual(syn.sent);
      expect(t1.InCsumErrors).toBe(t0.InCsumErrors);
    },
    TIMEOUT,
  );

  it('syscall-cost: one JSON line, the median of its 7 timings', () => {
    const r = spawnSync(nativePeerBin(), ['syscall-cost', '--count', '20000'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout) as { event: string; count: number; nsPerCall: number; runs: number[] };
    expect(out).toMatchObject({ event: 'syscall-cost', count: 20000 });
    expect(out.runs).toHaveLength(7);
    expect(out.nsPerCall).toBeGreaterThan(0);
    expect(out.nsPerCall).toBe([...out.runs].sort((a, b) => a - b)[3]);
  });

  it('bad arguments: a clear message and exit status 2', () => {
    const run = (...args: string[]) => spawnSync(nativePeerBin(), args, { encoding: 'utf8', input: '' });
    const cases: [string[], string][] = [
      [[], 'name a role'],
      [['bogus'], 'unknown role "bogus"'],
      [['crr', '--to', 'nowhere', '--port', '9000'], '--to must be an IP address, got "nowhere"'],
      [['crr', '--to', '198.19.0.2'], 'crr: --port is required'],
      [['rr', '--to', '198.19.0.2', '--port', '70000'], '--port must be an integer in 1..65533'],
      [['stream', '--to', '198.19.0.2', '--port', '9000', '--seconds', '0'], '--seconds must be a number in (0, 60]'],
      [['crr', '--to', '198.19.0.2', '--port', '9000', '--concurrency', '300'], '--concurrency must be an integer in 1..256'],
      [['ztunnel', '--terminate', '9000', '--listen', '15001,x'], '--listen must be an integer in 1..65535, got "x"'],
      [['ztunnel', '--listen', '15001'], 'ztunnel: --terminate is required'],
      [['serve', '--port', '9000', '--bogus'], 'serve: unknown flag "--bogus"'],
      [['flood', 'icmp'], 'flood: name udp or syn'],
      [['flood', 'udp', '--dev', 'eth0', '--dst-mac', 'zz:00:00:00:00:00', '--to', '198.19.0.2', '--port', '9'], '--dst-mac must be a MAC address'],
      [['flood', 'syn', '--dev', 'eth0', '--dst-mac', '02:00:00:00:00:01', '--to', '::1', '--port', '9'], 'flood: --to must be an IPv4 address'],
      [['syscall-cost', '--count', '0'], '--count must be an integer in 1..100000000, got "0"'],
      [['syscall-cost', '--seconds', '1'], 'syscall-cost: unknown flag "--seconds"'],
    ];
    for (const [args, message] of cases) {
      const r = run(...args);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toContain(message);
      expect(r.stderr).toContain('usage: trafficpeer');
    }
  });
}
