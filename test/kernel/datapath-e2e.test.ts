/**
 * The data path's end-to-end classes with real packets in the simulated node, the
 * controller running as a real process (docs/datapath.md), in both capture modes: IPv6
 * outbound, inbound capture, kubelet-style probes, failing closed without ztunnel, and
 * (ebpf mode, which binds a pod to its veth) spoofed sources.
 * Oracles: what the servers themselves saw, and the kernel's per-veth counters.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type * as codec from '../../src/bpf/codec.js';
import { systemRunner } from '../../src/host/runner.js';
import { startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { vethCounters } from '../support/counters.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';

const ipOf = (src: string) => src.replace(/^\[/, '').replace(/\]?:\d+$/, '');
const POD_PORT = 9090;
/** Istio's probe SNAT address: no longer special to the agent. */
const PROBE_ADDR = '169.254.7.127';
/** A node service listening on every address (as kubelet and exporters do). */
const NODE_PORT = 10255;

/** The IPv6 link-local address of a link in a netns. */
async function linkLocalOf(ns: string, dev: string): Promise<string> {
  const info = JSON.parse(await systemRunner.run(['ip', '-n', ns, '-6', '-j', 'addr', 'show', 'dev', dev, 'scope', 'link'])) as {
    addr_info: { local: string; tentative?: boolean }[];
  }[];
  const a = info[0]?.addr_info.find((x) => x.local.startsWith('fe80:') && !x.tentative);
  if (!a) throw new Error(`${dev} in ${ns} has no usable link-local address`);
  return a.local;
}

