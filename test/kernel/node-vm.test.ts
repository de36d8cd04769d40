/**
 * `ambient.istio.io/reroute-virtual-interfaces` in the node topology, with real packets: an
 * enrolled pod that runs a VM (test/support/vm.ts: a tap in the pod's netns, the VM's
 * address NATed by the pod, and one routed without NAT). The node topology needs nothing
 * per interface (docs/operations.md, "Per-pod annotations"): every frame that leaves the
 * pod's netns crosses its host veth and is judged there. The VM's TCP that the pod NATs
 * carries the pod's address and is captured as the pod's own (ztunnel, the original
 * destination kept); the VM's own address is not the pod's, so its TCP is dropped as
 * spoofed (O8 in ebpf mode, the veth binding in iptables mode): around ztunnel, never.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { systemRunner } from '../../src/host/runner.js';
import { kernelDescribe } from '../support/gate.js';
import { teardownNode } from '../support/node.js';
import { addVm, type Vm } from '../support/vm.js';

const ipOf = (src: string) => src.slice(0, src.lastIndexOf(':')).replace(/^::ffff:/, '');

for (const mode of ['ebpf', 'iptables'] as const)
  kernelDescribe(
    `reroute-virtual-interfaces: a VM behind an enrolled pod (node topology, ${mode} mode)`,
    'creates network namespaces and loads BPF programs',
    () => {
      let sim: SimNode;
      let pod: SimPod;
      let vm: Vm;
      let pinRoot: string;
      let controller: ControllerProcess | undefined;
      let ztunnel: SimServer;
      let outside: SimServer;
      let nextPort = 30000 + Math.floor(Math.random() * 20000);

      /** One connection from the VM's `src` to the outside server: who answered, whom the servers saw. */
      async function fromVm(src: string): Promise<{ reply: string; ztunnel: string[]; outside: string[] }> {
        const port = nextPort++;
        const mine = (a: { src: string }) => a.src.endsWith(`:${port}`);
        const [r] = await sim.connect(
          { index: -1, name: vm.ns, ns: vm.ns, ip: src, ip6: '', hostVeth: '' },
          { ip: sim.outside.ip, port: sim.outside.port },
          1,
          1_500,
          src,
          port,
        );
        return {
          reply: r!.ok ? r!.reply! : 'failed',
          ztunnel: ztunnel.accepted.filter(mine).map((a) => `${ipOf(a.src)} -> ${a.origDst ?? '?'}`),
          outside: outside.accepted.filter(mine).map((a) => ipOf(a.src)),
        };
      }

      beforeAll(async () => {
        sim = await createSimNode({ pods: 1 });
        pod = sim.pods[0]!;
        await systemRunner.run(['ip', 'netns', 'exec', pod.ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
        vm = await addVm(sim, pod, 0);
        pinRoot = pinRootFor(sim);
        mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
        [ztunnel, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
      }, 60_000);

      afterAll(() => teardownNode(sim, pinRoot, controller));

      it('before enrollment the VM reaches the outside directly, NATed as the pod or with its own address', async () => {
        expect(await fromVm(vm.nat)).toEqual({ reply: 'outside', ztunnel: [], outside: [pod.ip] });
        expect(await fromVm(vm.routed)).toEqual({ reply: 'outside', ztunnel: [], outside: [vm.routed] });
      });

      it('enrolled: the NATed VM traffic is captured as the pod’s (original destination kept); the VM’s own address is dropped, never direct', async () => {
        controller = startController(sim.nodeNs, ['--mode', mode, '--pin-root', pinRoot, '--ztunnel-ip', sim.ztunnel.ip, '--enroll', `${pod.ip},${pod.ip6}`]);
        await controller.waitFor('programmed');
        expect(await fromVm(vm.nat)).toEqual({ reply: 'ztunnel', ztunnel: [`${pod.ip} -> ${sim.outside.ip}:${sim.outside.port}`], outside: [] });
        expect(await fromVm(vm.routed)).toEqual({ reply: 'failed', ztunnel: [], outside: [] });
      }, 60_000);
    },
  );
