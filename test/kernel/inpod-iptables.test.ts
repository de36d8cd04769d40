/**
 * The in-pod capture with iptables end to end, with real packets on a simulated node
 * (harness/sim/node.ts: the node netns plays the host; the root netns is never touched).
 * pod0 is enrolled: the agent-side capture (src/capture/inpod/iptables.ts) writes Istio's
 * in-pod rules into its netns through an fd, and the in-pod ztunnel stand-in, handed the
 * same fd over a real ZDS socket, listens on 15001/15006/15008/15053 inside it. pod1 is
 * plain. Oracles are the servers' and the stand-in's records (the stand-in reads the
 * original destination with SO_ORIGINAL_DST, as ztunnel does) and snapshots of
 * iptables-save, links, routes, rules and ipsets taken by the tools, before and after.
 */
import dgram from 'node:dgram';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { setNetns } from '../../src/bpf/ffi.js';
import { InpodIptables, uninstallInpodIptablesHost } from '../../src/capture/inpod/iptables.js';
import { PROBE_SNAT } from '../../src/capture/inpod/iptables-rules.js';
import { systemRunner } from '../../src/host/runner.js';
import { AF_INET, AF_INET6 } from '../../src/host/libc.js';
import { createLogger } from '../../src/log.js';
import { ZdsServer } from '../../src/zds/server.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../../harness/sim/node.js';
import { closeSocket, markedConnect, sendOn, transparentMarkedConnect, udpSocket } from '../../harness/sim/transparent.js';
import { type StandInEvent, ZTUNNEL_MARK, ZtunnelInpod } from '../../harness/sim/ztunnel-inpod.js';
import { kernelDescribe } from '../support/gate.js';
import { holdConnections } from '../support/held.js';
import { rpFilters, strictRpFilter } from '../support/rpfilter.js';
import { segmentsAfterInboundLegGone, segmentsAfterZtunnelGone, tcpInSegs } from '../support/stale-client.js';
import { sleep, until } from '../support/wait.js';

const run = (argv: string[]) => systemRunner.run(argv);
/** An outside port whose server holds connections open (the first install's test). */
const HOLD_PORT = 8082;
/** errno of a call on a socket the kernel ended (SOCK_DESTROY). */
const ECONNABORTED = 103;

/** What must be identical before install and after remove/uninstall, in one netns. */
async function snapshot(ns: string): Promise<Record<string, string>> {
  const exec = (argv: string[]) => run(['ip', 'netns', 'exec', ns, ...argv]).catch((err: Error) => `failed: ${err.message}`);
  const save = (text: string) =>
    text
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\[\d+:\d+\]/g, ''))
      .join('\n');
  return {
    'iptables-nft': save(await exec(['iptables-nft-save'])),
    'ip6tables-nft': save(await exec(['ip6tables-nft-save'])),
    'iptables-legacy': save(await exec(['iptables-legacy-save'])),
    'ip6tables-legacy': save(await exec(['ip6tables-legacy-save'])),
    nft: await exec(['nft', 'list', 'ruleset']),
    links: await exec(['ip', '-d', 'link', 'show']),
    addrs: await exec(['ip', 'addr', 'show']),
    routes4: await exec(['ip', '-4', 'route', 'show', 'table', 'all']),
    routes6: await exec(['ip', '-6', 'route', 'show', 'table', 'all']),
    rules4: await exec(['ip', '-4', 'rule', 'show']),
    rules6: await exec(['ip', '-6', 'rule', 'show']),
    ipsets: await exec(['ipset', 'list']),
  };
}

/** Runs `fn` with this thread inside the netns of `fd`, and back. */
function inNetns<T>(fd: number, fn: () => T): T {
  const own = openSync('/proc/thread-self/ns/net', 'r');
  try {
    setNetns(fd, 'test pod');
    try {
      return fn();
    } finally {
      setNetns(own, 'own netns');
    }
  } finally {
    closeSync(own);
  }
}

