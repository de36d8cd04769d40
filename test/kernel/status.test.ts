/**
 * `status` reads the kernel only: against a running simulated node, and again with `run`
 * stopped, it reports the mode, ztunnel with its delivery program, each enrolled address
 * with the programs on its veth (the IDs tc shows) and counters that moved with the traffic.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import type { Status } from '../../src/cli/status.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';

kernelDescribe('status', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    await sim.startZtunnel();
    controller = startController(sim.nodeNs, [
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--enroll',
      `${sim.pods[0]!.ip},${sim.pods[0]!.ip6}`,
      '--dns-servers',
      '10.96.0.10,fd00:96::a',
      '--node-local-dns',
      '169.254.20.10',
    ]);
    await controller.waitFor('programmed');
  });

  afterAll(() => teardownNode(sim, pinRoot, controller));

  const status = async () => JSON.parse(await runInNode(sim.nodeNs, ['status', '--json', '--pin-root', pinRoot])) as Status;

  async function tcProgram(dev: string, dir: string, ns = sim.nodeNs): Promise<number | null> {
    const json = JSON.parse(await systemRunner.run(['tc', '-n', ns, '-j', 'filter', 'show', 'dev', dev, dir])) as {
      options?: { handle?: string; prog?: { id: number } };
    }[];
    return json.find((f) => f.options?.handle === '0xa4b1')?.options?.prog?.id ?? null;
  }

  it('reports the running node: mode, ztunnel, hooks with their program IDs, counters, maps', async () => {
    const pod = sim.pods[0]!;
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 3)).toEqual(Array(3).fill({ ok: true, reply: 'ztunnel' }));
    const s = await status();
    expect(s.mode).toBe('ebpf');
    expect(s.kernel.selects).toBe('ebpf');
    expect(s.ztunnel).toMatchObject({ netns: sim.ztunnel.ns, program: await tcProgram('eth0', 'ingress', sim.ztunnel.ns), xdp: null });
    expect(s.pods.map((p) => p.ip).sort()).toEqual([pod.ip, pod.ip6].sort());
    for (const p of s.pods) {
      expect(p.veth).toBe(pod.hostVeth);
      expect(p.hooks).toEqual({ ingress: await tcProgram(pod.hostVeth, 'ingress'), egress: await tcProgram(pod.hostVeth, 'egress') });
      expect(p.hooks.ingress).not.toBeNull();
      // The outbound program at TC ingress (the default hook), nothing on the XDP hook.
      expect(p.outbound).toEqual({ hook: 'tc', id: p.hooks.ingress });
      expect(p.xdp).toBeNull();
      // 3 connections: at least SYN, ACK, data, FIN... each redirected.
      expect(Number(p.counters.redirected[0])).toBeGreaterThanOrEqual(9);
    }
    expect(s.maps.find((m) => m.map === 'pods')).toMatchObject({ entries: 2, capacity: 65536 });
    expect(s.dnsServers).toEqual(['10.96.0.10', '169.254.20.10', 'fd00:96::a']);
    expect(s.maps.find((m) => m.map === 'dns_servers')).toMatchObject({ entries: 3, capacity: 64 });
    expect(s.maps.find((m) => m.map === 'host_flows')).toMatchObject({ capacity: 16384 });
    const human = await runInNode(sim.nodeNs, ['status', '--pin-root', pinRoot]);
    expect(human).toContain('mode: ebpf');
    expect(human).toContain('DNS servers (UDP 53 uncaptured): 10.96.0.10, 169.254.20.10, fd00:96::a');
    expect(human).toMatch(new RegExp(`${pod.ip.replace(/\./g, '\\.')}\\s+${pod.hostVeth}\\s+tc \\d+\\s+tc \\d+`));
  });

  it('answers the same with run stopped', async () => {
    const running = await status();
    await controller!.stop('SIGTERM');
    controller = undefined;
    const stopped = await status();
    expect(stopped.pods.map((p) => [p.ip, p.hooks])).toEqual(running.pods.map((p) => [p.ip, p.hooks]));
    expect(stopped.ztunnel).toEqual(running.ztunnel);
  });

  it('says not installed after uninstall', async () => {
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
    const s = await status();
    expect(s.mode).toBe('none');
    expect(await runInNode(sim.nodeNs, ['status', '--pin-root', pinRoot])).toContain('mode: not installed');
  });
});
