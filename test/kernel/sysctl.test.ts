/**
 * The data path on a node whose defaults are strict: rp_filter=1 on every interface of
 * every netns of the simulated node (all, default, each link, so links made later inherit
 * it). ztunnel's transparent replies (source: the pod's original destination) arrive on
 * ztunnel's host veth, where strict reverse-path filtering would drop them; in ebpf mode
 * the agent opens that link (keeping every
 * other one as strict as it was), and uninstall puts back what was there. iptables mode
 * opens ztunnel's veth and each enrolled pod's (docs/operations.md "Sysctls": why both),
 * recording each change in a chain of comments that outlives the agent. Oracles: real
 * connections through the ztunnel stand-in, the sysctls read back from /proc in each netns,
 * iptables-save, and snapshots of each netns before and after.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { createSimNode, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { pinRootFor, runStaticScenario } from '../../harness/sim/scenario.js';
import { Cleanup } from '../../src/capture/cleanup.js';
import { kernelDescribe } from '../support/gate.js';
import { teardownNode } from '../support/node.js';
import { netnsSnapshot } from '../support/snapshot.js';
import { until } from '../support/wait.js';
import { rpFilters, strictRpFilter } from '../support/rpfilter.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** One device's rp_filter in a netns. */
async function rpFilter(ns: string, dev: string): Promise<number> {
  return Number((await run(['ip', 'netns', 'exec', ns, 'sysctl', '-n', `net.ipv4.conf.${dev}.rp_filter`])).trim());
}

async function setRpFilter(ns: string, values: Record<string, number>): Promise<void> {
  await run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', ...Object.entries(values).map(([d, v]) => `net.ipv4.conf.${d}.rp_filter=${v}`)]);
}

/** The iptables mode's rp_filter records (either backend), as iptables-save prints them. */
async function records(ns: string): Promise<string[]> {
  const lines: string[] = [];
  // No `-t mangle`: naming a table makes the legacy one exist in the netns.
  for (const save of ['iptables-nft-save', 'iptables-legacy-save'])
    lines.push(...(await run(['ip', 'netns', 'exec', ns, save]).catch(() => '')).split('\n').filter((l) => l.startsWith('-A ztunnel-RPFILTER ')));
  return lines.map((l) => l.replace(/^-A ztunnel-RPFILTER -m comment --comment /, ''));
}

kernelDescribe('a node with strict reverse-path filtering', 'builds network namespaces, loads BPF, writes sysctls in them', () => {
  let sim: SimNode;
  let before: Record<string, string[]>;
  const nets = () => [sim.nodeNs, sim.ztunnel.ns, ...sim.pods.map((p) => p.ns)];

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    for (const ns of nets()) await strictRpFilter(ns);
    before = Object.fromEntries(await Promise.all(nets().map(async (ns) => [ns, await rpFilters(ns)] as const)));
    expect(before[sim.nodeNs]!.every((l) => l.endsWith('=1'))).toBe(true);
  });

  afterAll(async () => {
    await sim?.teardown();
  });

  for (const [mode, variant] of [
    ['ebpf', 'redirect_peer'],
    ['ebpf', 'redirect'],
  ] as const) {
    it(`${mode}${variant ? ` (bpf_${variant})` : ''}: the enrolled pod's connections complete through ztunnel; uninstall restores every rp_filter`, async () => {
      let during: string[] = [];
      const result = await runStaticScenario(sim, {
        enrolled: [0],
        connections: 3,
        pinRoot: pinRootFor(sim),
        mode,
        ...(variant && { variant }),
        beforeUninstall: async () => {
          during = await rpFilters(sim.nodeNs);
        },
      });
      const [pod0, pod1] = result.reports;
      expect(pod0).toMatchObject({ ok: 3, direct: 0 });
      expect(pod0!.viaZtunnel).toEqual(Array(3).fill(`${sim.outside.ip}:${sim.outside.port}`));
      expect(pod1).toMatchObject({ ok: 3, direct: 3 });
      {
        // ztunnel's host veth has no address: only 0 passes there, and the kernel takes the
        // larger of all and the device. So all is 0, ztunnel's veth 0, and every other
        // link (and default, for links made later) stays strict: effectively nothing else changed.
        const zt = `net.ipv4.conf.${sim.ztunnel.hostVeth}.rp_filter=0`;
        expect(during).toContain('net.ipv4.conf.all.rp_filter=0');
        expect(during).toContain(zt);
        expect(during.filter((l) => l !== zt && !l.includes('.all.')).every((l) => l.endsWith('=1'))).toBe(true);
      }
      for (const ns of nets()) expect(await rpFilters(ns), ns).toEqual(before[ns]);
    });
  }
});