/** One UDP datagram from inside the pod to ip:port; the answer's text and source, or null after 2 s. */
async function udpAsk(podFd: number, ip: string, port: number): Promise<{ text: string; from: string } | null> {
  const v6 = ip.includes(':');
  const fd = inNetns(podFd, () => udpSocket(v6 ? AF_INET6 : AF_INET, 0));
  const sock = dgram.createSocket(v6 ? 'udp6' : 'udp4');
  sock.on('error', () => undefined);
  await new Promise<void>((r) => sock.bind({ fd }, () => r()));
  try {
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), 2_000);
      sock.once('message', (msg, rinfo) => {
        clearTimeout(timer);
        resolve({ text: msg.toString(), from: `${rinfo.address}:${rinfo.port}` });
      });
      sock.send('query', port, ip);
    });
  } finally {
    sock.close();
  }
}

/**
 * A TCP connection from inside the pod by a socket marked as ztunnel's (from `fromIp`,
 * transparently, when given); the reply, or the error.
 */
async function markedAsk(podFd: number, ip: string, port: number, fromIp?: string): Promise<string> {
  let fd: number;
  try {
    fd = inNetns(podFd, () => (fromIp ? transparentMarkedConnect(fromIp, ip, port, ZTUNNEL_MARK) : markedConnect(ip, port, ZTUNNEL_MARK)));
  } catch (err) {
    return `error: ${(err as Error).message}`;
  }
  const s = new net.Socket({ fd, readable: true, writable: true });
  return new Promise((resolve) => {
    let text = '';
    s.on('data', (d) => {
      text += d.toString();
    });
    s.on('error', (err) => resolve(`error: ${err.message}`));
    s.on('close', () => resolve(text.trim()));
    s.end();
  });
}

kernelDescribe('in-pod capture with iptables (Istio in-pod rules) on a simulated node', 'network namespaces need root', suite);

