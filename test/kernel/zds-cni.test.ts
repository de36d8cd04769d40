/**
 * The CNI gate in inpod mode on the simulated node: the agent (`run --ztunnel-mode inpod`,
 * Kubernetes membership from the API double) serves ZDS, the in-pod ztunnel stand-in is
 * connected, and the runtime stand-in creates pods as containerd does (API object,
 * primary wiring, the chain with our plugin from the installed config list). The instant
 * ADD returns, the pod's first connection goes to its own address on 15001: it is answered
 * only if ztunnel already listens in the pod's netns. A refused first connection is a pod
 * that started before ztunnel had it (the bypass this gate exists to prevent).
 *
 * The agent is given an empty --host-proc: pods are known here only through their CNI
 * ADD's netns (CNI_NETNS), never through another run's processes.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SimCluster } from '../../harness/sim/cluster.js';
import type { ControllerProcess } from '../../harness/sim/controller.js';
import type { SimKubeApi } from '../../harness/sim/kube-sim.js';
import type { SimNode } from '../../harness/sim/node.js';
import { SimRuntime, type PluginConf, type PodRun, type PodSpecRt } from '../../harness/sim/runtime.js';
import { ZtunnelInpod } from '../../harness/sim/ztunnel-inpod.js';
import { kernelDescribe } from '../support/gate.js';
import { until } from '../support/wait.js';

const NODE = 'sim-node';
const PODS = 50;
const CONCURRENCY = 5;
const CONFLIST = `{"name":"k8s-pod-network","cniVersion":"1.0.0","plugins":[{"type":"calico"}]}\n`;

kernelDescribe('the CNI gate in inpod mode on the simulated node', 'builds network namespaces', () => {
  let sim: SimNode;
  let kube: SimKubeApi;
  let controller: ControllerProcess | undefined;
  let dir: string;
  const standIns: ZtunnelInpod[] = [];
  const sock = () => join(dir, 'ztunnel', 'ztunnel.sock');
  const conflist = () => join(dir, 'net.d', '10-calico.conflist');

  function chain(): PluginConf {
    const list = JSON.parse(readFileSync(conflist(), 'utf8')) as { plugins: Record<string, unknown>[] };
    const ours = list.plugins.at(-1)!;
    expect(ours.type).toBe('ambient-redirect-cni');
    return { socketPath: ours.socketPath as string, namespacesFile: ours.namespacesFile as string, timeoutMs: ours.timeoutMs as number };
  }

  const runtime = (gated: boolean) =>
    new SimRuntime({
      sim,
      api: kube.api,
      nodeName: NODE,
      chain: gated ? chain() : null,
      plugin: join(dir, 'bin', 'ambient-redirect-cni'),
      target: (pod) => ({ ip: pod.ip, port: 15001 }),
    });

  async function runAll(rt: SimRuntime, specs: PodSpecRt[]): Promise<PodRun[]> {
    const out: PodRun[] = [];
    const queue = [...specs];
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let s = queue.shift(); s; s = queue.shift()) out.push(await rt.runSandbox(s, rt.createPodObject(s)));
      }),
    );
    return out;
  }

  /** First connections not answered by ztunnel inside the pod. */
  const bypasses = (runs: PodRun[]) => runs.filter((r) => r.connection?.reply !== 'ztunnel').length;

  let cluster: SimCluster | undefined;

  beforeAll(async () => {
    cluster = await SimCluster.create({ pods: 0, nodeName: NODE, ztunnel: 'inpod', scratch: 'ar-zds-cni-', hostProc: true });
    ({ sim, kube, dir } = cluster);
    try {
      for (const d of ['net.d', 'bin']) mkdirSync(join(dir, d));
      writeFileSync(conflist(), CONFLIST);
      controller = cluster.startAgent(['--ztunnel-mode', 'inpod', '--zds-socket', sock(), '--resync-interval', '30', ...cluster.cniFlags(8, true)]);
      await controller.waitFor('programmed');
      await controller.waitFor('cni: plugin installed');
      const z = new ZtunnelInpod({ socket: sock() });
      standIns.push(z);
      await until('ztunnel connected', () => z.ready);
    } catch (err) {
      await teardown();
      throw err;
    }
  });

  async function teardown(): Promise<void> {
    for (const z of standIns) z.close();
    await cluster?.teardown();
    cluster = undefined;
    controller = undefined;
  }
  afterAll(teardown);

  it(`gate on: ${PODS} pods whose first connection goes to ztunnel in their own netns the instant ADD returns; none misses it`, async () => {
    const rt = runtime(true);
    const specs = Array.from({ length: PODS }, (_, i) => ({ index: i, name: `gated-${i}`, namespace: 'shop' }));
    const runs = await runAll(rt, specs);
    for (const r of runs) expect(r.add?.code, r.add?.stdout).toBe(0);
    const adds = runs.map((r) => r.add!.ms).sort((a, b) => a - b);
    console.log(
      `cni gate (inpod) on: ${bypasses(runs)} of ${PODS} first connections missed ztunnel; ADD p50 ${adds[PODS >> 1]!.toFixed(1)} ms, max ${adds.at(-1)!.toFixed(1)} ms`,
    );
    expect(bypasses(runs)).toBe(0);
    expect(standIns[0]!.held().length).toBe(PODS);
    for (const r of runs) await rt.teardown(specs[r.pod.index]!, r.uid, r.containerId);
  }, 180_000);

  it('gate off (plugin not in the chain): the first connections miss ztunnel (the oracle sees a bypass)', async () => {
    const rt = runtime(false);
    const specs = Array.from({ length: 10 }, (_, i) => ({ index: 60 + i, name: `ungated-${i}`, namespace: 'shop' }));
    const runs = await runAll(rt, specs);
    const n = bypasses(runs);
    console.log(`cni gate (inpod) off: ${n} of ${specs.length} first connections missed ztunnel`);
    expect(runs.every((r) => r.started)).toBe(true);
    expect(n).toBeGreaterThan(0);
    for (const r of runs) await rt.teardown(specs[r.pod.index - 60]!, r.uid, r.containerId);
  }, 120_000);

  it('no ztunnel connected: an ambient pod’s ADD fails in time with a clear message, a plain pod starts, and the retry succeeds once ztunnel is back', async () => {
    standIns[0]!.close();
    const rt = runtime(true);
    const late: PodSpecRt = { index: 120, name: 'late', namespace: 'shop' };
    const uid = rt.createPodObject(late);
    const failed = await rt.runSandbox(late, uid);
    expect(failed.started).toBe(false);
    const err = JSON.parse(failed.add!.stdout) as { code: number; msg: string };
    expect(err.code).toBe(11);
    expect(err.msg).toBe('ambient-redirect: pod shop/late: not in place within 8000 ms: no ztunnel is connected to the ZDS socket');

    const plain: PodSpecRt = { index: 121, name: 'web', namespace: 'plain', connect: false };
    const plainRun = await rt.runSandbox(plain, rt.createPodObject(plain));
    expect(plainRun.started).toBe(true);
    expect(plainRun.add!.ms).toBeLessThan(1_000);

    const z = new ZtunnelInpod({ socket: sock() });
    standIns.push(z);
    await until('ztunnel back', () => z.ready);
    const retry = await rt.runSandbox(late, uid);
    expect(retry.started, retry.add?.stdout).toBe(true);
    expect(retry.connection?.reply).toBe('ztunnel');
    await rt.teardown(late, uid, retry.containerId);
    await rt.teardown(plain, '', plainRun.containerId);
  }, 120_000);
});
