/**
 * The XDP hook with real packets on the simulated node (docs/datapath.md, "XDP
 * (pod-side outbound)"). The agent (ebpf mode, TC hook) runs as usual and owns the maps;
 * then pod 0's outbound TC filter is removed and xdp_out, loaded from build/xdp.bpf.o on
 * the agent's own pins, is attached to the XDP hook of pod 0's host veth instead (the
 * agent has no --hook yet: its resync is set to an hour so that it does not put the TC
 * filter back during the test). Pod 0's outbound is then judged by XDP alone; the rest of
 * the node (ztunnel's zt_assign, pod 1's TC programs, inbound) is the agent's.
 *
 * Oracles: what the ztunnel stand-in and the outside server saw, and the per-veth counters.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import { BpfObject } from '../../src/bpf/object.js';
import { createInterface } from 'node:readline';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { distEntry } from '../../harness/sim/dist.js';
import { enterNetns } from '../../harness/bpf/testrun.js';
import { attachXdp, detachXdp } from '../../harness/bpf/xdp-attach.js';
import { startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';
import { XDP_OBJECT_PATH } from '../model/xdp-harness.js';

const ipOf = (src: string) => src.replace(/^\[/, '').replace(/\]?:\d+$/, '');
const UDP_PORT = 5353;

/** TCP's checksum errors in a netns (/proc/net/snmp, IPv4 and IPv6 alike). */
async function tcpCsumErrors(ns: string): Promise<number> {
  const lines = (await systemRunner.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/snmp'])).split('\n').filter((l) => l.startsWith('Tcp:'));
  const [names, values] = lines.map((l) => l.trim().split(/\s+/));
  return Number(values![names!.indexOf('InCsumErrors')]);
}

async function ifindexOf(ns: string, dev: string): Promise<number> {
  const [l] = JSON.parse(await systemRunner.run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[];
  return l!.ifindex;
}

/** Runs `f` with this thread in the netns `ns` (netlink calls act there). */
function inNetns<T>(ns: string, f: () => T): T {
  const leave = enterNetns(`/var/run/netns/${ns}`);
  try {
    return f();
  } finally {
    leave();
  }
}

kernelDescribe('the XDP hook end to end (xdp_out on an enrolled pod’s host veth)', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer;
  let outside: SimServer;
  let udpOutside: SimServer;
  let obj: BpfObject | undefined;
  let podVeth: number;
  let ztEth0: number;
  const attached: { ns: string; ifindex: number }[] = [];

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    [ztunnel, outside, udpOutside] = await Promise.all([sim.startZtunnel(), sim.startOutside(), sim.startUdpOutside(UDP_PORT)]);
    const [p0, p1] = sim.pods;
    controller = startController(sim.nodeNs, [
      '--mode',
      'ebpf',
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--resync-interval',
      '3600',
      '--enroll',
      [p0!.ip, p0!.ip6, p1!.ip, p1!.ip6].join(','),
    ]);
    await controller.waitFor('programmed');
    // The agent's maps, reused by name: the XDP object is pin-compatible with the TC one.
    obj = BpfObject.openAndLoad(XDP_OBJECT_PATH, { pinRoot: join(pinRoot, 'ambient-redirect', 'v1'), programs: ['xdp_out', 'xdp_pass'] });
    podVeth = await ifindexOf(sim.nodeNs, p0!.hostVeth);
    ztEth0 = await ifindexOf(sim.ztunnel.ns, 'eth0');
    await systemRunner.run(['tc', '-n', sim.nodeNs, 'filter', 'del', 'dev', p0!.hostVeth, 'ingress']);
    inNetns(sim.nodeNs, () => attachXdp(podVeth, obj!.programFd('xdp_out')));
    attached.push({ ns: sim.nodeNs, ifindex: podVeth });
  });

  afterAll(async () => {
    for (const a of attached.splice(0)) inNetns(a.ns, () => detachXdp(a.ifindex));
    obj?.close();
    await teardownNode(sim, pinRoot, controller);
  });

  const seen = (server: SimServer, ip: string) => server.accepted.filter((a) => ipOf(a.src) === ip);
  const counters = () => {
    const v = obj!.map('counters').lookup(codec.encodeU32Key(podVeth));
    return v ? codec.decodePodCountersPerCpu(v) : null;
  };
  /** ztunnel's eth0 in NAPI mode: xdp_pass on its XDP hook. */
  const napiOn = () => {
    inNetns(sim.ztunnel.ns, () => attachXdp(ztEth0, obj!.programFd('xdp_pass')));
    attached.push({ ns: sim.ztunnel.ns, ifindex: ztEth0 });
  };
  const napiOff = () => {
    inNetns(sim.ztunnel.ns, () => detachXdp(ztEth0));
    attached.pop();
  };

  it('pod 0’s host veth runs xdp_out and no TC ingress filter', async () => {
    const link = JSON.parse(await systemRunner.run(['ip', '-n', sim.nodeNs, '-j', '-d', 'link', 'show', 'dev', sim.pods[0]!.hostVeth])) as {
      xdp?: { mode: number; prog?: { name: string } };
    }[];
    expect(link[0]!.xdp?.prog?.name).toBe('xdp_out');
    expect((await systemRunner.run(['tc', '-n', sim.nodeNs, 'filter', 'show', 'dev', sim.pods[0]!.hostVeth, 'ingress'])).trim()).toBe('');
  });

  it('with ztunnel’s eth0 out of NAPI mode (no XDP program, GRO off as a veth starts) the redirected SYNs are lost: nothing leaves', async () => {
    const pod = sim.pods[0]!;
    const before = { zt: seen(ztunnel, pod.ip).length, out: seen(outside, pod.ip).length, c: counters(), csum: await tcpCsumErrors(sim.ztunnel.ns) };
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500)).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
    // Lost at ztunnel's veth, before its stack sees them.
    expect(await tcpCsumErrors(sim.ztunnel.ns)).toBe(before.csum);
    expect(seen(ztunnel, pod.ip)).toHaveLength(before.zt);
    expect(seen(outside, pod.ip)).toHaveLength(before.out);
    // xdp_out redirected them (counted so); the kernel dropped them at ztunnel's veth.
    expect(counters()!.redirectedPackets).toBeGreaterThan(before.c?.redirectedPackets ?? 0n);
  });

  /**
   * The pod's eth0 offloads TCP checksums (the field holds the pseudo-header sum); an
   * XDP_REDIRECT carries the bytes, not that state, so xdp_out completes the checksum
   * itself. Without that (measured before it did) every SYN died in ztunnel's TCP as a
   * checksum error: this test checks there are none.
   */
  it('with an XDP program on ztunnel’s eth0 (NAPI mode): outbound TCP reaches only ztunnel, with its original destination, IPv4 and IPv6', async () => {
    napiOn();
    try {
      const pod = sim.pods[0]!;
      for (const [ip, src] of [
        [sim.outside.ip, pod.ip],
        [sim.outside.ip6, pod.ip6],
      ] as const) {
        const before = { zt: seen(ztunnel, src).length, csum: await tcpCsumErrors(sim.ztunnel.ns), c: counters()! };
        expect(await sim.connect(pod, { ip, port: sim.outside.port }, 3)).toEqual(Array(3).fill({ ok: true, reply: 'ztunnel' }));
        await ztunnel.waitForAccepted(ztunnel.accepted.length);
        const dst = ip.includes(':') ? `[${ip}]:${sim.outside.port}` : `${ip}:${sim.outside.port}`;
        expect(
          seen(ztunnel, src)
            .slice(before.zt)
            .map((a) => [a.origDst, a.port]),
        ).toEqual(Array(3).fill([dst, 15001]));
        expect(seen(outside, src)).toHaveLength(0);
        expect(await tcpCsumErrors(sim.ztunnel.ns)).toBe(before.csum);
        // Each connection's SYN, ACK, request and FIN at least went through xdp_out's redirect.
        expect(counters()!.redirectedPackets - before.c.redirectedPackets).toBeGreaterThanOrEqual(9n);
      }
    } finally {
      napiOff();
    }
  });

  it('captured DNS over UDP (O17 with DNS capture): the datagram reaches a UDP socket on 15053 in ztunnel’s netns and its answer comes back, IPv4 and IPv6', async () => {
    napiOn();
    // A plain UDP server on 15053 in ztunnel's netns (zt_assign hands it the datagram).
    const server = startProcess([
      'ip',
      'netns',
      'exec',
      sim.ztunnel.ns,
      process.execPath,
      distEntry('./agent.js'),
      'udp-server',
      '--port',
      '15053',
      '--reply',
      'ztunnel-dns',
    ]);
    const slot = obj!.map('ztunnel');
    const saved = slot.lookup(codec.encodeSlot(0))!;
    const zt = codec.decodeZtunnelInfo(saved);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('close', (code) => reject(new Error(`udp-server exited ${code}`)));
        createInterface({ input: server.stdout! }).on('line', (l) => {
          if (l.includes('"listening"')) resolve();
        });
      });
      slot.update(codec.encodeSlot(0), codec.encodeZtunnelInfo({ ...zt, flags: zt.flags | 2 }));
      const pod = sim.pods[0]!;
      for (const ip of [sim.outside.ip, sim.outside.ip6]) {
        const before = { out: udpOutside.accepted.length, c: counters()! };
        expect(await sim.udpSend(pod, { ip, port: 53 }, 2, 1_500), ip).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel-dns' }));
        expect(counters()!.redirectedPackets - before.c.redirectedPackets, ip).toBe(2n);
        expect(udpOutside.accepted).toHaveLength(before.out);
      }
    } finally {
      slot.update(codec.encodeSlot(0), saved);
      server.kill('SIGTERM');
      napiOff();
    }
  });

  it('UDP that is not DNS passes uncaptured (O15b, --non-tcp pass): XDP_PASS reaches the outside', async () => {
    const pod = sim.pods[0]!;
    expect(await sim.udpSend(pod, { ip: sim.outside.ip, port: UDP_PORT }, 2)).toEqual(Array(2).fill({ ok: true, reply: expect.any(String) }));
    expect(seen(udpOutside, pod.ip).length).toBeGreaterThanOrEqual(2);
  });

  it('a pod spoofing another pod’s source (enrolled or not) is dropped at XDP', async () => {
    const [spoofer, victim, unenrolled] = sim.pods as [(typeof sim.pods)[0], (typeof sim.pods)[0], (typeof sim.pods)[0]];
    napiOn();
    try {
      const before = counters()!;
      for (const ip of [victim.ip, unenrolled.ip]) {
        await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
        try {
          expect(await sim.connect(spoofer, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500, ip)).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
        } finally {
          await systemRunner.run(['ip', '-n', spoofer.ns, 'addr', 'del', `${ip}/32`, 'dev', 'eth0']);
        }
        expect(seen(outside, ip)).toHaveLength(0);
        expect(seen(ztunnel, ip)).toHaveLength(0);
      }
      expect(counters()!.droppedPackets).toBeGreaterThan(before.droppedPackets);
    } finally {
      napiOff();
    }
  });

  it('fails closed: with the ztunnel slot not PRESENT nothing leaves, IPv4 or IPv6', async () => {
    napiOn();
    const slot = obj!.map('ztunnel');
    const saved = slot.lookup(codec.encodeSlot(0))!;
    const zt = codec.decodeZtunnelInfo(saved);
    try {
      slot.update(codec.encodeSlot(0), codec.encodeZtunnelInfo({ ...zt, flags: zt.flags & ~1 }));
      const pod = sim.pods[0]!;
      const before = { zt: ztunnel.accepted.length, out: outside.accepted.length, c: counters()! };
      for (const ip of [sim.outside.ip, sim.outside.ip6]) {
        expect(await sim.connect(pod, { ip, port: sim.outside.port }, 1, 1_500)).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
      }
      expect(ztunnel.accepted).toHaveLength(before.zt);
      expect(outside.accepted).toHaveLength(before.out);
      expect(counters()!.droppedPackets).toBeGreaterThan(before.c.droppedPackets);
    } finally {
      slot.update(codec.encodeSlot(0), saved);
      napiOff();
    }
    // And back: the same pod reaches ztunnel again once the slot is PRESENT.
    napiOn();
    try {
      expect(await sim.connect(sim.pods[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
    } finally {
      napiOff();
    }
  });
});