kernelDescribe('iptables mode on a node with strict reverse-path filtering', 'builds network namespaces, runs iptables, writes sysctls in them', () => {
  const UDP_PORT = 5300;
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer;
  let outside: SimServer;
  let udp: SimServer;
  let before: Record<string, Record<string, string>>;
  const nets = () => [sim.nodeNs, sim.ztunnel.ns, ...sim.pods.map((p) => p.ns)];
  const outside4 = () => ({ ip: sim.outside.ip, port: sim.outside.port });
  const outside6 = () => ({ ip: sim.outside.ip6, port: sim.outside.port });

  async function start(enrolled: number[]): Promise<void> {
    controller = startController(sim.nodeNs, [
      '--mode',
      'iptables',
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--non-tcp',
      'pass',
      // One pass at start: each phase below is a restart, and nothing runs between.
      '--resync-interval',
      '3600',
      '--enroll',
      enrolled.flatMap((i) => [sim.pods[i]!.ip, sim.pods[i]!.ip6]).join(','),
    ]);
    await controller.waitFor('programmed');
  }
  async function stop(): Promise<void> {
    const c = controller;
    controller = undefined;
    expect(await c!.stop('SIGTERM')).toBe(0);
  }
  const captured = (i: number, to = outside4(), n = 2) => sim.connect(sim.pods[i]!, to, n).then((r) => r.map((x) => x.reply ?? x.error));

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    for (const ns of nets()) await strictRpFilter(ns);
    // Link-local IPv6 addresses settle (DAD) shortly after the links come up.
    await new Promise((r) => setTimeout(r, 2_500));
    before = Object.fromEntries(await Promise.all(nets().map(async (ns) => [ns, await netnsSnapshot(ns)] as const)));
    [ztunnel, outside, udp] = await Promise.all([sim.startZtunnel(), sim.startOutside(), sim.startUdpOutside(UDP_PORT)]);
  });

  afterAll(async () => {
    const c = new Cleanup();
    await c.step('stop the controller', () => controller?.stop('SIGKILL'));
    await c.step('uninstall and tear down', () => teardownNode(sim, pinRoot));
    c.throwIfFailed('teardown');
  });

  it('captured connections complete over IPv4 and IPv6, non-TCP still leaves, and only the pod’s and ztunnel’s veths are opened', async () => {
    await start([0]);
    expect(await captured(0)).toEqual(['ztunnel', 'ztunnel']);
    expect(await captured(0, outside6())).toEqual(['ztunnel', 'ztunnel']);
    expect(ztunnel.accepted.map((a) => a.origDst)).toEqual([
      ...Array(2).fill(`${sim.outside.ip}:${sim.outside.port}`),
      ...Array(2).fill(`[${sim.outside.ip6}]:${sim.outside.port}`),
    ]);
    expect(await captured(1)).toEqual(['outside', 'outside']);
    // --non-tcp pass: the pod's UDP and ICMP are forwarded uncaptured, past the same source check.
    expect((await sim.udpSend(sim.pods[0]!, { ip: sim.outside.ip, port: UDP_PORT }, 2, 1_000)).map((r) => r.ok)).toEqual([true, true]);
    expect(udp.accepted.map((a) => a.src.slice(0, a.src.lastIndexOf(':')))).toEqual([sim.pods[0]!.ip, sim.pods[0]!.ip]);
    expect(await sim.ping(sim.pods[0]!, sim.outside.ip, 2)).toBe(2);

    const now = await rpFilters(sim.nodeNs);
    const open = [sim.pods[0]!.hostVeth, sim.ztunnel.hostVeth].map((d) => `net.ipv4.conf.${d}.rp_filter=0`);
    expect(now).toContain('net.ipv4.conf.all.rp_filter=0');
    for (const o of open) expect(now).toContain(o);
    // Every other link, default included (links made later), stays strict; the tunnels are
    // loose (2, with addresses: enough for the tunnelled packets), ours and gone at uninstall.
    const rest = now.filter((l) => !open.includes(l) && !l.includes('.all.') && !/\.istio(in|out)\./.test(l));
    expect(rest.length).toBeGreaterThan(4);
    expect(rest.filter((l) => !l.endsWith('=1'))).toEqual([]);
    const idx = async (dev: string) => (JSON.parse(await run(['ip', '-n', sim.nodeNs, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
    expect((await records(sim.nodeNs)).sort()).toEqual(
      [
        '"rp_filter dev=all was=1 wrote=0"',
        `"rp_filter dev=${sim.pods[0]!.hostVeth} ifindex=${await idx(sim.pods[0]!.hostVeth)} was=1 wrote=0"`,
        `"rp_filter dev=${sim.ztunnel.hostVeth} ifindex=${await idx(sim.ztunnel.hostVeth)} was=1 wrote=0"`,
      ].sort(),
    );
  });

  it('who cannot use the opened veth: the enrolled pod sending from an address not its own is still dropped (the veth binding)', async () => {
    const pod = sim.pods[0]!;
    const forged = '10.244.99.99';
    await run(['ip', '-n', pod.ns, 'addr', 'add', `${forged}/32`, 'dev', 'lo']);
    // The way back to the forged address leads to the pod: only the binding stands between
    // it and a completed connection.
    await run(['ip', '-n', sim.nodeNs, 'route', 'add', `${forged}/32`, 'dev', pod.hostVeth]);
    try {
      const [r] = await sim.connect(pod, outside4(), 1, 1_500, forged);
      expect(r!.ok).toBe(false);
      // Not even captured: the binding drops it before anything else.
      expect([...outside.accepted, ...ztunnel.accepted].filter((a) => a.src.startsWith(`${forged}:`))).toEqual([]);
    } finally {
      await run(['ip', '-n', pod.ns, 'addr', 'del', `${forged}/32`, 'dev', 'lo']);
      await run(['ip', '-n', sim.nodeNs, 'route', 'del', `${forged}/32`, 'dev', pod.hostVeth]);
    }
  });

  it('without those writes no captured IPv4 connection completes: both veths are needed (IPv6 has no rp_filter)', async () => {
    await stop(); // the data path stays; no pass runs to put the values back meanwhile
    const pod = sim.pods[0]!.hostVeth;
    const zt = sim.ztunnel.hostVeth;
    const fails = async () => (await sim.connect(sim.pods[0]!, outside4(), 1, 1_500))[0]!.ok;
    try {
      await setRpFilter(sim.nodeNs, { [pod]: 1 });
      expect(await fails()).toBe(false);
      await setRpFilter(sim.nodeNs, { [pod]: 0, [zt]: 1 });
      expect(await fails()).toBe(false);
      await setRpFilter(sim.nodeNs, { [zt]: 0, all: 1 });
      expect(await fails()).toBe(false);
      expect(await captured(0, outside6(), 1)).toEqual(['ztunnel']);
    } finally {
      await setRpFilter(sim.nodeNs, { [pod]: 0, [zt]: 0, all: 0 });
    }
    expect(await captured(0, outside4(), 1)).toEqual(['ztunnel']);
  });

  it('a restart keeps the original record (the values before us), not the values it finds', async () => {
    const had = await records(sim.nodeNs);
    await start([0]);
    expect(await records(sim.nodeNs)).toEqual(had);
    expect(await captured(0)).toEqual(['ztunnel', 'ztunnel']);
  });

  it('a pod that leaves the mesh gets its veth’s value back; one that joins is opened', async () => {
    await stop();
    await start([1]);
    expect(await rpFilter(sim.nodeNs, sim.pods[0]!.hostVeth)).toBe(1);
    expect(await rpFilter(sim.nodeNs, sim.pods[1]!.hostVeth)).toBe(0);
    expect(await captured(0)).toEqual(['outside', 'outside']);
    expect(await captured(1)).toEqual(['ztunnel', 'ztunnel']);
    expect(await records(sim.nodeNs)).toContainEqual(expect.stringContaining(`dev=${sim.pods[0]!.hostVeth} `));
    expect((await records(sim.nodeNs)).find((r) => r.includes(`dev=${sim.pods[0]!.hostVeth} `))).toMatch(/was=1 wrote=1"$/);
  });

  it('uninstall puts every value back: each netns is as before', async () => {
    await stop();
    const out = await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
    expect(out).toContain('restored rp_filter=1 on all');
    expect(await records(sim.nodeNs)).toEqual([]);
    for (const ns of nets()) expect(await netnsSnapshot(ns), ns).toEqual(before[ns]);
  });

  it('the record of a device that vanished is dropped; the new device of the same name gets its own', async () => {
    const rps = Object.fromEntries(await Promise.all(nets().map(async (ns) => [ns, await rpFilters(ns)] as const)));
    await start([1]);
    await stop();
    const veth = sim.pods[1]!.hostVeth;
    const old = (await records(sim.nodeNs)).find((r) => r.includes(`dev=${veth} `));
    expect(old).toBeDefined();
    await sim.recreatePodLink(sim.pods[1]!); // the new veth inherits default (1)
    await start([1]);
    const mine = (await records(sim.nodeNs)).filter((r) => r.includes(`dev=${veth} `));
    expect(mine).toHaveLength(1);
    expect(mine[0]).not.toEqual(old);
    expect(mine[0]).toMatch(/was=1 wrote=0"$/);
    expect(await captured(1)).toEqual(['ztunnel', 'ztunnel']);
    await stop();
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
    for (const ns of nets()) expect(await rpFilters(ns), ns).toEqual(rps[ns]);
  });

  it('a switch to ebpf mode: its start puts back what iptables mode recorded, its next pass opens the link again, and uninstall leaves every value as before', async () => {
    const rps = Object.fromEntries(await Promise.all(nets().map(async (ns) => [ns, await rpFilters(ns)] as const)));
    await start([1]);
    await stop();
    expect(await records(sim.nodeNs)).not.toEqual([]);
    const pod = sim.pods[1]!;
    controller = startController(sim.nodeNs, [
      '--mode',
      'ebpf',
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--resync-interval',
      '1',
      '--enroll',
      [pod.ip, pod.ip6].join(','),
    ]);
    await controller.waitFor('programmed');
    await until('iptables mode’s records gone', async () => (await records(sim.nodeNs)).length === 0, 10_000);
    await until('a captured connection completing again', async () => (await captured(1, outside4(), 1))[0] === 'ztunnel', 15_000, 200);
    expect(await rpFilter(sim.nodeNs, 'all')).toBe(0);
    expect(await rpFilter(sim.nodeNs, sim.ztunnel.hostVeth)).toBe(0);
    // ebpf mode needs no opened pod veth: its redirect skips the routing check.
    expect(await rpFilter(sim.nodeNs, pod.hostVeth)).toBe(1);
    await stop();
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
    for (const ns of nets()) expect(await rpFilters(ns), ns).toEqual(rps[ns]);
  });
});
