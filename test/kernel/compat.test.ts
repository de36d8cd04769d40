/**
 * Istio's traffic behaviour with real packets on the simulated node, in both capture
 * modes: UDP (other than captured DNS) and ICMP echo from an enrolled pod under
 * `--non-tcp pass` (they leave uncaptured, as Istio) and `--non-tcp drop` (they go
 * nowhere); TCP to port 53 goes to ztunnel's 15053 with DNS capture on and to 15001
 * without (docs/datapath.md O15b, Z5). Oracles: the outside UDP server's record of each
 * datagram's source, ping's answers, the ztunnel stand-in's record of the listener port and
 * original destination of each connection.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SimCluster } from '../../harness/sim/cluster.js';
import { runInNode, type ControllerProcess } from '../../harness/sim/controller.js';
import { OUTSIDE_HOST_IP } from '../../harness/sim/names.js';
import type { SimNode, SimServer } from '../../harness/sim/node.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep, until } from '../support/wait.js';

const UDP_PORT = 9999;
const srcIp = (src: string) => src.slice(0, src.lastIndexOf(':')).replace(/^\[|\]$/g, '');

kernelDescribe('Istio traffic behaviour: --non-tcp and TCP DNS', 'loads BPF, builds network namespaces and iptables', () => {
  let sim: SimNode;
  let ztunnel: SimServer;
  let outside: SimServer;
  let udp: SimServer;
  let controller: ControllerProcess | undefined;
  let pinRoot: string;

  let cluster: SimCluster | undefined;

  beforeAll(async () => {
    cluster = await SimCluster.create({ pods: 2, ztunnel: 'node', kube: false });
    ({ sim, ztunnel, outside, pinRoot } = cluster);
    try {
      udp = await sim.startUdpOutside(UDP_PORT);
    } catch (err) {
      await cluster.teardown();
      throw err;
    }
  });

  afterAll(() => cluster?.teardown());

  async function start(mode: 'ebpf' | 'iptables', extra: string[]): Promise<void> {
    controller = cluster!.startAgent(['--ztunnel-ip', sim.ztunnel.ip, '--enroll', sim.pods[0]!.ip, '--mode', mode, ...extra]);
    await controller.waitFor('programmed');
  }

  async function stop(): Promise<void> {
    expect(await controller!.stop('SIGTERM')).toBe(0);
    controller = undefined;
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
  }

  /** UDP datagrams from a pod to the outside: how many were answered, and how many the server saw from the pod's own IP. */
  async function udpFrom(i: number, count: number): Promise<{ answered: number; seen: number }> {
    const before = udp.accepted.filter((a) => srcIp(a.src) === sim.pods[i]!.ip).length;
    const r = await sim.udpSend(sim.pods[i]!, { ip: sim.outside.ip, port: UDP_PORT }, count, 1_000);
    const answered = r.filter((x) => x.ok && x.reply === 'outside').length;
    if (answered > 0)
      await until('the UDP server’s record', () => udp.accepted.filter((a) => srcIp(a.src) === sim.pods[i]!.ip).length >= before + answered, 3_000);
    return { answered, seen: udp.accepted.filter((a) => srcIp(a.src) === sim.pods[i]!.ip).length - before };
  }

  /** A TCP connection from pod 0 to the outside's address on `port`: the ztunnel listener that took it, and its original destination. */
  async function tcpVia(port: number): Promise<{ listener?: number; origDst?: string }> {
    const n = ztunnel.accepted.length;
    const [r] = await sim.connect(sim.pods[0]!, { ip: sim.outside.ip, port }, 1);
    expect(r?.ok, `TCP to port ${port}: ${r?.error}`).toBe(true);
    await ztunnel.waitForAccepted(n + 1);
    const a = ztunnel.accepted[n]!;
    return { ...(a.port !== undefined && { listener: a.port }), ...(a.origDst !== undefined && { origDst: a.origDst }) };
  }

  for (const mode of ['ebpf', 'iptables'] as const) {
    describe(`${mode} mode`, () => {
      it('--non-tcp pass (the default): UDP and ICMP echo of an enrolled pod leave uncaptured with its own address; its TCP is still captured; TCP/53 goes to 15001 without DNS capture', async () => {
        await start(mode, []);
        try {
          expect(await udpFrom(0, 3)).toEqual({ answered: 3, seen: 3 });
          expect(await sim.ping(sim.pods[0]!, sim.outside.ip, 2)).toBe(2);
          // The node's own ping to the pod is answered too.
          expect(await sim.ping('node', sim.pods[0]!.ip, 2)).toBe(2);
          const before = outside.accepted.length;
          expect(await tcpVia(sim.outside.port)).toEqual({ listener: 15001, origDst: `${sim.outside.ip}:${sim.outside.port}` });
          expect(outside.accepted.length).toBe(before);
          expect(await tcpVia(53)).toEqual({ listener: 15001, origDst: `${sim.outside.ip}:53` });
          // The unenrolled pod, for comparison.
          expect(await udpFrom(1, 2)).toEqual({ answered: 2, seen: 2 });
        } finally {
          await stop();
        }
      });

      it('--non-tcp drop with DNS capture: UDP and ICMP echo of an enrolled pod go nowhere; TCP/53 goes to ztunnel’s DNS port 15053; the unenrolled pod is unaffected', async () => {
        await start(mode, ['--non-tcp', 'drop', '--dns-capture', 'true']);
        try {
          expect(await udpFrom(0, 3)).toEqual({ answered: 0, seen: 0 });
          expect(await sim.ping(sim.pods[0]!, sim.outside.ip, 2)).toBe(0);
          expect(await tcpVia(53)).toEqual({ listener: 15053, origDst: `${sim.outside.ip}:53` });
          expect(await tcpVia(sim.outside.port)).toEqual({ listener: 15001, origDst: `${sim.outside.ip}:${sim.outside.port}` });
          expect(await udpFrom(1, 2)).toEqual({ answered: 2, seen: 2 });
          expect(await sim.ping(sim.pods[1]!, sim.outside.ip, 1)).toBe(1);
        } finally {
          await stop();
        }
      });
    });
  }

  it('iptables mode, through the API double: dns-capture sends the annotated pod’s TCP/53 to 15053 alone; bypass-inbound-capture lets the outside reach its app uncaptured while its own connections stay captured', async () => {
    const kube = await cluster!.startKube();
    const APP = 9292;
    const app = await sim.startPodServer(sim.pods[1]!, APP);
    const NODE = cluster!.nodeName;
    try {
      kube.api.createPod({ name: 'plain', namespace: 'shop', nodeName: NODE, ip: sim.pods[0]!.ip, hostIp: OUTSIDE_HOST_IP });
      kube.api.createPod({
        name: 'annotated',
        namespace: 'shop',
        nodeName: NODE,
        ip: sim.pods[1]!.ip,
        hostIp: OUTSIDE_HOST_IP,
        annotations: { 'ambient.istio.io/dns-capture': 'true', 'ambient.istio.io/bypass-inbound-capture': 'true' },
      });
      controller = cluster!.startAgent(['--mode', 'iptables', '--dns-service', 'none']);
      await controller.waitFor('programmed');
      const via = async (i: number, port: number) => {
        const n = ztunnel.accepted.length;
        const [r] = await sim.connect(sim.pods[i]!, { ip: sim.outside.ip, port }, 1);
        expect(r?.ok, r?.error).toBe(true);
        await ztunnel.waitForAccepted(n + 1);
        return ztunnel.accepted[n]!.port;
      };
      // Both pods programmed: wait until pod 1's connections reach ztunnel.
      const end = Date.now() + 15_000;
      while (Date.now() < end) {
        const n = ztunnel.accepted.length;
        await sim.connect(sim.pods[1]!, sim.outside, 1);
        await sleep(100);
        if (ztunnel.accepted.length > n) break;
      }
      expect(await via(1, 53)).toBe(15053);
      expect(await via(0, 53)).toBe(15001);
      expect(await via(1, sim.outside.port)).toBe(15001);
      const z = ztunnel.accepted.length;
      expect(await sim.connect('outside', { ip: sim.pods[1]!.ip, port: APP }, 2)).toEqual(Array(2).fill({ ok: true, reply: sim.pods[1]!.name }));
      expect(ztunnel.accepted.length).toBe(z);
      expect(await sim.connect('outside', { ip: sim.pods[0]!.ip, port: APP }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
    } finally {
      await app.stop();
      if (controller) await stop();
      await cluster!.stopKube();
    }
  });
});
