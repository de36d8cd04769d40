/**
 * `ambient.istio.io/reroute-virtual-interfaces` in the in-pod topology, with real packets:
 * an enrolled pod (pod0 of a simulated node) that runs VMs, as KubeVirt does. Inside pod0's
 * netns two more interfaces stand for VM taps, each a veth whose other end is in a small
 * netns of this test's (the VM):
 *
 *   tap0 (listed in the annotation)  10.250.0.1/24  <->  vm0: 10.250.0.2 (NATed by the pod),
 *                                                          10.251.0.2 (routed, no NAT)
 *   tap1 (not listed)                10.252.0.1/24  <->  vm1: 10.252.0.2 (NATed),
 *                                                          10.253.0.2 (routed, no NAT)
 *
 * The pod forwards and MASQUERADEs 10.250.0.0/24 and 10.252.0.0/24 out of eth0; the node
 * routes 10.251.0.0/24 and 10.253.0.0/24 to pod0. Istio's meaning: TCP from a listed
 * interface is captured as the pod's outbound (ztunnel's 15001, original destination
 * kept). Oracles: the listeners' reports inside pod0's netns and the outside server's
 * record of every source. Both in-pod captures: the eBPF one (inpod_vm_in on each listed
 * interface, docs/datapath.md rows PV1-PV5) and Istio's rules (a REDIRECT per listed
 * interface).
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import type net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEbpfInPodCapture, type EbpfInPodCapture, uninstallInpod } from '../../src/capture/inpod/ebpf.js';
import { InpodIptables, uninstallInpodIptablesHost } from '../../src/capture/inpod/iptables.js';
import type { PodNetns } from '../../src/capture/inpod.js';
import { systemRunner } from '../../src/host/runner.js';
import { createLogger } from '../../src/log.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../../harness/sim/node.js';
import { OUTSIDE_IP, runPinRoot } from '../../harness/sim/names.js';
import { listenInNetns } from '../../harness/sim/ztunnel-inpod.js';
import { originalDst } from '../../harness/sim/transparent.js';
import { netnsSnapshot } from '../support/snapshot.js';
import { kernelDescribe } from '../support/gate.js';
import { until } from '../support/wait.js';
import { addVm, type Vm } from '../support/vm.js';

const run = (argv: string[]) => systemRunner.run(argv);
const OUT = 8080;
/** The pod's own app. */
const APP = 9090;

