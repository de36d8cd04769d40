/**
 * The CNI gate on the simulated node: the agent runs as a real process (Kubernetes
 * membership from the API double, --cni-socket, --cni-install into a scratch CNI config
 * folder), and the runtime stand-in creates pods the way containerd does: API object,
 * primary wiring, then the chain read from the installed config list, the pod's first
 * connection the instant ADD returns. Oracles: the outside server's record of who
 * connected (a pod IP there is a bypass), ztunnel's record, the plugin's stdout and exit
 * code, the config file's bytes.
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SimCluster } from '../../harness/sim/cluster.js';
import { runInNode, type ControllerProcess } from '../../harness/sim/controller.js';
import type { SimKubeApi } from '../../harness/sim/kube-sim.js';
import type { SimNode, SimServer } from '../../harness/sim/node.js';
import { SimRuntime, type PluginConf, type PodRun, type PodSpecRt } from '../../harness/sim/runtime.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep } from '../support/wait.js';
import { openPinnedMap } from '../../src/bpf/maps.js';
import { pinDir } from '../../src/bpf/pins.js';
import { systemRunner } from '../../src/host/runner.js';
import { decodePodInfo, encodeAddrKey } from '../../src/bpf/codec.js';

const NODE = 'sim-node';
const PODS = 50;
const CONCURRENCY = 5;
const CONFLIST = `{
    "name":"k8s-pod-network",  "cniVersion":"1.0.0",
    "plugins":[ {"type":"calico","ipam":{"type":"calico-ipam"}},
      {"type":"portmap","snat":true,"capabilities":{"portMappings":true}} ]
}
`;

kernelDescribe('the CNI gate on the simulated node', 'loads BPF, builds network namespaces', () => {
  let sim: SimNode;
  let kube: SimKubeApi;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer;
  let outside: SimServer;
  let dir: string;
  let args: string[];
  const conflist = () => join(dir, 'net.d', '10-calico.conflist');
  const podIps = new Set<string>();

  /** Our entry as the runtime reads it from the installed list. */
  function chainFromConflist(): PluginConf {
    const list = JSON.parse(readFileSync(conflist(), 'utf8')) as { plugins: Record<string, unknown>[] };
    const ours = list.plugins.at(-1)!;
    expect(ours.type).toBe('ambient-redirect-cni');
    return { socketPath: ours.socketPath as string, namespacesFile: ours.namespacesFile as string, timeoutMs: ours.timeoutMs as number };
  }

  async function runAll(rt: SimRuntime, specs: PodSpecRt[]): Promise<PodRun[]> {
    const out: PodRun[] = [];
    const queue = [...specs];
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        for (let s = queue.shift(); s; s = queue.shift()) {
          const uid = rt.createPodObject(s);
          out.push(await rt.runSandbox(s, uid));
        }
      }),
    );
    return out;
  }

  /** Connections the outside server saw straight from these pods (bypasses). */
  const bypassesFrom = (runs: PodRun[]) => {
    const ips = new Set(runs.map((r) => r.pod.ip));
    // src is "IP:port".
    return outside.accepted.filter((a) => ips.has(a.src.slice(0, a.src.lastIndexOf(':')).replace(/^::ffff:/, ''))).length;
  };

  let cluster: SimCluster | undefined;

  beforeAll(async () => {
    cluster = await SimCluster.create({ pods: 0, nodeName: NODE, ztunnel: 'node', scratch: 'ar-cni-' });
    ({ sim, kube, ztunnel, outside, dir } = cluster);
    try {
      mkdirSync(join(dir, 'net.d'));
      mkdirSync(join(dir, 'bin'));
      writeFileSync(conflist(), CONFLIST);
      args = ['--backoff-initial', '0.2', '--backoff-max', '2', '--resync-interval', '30', ...cluster.cniFlags(5, true)];
      controller = cluster.startAgent(args);
      await controller.waitFor('programmed');
      await controller.waitFor('cni: plugin installed');
    } catch (err) {
      await teardown();
      throw err;
    }
  });

  async function teardown(): Promise<void> {
    await cluster?.teardown();
    cluster = undefined;
    controller = undefined;
  }
  afterAll(teardown);

  it('installs itself last in the chain, with the ambient namespace list beside it', () => {
    const list = JSON.parse(readFileSync(conflist(), 'utf8')) as { plugins: { type: string }[] };
    expect(list.plugins.map((p) => p.type)).toEqual(['calico', 'portmap', 'ambient-redirect-cni']);
    expect(existsSync(join(dir, 'bin', 'ambient-redirect-cni'))).toBe(true);
    expect(readFileSync(chainFromConflist().namespacesFile, 'utf8')).toBe('shop\n');
  });

  it(`gate on: ${PODS} pods that connect out the instant ADD returns; none reaches the outside directly`, async () => {
    const rt = new SimRuntime({ sim, api: kube.api, nodeName: NODE, chain: chainFromConflist(), plugin: join(dir, 'bin', 'ambient-redirect-cni') });
    const specs = Array.from({ length: PODS }, (_, i) => ({ index: i, name: `gated-${i}`, namespace: 'shop' }));
    const zBefore = ztunnel.accepted.length;
    const runs = await runAll(rt, specs);
    for (const r of runs) {
      podIps.add(r.pod.ip);
      expect(r.add?.code, r.add?.stdout).toBe(0);
      // The plugin passed the primary's result on.
      expect(JSON.parse(r.add!.stdout).ips[0].address).toBe(`${r.pod.ip}/32`);
    }
    await sleep(300); // the servers' reports are asynchronous
    const adds = runs.map((r) => r.add!.ms).sort((a, b) => a - b);
    console.log(
      `cni gate on: ${bypassesFrom(runs)} of ${PODS} first connections bypassed; ADD p50 ${adds[PODS >> 1]!.toFixed(1)} ms, max ${adds.at(-1)!.toFixed(1)} ms`,
    );
    expect(bypassesFrom(runs)).toBe(0);
    expect(runs.filter((r) => r.connection?.reply === 'ztunnel').length).toBe(PODS);
    expect(ztunnel.accepted.length - zBefore).toBe(PODS);
    for (const r of runs) await rt.teardown(specs[r.pod.index]!, r.uid, r.containerId);
  }, 180_000);

  it('gate on, pods labelled ambient in a namespace that is not: held until captured like the rest; unlabelled ones pass', async () => {
    // Istio's default rules enroll a pod by its own label in any namespace (docs/cni.md,
    // "What ADD does"): the gate holds those as it holds the pods of labelled namespaces.
    const rt = new SimRuntime({ sim, api: kube.api, nodeName: NODE, chain: chainFromConflist(), plugin: join(dir, 'bin', 'ambient-redirect-cni') });
    const n = 10;
    const labelled = Array.from({ length: n }, (_, i) => ({
      index: 200 + i,
      name: `labelled-${i}`,
      namespace: 'plain',
      labels: { 'istio.io/dataplane-mode': 'ambient' },
    }));
    const unlabelled = [{ index: 200 + n, name: 'unlabelled', namespace: 'plain' }];
    const runs = await runAll(rt, labelled);
    const [other] = await runAll(rt, unlabelled);
    await sleep(300); // the servers' reports are asynchronous
    console.log(`cni gate, pod label in an unlabelled namespace: ${bypassesFrom(runs)} of ${n} first connections bypassed`);
    for (const r of runs) expect(r.add?.code, r.add?.stdout).toBe(0);
    expect(bypassesFrom(runs)).toBe(0);
    expect(runs.map((r) => r.connection?.reply)).toEqual(Array(n).fill('ztunnel'));
    expect(other!.add?.code).toBe(0);
    expect(other!.connection?.reply).toBe('outside');
    for (const r of runs) await rt.teardown(labelled[r.pod.index - 200]!, r.uid, r.containerId);
    await rt.teardown(unlabelled[0]!, other!.uid, other!.containerId);
  }, 120_000);

  const tcFilters = (dev: string, dir: 'ingress' | 'egress') => systemRunner.run(['tc', '-n', sim.nodeNs, 'filter', 'show', 'dev', dev, dir]);

  it("fast path: when ADD answers, the entry is on the pod's veth and our filters are attached (agent stopped the instant ADD returns)", async () => {
    const pods = openPinnedMap(pinDir(cluster!.pinRoot), 'pods');
    const agent = controller!;
    const rt = new SimRuntime({
      sim,
      api: kube.api,
      nodeName: NODE,
      chain: chainFromConflist(),
      plugin: join(dir, 'bin', 'ambient-redirect-cni'),
      // Frozen before the pass that follows the fast path can place anything.
      afterAdd: () => process.kill(agent.pid, 'SIGSTOP'),
    });
    const n = 10;
    try {
      for (let i = 0; i < n; i++) {
        const spec: PodSpecRt = { index: 130 + i, name: `fast-${i}`, namespace: 'shop', connect: false };
        const seen = agent.events.length;
        let run: PodRun;
        try {
          run = await rt.runSandbox(spec, rt.createPodObject(spec));
          expect(run.add?.code, run.add?.stdout).toBe(0);
          const [veth] = JSON.parse(await systemRunner.run(['ip', '-n', sim.nodeNs, '-j', 'link', 'show', 'dev', run.pod.hostVeth])) as { ifindex: number }[];
          for (const ip of [run.pod.ip, run.pod.ip6]) {
            const v = pods.lookup(encodeAddrKey(ip));
            expect(v, `${ip}: no entry when ADD answered`).not.toBeNull();
            expect(decodePodInfo(v!).ifindex, `${ip}: entry not on the pod's veth`).toBe(veth!.ifindex);
          }
          for (const [dir, prog] of [
            ['ingress', /out_redir/],
            ['egress', /in_redirect/],
          ] as const)
            expect(await tcFilters(run.pod.hostVeth, dir), `${dir} filter of ${run.pod.hostVeth} when ADD answered`).toMatch(prog);
        } finally {
          process.kill(agent.pid, 'SIGCONT');
        }
        const ev = await agent.waitForAfter(seen, 'cni: pod enrolled before start', 5_000);
        expect(ev).toMatchObject({ pod: spec.name, fastPath: true });
        await rt.teardown(spec, run.uid, run.containerId);
      }
    } finally {
      pods.close();
    }
  }, 60_000);

  it('fast path, sandbox facts the API then contradicts: the next pass corrects the entry', async () => {
    const pods = openPinnedMap(pinDir(cluster!.pinRoot), 'pods');
    const rt = new SimRuntime({ sim, api: kube.api, nodeName: NODE, chain: chainFromConflist(), plugin: join(dir, 'bin', 'ambient-redirect-cni') });
    const spec: PodSpecRt = { index: 140, name: 'contradicted', namespace: 'shop', connect: false };
    try {
      const seen = controller!.events.length;
      const run = await rt.runSandbox(spec, rt.createPodObject(spec));
      expect(run.add?.code, run.add?.stdout).toBe(0);
      expect(await controller!.waitForAfter(seen, 'cni: pod enrolled before start', 5_000)).toMatchObject({ fastPath: true });
      expect(pods.lookup(encodeAddrKey(run.pod.ip))).not.toBeNull();
      // The API has the last word: the pod's IPs are others (no route on this node).
      kube.api.updatePod(spec.namespace, spec.name, (o) => {
        const st = o.status as Record<string, unknown>;
        st.podIP = '198.18.3.7';
        st.podIPs = [{ ip: '198.18.3.7' }];
      });
      let left = true;
      for (let t = 0; t < 50 && left; t++) {
        await sleep(100);
        left = [run.pod.ip, run.pod.ip6].some((ip) => pods.lookup(encodeAddrKey(ip)) !== null);
      }
      expect(left, 'the fast path entries outlived a pass that no longer wants them').toBe(false);
      await rt.teardown(spec, run.uid, run.containerId);
    } finally {
      pods.close();
    }
  }, 30_000);

  it(`gate off (plugin not in the chain): how many first connections bypass ztunnel`, async () => {
    const rt = new SimRuntime({ sim, api: kube.api, nodeName: NODE, chain: null });
    const specs = Array.from({ length: PODS }, (_, i) => ({ index: PODS + i, name: `ungated-${i}`, namespace: 'shop' }));
    const runs = await runAll(rt, specs);
    await sleep(300);
    const n = bypassesFrom(runs);
    console.log(`cni gate off: ${n} of ${PODS} first connections bypassed`);
    const outcome = (r: PodRun) => (r.connection?.ok ? r.connection.reply : r.connection?.error);
    console.log(
      `cni gate off outcomes: ${JSON.stringify(
        runs.reduce<Record<string, number>>((m, r) => {
          m[String(outcome(r))] = (m[String(outcome(r))] ?? 0) + 1;
          return m;
        }, {}),
      )}`,
    );
    expect(runs.every((r) => r.started)).toBe(true);
    for (const r of runs) await rt.teardown(specs[r.pod.index - PODS]!, r.uid, r.containerId);
  }, 180_000);

  it('agent down: ADD of an ambient pod fails with a clear message and succeeds on retry once the agent is back; other pods start meanwhile', async () => {
    const rt = new SimRuntime({ sim, api: kube.api, nodeName: NODE, chain: chainFromConflist(), plugin: join(dir, 'bin', 'ambient-redirect-cni') });
    await controller!.stop('SIGTERM');
    controller = undefined;

    const late: PodSpecRt = { index: 120, name: 'late', namespace: 'shop' };
    const lateUid = rt.createPodObject(late);
    const failed = await rt.runSandbox(late, lateUid);
    expect(failed.started).toBe(false);
    expect(failed.add?.code).toBe(1);
    const err = JSON.parse(failed.add!.stdout) as { code: number; msg: string; details: string };
    expect(err.code).toBe(11);
    expect(err.msg).toMatch(/agent unreachable; namespace shop is ambient/);
    expect(err.details).toMatch(/cni\.sock/);

    const plain: PodSpecRt = { index: 121, name: 'web', namespace: 'plain' };
    const plainRun = await rt.runSandbox(plain, rt.createPodObject(plain));
    expect(plainRun.started).toBe(true);
    expect(plainRun.add!.ms).toBeLessThan(1_000); // no waiting on the absent agent
    expect(JSON.parse(plainRun.add!.stdout).ips[0].address).toBe(`${plainRun.pod.ip}/32`);
    expect(plainRun.connection?.reply).toBe('outside');

    controller = cluster!.startAgent(args);
    await controller.waitFor('programmed');
    // The runtime retries with a new sandbox until ADD succeeds.
    let retry: PodRun | undefined;
    for (let attempt = 0; attempt < 10 && !retry?.started; attempt++) {
      if (attempt > 0) await sleep(500);
      retry = await rt.runSandbox(late, lateUid);
    }
    expect(retry?.started, retry?.add?.stdout).toBe(true);
    expect(retry?.connection?.reply).toBe('ztunnel');
    await sleep(200);
    expect(bypassesFrom([retry!])).toBe(0);
    await rt.teardown(late, lateUid, retry!.containerId);
    await rt.teardown(plain, '', plainRun.containerId);
  }, 120_000);

  it('the primary CNI rewrites its list: the running agent puts its entry back', async () => {
    const seen = controller!.events.length;
    writeFileSync(conflist(), CONFLIST);
    const ev = await controller!.waitForAfter(seen, 'cni: plugin installed', 15_000);
    expect(ev).toMatchObject({ changed: true, reinserted: true });
    expect(chainFromConflist().namespacesFile).toMatch(/ambient-namespaces$/);
  });

  it('uninstall (with the agent stopped, as the chart does) leaves the CNI config list byte-identical and removes the plugin', async () => {
    expect(readFileSync(conflist(), 'utf8')).not.toBe(CONFLIST);
    // A running agent puts its entry back (it watches the folder): the chart uninstalls
    // from an init container after the agent stopped.
    await controller!.stop('SIGTERM');
    controller = undefined;
    await runInNode(sim.nodeNs, [
      'cni',
      'uninstall',
      '--cni-bin-dir',
      join(dir, 'bin'),
      '--cni-conf-dir',
      join(dir, 'net.d'),
      '--cni-state-dir',
      join(dir, 'state'),
    ]);
    expect(readFileSync(conflist())).toEqual(Buffer.from(CONFLIST));
    expect(existsSync(join(dir, 'bin', 'ambient-redirect-cni'))).toBe(false);
  });
});
