/**
 * The eBPF in-pod capture end to end with real packets (docs/datapath.md, "In-pod
 * capture"): a simulated node (harness/sim/node.ts) whose pod0 is enrolled in-pod, the
 * stand-in ztunnel's listeners (harness/sim/ztunnel-inpod.ts) opened inside pod0's netns
 * plus a DNS socket, and the capture installed by its InPodCapture (the agent's code, run
 * in this process, the node's netns named as the host). Oracles: the listeners' own
 * reports (port and local address of each accepted connection), the outside server's
 * record of every source, the app's, and snapshots of the netns before and after.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import type net from 'node:net';
import { Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { withNetns } from '../../src/bpf/netns.js';
import { constants as inpodConstants } from '../../src/bpf/inpod-layout.generated.js';
import { BPF_SK_LOOKUP, netnsQuery } from '../../src/bpf/ffi.js';
import { createEbpfInPodCapture, type EbpfInPodCapture, INPOD_PIN_SUBDIR, uninstallInpod } from '../../src/capture/inpod/ebpf.js';
import { GENERATION_NS, genBefore, handoffGen, monotonicNs, SWEEP_GUARD_NS } from '../../src/capture/inpod/handoffs.js';
import { encodeHandoffKey } from '../../src/bpf/inpod-codec.js';
import { openPinnedMap } from '../../src/bpf/maps.js';
import { pinDir } from '../../src/bpf/pins.js';
import { probeReuseportAssign } from '../../src/capture/inpod/probe.js';
import type { PodNetns } from '../../src/capture/inpod.js';
import { type CommandRunner, systemRunner } from '../../src/host/runner.js';
import { createLogger } from '../../src/log.js';
import { createSimNode, linkMac, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { names, OUTSIDE_IP, OUTSIDE_IP6, runPinRoot } from '../../harness/sim/names.js';
import { sendFrames, startSniffer, withChecksums } from '../../harness/sim/rawframes.js';
import { TcpFlags, tcp, v4Frame } from '../../harness/packet/builder.js';
import {
  AF_INET,
  AF_INET6,
  closeSocket,
  markedConnect,
  markedExchange,
  sendOn,
  transparentListener,
  transparentMarkedConnect,
  udpReceive,
  udpSendTo,
  udpSocket,
} from '../../harness/sim/transparent.js';
import { listenInNetns, ZTUNNEL_MARK } from '../../harness/sim/ztunnel-inpod.js';
import { kernelDescribe } from '../support/gate.js';
import { holdConnections } from '../support/held.js';
import { rpFilters, strictRpFilter } from '../support/rpfilter.js';
import { netnsSnapshot } from '../support/snapshot.js';
import { segmentsAfterInboundLegGone, segmentsAfterZtunnelGone, tcpInSegs } from '../support/stale-client.js';
import { sleep, until } from '../support/wait.js';

const PROBE4 = '169.254.7.127';
const PROBE6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff';
const APP_PORT = 8080;
const run = (argv: string[]) => systemRunner.run(argv);
/** An outside port whose server holds connections open (the local route's cut test). */
const HOLD_PORT = 8082;
/** errno of a call on a socket the kernel ended (SOCK_DESTROY). */
const ECONNABORTED = 103;

/** TIME_WAIT sockets in the netns on local or remote port `port`. */
async function timeWaits(ns: string, port: number): Promise<number> {
  const out = await run(['ip', 'netns', 'exec', ns, 'ss', '-tanH', 'state', 'time-wait', `( sport = :${port} or dport = :${port} )`]);
  return out.split('\n').filter((l) => l.trim()).length;
}

/** The id of the link that attaches program `progId` (bpftool's list). */
function linkIdOf(progId: number): number {
  const links = JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { id: number; prog_id: number; type: string }[];
  const l = links.find((x) => x.prog_id === progId && x.type === 'netns');
  if (!l) throw new Error(`no netns link runs program ${progId}`);
  return l.id;
}

/** Every command the capture spawns (only init's delivery probe should). */
const spawned: string[][] = [];
const countingRunner: CommandRunner = {
  run: (argv, opts) => {
    spawned.push(argv);
    return systemRunner.run(argv, opts);
  },
};

