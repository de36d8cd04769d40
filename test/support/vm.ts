/**
 * A VM behind a pod, as KubeVirt runs one: a netns of the test's (the VM) behind a veth
 * `tap<i>` in the pod's netns, with an address the pod MASQUERADEs out of its eth0 and one
 * routed without NAT (the node routes it to the pod):
 *
 *   tap<i>  10.(250+2i).0.1/24  <->  VM: 10.(250+2i).0.2 (NATed by the pod),
 *                                        10.(251+2i).0.2 (routed, no NAT)
 *
 * The pod must forward (net.ipv4.ip_forward=1 in its netns). Named by the simulated node's
 * prefix, so its teardown removes the VM's netns too.
 */
import type { SimNode, SimPod } from '../../harness/sim/node.js';
import { systemRunner } from '../../src/host/runner.js';

const run = (argv: string[]) => systemRunner.run(argv);

export interface Vm {
  ns: string;
  tap: string;
  nat: string;
  routed: string;
}

/** Adds VM `i` behind `pod`. */
export async function addVm(sim: SimNode, pod: SimPod, i: number): Promise<Vm> {
  const ns = `${sim.prefix}-vm${i}`;
  const tap = `tap${i}`;
  const net = (k: number) => `10.${250 + 2 * i + k}.0`;
  const vm: Vm = { ns, tap, nat: `${net(0)}.2`, routed: `${net(1)}.2` };
  await run(['ip', 'netns', 'add', ns]);
  await run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  await run(['ip', '-n', pod.ns, 'link', 'add', tap, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await run(['ip', '-n', pod.ns, 'addr', 'add', `${net(0)}.1/24`, 'dev', tap]);
  await run(['ip', '-n', pod.ns, 'link', 'set', tap, 'up']);
  await run(['ip', '-n', pod.ns, 'route', 'add', `${net(1)}.0/24`, 'via', vm.nat, 'dev', tap]);
  await run(['ip', '-n', ns, 'addr', 'add', `${vm.nat}/24`, 'dev', 'eth0']);
  await run(['ip', '-n', ns, 'addr', 'add', `${vm.routed}/32`, 'dev', 'eth0']);
  await run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  await run(['ip', '-n', ns, 'route', 'add', 'default', 'via', `${net(0)}.1`]);
  await systemRunner.run(['ip', 'netns', 'exec', pod.ns, 'iptables-nft-restore', '--noflush'], {
    input: `*nat\n-A POSTROUTING -s ${net(0)}.0/24 -o eth0 -j MASQUERADE\nCOMMIT\n`,
  });
  await run(['ip', '-n', sim.nodeNs, 'route', 'add', `${net(1)}.0/24`, 'via', pod.ip, 'dev', pod.hostVeth]);
  return vm;
}