kernelDescribe('reroute-virtual-interfaces: a VM behind an enrolled pod (in-pod topology)', 'creates network namespaces and loads BPF programs', () => {
  let sim: SimNode;
  let pod: SimPod;
  let podFd = -1;
  let outside: SimServer;
  let app: SimServer;
  let servers: net.Server[] = [];
  const accepted: { port: number; src: string; origDst: string }[] = [];
  const vms: Vm[] = [];
  let capture: EbpfInPodCapture;
  let pinRoot = '';
  let before: Record<string, string> = {};
  const log = createLogger('error', () => undefined);
  let nextPort = Math.floor(Math.random() * 20000);
  /** The pod netns as the tools show it, nft's counters aside (the VMs' traffic moves them). */
  const snapshot = async () =>
    Object.fromEntries(
      Object.entries(await netnsSnapshot(pod.ns, ['eth0', 'tap0', 'tap1'])).map(([k, v]) => [k, v.replace(/counter packets \d+ bytes \d+/g, 'counter')]),
    );
  const podNetns = (reroute: string[]): PodNetns => ({
    uid: 'uid-pod0',
    namespace: 'default',
    name: pod.name,
    ips: [pod.ip, pod.ip6],
    fd: podFd,
    overrides: { bypassInbound: false, dnsCapture: null, rerouteInterfaces: reroute },
  });

  /** One connection from the VM's `src` (to the outside server by default): who answered, who saw it. */
  async function fromVm(
    vm: Vm,
    src: string,
    to = { ip: OUTSIDE_IP, port: OUT },
  ): Promise<{ reply: string; ztunnel: string[]; outside: string[]; app: string[] }> {
    // A port of its own, so that each connection's reports are told apart (NAT keeps it).
    const port = 30000 + nextPort++;
    const mine = (a: { src: string }) => a.src.endsWith(`:${port}`);
    const ip = (a: { src: string }) => a.src.slice(0, a.src.lastIndexOf(':')).replace(/^::ffff:/, '');
    const [r] = await sim.connect({ index: -1, name: vm.ns, ns: vm.ns, ip: src, ip6: '', hostVeth: '' }, to, 1, 1_500, src, port);
    if (r!.ok) await until('the report', () => [accepted, outside.accepted, app.accepted].some((l) => l.some(mine)), 2_000).catch(() => undefined);
    return {
      reply: r!.ok ? r!.reply! : 'failed',
      ztunnel: accepted.filter(mine).map((a) => `${a.port} ${ip(a)} -> ${a.origDst}`),
      outside: outside.accepted.filter(mine).map(ip),
      app: app.accepted.filter(mine).map(ip),
    };
  }
  const captured = (src: string) => ({ reply: 'ztunnel', ztunnel: [`15001 ${src} -> ${OUTSIDE_IP}:${OUT}`], outside: [], app: [] });
  const dropped = { reply: 'failed', ztunnel: [], outside: [], app: [] };

  beforeAll(async () => {
    sim = await createSimNode({ pods: 1 });
    pod = sim.pods[0]!;
    await run(['ip', 'netns', 'exec', pod.ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    for (const i of [0, 1]) vms.push(await addVm(sim, pod, i));
    podFd = openSync(`/var/run/netns/${pod.ns}`, 'r');
    outside = await sim.startOutside();
    app = await sim.startPodServer(pod, APP);
    // ztunnel's listeners in the pod; the original destination as ztunnel reads it
    // (SO_ORIGINAL_DST after a REDIRECT, else the transparent socket's own address).
    servers = listenInNetns(podFd, 'pod0', [15001, 15006, 15008], (port, s, family) => {
      const fd = (s as unknown as { _handle: { fd: number } })._handle.fd;
      accepted.push({ port, src: `${s.remoteAddress}:${s.remotePort}`, origDst: originalDst(fd, family) ?? `${s.localAddress}:${s.localPort}` });
    });
    before = await snapshot();
    pinRoot = runPinRoot(sim.prefix);
    mkdirSync(pinRoot, { recursive: true });
    capture = createEbpfInPodCapture({ objectPath: 'build/inpod.bpf.o', pinRoot, runner: systemRunner, log, hostNetns: `/var/run/netns/${sim.nodeNs}` });
    await capture.init();
  }, 60_000);

  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    capture?.close();
    if (podFd >= 0) closeSync(podFd);
    await sim?.teardown();
  });

  it('before any capture: the VMs reach the outside directly, NATed as the pod or with their own address', async () => {
    expect(await fromVm(vms[0]!, vms[0]!.nat)).toEqual({ reply: 'outside', ztunnel: [], outside: [pod.ip], app: [] });
    expect(await fromVm(vms[0]!, vms[0]!.routed)).toEqual({ reply: 'outside', ztunnel: [], outside: [vms[0]!.routed], app: [] });
    expect(await fromVm(vms[1]!, vms[1]!.routed)).toEqual({ reply: 'outside', ztunnel: [], outside: [vms[1]!.routed], app: [] });
  });

  describe('eBPF in-pod capture', () => {
    it('without the annotation the VMs’ TCP is dropped on eth0 (inpod_out), never let around ztunnel', async () => {
      await capture.install(podNetns([]));
      for (const vm of vms) for (const src of [vm.nat, vm.routed]) expect(await fromVm(vm, src), src).toEqual(dropped);
    });

    it('the annotation is drift until installed; then the listed interface’s TCP reaches 15001 with its original destination, NATed or not; the other interface’s is still dropped', async () => {
      expect(await capture.check(podNetns(['tap0']))).toBe(false);
      await capture.install(podNetns(['tap0']));
      expect(await capture.check(podNetns(['tap0']))).toBe(true);
      expect(await capture.check(podNetns([]))).toBe(false);
      expect(await fromVm(vms[0]!, vms[0]!.nat)).toEqual(captured(vms[0]!.nat));
      expect(await fromVm(vms[0]!, vms[0]!.routed)).toEqual(captured(vms[0]!.routed));
      for (const src of [vms[1]!.nat, vms[1]!.routed]) expect(await fromVm(vms[1]!, src), src).toEqual(dropped);
    });

    it('to the pod’s own app: from the listed interface to 15001; from the other, straight to the app (inside the pod’s netns no hook of the capture sees it)', async () => {
      const toApp = { ip: pod.ip, port: APP };
      expect(await fromVm(vms[0]!, vms[0]!.routed, toApp)).toEqual({
        reply: 'ztunnel',
        ztunnel: [`15001 ${vms[0]!.routed} -> ${pod.ip}:${APP}`],
        outside: [],
        app: [],
      });
      // As a process of the pod connecting to its own address would (Istio's rules take
      // this one to 15006: see the iptables case below).
      expect(await fromVm(vms[1]!, vms[1]!.routed, toApp)).toEqual({ reply: pod.name, ztunnel: [], outside: [], app: [vms[1]!.routed] });
    });

    it('a listed interface made after install (a VM started later) is drift, and install attaches it', async () => {
      const p = podNetns(['tap0', 'tap9']);
      await capture.install(p);
      expect(await capture.check(p)).toBe(true);
      await run(['ip', '-n', pod.ns, 'link', 'add', 'tap9', 'type', 'veth', 'peer', 'name', 'tap9p']);
      try {
        expect(await capture.check(p)).toBe(false);
        await capture.install(p);
        expect(await capture.check(p)).toBe(true);
      } finally {
        await run(['ip', '-n', pod.ns, 'link', 'del', 'tap9']);
      }
      // The annotation back to tap0 alone, after a listed interface that went away.
      await capture.install(podNetns(['tap0']));
      expect(await capture.check(podNetns(['tap0']))).toBe(true);
    });

    it('the annotation removed: tap0 is detached and its TCP dropped again; remove leaves the pod netns as before', async () => {
      await capture.install(podNetns([]));
      expect(await capture.check(podNetns([]))).toBe(true);
      expect(await fromVm(vms[0]!, vms[0]!.routed)).toEqual(dropped);
      await capture.install(podNetns(['tap0']));
      await capture.remove(podNetns(['tap0']));
      expect(await snapshot()).toEqual(before);
      expect(await fromVm(vms[0]!, vms[0]!.routed)).toEqual({ reply: 'outside', ztunnel: [], outside: [vms[0]!.routed], app: [] });
    });

    it('uninstall (from the pinned records alone) takes inpod_vm_in off the VM interface too', async () => {
      await capture.install(podNetns(['tap0']));
      expect(await fromVm(vms[0]!, vms[0]!.nat)).toEqual(captured(vms[0]!.nat));
      const r = await uninstallInpod({ pinRoot, hostNetns: `/var/run/netns/${sim.nodeNs}` });
      expect(r.failed).toEqual([]);
      expect(r.removed).toContainEqual(expect.stringMatching(/^ingress filter of VM interface tap0 /));
      expect(await snapshot()).toEqual(before);
    });
  });

  describe('in-pod iptables capture (Istio’s rules)', () => {
    let ipt: InpodIptables;
    beforeAll(async () => {
      ipt = new InpodIptables({ runner: systemRunner, log, dnsCapture: false, hostNetns: sim.nodeNs });
      await ipt.init();
      await ipt.install(podNetns(['tap0']));
    });
    afterAll(async () => {
      await ipt?.remove(podNetns(['tap0']));
      await uninstallInpodIptablesHost(systemRunner, sim.nodeNs);
    });

    it('the listed interface’s TCP is REDIRECTed to 15001 (original destination by SO_ORIGINAL_DST), NATed or not', async () => {
      expect(await ipt.check(podNetns(['tap0']))).toBe(true);
      expect(await fromVm(vms[0]!, vms[0]!.nat)).toEqual(captured(vms[0]!.nat));
      expect(await fromVm(vms[0]!, vms[0]!.routed)).toEqual(captured(vms[0]!.routed));
    });

    it('the other interface’s TCP is not let around ztunnel either: ISTIO_PRERT takes it to 15006, as inbound', async () => {
      for (const src of [vms[1]!.nat, vms[1]!.routed])
        expect(await fromVm(vms[1]!, src), src).toEqual({ reply: 'ztunnel', ztunnel: [`15006 ${src} -> ${OUTSIDE_IP}:${OUT}`], outside: [], app: [] });
      // To the pod's own app: the listed interface's to 15001, the other's to 15006.
      const toApp = { ip: pod.ip, port: APP };
      const r = vms[0]!.routed;
      expect(await fromVm(vms[0]!, r, toApp)).toEqual({ reply: 'ztunnel', ztunnel: [`15001 ${r} -> ${pod.ip}:${APP}`], outside: [], app: [] });
      const u = vms[1]!.routed;
      expect(await fromVm(vms[1]!, u, toApp)).toEqual({ reply: 'ztunnel', ztunnel: [`15006 ${u} -> ${pod.ip}:${APP}`], outside: [], app: [] });
    });

    it('remove leaves the pod netns as before, its own nat table (the VMs’ MASQUERADE) included', async () => {
      await ipt.remove(podNetns(['tap0']));
      expect(await snapshot()).toEqual(before);
    });
  });
});