kernelDescribe('in-pod capture with eBPF: real packets in a pod netns', 'creates network namespaces and loads BPF programs', () => {
  let sim: SimNode;
  let capture: EbpfInPodCapture;
  let outside: SimServer;
  let app: SimServer;
  let podFd = -1;
  let pod: PodNetns;
  let servers: net.Server[] = [];
  let dnsFds: number[] = [];
  const accepted: { port: number; src: string; origDst: string }[] = [];
  let before: Record<string, string> = {};
  let hostBefore: Record<string, string> = {};
  let pinRoot = '';
  let closeAfterAnswer = false;
  /** Set: the stand-in hands each connection it accepts here and holds it open. */
  let holdOpen: ((s: net.Socket) => void) | null = null;

  const hostVeth = () => sim.pods[0]!.hostVeth;

  function openListeners(): void {
    servers = listenInNetns(podFd, 'pod0', [15001, 15006, 15008, 15053], (port, s) => {
      accepted.push({ port, src: `${s.remoteAddress}:${s.remotePort}`, origDst: `${s.localAddress}:${s.localPort}` });
      if (holdOpen) {
        holdOpen(s);
        return true;
      }
      if (!closeAfterAnswer) return undefined;
      // As ztunnel closing its end: the socket closed (an orphan), not only shut down.
      s.write('ztunnel\n', () => s.destroy());
      return true;
    });
    dnsFds = withNetns(`/proc/self/fd/${podFd}`, () => [
      udpSocket(AF_INET, 15053, { transparent: true, mark: ZTUNNEL_MARK }),
      udpSocket(AF_INET6, 15053, { transparent: true, mark: ZTUNNEL_MARK }),
    ]);
  }

  async function closeListeners(): Promise<void> {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    servers = [];
    dnsFds.forEach(closeSocket);
    dnsFds = [];
  }

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    // A node whose defaults are strict (rp_filter=1 everywhere): what passes here passes
    // on a loose node too, and the capture writes no rp_filter (docs/operations.md "Sysctls").
    for (const ns of [sim.nodeNs, sim.ztunnel.ns, ...sim.pods.map((p) => p.ns)]) await strictRpFilter(ns);
    for (const ns of [sim.nodeNs, sim.pods[0]!.ns]) expect((await rpFilters(ns)).filter((l) => !l.endsWith('=1'))).toEqual([]);
    pinRoot = runPinRoot(sim.prefix);
    mkdirSync(pinRoot, { recursive: true });
    const p0 = sim.pods[0]!;
    podFd = openSync(`/var/run/netns/${p0.ns}`, 'r');
    pod = { uid: 'uid-pod0', namespace: 'default', name: p0.name, ips: [p0.ip, p0.ip6], fd: podFd };
    outside = await sim.startOutside();
    app = await sim.startPodServer(p0, APP_PORT);
    before = await netnsSnapshot(p0.ns, ['eth0']);
    hostBefore = await netnsSnapshot(sim.nodeNs, [hostVeth()]);
    capture = createEbpfInPodCapture({
      objectPath: 'build/inpod.bpf.o',
      pinRoot,
      dnsCapture: true,
      runner: countingRunner,
      log: createLogger('error', () => undefined),
      hostNetns: `/var/run/netns/${sim.nodeNs}`,
    });
    await capture.init();
    openListeners();
    await capture.install(pod);
  }, 60_000);

  afterAll(async () => {
    await closeListeners().catch(() => undefined);
    capture?.close();
    if (podFd >= 0) closeSync(podFd);
    await sim?.teardown();
  });

  const last = () => accepted[accepted.length - 1];

  describe('outbound TCP reaches 15001 inside the pod, with its original destination', () => {
    for (const [family, ip] of [
      ['IPv4', OUTSIDE_IP],
      ['IPv6', OUTSIDE_IP6],
    ] as const) {
      it(family, async () => {
        const n = accepted.length;
        const [r] = await sim.connect(sim.pods[0]!, { ip, port: 8080 }, 1);
        expect(r).toEqual({ ok: true, reply: 'ztunnel' });
        await until('the listener report', () => accepted.length > n);
        const a = last()!;
        expect(a.port).toBe(15001);
        expect(a.origDst).toBe(`${ip}:8080`);
        expect(a.src.startsWith(family === 'IPv4' ? sim.pods[0]!.ip : sim.pods[0]!.ip6)).toBe(true);
        expect(outside.accepted).toEqual([]);
      });
    }
  });

  describe('the local route: the pod’s TCP goes to ztunnel over lo, never through its interface', () => {
    /** The MSS of the pod's connection to `ip`:8080 (ss -ti in the pod's netns). */
    const mssTo = async (ip: string): Promise<number> => {
      const out = await run(['ip', 'netns', 'exec', sim.pods[0]!.ns, 'ss', '-tinH', 'state', 'connected', 'dst', ip.includes(':') ? `[${ip}]` : ip]);
      const m = /\bmss:(\d+)/.exec(out);
      if (!m) throw new Error(`no connection to ${ip} in the pod: ${out}`);
      return Number(m[1]);
    };

    it('a connection to a foreign address runs over lo (its MSS is lo’s, not the interface’s 1500-byte MTU), to 15001; IPv4 and IPv6', async () => {
      for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) {
        const n = accepted.length;
        const fd = withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(ip, 8080, 0));
        try {
          await until('the listener report', () => accepted.length > n);
          expect(last()!.port).toBe(15001);
          expect(await mssTo(ip)).toBeGreaterThan(1500);
        } finally {
          closeSocket(fd);
        }
      }
      expect(outside.accepted).toEqual([]);
    });

    it('the connections the pod had open before its capture are ended by the install (IPv4 and IPv6: their next call fails at once), nothing of them reaching the outside; ztunnel’s own (marked) go on', async () => {
      await capture.remove(pod);
      // An outside server that holds its connections open and keeps what it receives.
      const outsideFd = openSync(`/var/run/netns/${sim.outside.ns}`, 'r');
      const outsideHold = holdConnections(outsideFd, 'outside', [HOLD_PORT]);
      const fds: number[] = [];
      let ztFd = -1;
      const connected = async () =>
        (await run(['ip', 'netns', 'exec', sim.pods[0]!.ns, 'ss', '-tnH', 'state', 'established', `( dport = :${HOLD_PORT} )`]))
          .split('\n')
          .filter((l) => l.trim())
          .map((l) => (l.includes('[') ? 'IPv6' : 'IPv4'))
          .sort();
      try {
        for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) fds.push(withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(ip, HOLD_PORT, 0)));
        ztFd = withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(OUTSIDE_IP, HOLD_PORT, ZTUNNEL_MARK));
        await until('the outside holds all three', () => outsideHold.held.length === 3);
        expect(await connected()).toEqual(['IPv4', 'IPv4', 'IPv6']);
        await capture.install(pod);
        expect(await capture.check(pod)).toBe(true);
        // Before anything was written: the pod's two ends are gone, ztunnel's is there.
        expect(await connected()).toEqual(['IPv4']);
        const segs = await tcpInSegs(sim.outside.ns);
        expect(fds.map((fd) => sendOn(fd, Buffer.from('after the capture came')))).toEqual([ECONNABORTED, ECONNABORTED]);
        await sleep(300);
        expect({ received: outsideHold.received(), segments: (await tcpInSegs(sim.outside.ns)) - segs }).toEqual({ received: '', segments: 0 });
        // ztunnel's own connection (its mark) is not the local route's: it goes on.
        expect(sendOn(ztFd, Buffer.from('ztunnel'))).toBe(0);
        await until('the outside has ztunnel’s bytes', () => outsideHold.received() === 'ztunnel');
      } finally {
        fds.forEach(closeSocket);
        if (ztFd >= 0) closeSocket(ztFd);
        await outsideHold.close();
        closeSync(outsideFd);
        await capture.install(pod);
      }
    });

    for (const variant of ['bypass-inbound-capture', 'a second interface'] as const) {
      it(`a pod that keeps the loop (${variant}): its first install ends its outbound connections from before the capture (PO9 would pass them around ztunnel)${variant === 'a second interface' ? ' and its inbound ones' : ', not its inbound ones, which its annotation leaves uncaptured'}; ztunnel’s own go on`, async () => {
        const ns = sim.pods[0]!.ns;
        const podIps = [sim.pods[0]!.ip, sim.pods[0]!.ip6];
        const bypass = variant === 'bypass-inbound-capture';
        const loopPod: PodNetns = bypass ? { ...pod, overrides: { bypassInbound: true, dnsCapture: null, rerouteInterfaces: [] } } : pod;
        await capture.remove(pod);
        if (!bypass) await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'add', 'net1', 'type', 'veth', 'peer', 'name', 'net1p']);
        const outsideFd = openSync(`/var/run/netns/${sim.outside.ns}`, 'r');
        // Outbound: the outside holds them. Inbound: the app (a holder in the pod, unmarked as an app's sockets are) does.
        const outHold = holdConnections(outsideFd, 'outside', [HOLD_PORT]);
        const inHold = holdConnections(podFd, 'pod0', [HOLD_PORT + 1], { mark: 0 });
        const outFds: number[] = [];
        const inFds: number[] = [];
        let ztFd = -1;
        const ends = async (filter: string) =>
          (await run(['ip', 'netns', 'exec', ns, 'ss', '-tnH', 'state', 'established', filter])).split('\n').filter((l) => l.trim()).length;
        try {
          for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) outFds.push(withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(ip, HOLD_PORT, 0)));
          ztFd = withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(OUTSIDE_IP, HOLD_PORT, ZTUNNEL_MARK));
          for (const ip of podIps) inFds.push(withNetns(`/proc/self/fd/${outsideFd}`, () => markedConnect(ip, HOLD_PORT + 1, 0)));
          await until('every connection held', () => outHold.held.length === 3 && inHold.held.length === 2);
          await capture.install(loopPod);
          expect(await capture.check(loopPod)).toBe(true);
          expect(await ends(`( dport = :${HOLD_PORT} )`)).toBe(1);
          expect(await ends(`( sport = :${HOLD_PORT + 1} )`)).toBe(bypass ? 2 : 0);
          expect(outFds.map((fd) => sendOn(fd, Buffer.from('out')))).toEqual([ECONNABORTED, ECONNABORTED]);
          expect(sendOn(ztFd, Buffer.from('ztunnel'))).toBe(0);
          await until('the outside has ztunnel’s bytes', () => outHold.received() === 'ztunnel');
          // The inbound ends: kept, and still answering the outside, with the annotation;
          // ended (the outside's next write meets a reset, or nothing) without it.
          for (const c of inHold.held) c.write('app');
          if (bypass) {
            for (const fd of inFds) expect(sendOn(fd, Buffer.from('in'))).toBe(0);
            await until('the app has both', () => inHold.received() === 'inin');
          } else {
            await sleep(300);
            expect(inHold.received()).toBe('');
          }
          await sleep(100);
          expect(outHold.received()).toBe('ztunnel');
        } finally {
          [...outFds, ...inFds].forEach(closeSocket);
          if (ztFd >= 0) closeSocket(ztFd);
          await outHold.close();
          await inHold.close();
          closeSync(outsideFd);
          if (!bypass) await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'del', 'net1']).catch(() => undefined);
          await capture.remove(loopPod);
          await capture.install(pod);
        }
        expect(await capture.check(pod)).toBe(true);
      });
    }

    it('a pod with an interface besides lo and eth0 (a second network, as Multus adds one) keeps the loop through eth0: no local-route rule, eth0’s strict rp_filter left as it is, its TCP to 15001 all the same; the local route comes back with the interface gone', async () => {
      const ns = sim.pods[0]!.ns;
      // The local route's rules, IPv4 and IPv6: the probe rule before it and the rule itself.
      const prefs = [inpodConstants.INPOD_RULE_PREF_PROBE, inpodConstants.INPOD_RULE_PREF_LOCAL].map((p) => `${p}:`);
      const localRules = async () =>
        `${await run(['ip', '-n', ns, '-4', 'rule', 'show'])}${await run(['ip', '-n', ns, '-6', 'rule', 'show'])}`
          .split('\n')
          .filter((l) => prefs.some((p) => l.startsWith(p)));
      const rpFilter = async () => (await run(['ip', 'netns', 'exec', ns, 'sysctl', '-n', 'net.ipv4.conf.eth0.rp_filter'])).trim();
      expect(await localRules()).toHaveLength(4);
      expect(await rpFilter()).toBe('2');
      const kept: net.Socket[] = [];
      const keptFds: number[] = [];
      let keptGot = '';
      // The interface comes while the pod is captured: check sees it, install takes the local route away.
      // A veth pair with both ends in the pod (this kernel has no dummy driver); deleting net1 takes both.
      await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'add', 'net1', 'type', 'veth', 'peer', 'name', 'net1p']);
      let net1 = true;
      try {
        expect(await capture.check(pod)).toBe(false);
        await capture.install(pod);
        expect(await capture.check(pod)).toBe(true);
        expect(await localRules()).toEqual([]);
        expect(await rpFilter()).toBe('1');
        for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) {
          const n = accepted.length;
          const fd = withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(ip, 8080, 0));
          try {
            await until('the listener report', () => accepted.length > n);
            expect(last()).toMatchObject({ port: 15001, origDst: `${ip}:8080` });
            // Through the interface and back (the loop): its 1,500-byte MTU sets the MSS.
            expect(await mssTo(ip)).toBeLessThanOrEqual(1460);
          } finally {
            closeSocket(fd);
          }
        }
        expect(outside.accepted).toEqual([]);
        // Captured connections made by the loop, held open by the stand-in: the local route's
        // return must not take them for connections from before the capture.
        holdOpen = (c) => {
          kept.push(c);
          c.on('data', (d: Buffer) => (keptGot += d.toString()));
          c.on('error', () => undefined);
        };
        for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) keptFds.push(withNetns(`/proc/self/fd/${podFd}`, () => markedConnect(ip, 8080, 0)));
        await until('the stand-in holds both', () => kept.length === 2);
        // And goes: the local route comes back.
        await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'del', 'net1']);
        net1 = false;
        expect(await capture.check(pod)).toBe(false);
      } finally {
        holdOpen = null;
        if (net1) await run(['ip', 'netns', 'exec', ns, 'ip', 'link', 'del', 'net1']).catch(() => undefined);
        await capture.install(pod);
      }
      try {
        expect(await capture.check(pod)).toBe(true);
        expect(await localRules()).toHaveLength(4);
        expect(await rpFilter()).toBe('2');
        // The connections the loop captured go on over the local route.
        expect(keptFds.map((fd) => sendOn(fd, Buffer.from('on')))).toEqual([0, 0]);
        await until('the stand-in has both', () => keptGot === 'onon');
      } finally {
        keptFds.forEach(closeSocket);
        kept.forEach((c) => c.destroy());
      }
    });
  });

  describe('inbound TCP reaches 15006; 15008 reaches its own listener untouched', () => {
    for (const family of ['IPv4', 'IPv6'] as const) {
      it(family, async () => {
        const ip = family === 'IPv4' ? sim.pods[0]!.ip : sim.pods[0]!.ip6;
        const n = accepted.length;
        expect(await sim.connect('outside', { ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        await until('the 15006 report', () => accepted.length > n);
        expect(last()).toMatchObject({ port: 15006, origDst: `${ip}:${APP_PORT}` });
        expect(await sim.connect('outside', { ip, port: 15008 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        await until('the 15008 report', () => accepted.length > n + 1);
        expect(last()).toMatchObject({ port: 15008, origDst: `${ip}:15008` });
        // The outbound listener is not reachable from outside (it would send as the pod):
        // a connection to it is inbound like any other.
        expect(await sim.connect('outside', { ip, port: 15001 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        await until('the 15006 report for 15001', () => accepted.length > n + 2);
        expect(last()).toMatchObject({ port: 15006, origDst: `${ip}:15001` });
        expect(app.accepted).toEqual([]);
      });
    }
  });

  describe('DNS goes to 15053 with DNS capture on', () => {
    it('TCP to port 53, IPv4 and IPv6', async () => {
      for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) {
        const n = accepted.length;
        expect(await sim.connect(sim.pods[0]!, { ip, port: 53 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        await until('the 15053 report', () => accepted.length > n);
        expect(last()).toMatchObject({ port: 15053, origDst: `${ip}:53` });
      }
    });

    it('UDP to port 53, IPv4 and IPv6, reaches the DNS socket and nothing leaves', async () => {
      for (const [i, ip, family] of [
        [0, OUTSIDE_IP, AF_INET],
        [1, OUTSIDE_IP6, AF_INET6],
      ] as const) {
        const query = Buffer.from(`query-${i}`);
        const fd = withNetns(`/proc/self/fd/${podFd}`, () => udpSocket(family, 0));
        try {
          udpSendTo(fd, ip, 53, query);
          let got: Buffer | null = null;
          await until(`the datagram on 15053 (${ip})`, () => (got = udpReceive(dnsFds[i]!)) !== null, 3_000);
          expect(got!.toString()).toBe(query.toString());
        } finally {
          closeSocket(fd);
        }
      }
    });
  });

  describe('the pod’s annotations (bypass-inbound-capture, dns-capture), changed while it runs', () => {
    it('bypass and dns-capture "false": check sees the change; after install inbound reaches the app and TCP 53 goes to 15001; back to none: 15006 and 15053 again', async () => {
      const withAnn: PodNetns = { ...pod, overrides: { bypassInbound: true, dnsCapture: false, rerouteInterfaces: [] } };
      expect(await capture.check(withAnn)).toBe(false);
      await capture.install(withAnn);
      expect(await capture.check(withAnn)).toBe(true);
      expect(await capture.check(pod)).toBe(false);
      try {
        for (const ip of [sim.pods[0]!.ip, sim.pods[0]!.ip6]) {
          const seen = { app: app.accepted.length, zt: accepted.length };
          expect(await sim.connect('outside', { ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: 'pod0' }]);
          await app.waitForAccepted(seen.app + 1);
          expect(accepted.length).toBe(seen.zt);
        }
        const n = accepted.length;
        expect(await sim.connect(sim.pods[0]!, { ip: OUTSIDE_IP, port: 53 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        await until('the 15001 report', () => accepted.length > n);
        expect(last()).toMatchObject({ port: 15001, origDst: `${OUTSIDE_IP}:53` });
      } finally {
        await capture.install(pod);
      }
      expect(await capture.check(pod)).toBe(true);
      const n = accepted.length;
      expect(await sim.connect('outside', { ip: sim.pods[0]!.ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
      expect(await sim.connect(sim.pods[0]!, { ip: OUTSIDE_IP, port: 53 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
      await until('the two reports', () => accepted.length >= n + 2);
      expect(accepted.slice(n).map((a) => a.port)).toEqual([15006, 15053]);
    });
  });

  describe("ztunnel's own traffic (mark 0x539) is never captured, nor are its replies", () => {
    it('reaches the outside server from the pod’s address', async () => {
      for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) {
        const n = outside.accepted.length;
        const r = withNetns(`/proc/self/fd/${podFd}`, () => markedExchange(ip, 8080, ZTUNNEL_MARK));
        expect(r).toEqual({ ok: true, reply: 'outside\n' });
        await outside.waitForAccepted(n + 1);
        expect(outside.accepted[n]!.src.startsWith(ip === OUTSIDE_IP ? sim.pods[0]!.ip : sim.pods[0]!.ip6)).toBe(true);
      }
      // Another mark is the pod's own traffic: captured.
      const n = accepted.length;
      // (The listener is in this process: connected is all a blocked thread can see.)
      const r = withNetns(`/proc/self/fd/${podFd}`, () => markedExchange(OUTSIDE_IP, 8080, 0x538, { read: false }));
      expect(r).toEqual({ ok: true, reply: '' });
      await until('the 15001 report', () => accepted.length > n);
      expect(last()).toMatchObject({ port: 15001, origDst: `${OUTSIDE_IP}:8080` });
      expect(outside.accepted).toHaveLength(2);
    });
  });

  describe('kubelet probes: the node reaches the app uncaptured, and nobody else can', () => {
    it('the node (its own address) reaches the app, seen from the probe address; IPv4 and IPv6', async () => {
      for (const [ip, probe] of [
        [sim.pods[0]!.ip, PROBE4],
        [sim.pods[0]!.ip6, PROBE6],
      ] as const) {
        const n = app.accepted.length;
        const z = accepted.length;
        expect(await sim.connect('node', { ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: sim.pods[0]!.name }]);
        await app.waitForAccepted(n + 1);
        expect(app.accepted[n]!.src.replace(/^::ffff:/, '').startsWith(probe)).toBe(true);
        expect(accepted.length).toBe(z);
      }
    });

    it('a pod spoofing the probe address, and the outside with it, reach nothing', async () => {
      const p1 = sim.pods[1]!;
      await run(['ip', '-n', p1.ns, 'addr', 'add', `${PROBE4}/32`, 'dev', 'lo']);
      await run(['ip', 'netns', 'exec', sim.outside.ns, 'ip', 'addr', 'add', `${PROBE4}/32`, 'dev', 'lo']);
      await run(['ip', '-n', sim.outside.ns, 'addr', 'add', `${PROBE6}/128`, 'dev', 'lo', 'nodad']);
      try {
        const n = app.accepted.length;
        const z = accepted.length;
        const r1 = await sim.connect(p1, { ip: sim.pods[0]!.ip, port: APP_PORT }, 1, 1_000, PROBE4);
        const r2 = await sim.connect('outside', { ip: sim.pods[0]!.ip, port: APP_PORT }, 1, 1_000, PROBE4);
        const r3 = await sim.connect('outside', { ip: sim.pods[0]!.ip6, port: APP_PORT }, 1, 1_000, PROBE6);
        for (const r of [r1, r2, r3]) expect(r[0]!.ok).toBe(false);
        expect(app.accepted.length).toBe(n);
        // Not even half-open: no SYN from the probe address reached the app's listener.
        const halfOpen = await run(['ip', 'netns', 'exec', sim.pods[0]!.ns, 'ss', '-H', '-tn', 'state', 'syn-recv']);
        expect(halfOpen.trim()).toBe('');
        expect(accepted.length).toBe(z);
        // Without the spoofed source the same pod is captured like anyone: 15006.
        expect(await sim.connect(p1, { ip: sim.pods[0]!.ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        expect(app.accepted.length).toBe(n);
      } finally {
        await run(['ip', '-n', p1.ns, 'addr', 'del', `${PROBE4}/32`, 'dev', 'lo']);
        await run(['ip', '-n', sim.outside.ns, 'addr', 'del', `${PROBE4}/32`, 'dev', 'lo']);
        await run(['ip', '-n', sim.outside.ns, 'addr', 'del', `${PROBE6}/128`, 'dev', 'lo']);
      }
    });

    it('a plain pod is untouched: its outbound reaches the outside server directly', async () => {
      const n = outside.accepted.length;
      expect(await sim.connect(sim.pods[1]!, { ip: OUTSIDE_IP, port: 8080 }, 1)).toEqual([{ ok: true, reply: 'outside' }]);
      await outside.waitForAccepted(n + 1);
      expect(outside.accepted[n]!.src.startsWith(sim.pods[1]!.ip)).toBe(true);
    });
  });

  it('a SYN from outside on a held connection’s 4-tuple is given to that connection (a challenge ACK back), never to a listener (PI7)', async () => {
    const p0 = sim.pods[0]!;
    const port = 40000 + Math.floor(Math.random() * 20000);
    const seen = { app: app.accepted.length, ztunnel: accepted.length };
    // A connection ztunnel accepted on 15006 and answered; the client keeps its end open,
    // so ztunnel's end stays a connection socket (FIN_WAIT2) for the SYN to meet.
    const fd = withNetns(`/var/run/netns/${sim.outside.ns}`, () => transparentMarkedConnect(OUTSIDE_IP, p0.ip, APP_PORT, 0, port));
    const held = new Socket({ fd, allowHalfOpen: true, readable: true, writable: true });
    held.on('error', () => undefined);
    try {
      await new Promise<void>((resolve, reject) => {
        held.once('data', () => resolve());
        held.once('error', reject);
      });
      expect(accepted.length).toBe(seen.ztunnel + 1);
      const frame = withChecksums(
        v4Frame({ src: OUTSIDE_IP, dst: p0.ip }, tcp({ sport: port, dport: APP_PORT, flags: TcpFlags.SYN, seq: 0x1234567 }), {
          src: await linkMac(systemRunner, sim.outside.ns, 'eth0'),
          dst: await linkMac(systemRunner, sim.nodeNs, names.outsideVeth(sim.prefix)),
        }),
      );
      const sniff = startSniffer(sim.outside.ns, 1_500, { ifaces: ['eth0'] });
      await sniff.ready;
      await sendFrames(sim.outside.ns, 'eth0', [frame]);
      const back = (await sniff.done)
        .map((f) => f.bytes)
        .filter((b) => b.readUInt16BE(12) === 0x0800 && b[23] === 6 && b.readUInt16BE(34) === APP_PORT && b.readUInt16BE(36) === port);
      // What came back to the client's port: the held connection's ACK, no SYN-ACK of anyone's.
      expect(back.map((b) => b[14 + 20 + 13]! & 0x12)).toEqual([0x10]);
      expect(app.accepted.length, 'the app saw nothing').toBe(seen.app);
      expect(accepted.length, 'no listener of ztunnel’s took the SYN').toBe(seen.ztunnel + 1);
    } finally {
      held.destroy();
    }
  });

  describe('a reused 4-tuple meets ztunnel’s TIME_WAIT and still reaches ztunnel (the handoff)', () => {
    // The stand-in closes first, so each accepted connection leaves a TIME_WAIT in the pod's
    // netns; the next connection from the same port meets it. A SYN lost there costs the
    // client a 1 s retransmit: 700 ms fails.
    for (const [family, ip] of [
      ['IPv4', OUTSIDE_IP],
      ['IPv6', OUTSIDE_IP6],
    ] as const) {
      it(`outbound, ${family}: three connections from one port, each to 15001 with its original destination`, async () => {
        const port = 40000 + Math.floor(Math.random() * 20000);
        const n = accepted.length;
        const seen = { outside: outside.accepted.length, app: app.accepted.length };
        for (let i = 0; i < 3; i++) {
          expect(await sim.connect(sim.pods[0]!, { ip, port: 8080 }, 1, 700, undefined, port)).toEqual([{ ok: true, reply: 'ztunnel' }]);
          if (i === 0) await until('the TIME_WAIT of the first connection', async () => (await timeWaits(sim.pods[0]!.ns, port)) > 0);
        }
        await until('the listener reports', () => accepted.length >= n + 3);
        expect(accepted.slice(n).map((a) => [a.port, a.origDst])).toEqual(Array(3).fill([15001, `${ip}:8080`]));
        expect(outside.accepted.length).toBe(seen.outside);
        expect(app.accepted.length).toBe(seen.app);
      });
    }

    it('inbound, IPv4 and IPv6: three connections from one outside port, each to 15006, none to the app', async () => {
      const seenApp = app.accepted.length;
      for (const ip of [sim.pods[0]!.ip, sim.pods[0]!.ip6]) {
        const port = 40000 + Math.floor(Math.random() * 20000);
        const n = accepted.length;
        for (let i = 0; i < 3; i++) {
          expect(await sim.connect('outside', { ip, port: APP_PORT }, 1, 700, undefined, port)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        }
        await until('the listener reports', () => accepted.length >= n + 3);
        expect(accepted.slice(n).map((a) => [a.port, a.origDst])).toEqual(Array(3).fill([15006, `${ip}:${APP_PORT}`]));
      }
      expect(app.accepted.length).toBe(seenApp);
    });

    it('ztunnel’s inbound leg to the app, from the client port of a handed-over SYN, reaches the app: no entry outlives its SYN', async () => {
      // The leg carries the client's address, and its port may be one a handed-over SYN of
      // that client had; with ztunnel's end of that connection gone, the leg's SYN goes to
      // the listener lookup, where an entry still there would send it back to 15006 (and
      // its SYN-ACK, marked as ztunnel's, out of the pod).
      for (const [client, ip] of [
        [OUTSIDE_IP, sim.pods[0]!.ip],
        [OUTSIDE_IP6, sim.pods[0]!.ip6],
      ] as const) {
        const port = 40000 + Math.floor(Math.random() * 20000);
        for (let i = 0; i < 2; i++) {
          expect(await sim.connect('outside', { ip, port: APP_PORT }, 1, 700, undefined, port)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        }
        const seen = { app: app.accepted.length, ztunnel: accepted.length };
        // ztunnel's end of the last one, a TIME_WAIT, gone (as when the client closes first).
        execFileSync('ip', ['netns', 'exec', sim.pods[0]!.ns, 'ss', '-K', '-tan', 'state', 'time-wait', `( dport = :${port} )`]);
        const leg = withNetns(`/proc/self/fd/${podFd}`, () => transparentMarkedConnect(client, ip, APP_PORT, ZTUNNEL_MARK, port));
        closeSocket(leg);
        await until('the app accepts the leg', () => app.accepted.length > seen.app);
        expect(app.accepted[seen.app]!.src).toContain(client);
        expect(accepted.length, 'no listener of ztunnel’s took the leg').toBe(seen.ztunnel);
      }
    });

    it('the handoff map is empty after each (each socket lookup took the entry its SYN left)', () => {
      expect(capture.handoffs()).toEqual([]);
    });

    it('an entry no lookup took is swept by the capture itself once it is two generations old', async () => {
      // As a SYN the TIME_WAIT answered itself would leave: written here, with a listener of this test's.
      const m = openPinnedMap(join(pinDir(pinRoot), INPOD_PIN_SUBDIR), 'inpod_handoff');
      const fd = withNetns(`/proc/self/fd/${podFd}`, () => transparentListener(AF_INET, 15_999));
      try {
        const swept = capture.sweptTotal;
        const entry = { remote: OUTSIDE_IP, remotePort: 40_999, local: sim.pods[0]!.ip, localPort: APP_PORT, family: 4 as const };
        const v = Buffer.alloc(8);
        v.writeBigUInt64LE(BigInt(fd));
        // Early in a generation, past the sweep's guard: the sweep may delete two back until
        // the generation ends, and its timer (every second) comes before that.
        const into = monotonicNs() % GENERATION_NS;
        if (into < SWEEP_GUARD_NS || GENERATION_NS - into < 1_200_000_000n) await sleep(Number((GENERATION_NS - into + SWEEP_GUARD_NS) / 1_000_000n) + 50);
        const now = handoffGen(monotonicNs());
        m.update(encodeHandoffKey({ ...entry, gen: genBefore(now, 2) }), v);
        m.update(encodeHandoffKey({ ...entry, gen: now }), v);
        expect(capture.handoffs()).toHaveLength(2);
        await until('the old entry swept', () => capture.handoffs().every((h) => h.gen !== genBefore(now, 2)), 1_500);
        expect(capture.sweptTotal).toBeGreaterThan(swept);
        // Now's entry is one no sweep may take yet (unless its time came meanwhile).
        const left = capture.handoffs();
        if (handoffGen(monotonicNs()) === now) expect(left.map((h) => h.gen)).toEqual([now]);
        for (const h of left) m.delete(encodeHandoffKey(h));
      } finally {
        closeSocket(fd);
        m.close();
      }
    });

    it('the listeners that took a handoff are kept in inpod_listeners under the pod’s addresses (no sockmap teardown per SYN)', () => {
      const p0 = sim.pods[0]!;
      const key = (k: { pod: string; port: number; family: number }) => `${k.pod} ${k.port} ${k.family}`;
      expect(capture.keptListeners().map(key).sort()).toEqual(
        [
          { pod: p0.ip, port: 15001, family: 4 },
          { pod: p0.ip6, port: 15001, family: 6 },
          { pod: p0.ip, port: 15006, family: 4 },
          { pod: p0.ip6, port: 15006, family: 6 },
        ]
          .map(key)
          .sort(),
      );
    });
  });

  describe('drift', () => {
    it('check and install spawn no process (rtnetlink, /proc/sys and libbpf, in-process)', async () => {
      const n = spawned.length;
      expect(await capture.check(pod)).toBe(true);
      await capture.install(pod);
      expect(await capture.check(pod)).toBe(true);
      expect(spawned.slice(n)).toEqual([]);
    });

    it('check says false when a program is removed from the pod’s interface, and install repairs it', async () => {
      expect(await capture.check(pod)).toBe(true);
      await run(['tc', '-n', sim.pods[0]!.ns, 'filter', 'del', 'dev', 'eth0', 'egress']);
      expect(await capture.check(pod)).toBe(false);
      // Uncaptured now: the pod's outbound would leave directly.
      await capture.install(pod);
      expect(await capture.check(pod)).toBe(true);
      const n = accepted.length;
      expect(await sim.connect(sim.pods[0]!, { ip: OUTSIDE_IP, port: 8080 }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
      await until('the 15001 report', () => accepted.length > n);
    });

    it('check says false when the socket lookup link is detached, and install attaches it again', async () => {
      const nsFd = openSync(`/var/run/netns/${sim.pods[0]!.ns}`, 'r');
      try {
        const [id] = netnsQuery(nsFd, BPF_SK_LOOKUP, 'pod0');
        expect(id).toBeDefined();
        await run(['bpftool', 'link', 'detach', 'id', String(linkIdOf(id!))]);
        expect(netnsQuery(nsFd, BPF_SK_LOOKUP, 'pod0')).toEqual([]);
        expect(await capture.check(pod)).toBe(false);
        await capture.install(pod);
        expect(await capture.check(pod)).toBe(true);
        expect(netnsQuery(nsFd, BPF_SK_LOOKUP, 'pod0')).toHaveLength(1);
      } finally {
        closeSync(nsFd);
      }
    });

    it('check says false when the routing rule is gone', async () => {
      await run(['ip', '-n', sim.pods[0]!.ns, '-6', 'rule', 'del', 'pref', '135']);
      expect(await capture.check(pod)).toBe(false);
      await capture.install(pod);
      expect(await capture.check(pod)).toBe(true);
    });
  });

  describe('agent restart and bad input', () => {
    it('a new agent of the same build adopts: same programs, check true, install changes nothing', async () => {
      const second = createEbpfInPodCapture({
        objectPath: 'build/inpod.bpf.o',
        pinRoot,
        dnsCapture: true,
        runner: systemRunner,
        log: createLogger('error', () => undefined),
        hostNetns: `/var/run/netns/${sim.nodeNs}`,
        probe: false,
      });
      try {
        const filters = () => run(['tc', '-n', sim.pods[0]!.ns, 'filter', 'show', 'dev', 'eth0', 'egress']);
        const before = await filters();
        await second.init();
        expect(await second.check(pod)).toBe(true);
        await second.install(pod);
        expect(await filters()).toEqual(before);
        expect(await capture.check(pod)).toBe(true);
      } finally {
        second.close();
      }
    });

    it('a netns without the pod’s interface: install is a clear error, check false, remove succeeds and changes nothing', async () => {
      const ns = `${sim.prefix}-empty`;
      await run(['ip', 'netns', 'add', ns]);
      const fd = openSync(`/var/run/netns/${ns}`, 'r');
      try {
        const empty: PodNetns = { ...pod, uid: 'uid-empty', name: 'empty', fd };
        const snap = await netnsSnapshot(ns, []);
        await expect(capture.install(empty)).rejects.toThrow(/no interface in its netns holds 198\.18\.0\.10/);
        expect(await capture.check(empty)).toBe(false);
        await capture.remove(empty);
        expect(await netnsSnapshot(ns, [])).toEqual(snap);
        await expect(capture.install({ ...empty, ips: [] })).rejects.toThrow(/no IP address/);
      } finally {
        closeSync(fd);
        await run(['ip', 'netns', 'del', ns]);
      }
    });
  });

  describe('the delivery probe', () => {
    it('says bpf_sk_assign takes a SO_REUSEPORT socket on this kernel, and leaves no netns behind', async () => {
      expect(await probeReuseportAssign('build/inpod.bpf.o', systemRunner)).toEqual({ reuseportAssign: true });
      expect(await run(['ip', 'netns', 'list'])).not.toMatch(new RegExp(`ambient-redirect-probe-${process.pid}-`));
    });

    it('says no when the program does not assign (a pass-all program in its place): the answer is the kernel’s, not assumed', async () => {
      const r = await probeReuseportAssign('build/tests/foreign.bpf.o', systemRunner, 'foreign_pass');
      expect(r.reuseportAssign).toBe(false);
      expect(r.reason).toMatch(/refuses SO_REUSEPORT/);
    });
  });

  describe('a captured connection stays captured after ztunnel’s end of it is gone', () => {
    it('the pod’s half-closed clients write after the stand-in’s ends vanished: nothing reaches the outside (IPv4, IPv6)', async () => {
      const run = {
        podNs: sim.pods[0]!.ns,
        podFd,
        outsideNs: sim.outside.ns,
        targets: [OUTSIDE_IP, OUTSIDE_IP6],
        port: 8080,
        closeAfterAnswer: (on: boolean) => {
          closeAfterAnswer = on;
        },
      };
      expect(await segmentsAfterZtunnelGone(run)).toBe(0);
    });

    it('ztunnel’s inbound legs (from the clients’ addresses) close while the app’s ends stay open; the app writes: nothing reaches the clients (IPv4, IPv6)', async () => {
      const leg = {
        podNs: sim.pods[0]!.ns,
        podFd,
        outsideNs: sim.outside.ns,
        clients: [OUTSIDE_IP, OUTSIDE_IP6],
        pod: [sim.pods[0]!.ip, sim.pods[0]!.ip6],
        appPort: 8081,
      };
      expect(await segmentsAfterInboundLegGone(leg)).toBe(0);
    });
  });

  describe('fail closed: with ztunnel’s sockets gone nothing leaves, nothing gets in', () => {
    it('connections fail and neither the outside server nor the app sees any', async () => {
      await closeListeners();
      await sleep(50);
      // The kernel takes a closed listener out of every socket map: nothing of it is kept.
      expect(capture.keptListeners()).toEqual([]);
      const out0 = outside.accepted.length;
      const app0 = app.accepted.length;
      for (const ip of [OUTSIDE_IP, OUTSIDE_IP6]) {
        const [r] = await sim.connect(sim.pods[0]!, { ip, port: 8080 }, 1, 1_000);
        expect(r!.ok).toBe(false);
      }
      for (const ip of [sim.pods[0]!.ip, sim.pods[0]!.ip6]) {
        const [r] = await sim.connect('outside', { ip, port: APP_PORT }, 1, 1_000);
        expect(r!.ok).toBe(false);
      }
      const fd = withNetns(`/proc/self/fd/${podFd}`, () => udpSocket(AF_INET, 0));
      udpSendTo(fd, OUTSIDE_IP, 53, Buffer.from('q'));
      closeSocket(fd);
      await sleep(200);
      expect(outside.accepted.length).toBe(out0);
      expect(app.accepted.length).toBe(app0);
      // The probe exemption still holds: the kubelet reaches the app without ztunnel.
      expect(await sim.connect('node', { ip: sim.pods[0]!.ip, port: APP_PORT }, 1)).toEqual([{ ok: true, reply: sim.pods[0]!.name }]);
      openListeners();
    });
  });

  describe('remove', () => {
    it('leaves the pod netns and the host veth as before install (snapshot diff empty), and is idempotent', async () => {
      const spawnedBefore = spawned.length;
      await capture.remove(pod);
      expect(spawned.slice(spawnedBefore), 'remove spawns nothing').toEqual([]);
      expect(await netnsSnapshot(sim.pods[0]!.ns, ['eth0'])).toEqual(before);
      expect(await netnsSnapshot(sim.nodeNs, [hostVeth()])).toEqual(hostBefore);
      expect(capture.probeFlows().filter((f) => f.flow.pod === sim.pods[0]!.ip || f.flow.pod === sim.pods[0]!.ip6)).toEqual([]);
      await capture.remove(pod);
      expect(await capture.check(pod)).toBe(false);
      // Uncaptured again: the outside server sees the pod itself.
      const n = outside.accepted.length;
      expect(await sim.connect(sim.pods[0]!, { ip: OUTSIDE_IP, port: 8080 }, 1)).toEqual([{ ok: true, reply: 'outside' }]);
      await outside.waitForAccepted(n + 1);
      expect(outside.accepted[n]!.src.startsWith(sim.pods[0]!.ip)).toBe(true);
    });
  });

  describe('uninstall (no pod fd, only the pin root: after the agent is gone)', () => {
    it('finds the pod by its netns, puts it and the host veth back as before, and removes the in-pod pins', async () => {
      await capture.install(pod);
      expect(await capture.check(pod)).toBe(true);
      const report = await uninstallInpod({ pinRoot, hostNetns: `/var/run/netns/${sim.nodeNs}` });
      expect(report.failed).toEqual([]);
      expect(report.removed.some((r) => /egress filter of interface/.test(r))).toBe(true);
      expect(await netnsSnapshot(sim.pods[0]!.ns, ['eth0'])).toEqual(before);
      expect(await netnsSnapshot(sim.nodeNs, [hostVeth()])).toEqual(hostBefore);
      expect(existsSync(`${pinRoot}/ambient-redirect/v1/inpod`)).toBe(false);
      // Nothing left to do the second time.
      expect((await uninstallInpod({ pinRoot, hostNetns: `/var/run/netns/${sim.nodeNs}` })).failed).toEqual([]);
    });
  });
});
