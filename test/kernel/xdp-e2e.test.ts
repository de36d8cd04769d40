/**
 * The XDP hook end to end through the agent (docs/datapath.md, "The outbound hook"): `run
 * --hook xdp` on the simulated node puts xdp_out on the XDP hook of each enrolled pod's host
 * veth (and no TC ingress filter there), keeps in_redirect on TC egress, and puts xdp_pass
 * on ztunnel's eth0 beside zt_assign (NAPI mode, without which a frame redirected at XDP into
 * ztunnel's veth is dropped). Pod 2 is not enrolled. The agent's resync is an hour: the tests
 * that take ztunnel's XDP program away, or flip a flag in the maps, are not undone under them.
 *
 * Oracles: what the ztunnel stand-in and the outside server saw, `ip -d link`, `tc filter
 * show`, and the per-veth counters.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { closeFd, objGet } from '../../src/bpf/ffi.js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import { openPinnedMap } from '../../src/bpf/maps.js';
import type { BpfMap } from '../../src/bpf/object.js';
import { createInterface } from 'node:readline';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { distEntry } from '../../harness/sim/dist.js';
import { enterNetns } from '../../harness/bpf/testrun.js';
import { attachXdp, detachXdp } from '../../harness/bpf/xdp-attach.js';
import { startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { vethCounters } from '../support/counters.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';

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

/** The XDP program on a device, as `ip -d link` shows it. */
async function xdpOn(ns: string, dev: string): Promise<{ name: string; id: number } | null> {
  const [l] = JSON.parse(await systemRunner.run(['ip', '-n', ns, '-j', '-d', 'link', 'show', 'dev', dev])) as {
    xdp?: { prog?: { name: string; id: number } };
  }[];
  return l!.xdp?.prog ? { name: l!.xdp.prog.name, id: l!.xdp.prog.id } : null;
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

kernelDescribe('the XDP hook end to end: run --hook xdp', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer;
  let outside: SimServer;
  let udpOutside: SimServer;
  let podVeth: number;
  let ztEth0: number;
  let slotMap: BpfMap;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    [ztunnel, outside, udpOutside] = await Promise.all([sim.startZtunnel(), sim.startOutside(), sim.startUdpOutside(UDP_PORT)]);
    const [p0, p1] = sim.pods;
    controller = startController(sim.nodeNs, [
      '--mode',
      'ebpf',
      '--hook',
      'xdp',
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
    podVeth = await ifindexOf(sim.nodeNs, p0!.hostVeth);
    ztEth0 = await ifindexOf(sim.ztunnel.ns, 'eth0');
    const dir = join(pinRoot, 'ambient-redirect', 'v1');
    slotMap = openPinnedMap(dir, 'ztunnel');
  });

  afterAll(async () => {
    slotMap?.close();
    await teardownNode(sim, pinRoot, controller);
  });

  const seen = (server: SimServer, ip: string) => server.accepted.filter((a) => ipOf(a.src) === ip);
  const counters = () => vethCounters(join(pinRoot, 'ambient-redirect', 'v1'), podVeth);
  /** Takes the agent's xdp_pass off ztunnel's eth0 for `f` (out of NAPI mode), then puts it back. */
  async function withoutNapi<T>(f: () => Promise<T>): Promise<T> {
    const pinned = readdirSync(join(pinRoot, 'ambient-redirect', 'v1')).find((e) => e.startsWith('prog-'))!;
    const fd = objGet(join(pinRoot, 'ambient-redirect', 'v1', pinned, 'xdp_pass'));
    inNetns(sim.ztunnel.ns, () => detachXdp(ztEth0));
    try {
      return await f();
    } finally {
      inNetns(sim.ztunnel.ns, () => attachXdp(ztEth0, fd));
      closeFd(fd);
    }
  }

  it('the agent put xdp_out on each enrolled veth’s XDP hook (no TC ingress filter), in_redirect on TC egress, xdp_pass and zt_assign on ztunnel’s eth0; the unenrolled veth has nothing', async () => {
    const tcOn = async (ns: string, dev: string, dir: string) =>
      (
        JSON.parse(await systemRunner.run(['tc', '-n', ns, '-j', 'filter', 'show', 'dev', dev, dir]).catch(() => '[]')) as {
          options?: { prog?: { name: string } };
        }[]
      )
        .map((f) => f.options?.prog?.name)
        .filter(Boolean);
    for (const pod of sim.pods.slice(0, 2)) {
      expect((await xdpOn(sim.nodeNs, pod.hostVeth))?.name).toBe('xdp_out');
      expect(await tcOn(sim.nodeNs, pod.hostVeth, 'ingress')).toEqual([]);
      expect(await tcOn(sim.nodeNs, pod.hostVeth, 'egress')).toEqual(['in_redirect']);
    }
    expect((await xdpOn(sim.ztunnel.ns, 'eth0'))?.name).toBe('xdp_pass');
    expect(await tcOn(sim.ztunnel.ns, 'eth0', 'ingress')).toEqual(['zt_assign']);
    const unenrolled = sim.pods[2]!;
    expect(await xdpOn(sim.nodeNs, unenrolled.hostVeth)).toBeNull();
    expect(await tcOn(sim.nodeNs, unenrolled.hostVeth, 'ingress')).toEqual([]);
    expect(controller!.events.find((e) => e.msg === 'outbound hook selected')).toMatchObject({ requested: 'xdp', hook: 'xdp' });
  });

  it('with ztunnel’s eth0 out of NAPI mode (its xdp_pass taken away, GRO off as a veth starts) the redirected SYNs are lost: nothing leaves', async () => {
    const pod = sim.pods[0]!;
    await withoutNapi(async () => {
      const before = { zt: seen(ztunnel, pod.ip).length, out: seen(outside, pod.ip).length, c: counters(), csum: await tcpCsumErrors(sim.ztunnel.ns) };
      expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 1, 1_500)).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
      // Lost at ztunnel's veth, before its stack sees them.
      expect(await tcpCsumErrors(sim.ztunnel.ns)).toBe(before.csum);
      expect(seen(ztunnel, pod.ip)).toHaveLength(before.zt);
      expect(seen(outside, pod.ip)).toHaveLength(before.out);
      // xdp_out redirected them (counted so); the kernel dropped them at ztunnel's veth.
      expect(counters()!.redirectedPackets).toBeGreaterThan(before.c?.redirectedPackets ?? 0n);
    });
  });

  /**
   * The pod's eth0 offloads TCP checksums (the field holds the pseudo-header sum); an
   * XDP_REDIRECT carries the bytes, not that state, so xdp_out completes the checksum
   * itself. Without that (measured before it did) every SYN died in ztunnel's TCP as a
   * checksum error: this test checks there are none.
   */
  it('outbound TCP reaches only ztunnel, with its original destination, IPv4 and IPv6', async () => {
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
  });

  it('captured DNS over UDP (O17 with DNS capture): the datagram reaches a UDP socket on 15053 in ztunnel’s netns and its answer comes back, IPv4 and IPv6', async () => {
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
    const saved = slotMap.lookup(codec.encodeSlot(0))!;
    const zt = codec.decodeZtunnelInfo(saved);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('close', (code) => reject(new Error(`udp-server exited ${code}`)));
        createInterface({ input: server.stdout! }).on('line', (l) => {
          if (l.includes('"listening"')) resolve();
        });
      });
      slotMap.update(codec.encodeSlot(0), codec.encodeZtunnelInfo({ ...zt, flags: zt.flags | codec.ZtunnelFlags.DNS_CAPTURE }));
      const pod = sim.pods[0]!;
      for (const ip of [sim.outside.ip, sim.outside.ip6]) {
        const before = { out: udpOutside.accepted.length, c: counters()! };
        expect(await sim.udpSend(pod, { ip, port: 53 }, 2, 1_500), ip).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel-dns' }));
        expect(counters()!.redirectedPackets - before.c.redirectedPackets, ip).toBe(2n);
        expect(udpOutside.accepted).toHaveLength(before.out);
      }
    } finally {
      slotMap.update(codec.encodeSlot(0), saved);
      server.kill('SIGTERM');
    }
  });

  it('UDP that is not DNS passes uncaptured (O15b, --non-tcp pass): XDP_PASS reaches the outside', async () => {
    const pod = sim.pods[0]!;
    expect(await sim.udpSend(pod, { ip: sim.outside.ip, port: UDP_PORT }, 2)).toEqual(Array(2).fill({ ok: true, reply: expect.any(String) }));
    expect(seen(udpOutside, pod.ip).length).toBeGreaterThanOrEqual(2);
  });

  it('a pod spoofing another pod’s source (enrolled or not) is dropped at XDP', async () => {
    const [spoofer, victim, unenrolled] = sim.pods as [(typeof sim.pods)[0], (typeof sim.pods)[0], (typeof sim.pods)[0]];
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
  });

  it('fails closed: with the ztunnel slot not PRESENT nothing leaves, IPv4 or IPv6; and back', async () => {
    const saved = slotMap.lookup(codec.encodeSlot(0))!;
    const zt = codec.decodeZtunnelInfo(saved);
    try {
      slotMap.update(codec.encodeSlot(0), codec.encodeZtunnelInfo({ ...zt, flags: zt.flags & ~codec.ZtunnelFlags.PRESENT }));
      const pod = sim.pods[0]!;
      const before = { zt: ztunnel.accepted.length, out: outside.accepted.length, c: counters()! };
      for (const ip of [sim.outside.ip, sim.outside.ip6]) {
        expect(await sim.connect(pod, { ip, port: sim.outside.port }, 1, 1_500)).toEqual([{ ok: false, error: 'ETIMEDOUT' }]);
      }
      expect(ztunnel.accepted).toHaveLength(before.zt);
      expect(outside.accepted).toHaveLength(before.out);
      expect(counters()!.droppedPackets).toBeGreaterThan(before.c.droppedPackets);
    } finally {
      slotMap.update(codec.encodeSlot(0), saved);
    }
    expect(await sim.connect(sim.pods[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
  });

  it('the unenrolled pod is untouched: it reaches the outside directly, with its own address', async () => {
    const pod = sim.pods[2]!;
    const before = seen(outside, pod.ip).length;
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'outside' }));
    expect(seen(outside, pod.ip)).toHaveLength(before + 2);
    expect(seen(ztunnel, pod.ip)).toHaveLength(0);
  });
});