function suite(): void {
  let sim: SimNode | undefined;
  let pod: SimPod;
  let plain: SimPod;
  let podFd = -1;
  let outside: SimServer;
  let app: SimServer;
  let plainApp: SimServer;
  let zds: ZdsServer | undefined;
  let z: ZtunnelInpod | undefined;
  let capture: InpodIptables;
  let closeAfterAnswer = false;
  /** Set: the stand-in hands each connection it accepts here and holds it open. */
  let holdOpen: ((s: net.Socket) => void) | null = null;
  const events: StandInEvent[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'inpod-ipt-'));
  const sock = join(dir, 'ztunnel.sock');
  const log = createLogger('error', () => {});
  const before: Record<string, Record<string, string>> = {};
  const podNetns = () => ({ uid: 'uid-pod0', namespace: 'shop', name: 'pod0', ips: [pod.ip, pod.ip6], fd: podFd });
  const accepted = (port: number) => events.filter((e): e is Extract<StandInEvent, { event: 'accepted' }> => e.event === 'accepted' && e.port === port);
  const fromPod = (srv: SimServer, ip: string) => srv.accepted.filter((a) => a.src.startsWith(`${ip}:`) || a.src.startsWith(`[${ip}]:`)).length;
  const startStandIn = async () => {
    z = new ZtunnelInpod({
      socket: sock,
      ports: [15001, 15006, 15008, 15053],
      dns: true,
      onEvent: (e) => events.push(e),
      // As ztunnel closing its end: the socket closed (an orphan), not only shut down.
      answer: (s) => {
        if (holdOpen) {
          holdOpen(s);
          return true;
        }
        if (!closeAfterAnswer) return false;
        s.write('ztunnel\n', () => s.destroy());
        return true;
      },
    });
    await until('the stand-in holds pod0', () => z!.ready && z!.held().some((h) => h.uid === 'uid-pod0'));
  };

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    // A node whose defaults are strict (rp_filter=1 everywhere): what passes here passes
    // on a loose node too, and the capture writes no rp_filter (docs/operations.md "Sysctls").
    for (const ns of [sim.nodeNs, sim.ztunnel.ns, ...sim.pods.map((p) => p.ns)]) await strictRpFilter(ns);
    for (const ns of [sim.nodeNs, sim.pods[0]!.ns]) expect((await rpFilters(ns)).filter((l) => !l.endsWith('=1'))).toEqual([]);
    [pod, plain] = [sim.pods[0]!, sim.pods[1]!];
    for (const ns of [pod.ns, plain.ns, sim.nodeNs]) before[ns] = await snapshot(ns);
    outside = await sim.startOutside();
    app = await sim.startPodServer(pod, 8080);
    plainApp = await sim.startPodServer(plain, 8080);
    podFd = openSync(`/var/run/netns/${pod.ns}`, 'r');
    capture = new InpodIptables({ runner: systemRunner, log, dnsCapture: true, hostNetns: sim.nodeNs });
    await capture.init();
    // The ZDS flow's order: the capture in place, then the pod's add to ztunnel.
    await capture.install(podNetns());
    zds = new ZdsServer({ path: sock, log });
    zds.addPod('uid-pod0', { name: 'pod0', namespace: 'shop', serviceAccount: 'default' }, podFd);
    await startStandIn();
  }, 120_000);

  afterAll(async () => {
    z?.close();
    zds?.close();
    if (podFd >= 0) closeSync(podFd);
    rmSync(dir, { recursive: true, force: true });
    await sim?.teardown();
  }, 60_000);

  it('installed as wanted: check() passes and the pod netns holds Istio’s chains', async () => {
    expect(await capture.drift(podNetns())).toEqual([]);
    const save = await run(['ip', 'netns', 'exec', pod.ns, 'iptables-save', '-t', 'nat']);
    expect(save).toContain(':ISTIO_OUTPUT');
    expect(save).toContain(':ISTIO_PRERT');
    // Adopting: a second install changes nothing (the same rule handles, the same counters).
    const ruleset = async () =>
      (await run(['ip', 'netns', 'exec', pod.ns, 'nft', '-a', 'list', 'ruleset'])).replace(/counter packets \d+ bytes \d+/g, 'counter');
    const handles = await ruleset();
    await capture.install(podNetns());
    expect(await ruleset()).toBe(handles);
  });

  it('outbound TCP (IPv4, IPv6) reaches the stand-in’s 15001 inside the pod’s netns with its original destination; the outside sees 0', async () => {
    const n = accepted(15001).length;
    const r4 = await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 2);
    const r6 = await sim!.connect(pod, { ip: sim!.outside.ip6, port: 8080 }, 2);
    expect([...r4, ...r6].map((r) => r.reply)).toEqual(Array(4).fill('ztunnel'));
    const got = accepted(15001).slice(n);
    expect(got.map((e) => e.origDst)).toEqual([`${sim!.outside.ip}:8080`, `${sim!.outside.ip}:8080`, `${sim!.outside.ip6}:8080`, `${sim!.outside.ip6}:8080`]);
    expect(got.every((e) => e.uid === 'uid-pod0')).toBe(true);
    expect(fromPod(outside, pod.ip) + fromPod(outside, pod.ip6)).toBe(0);
  });

  it('inbound TCP (IPv4, IPv6) reaches 15006 with the original destination; the app sees 0', async () => {
    const n = accepted(15006).length;
    const r4 = await sim!.connect('outside', { ip: pod.ip, port: 8080 }, 1);
    const r6 = await sim!.connect('outside', { ip: pod.ip6, port: 8080 }, 1);
    expect([...r4, ...r6].map((r) => r.reply)).toEqual(['ztunnel', 'ztunnel']);
    expect(
      accepted(15006)
        .slice(n)
        .map((e) => e.origDst),
    ).toEqual([`${pod.ip}:8080`, `${pod.ip6}:8080`]);
    // A plain pod's traffic to it is captured on arrival too (it is not a host socket).
    const r = await sim!.connect(plain, { ip: pod.ip, port: 8080 }, 1);
    expect(r[0]!.reply).toBe('ztunnel');
    expect(accepted(15006).at(-1)!.src.startsWith(`${plain.ip}:`)).toBe(true);
    expect(app.accepted.length).toBe(0);
  });

  it('the pod’s annotations: bypass-inbound-capture (and a reroute interface) are drift until installed; then inbound reaches the app, outbound is still captured; back to none', async () => {
    const withAnn = { ...podNetns(), overrides: { bypassInbound: true, dnsCapture: null, rerouteInterfaces: ['tap0'] } };
    expect(await capture.check(withAnn)).toBe(false);
    await capture.install(withAnn);
    try {
      // What iptables-save echoes is what the rules say: no endless reinstall.
      expect(await capture.check(withAnn)).toBe(true);
      const seen = { app: app.accepted.length, zt: accepted(15006).length, out: accepted(15001).length };
      const r = await sim!.connect('outside', { ip: pod.ip, port: 8080 }, 1);
      expect(r[0]!.reply).toBe('pod0');
      expect(app.accepted.length).toBe(seen.app + 1);
      expect(accepted(15006).length).toBe(seen.zt);
      expect((await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 1))[0]!.reply).toBe('ztunnel');
      await until('the 15001 report', () => accepted(15001).length > seen.out);
    } finally {
      await capture.install(podNetns());
    }
    expect(await capture.check(podNetns())).toBe(true);
    const n = accepted(15006).length;
    expect((await sim!.connect('outside', { ip: pod.ip, port: 8080 }, 1))[0]!.reply).toBe('ztunnel');
    await until('the 15006 report', () => accepted(15006).length > n);
  });

  it('HBONE (15008) reaches its listener untouched: not redirected', async () => {
    const n = accepted(15008).length;
    const r = await sim!.connect('outside', { ip: pod.ip, port: 15008 }, 1);
    expect(r[0]!.reply).toBe('ztunnel');
    expect(
      accepted(15008)
        .slice(n)
        .map((e) => e.origDst),
    ).toEqual([`${pod.ip}:15008`]);
  });

  it('DNS (UDP and TCP 53) reaches 15053 with DNS capture on', async () => {
    const n = accepted(15053).length;
    const tcp = await sim!.connect(pod, { ip: sim!.outside.ip, port: 53 }, 1);
    expect(tcp[0]!.reply).toBe('ztunnel');
    expect(
      accepted(15053)
        .slice(n)
        .map((e) => e.origDst),
    ).toEqual([`${sim!.outside.ip}:53`]);
    const dnsBefore = events.filter((e) => e.event === 'dns').length;
    const answer = await udpAsk(podFd, sim!.outside.ip, 53);
    // The answer comes back as from the server asked (REDIRECT's NAT undone).
    expect(answer).toEqual({ text: 'ztunnel-dns', from: `${sim!.outside.ip}:53` });
    const answer6 = await udpAsk(podFd, sim!.outside.ip6, 53);
    expect(answer6).toEqual({ text: 'ztunnel-dns', from: `${sim!.outside.ip6}:53` });
    expect(events.filter((e) => e.event === 'dns').length).toBe(dnsBefore + 2);
  });

  it('ztunnel’s own (marked 0x539) connections are not captured: they reach the outside with the pod’s address', async () => {
    const n = accepted(15001).length;
    expect(await markedAsk(podFd, sim!.outside.ip, 8080)).toBe('outside');
    expect(await markedAsk(podFd, sim!.outside.ip6, 8080)).toBe('outside');
    await outside.waitForAccepted(2);
    expect(fromPod(outside, pod.ip)).toBe(1);
    expect(fromPod(outside, pod.ip6)).toBe(1);
    expect(accepted(15001).length).toBe(n);
  });

  it('ztunnel’s inbound leg (marked, with the client’s address) reaches the app, and the app’s replies come back to ztunnel (connmark 0x111, table 100)', async () => {
    const n = app.accepted.length;
    const client = '198.51.100.7';
    const client6 = '2001:db8::7';
    expect(await markedAsk(podFd, pod.ip, 8080, client)).toBe('pod0');
    expect(await markedAsk(podFd, pod.ip6, 8080, client6)).toBe('pod0');
    await app.waitForAccepted(n + 2);
    expect(app.accepted.slice(n).map((a) => a.src.replace(/:\d+$/, '').replace(/^\[|\]$/g, ''))).toEqual([client, client6]);
  });

  it('a probe from the node (a host socket) reaches the app uncaptured, from 169.254.7.127 / fd16:…; the stand-in sees none', async () => {
    const n = events.length;
    const seen = app.accepted.length;
    const r4 = await sim!.connect('node', { ip: pod.ip, port: 8080 }, 2);
    const r6 = await sim!.connect('node', { ip: pod.ip6, port: 8080 }, 1);
    expect([...r4, ...r6].map((r) => r.reply)).toEqual(['pod0', 'pod0', 'pod0']);
    await app.waitForAccepted(seen + 3);
    expect(app.accepted.slice(seen).map((a) => a.src.replace(/:\d+$/, '').replace(/^\[|\]$/g, ''))).toEqual([PROBE_SNAT[4], PROBE_SNAT[4], PROBE_SNAT[6]]);
    expect(events.slice(n).filter((e) => e.event === 'accepted')).toEqual([]);
  });

  it('a pod forging the probe source is dropped on the host; without the guard it would reach the app uncaptured', async () => {
    const node = sim!.nodeNs;
    // The worst case: pod1 owns 169.254.7.127 and the node routes replies to it.
    await run(['ip', '-n', plain.ns, 'addr', 'add', `${PROBE_SNAT[4]}/32`, 'dev', 'eth0']);
    await run(['ip', '-n', node, 'route', 'add', `${PROBE_SNAT[4]}/32`, 'dev', plain.hostVeth]);
    try {
      const appBefore = app.accepted.length;
      const forged = await sim!.connect(plain, { ip: pod.ip, port: 8080 }, 2, 1_000, PROBE_SNAT[4]);
      expect(forged.every((r) => !r.ok)).toBe(true);
      expect(app.accepted.length).toBe(appBefore);
      // The guard is what stops it: without it, the forged source gets through uncaptured.
      await run(['ip', 'netns', 'exec', node, 'iptables', '-t', 'raw', '-D', 'PREROUTING', '-j', 'ztunnel-PROBE-GUARD']);
      expect(await capture.check(podNetns())).toBe(false);
      const unguarded = await sim!.connect(plain, { ip: pod.ip, port: 8080 }, 1, 2_000, PROBE_SNAT[4]);
      expect(unguarded[0]!.reply).toBe('pod0');
      await app.waitForAccepted(appBefore + 1);
      expect(app.accepted.at(-1)!.src.startsWith(`${PROBE_SNAT[4]}:`)).toBe(true);
    } finally {
      // Drift repair puts the guard back.
      await sleepPastHostCache();
      await capture.install(podNetns());
      await run(['ip', '-n', node, 'route', 'del', `${PROBE_SNAT[4]}/32`, 'dev', plain.hostVeth]);
      await run(['ip', '-n', plain.ns, 'addr', 'del', `${PROBE_SNAT[4]}/32`, 'dev', 'eth0']);
    }
    expect(await capture.drift(podNetns())).toEqual([]);
    const again = await sim!.connect(plain, { ip: pod.ip, port: 8080 }, 1, 1_000, undefined);
    expect(again[0]!.reply).toBe('ztunnel'); // and plain traffic is still captured on arrival
  });

  it('a plain pod is untouched: its rules are empty, it reaches the outside directly and the outside reaches its app', async () => {
    const n = fromPod(outside, plain.ip);
    const r = await sim!.connect(plain, { ip: sim!.outside.ip, port: 8080 }, 1);
    expect(r[0]!.reply).toBe('outside');
    await until('the outside saw pod1', () => fromPod(outside, plain.ip) === n + 1);
    // And inbound to it goes straight to its app.
    const inbound = await sim!.connect('outside', { ip: plain.ip, port: 8080 }, 1);
    expect(inbound[0]!.reply).toBe('pod1');
    await plainApp.waitForAccepted(1);
    expect(plainApp.accepted.map((a) => a.src.replace(/:\d+$/, ''))).toEqual([sim!.outside.ip]);
    expect(await snapshot(plain.ns)).toEqual(before[plain.ns]);
  });

  it('drift (a rule deleted, the ip rule deleted, the pod out of the probe set) is seen and repaired', async () => {
    const exec = (argv: string[]) => run(['ip', 'netns', 'exec', pod.ns, ...argv]);
    await exec([
      'iptables',
      '-t',
      'nat',
      '-D',
      'ISTIO_OUTPUT',
      '!',
      '-d',
      '127.0.0.1/32',
      '-p',
      'tcp',
      '-m',
      'mark',
      '!',
      '--mark',
      '0x539/0xfff',
      '-j',
      'REDIRECT',
      '--to-ports',
      '15001',
    ]);
    await exec(['ip', '-6', 'rule', 'del', 'priority', '32764']);
    await run(['ip', 'netns', 'exec', sim!.nodeNs, 'ipset', 'del', 'istio-inpod-probes-v4', pod.ip]);
    // What the drift means: the pod's outbound now leaves uncaptured.
    const leak = await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 1);
    expect(leak[0]!.reply).toBe('outside');
    await sleepPastHostCache();
    const drift = await capture.drift(podNetns());
    expect(drift).toEqual(
      expect.arrayContaining([
        'pod IPv4: nat/ISTIO_OUTPUT differs',
        'pod IPv6: ip rule 32764 fwmark 0x111/0xfff lookup 100 missing',
        `host: ${pod.ip} not in istio-inpod-probes-v4`,
      ]),
    );
    await capture.install(podNetns());
    expect(await capture.drift(podNetns())).toEqual([]);
    const n = accepted(15001).length;
    const back = await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 1);
    expect(back[0]!.reply).toBe('ztunnel');
    expect(accepted(15001).length).toBe(n + 1);
  });

  it('an agent restarted (a new capture, init and install) adopts the pod and the host without touching a rule; with DNS capture off it takes the DNS rules out', async () => {
    const ruleset = async (ns: string) =>
      (await run(['ip', 'netns', 'exec', ns, 'nft', '-a', 'list', 'ruleset'])).replace(/counter packets \d+ bytes \d+/g, 'counter');
    const [podBefore, nodeBefore] = [await ruleset(pod.ns), await ruleset(sim!.nodeNs)];
    const restarted = new InpodIptables({ runner: systemRunner, log, dnsCapture: true, hostNetns: sim!.nodeNs });
    await restarted.init();
    await restarted.install(podNetns());
    expect(await ruleset(pod.ns)).toBe(podBefore);
    expect(await ruleset(sim!.nodeNs)).toBe(nodeBefore);
    // DNS capture off: the raw chains and the 53 rules go; TCP to 53 is then plain outbound TCP.
    const noDns = new InpodIptables({ runner: systemRunner, log, dnsCapture: false, hostNetns: sim!.nodeNs });
    await noDns.init();
    expect(await noDns.check(podNetns())).toBe(false);
    await noDns.install(podNetns());
    expect(await noDns.drift(podNetns())).toEqual([]);
    const save = await run(['ip', 'netns', 'exec', pod.ns, 'iptables-save']);
    expect(save).not.toContain('15053');
    expect(save).not.toMatch(/\*raw[^*]*ISTIO/);
    const n = accepted(15001).length;
    const tcp = await sim!.connect(pod, { ip: sim!.outside.ip, port: 53 }, 1);
    expect(tcp[0]!.reply).toBe('ztunnel');
    expect(
      accepted(15001)
        .slice(n)
        .map((e) => e.origDst),
    ).toEqual([`${sim!.outside.ip}:53`]);
    await capture.install(podNetns());
    expect(await capture.drift(podNetns())).toEqual([]);
  });

  it('the connections the pod had open before its rules came are ended by their first install (IPv4, IPv6: the next call fails at once; REDIRECT takes only a first packet, so they would have gone on around ztunnel), nothing more of them reaching the outside; ztunnel’s own go on; an adopting install ends no captured connection', async () => {
    await capture.remove(podNetns());
    const outsideFd = openSync(`/var/run/netns/${sim!.outside.ns}`, 'r');
    const outsideHold = holdConnections(outsideFd, 'outside', [HOLD_PORT]);
    const connected = async () =>
      (await run(['ip', 'netns', 'exec', pod.ns, 'ss', '-tnH', 'state', 'established', `( dport = :${HOLD_PORT} )`]))
        .split('\n')
        .filter((l) => l.trim())
        .map((l) => (l.includes('[') ? 'IPv6' : 'IPv4'))
        .sort();
    const fds: number[] = [];
    let ztFd = -1;
    // A netns that tracks connections before our rules come (here a rule of the pod's own;
    // any rule that uses conntrack, or a CNI's): the tracked connections are ESTABLISHED
    // when the REDIRECT comes, which takes only a new connection's packets. (Untracked,
    // conntrack would pick a connection up mid-stream as new and REDIRECT its next segment.)
    const nft = (script: string) => systemRunner.run(['ip', 'netns', 'exec', pod.ns, 'nft', '-f', '-'], { input: script });
    await nft('table inet podown {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ct state invalid drop\n }\n}\n');
    try {
      for (const ip of [sim!.outside.ip, sim!.outside.ip6]) fds.push(inNetns(podFd, () => markedConnect(ip, HOLD_PORT, 0)));
      ztFd = inNetns(podFd, () => markedConnect(sim!.outside.ip, HOLD_PORT, ZTUNNEL_MARK));
      await until('the outside holds all three', () => outsideHold.held.length === 3);
      expect(await connected()).toEqual(['IPv4', 'IPv4', 'IPv6']);
      await capture.install(podNetns());
      expect(await capture.check(podNetns())).toBe(true);
      // Before anything was written: the pod's two ends are gone, ztunnel's is there.
      expect(await connected()).toEqual(['IPv4']);
      const segs = await tcpInSegs(sim!.outside.ns);
      expect(fds.map((fd) => sendOn(fd, Buffer.from('after the rules came')))).toEqual([ECONNABORTED, ECONNABORTED]);
      await sleep(300);
      expect({ received: outsideHold.received(), segments: (await tcpInSegs(sim!.outside.ns)) - segs }).toEqual({ received: '', segments: 0 });
      expect(sendOn(ztFd, Buffer.from('ztunnel'))).toBe(0);
      await until('the outside has ztunnel’s bytes', () => outsideHold.received() === 'ztunnel');
    } finally {
      fds.forEach(closeSocket);
      if (ztFd >= 0) closeSocket(ztFd);
      await outsideHold.close();
      closeSync(outsideFd);
      await nft('delete table inet podown\n');
      await capture.install(podNetns());
    }
    // Captured connections (REDIRECTed: no socket of the pod mirrors the app's end) held
    // open by the stand-in; an agent restarted adopts the rules and ends none of them.
    const kept: net.Socket[] = [];
    let keptGot = '';
    holdOpen = (c) => {
      kept.push(c);
      c.on('data', (d: Buffer) => (keptGot += d.toString()));
      c.on('error', () => undefined);
    };
    const keptFds: number[] = [];
    try {
      for (const ip of [sim!.outside.ip, sim!.outside.ip6]) keptFds.push(inNetns(podFd, () => markedConnect(ip, 8080, 0)));
      await until('the stand-in holds both', () => kept.length === 2);
      const restarted = new InpodIptables({ runner: systemRunner, log, dnsCapture: true, hostNetns: sim!.nodeNs });
      await restarted.init();
      await restarted.install(podNetns());
      expect(keptFds.map((fd) => sendOn(fd, Buffer.from('on')))).toEqual([0, 0]);
      await until('the stand-in has both', () => keptGot === 'onon');
    } finally {
      holdOpen = null;
      keptFds.forEach(closeSocket);
      kept.forEach((c) => c.destroy());
    }
  });

  it('a captured connection stays captured after the stand-in’s end of it is gone: the pod’s half-closed clients write, nothing reaches the outside (IPv4, IPv6)', async () => {
    const stale = {
      podNs: pod.ns,
      podFd,
      outsideNs: sim!.outside.ns,
      targets: [sim!.outside.ip, sim!.outside.ip6],
      port: 8080,
      closeAfterAnswer: (on: boolean) => {
        closeAfterAnswer = on;
      },
    };
    expect(await segmentsAfterZtunnelGone(stale)).toBe(0);
  });

  it('ztunnel’s inbound legs (from the clients’ addresses) close while the app’s ends stay open; the app writes: nothing reaches the clients (IPv4, IPv6)', async () => {
    const leg = { podNs: pod.ns, podFd, outsideNs: sim!.outside.ns, clients: [sim!.outside.ip, sim!.outside.ip6], pod: [pod.ip, pod.ip6], appPort: 8081 };
    expect(await segmentsAfterInboundLegGone(leg)).toBe(0);
  });

  it('fail closed: with the stand-in’s sockets gone the pod’s connections fail and the outside and the app see 0 from it', async () => {
    z!.close();
    await until('the listeners gone', async () => !(await run(['ip', 'netns', 'exec', pod.ns, 'ss', '-H', '-tln'])).includes(':15001'));
    const outBefore = fromPod(outside, pod.ip) + fromPod(outside, pod.ip6);
    const appBefore = app.accepted.length;
    const out = [
      ...(await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 2, 1_000)),
      ...(await sim!.connect(pod, { ip: sim!.outside.ip6, port: 8080 }, 1, 1_000)),
    ];
    const inbound = await sim!.connect('outside', { ip: pod.ip, port: 8080 }, 1, 1_000);
    expect([...out, ...inbound].every((r) => !r.ok)).toBe(true);
    expect(await udpAsk(podFd, sim!.outside.ip, 53)).toBeNull();
    expect(fromPod(outside, pod.ip) + fromPod(outside, pod.ip6)).toBe(outBefore);
    expect(app.accepted.length).toBe(appBefore);
    await startStandIn();
  });

  it('remove leaves the pod netns exactly as before, then the host uninstall leaves the node as before', async () => {
    zds!.removePod('uid-pod0');
    await until('the stand-in let pod0 go', () => !z!.held().some((h) => h.uid === 'uid-pod0'));
    await capture.remove(podNetns());
    expect(await snapshot(pod.ns)).toEqual(before[pod.ns]);
    await capture.remove(podNetns()); // idempotent
    // The pod is plain now: its traffic goes direct.
    const r = await sim!.connect(pod, { ip: sim!.outside.ip, port: 8080 }, 1);
    expect(r[0]!.reply).toBe('outside');
    const report = await uninstallInpodIptablesHost(systemRunner, sim!.nodeNs);
    expect(report.failed).toEqual([]);
    expect(await snapshot(sim!.nodeNs)).toEqual(before[sim!.nodeNs]);
    const second = await uninstallInpodIptablesHost(systemRunner, sim!.nodeNs);
    expect(second.removed).toEqual([]);
  });

  it('remove of a pod whose netns fd is closed succeeds (nothing left to remove in it)', async () => {
    await expect(capture.remove({ ...podNetns(), fd: 999_999 })).resolves.toBeUndefined();
  });
}

/** The capture reads the host's state at most once a second for many pods' checks. */
function sleepPastHostCache(): Promise<void> {
  return new Promise((r) => setTimeout(r, 1_100));
}