for (const mode of ['ebpf', 'iptables'] as const)
  kernelDescribe(`data path classes end to end (${mode} mode)`, 'loads BPF and builds network namespaces', () => {
    let sim: SimNode;
    let pinRoot: string;
    let controller: ControllerProcess | undefined;
    let ztunnel: SimServer;
    let outside: SimServer;
    let pod0Server: SimServer;

    beforeAll(async () => {
      sim = await createSimNode({ pods: 3 });
      pinRoot = pinRootFor(sim);
      mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
      [ztunnel, outside, pod0Server] = await Promise.all([sim.startZtunnel(), sim.startOutside(), sim.startPodServer(sim.pods[0]!, POD_PORT)]);
      const [p0, p1] = sim.pods;
      // pod0 and pod1 enrolled with both their addresses; pod2 not.
      controller = startController(sim.nodeNs, [
        '--mode',
        mode,
        '--pin-root',
        pinRoot,
        '--ztunnel-ip',
        sim.ztunnel.ip,
        '--resync-interval',
        '2',
        '--enroll',
        [p0!.ip, p0!.ip6, p1!.ip, p1!.ip6].join(','),
      ]);
      await controller.waitFor('programmed');
    });

    afterAll(() => teardownNode(sim, pinRoot, controller));

    const seen = (server: SimServer, ip: string) => server.accepted.filter((a) => ipOf(a.src) === ip);

    it('IPv6 outbound from an enrolled pod reaches only ztunnel, with its original destination', async () => {
      const pod = sim.pods[0]!;
      const results = await sim.connect(pod, { ip: sim.outside.ip6, port: sim.outside.port }, 3);
      expect(results).toEqual(Array(3).fill({ ok: true, reply: 'ztunnel' }));
      await ztunnel.waitForAccepted(3);
      expect(seen(ztunnel, pod.ip6).map((a) => [a.origDst, a.port])).toEqual(Array(3).fill([`[${sim.outside.ip6}]:${sim.outside.port}`, 15001]));
      expect(seen(outside, pod.ip6)).toHaveLength(0);
    });

    it('a reused 4-tuple connects at once (the previous connection’s TIME_WAIT does not eat the SYN)', async () => {
      // The stand-in closes first, so its pod-facing socket sits in TIME_WAIT; the pod then
      // reconnects from the same port. A SYN lost there costs a 1 s retransmit: 700 ms fails.
      const pod = sim.pods[1]!;
      const port = 40000 + Math.floor(Math.random() * 20000);
      for (let i = 0; i < 3; i++) {
        expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 1, 700, undefined, port)).toEqual([{ ok: true, reply: 'ztunnel' }]);
      }
    });

    it('an unenrolled pod goes direct over IPv4 and IPv6', async () => {
      const pod = sim.pods[2]!;
      expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'outside' }));
      expect(await sim.connect(pod, { ip: sim.outside.ip6, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'outside' }));
      await outside.waitForAccepted(4);
      expect(seen(outside, pod.ip)).toHaveLength(2);
      expect(seen(outside, pod.ip6)).toHaveLength(2);
      expect(seen(ztunnel, pod.ip)).toHaveLength(0);
    });

    it('inbound to an enrolled pod arrives at ztunnel’s inbound listener, not at the pod', async () => {
      const before = ztunnel.accepted.length;
      for (const ip of [sim.pods[0]!.ip, sim.pods[0]!.ip6]) {
        expect(await sim.connect('outside', { ip, port: POD_PORT }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
      }
      await ztunnel.waitForAccepted(before + 4);
      const inbound = ztunnel.accepted.slice(before);
      expect(inbound.map((a) => a.port)).toEqual([15006, 15006, 15006, 15006]);
      expect(inbound.map((a) => a.origDst)).toEqual([
        `${sim.pods[0]!.ip}:${POD_PORT}`,
        `${sim.pods[0]!.ip}:${POD_PORT}`,
        `[${sim.pods[0]!.ip6}]:${POD_PORT}`,
        `[${sim.pods[0]!.ip6}]:${POD_PORT}`,
      ]);
      expect(inbound.every((a) => [sim.outside.ip, sim.outside.ip6].includes(ipOf(a.src)))).toBe(true);
      expect(pod0Server.accepted).toHaveLength(0);
    });

    it('a kubelet-style probe from the node’s own address reaches the pod’s app uncaptured, IPv4 and IPv6', async () => {
      // Nothing on the simulated node is there for probes: the agent alone makes this work.
      const before = { zt: ztunnel.accepted.length, app: pod0Server.accepted.length };
      for (const ip of [sim.pods[0]!.ip, sim.pods[0]!.ip6]) {
        expect(await sim.connect('node', { ip, port: POD_PORT }, 2, 2_000)).toEqual(Array(2).fill({ ok: true, reply: 'pod0' }));
      }
      await pod0Server.waitForAccepted(before.app + 4);
      expect(pod0Server.accepted.slice(before.app).map((a) => ipOf(a.src))).toEqual([sim.node.ip, sim.node.ip, sim.node.ip6, sim.node.ip6]);
      expect(ztunnel.accepted.length).toBe(before.zt);
    });

    it('the same probe forged from outside (the node’s address, 169.254.7.127) does not reach the app uncaptured', async () => {
      const pod = sim.pods[0]!;
      const out = sim.outside.ns;
      // The attacker's side, in the run's own namespaces: it may bind any source, owns
      // 169.254.7.127, and the node routes 169.254.7.127 back to it, so an answer from the
      // pod would complete the handshake.
      await systemRunner.run(['ip', 'netns', 'exec', out, 'sysctl', '-qw', 'net.ipv4.ip_nonlocal_bind=1', 'net.ipv6.ip_nonlocal_bind=1']);
      await systemRunner.run(['ip', '-n', out, 'addr', 'add', `${PROBE_ADDR}/32`, 'dev', 'lo']);
      await systemRunner.run(['ip', '-n', sim.nodeNs, 'route', 'add', `${PROBE_ADDR}/32`, 'via', sim.outside.ip]);
      try {
        const before = { zt: ztunnel.accepted.length, app: pod0Server.accepted.length };
        // From 169.254.7.127: captured like any other source, so ztunnel's inbound listener answers.
        expect(await sim.connect('outside', { ip: pod.ip, port: POD_PORT }, 2, 2_000, PROBE_ADDR)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
        await ztunnel.waitForAccepted(before.zt + 2);
        expect(ztunnel.accepted.slice(before.zt).map((a) => [ipOf(a.src), a.port])).toEqual([
          [PROBE_ADDR, 15006],
          [PROBE_ADDR, 15006],
        ]);
        // From the node's own addresses: never to the app (the node refuses its own source from outside).
        for (const [ip, src] of [
          [pod.ip, sim.node.ip],
          [pod.ip6, sim.node.ip6],
        ] as const) {
          expect(await sim.connect('outside', { ip, port: POD_PORT }, 1, 1_500, src)).toEqual([
            { ok: false, error: expect.stringMatching(/ETIMEDOUT|ECONNREFUSED|EHOSTUNREACH|ENETUNREACH/) },
          ]);
        }
        expect(pod0Server.accepted.length).toBe(before.app);
      } finally {
        await systemRunner.run(['ip', '-n', sim.nodeNs, 'route', 'del', `${PROBE_ADDR}/32`]);
      }
    });

    it('a pod’s connection to 169.254.7.127 is captured, not forwarded out of the node', async () => {
      // 169.254.7.127 lives outside (previous test), and the node has a route to it.
      await systemRunner.run(['ip', '-n', sim.nodeNs, 'route', 'add', `${PROBE_ADDR}/32`, 'via', sim.outside.ip]);
      try {
        const pod = sim.pods[0]!;
        const before = { zt: ztunnel.accepted.length, out: outside.accepted.length };
        expect(await sim.connect(pod, { ip: PROBE_ADDR, port: sim.outside.port }, 2, 2_000)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
        await ztunnel.waitForAccepted(before.zt + 2);
        expect(ztunnel.accepted.slice(before.zt).map((a) => a.origDst)).toEqual(Array(2).fill(`${PROBE_ADDR}:${sim.outside.port}`));
        expect(outside.accepted.length).toBe(before.out);
        // Control: the unenrolled pod does reach it, so the route out is there.
        expect(await sim.connect(sim.pods[2]!, { ip: PROBE_ADDR, port: sim.outside.port }, 1, 2_000)).toEqual([{ ok: true, reply: 'outside' }]);
      } finally {
        await systemRunner.run(['ip', '-n', sim.nodeNs, 'route', 'del', `${PROBE_ADDR}/32`]);
      }
    });

    if (mode === 'ebpf') {
      it('an enrolled pod’s TCP to its host veth’s link-local address never reaches the node', async () => {
        const node = await sim.startNodeServer(NODE_PORT);
        try {
          const [enrolled, unenrolled] = [sim.pods[0]!, sim.pods[2]!];
          // Control: the unenrolled pod reaches the node's service this way, so a bypass shows.
          const llU = await linkLocalOf(sim.nodeNs, unenrolled.hostVeth);
          expect(await sim.connect(unenrolled, { ip: `${llU}%eth0`, port: NODE_PORT }, 1, 2_000)).toEqual([{ ok: true, reply: 'node' }]);
          await node.waitForAccepted(1);
          const ll = await linkLocalOf(sim.nodeNs, enrolled.hostVeth);
          const countersBefore = await readCounters(enrolled.hostVeth);
          const results = await sim.connect(enrolled, { ip: `${ll}%eth0`, port: NODE_PORT }, 2, 1_500);
          expect(results.filter((r) => r.reply === 'node')).toEqual([]);
          expect(node.accepted).toHaveLength(1);
          // Judged by the program (O8: its fe80 source is no pod address), not passed.
          const after = await readCounters(enrolled.hostVeth);
          expect(after.droppedPackets).toBeGreaterThan(countersBefore.droppedPackets);
        } finally {
          await node.stop();
        }
      });

      it('a pod spoofing another pod’s source gets no one’s treatment: its frames are dropped', async () => {
        const [victim, spoofer, unenrolled] = sim.pods as [(typeof sim.pods)[0], (typeof sim.pods)[0], (typeof sim.pods)[0]];
        const countersBefore = readCounters(spoofer.hostVeth);
        const unenrolledDirect = seen(outside, unenrolled.ip).length;
        for (const ip of [victim.ip, unenrolled.ip]) {
          await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
          const results = await sim.connect(spoofer, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500, ip);
          expect(results).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
          await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'del', `${ip}/32`, 'dev', 'eth0']);
        }
        expect(seen(outside, victim.ip)).toHaveLength(0);
        expect(seen(outside, unenrolled.ip).length).toBe(unenrolledDirect); // only the earlier direct ones
        expect(seen(ztunnel, victim.ip).filter((a) => a.origDst?.startsWith(sim.outside.ip))).toHaveLength(0);
        const after = await readCounters(spoofer.hostVeth);
        expect(after.droppedPackets).toBeGreaterThan((await countersBefore).droppedPackets);
      });
    }

    it('fails closed: with ztunnel gone an enrolled pod reaches no one, either way', async () => {
      // ztunnel's pod goes away: its veth with it. The next pass finds no ztunnel.
      const passes = controller!.events.length;
      await systemRunner.run(['ip', '-n', sim.nodeNs, 'link', 'del', sim.ztunnel.hostVeth]);
      await controller!.waitForAfter(passes, /fail closed/);
      const pod = sim.pods[0]!;
      const before = { zt: ztunnel.accepted.length, out: outside.accepted.length };
      for (const ip of [sim.outside.ip, sim.outside.ip6]) {
        expect(await sim.connect(pod, { ip, port: sim.outside.port }, 2, 1_500)).toEqual(
          Array(2).fill({ ok: false, error: expect.stringMatching(/ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/) }),
        );
      }
      expect(await sim.connect('outside', { ip: pod.ip, port: POD_PORT }, 1, 1_500)).toEqual([
        { ok: false, error: expect.stringMatching(/ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/) },
      ]);
      expect(ztunnel.accepted.length).toBe(before.zt);
      expect(outside.accepted.length).toBe(before.out);
      expect(pod0Server.accepted.filter((a) => ipOf(a.src) === sim.outside.ip)).toHaveLength(0);
      // The unenrolled pod is unaffected.
      expect(await sim.connect(sim.pods[2]!, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'outside' }]);
    });

    async function readCounters(hostVeth: string): Promise<codec.PodCounters> {
      const links = JSON.parse(await systemRunner.run(['ip', '-n', sim.nodeNs, '-j', 'link', 'show', 'dev', hostVeth])) as { ifindex: number }[];
      return vethCounters(join(pinRoot, 'ambient-redirect/v1'), links[0]!.ifindex);
    }
  });
