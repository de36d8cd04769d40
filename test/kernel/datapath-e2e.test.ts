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
import * as codec from '../../src/bpf/codec.js';
import { BpfMap } from '../../src/bpf/object.js';
import { systemRunner } from '../../src/host/runner.js';
import { startController, type ControllerProcess } from '../../src/sim/controller.js';
import { createSimNode, type SimNode, type SimServer } from '../../src/sim/node.js';
import { pinRootFor } from '../../src/sim/scenario.js';
import { teardownNode } from './fixture.js';
import { kernelDescribe } from './gate.js';

const ipOf = (src: string) => src.replace(/^\[/, '').replace(/\]?:\d+$/, '');
const POD_PORT = 9090;

for (const mode of ['ebpf', 'iptables'] as const) kernelDescribe(`data path classes end to end (${mode} mode)`, 'loads BPF and builds network namespaces', () => {
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
      '--mode', mode, '--pin-root', pinRoot, '--ztunnel-ip', sim.ztunnel.ip, '--resync-interval', '2',
      '--enroll', [p0!.ip, p0!.ip6, p1!.ip, p1!.ip6].join(','),
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
      `${sim.pods[0]!.ip}:${POD_PORT}`, `${sim.pods[0]!.ip}:${POD_PORT}`,
      `[${sim.pods[0]!.ip6}]:${POD_PORT}`, `[${sim.pods[0]!.ip6}]:${POD_PORT}`,
    ]);
    expect(inbound.every((a) => [sim.outside.ip, sim.outside.ip6].includes(ipOf(a.src)))).toBe(true);
    expect(pod0Server.accepted).toHaveLength(0);
  });

  it('a kubelet-style probe from the node’s probe address reaches the pod directly', async () => {
    const before = ztunnel.accepted.length;
    expect(await sim.connect('node', { ip: sim.pods[0]!.ip, port: POD_PORT }, 2, 2_000, sim.probeIp)).toEqual(Array(2).fill({ ok: true, reply: 'pod0' }));
    await pod0Server.waitForAccepted(2);
    expect(pod0Server.accepted.map((a) => ipOf(a.src))).toEqual([sim.probeIp, sim.probeIp]);
    expect(ztunnel.accepted.length).toBe(before);
  });

  if (mode === 'ebpf') {
    it('a pod spoofing another pod’s source gets no one’s treatment: its frames are dropped', async () => {
      const [victim, spoofer, unenrolled] = sim.pods as [typeof sim.pods[0], typeof sim.pods[0], typeof sim.pods[0]];
      const countersBefore = readCounters(spoofer.hostVeth);
      for (const ip of [victim.ip, unenrolled.ip]) {
        await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
        const results = await sim.connect(spoofer, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500, ip);
        expect(results).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
        await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'del', `${ip}/32`, 'dev', 'eth0']);
      }
      expect(seen(outside, victim.ip)).toHaveLength(0);
      expect(seen(outside, unenrolled.ip).length).toBe(2); // only the earlier direct ones
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
      expect(await sim.connect(pod, { ip, port: sim.outside.port }, 2, 1_500)).toEqual(Array(2).fill({ ok: false, error: expect.stringMatching(/ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/) }));
    }
    expect(await sim.connect('outside', { ip: pod.ip, port: POD_PORT }, 1, 1_500)).toEqual([{ ok: false, error: expect.stringMatching(/ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/) }]);
    expect(ztunnel.accepted.length).toBe(before.zt);
    expect(outside.accepted.length).toBe(before.out);
    expect(pod0Server.accepted.filter((a) => ipOf(a.src) === sim.outside.ip)).toHaveLength(0);
    // The unenrolled pod is unaffected.
    expect(await sim.connect(sim.pods[2]!, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'outside' }]);
  });

  async function readCounters(hostVeth: string): Promise<codec.PodCounters> {
    const links = JSON.parse(await systemRunner.run(['ip', '-n', sim.nodeNs, '-j', 'link', 'show', 'dev', hostVeth])) as { ifindex: number }[];
    const map = BpfMap.openPinned(join(pinRoot, 'ambient-redirect/v1/counters'), 'counters', { keySize: 4, valueSize: codec.POD_COUNTERS_SIZE, maxEntries: 0, perCpu: true });
    try {
      const v = map.lookup(codec.encodeU32Key(links[0]!.ifindex));
      return v ? codec.decodePodCountersPerCpu(v) : codec.zeroCounters();
    } finally {
      map.close();
    }
  }
});
