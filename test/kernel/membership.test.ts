/**
 * Kubernetes membership on the simulated node, with the controller as a real process in
 * the node netns, talking to the API double through a kubeconfig (the double is reached
 * over 127.0.0.1:6443 of the node netns, see harness/sim/kube-api.ts). Oracles: bpftool's
 * dump of the pinned pods map, the servers' records of real connections, the double's
 * own request log and store.
 *
 * Durations are scaled (backoff cap 3 s instead of 30 s, stall timeout 3 s, outage 12 s
 * instead of 60 s): what is checked is the behaviour — nothing removed, traffic
 * unaffected, retries bounded by the cap to <= 1/s, convergence after recovery.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { SimCluster } from '../../harness/sim/cluster.js';
import type { ControllerProcess } from '../../harness/sim/controller.js';
import type { SimKubeApi } from '../../harness/sim/kube-sim.js';
import { OUTSIDE_HOST_IP } from '../../harness/sim/names.js';
import { unwirePod, wirePod, type SimNode, type SimServer } from '../../harness/sim/node.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep, until as waitUntil } from '../support/wait.js';

const NODE = 'sim-node';
const ANN = 'ambient.istio.io/redirection';

kernelDescribe('Kubernetes membership on the simulated node', 'loads BPF, builds network namespaces', () => {
  let sim: SimNode;
  let kube: SimKubeApi;
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer;
  let outside: SimServer;
  let pinRoot: string;
  const ip = (i: number) => sim.pods[i]!.ip;

  async function mapKeys(): Promise<string[]> {
    const out = await systemRunner.run(['bpftool', '-j', 'map', 'dump', 'pinned', join(pinRoot, 'ambient-redirect', 'v1', 'pods')]);
    return (JSON.parse(out) as { formatted: { key: { addr: number[] } } }[]).map((e) => e.formatted.key.addr.slice(12).join('.')).sort();
  }

  async function mapBecomes(want: string[], ms = 10_000): Promise<void> {
    const end = Date.now() + ms;
    let got: string[] = [];
    while (Date.now() < end) {
      got = await mapKeys();
      if (JSON.stringify(got) === JSON.stringify([...want].sort())) return;
      await sleep(100);
    }
    throw new Error(`pinned map is ${JSON.stringify(got)}, want ${JSON.stringify([...want].sort())}; log: ${JSON.stringify(controller?.events.slice(-5))}`);
  }

  /** Samples the map for `ms`: every sample must equal `want` (nothing removed, nothing added). */
  async function mapStays(want: string[], ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      expect(await mapKeys()).toEqual([...want].sort());
      await sleep(200);
    }
  }

  const until = (what: string, cond: () => boolean, ms = 10_000) => waitUntil(what, cond, ms, 50);

  /** Where a pod's connections went: 'ztunnel' (captured) or 'direct'. */
  async function route(i: number): Promise<'ztunnel' | 'direct' | 'failed'> {
    const z = ztunnel.accepted.length;
    const o = outside.accepted.length;
    const [r] = await sim.connect(sim.pods[i]!, sim.outside, 1);
    if (!r?.ok) return 'failed';
    await until('the server record', () => ztunnel.accepted.length + outside.accepted.length > z + o, 3_000);
    return ztunnel.accepted.length > z ? 'ztunnel' : 'direct';
  }

  const pod = (name: string, ns: string, i: number) => kube.api.createPod({ name, namespace: ns, nodeName: NODE, ip: ip(i), hostIp: OUTSIDE_HOST_IP });

  let cluster: SimCluster | undefined;

  beforeAll(async () => {
    cluster = await SimCluster.create({ pods: 4, nodeName: NODE, ztunnel: 'node' });
    ({ sim, kube, ztunnel, outside, pinRoot } = cluster);
    try {
      // A pod of another node with an IP of this one: only the field selector keeps it out.
      kube.api.createPod({ name: 'elsewhere', namespace: 'shop', nodeName: 'other-node', ip: ip(3), hostIp: '198.19.9.9' });
      controller = cluster.startAgent([
        '--backoff-initial',
        '0.2',
        '--backoff-max',
        '3',
        '--watch-stall-timeout',
        '3',
        '--resync-interval',
        '30',
        // The scaled outage below bounds the watches' retries (cap 3 s here, 30 s for real);
        // the DNS Service read keeps its real 30 s schedule and its own backoff, which
        // test/unit/kube-dns.test.ts checks: in a 6 s window it would be one more request.
        '--dns-service',
        'none',
      ]);
      await controller.waitFor('programmed');
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

  it('end to end: a pod created in an enrolled namespace is captured; a namespace flip sends it direct; the status annotation follows', async () => {
    pod('web-0', 'shop', 0);
    pod('db-1', 'plain', 1);
    await mapBecomes([ip(0)]);
    expect(await route(0)).toBe('ztunnel');
    expect(ztunnel.accepted.at(-1)?.origDst).toBe(`${sim.outside.ip}:${sim.outside.port}`);
    expect(await route(1)).toBe('direct');
    await until('annotation', () => kube.api.getPod('shop', 'web-0')?.metadata.annotations[ANN] === 'enabled');
    expect(kube.api.getPod('plain', 'db-1')?.metadata.annotations[ANN]).toBeUndefined();
    // Patches went to pods/status as merge patches: the double refuses anything else.
    expect(kube.api.requests.filter((r) => r.kind === 'patch').every((r) => r.status === 200 && r.path.endsWith('/status'))).toBe(true);

    kube.api.upsertNamespace('shop', {});
    await mapBecomes([]);
    expect(await route(0)).toBe('direct');
    await until('annotation removed', () => kube.api.getPod('shop', 'web-0')?.metadata.annotations[ANN] === undefined);

    kube.api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
    await mapBecomes([ip(0)]);
    expect(await route(0)).toBe('ztunnel');
  });

  it('pod-level enrollment (Istio’s rules): a pod labelled ambient in an unlabelled namespace is captured, a pod’s opt-out wins over its namespace, relabelling follows', async () => {
    const DM = 'istio.io/dataplane-mode';
    kube.api.createPod({ name: 'solo', namespace: 'plain', nodeName: NODE, ip: ip(1), hostIp: OUTSIDE_HOST_IP, labels: { [DM]: 'ambient' } });
    kube.api.createPod({ name: 'out', namespace: 'shop', nodeName: NODE, ip: ip(2), hostIp: OUTSIDE_HOST_IP, labels: { [DM]: 'none' } });
    await mapBecomes([ip(0), ip(1)]);
    expect(await route(1)).toBe('ztunnel');
    expect(await route(2)).toBe('direct');
    await until('annotation on the pod-labelled pod', () => kube.api.getPod('plain', 'solo')?.metadata.annotations[ANN] === 'enabled');
    // The opt-out and the pod label flip; the namespace's label is never touched.
    kube.api.updatePod('plain', 'solo', (o) => (o.metadata.labels[DM] = 'none'));
    kube.api.updatePod('shop', 'out', (o) => delete o.metadata.labels[DM]);
    await mapBecomes([ip(0), ip(2)]);
    expect(await route(1)).toBe('direct');
    expect(await route(2)).toBe('ztunnel');
    kube.api.deletePod('plain', 'solo');
    kube.api.deletePod('shop', 'out');
    await mapBecomes([ip(0)]);
  });

  it('per-pod annotations: dns-capture sends that pod’s TCP/53 to 15053 alone; bypass-inbound-capture lets the outside reach the pod’s app uncaptured, its own connections stay captured; removing them restores capture', async () => {
    const APP = 9191;
    const app = await sim.startPodServer(sim.pods[1]!, APP);
    const DNS_ANN = 'ambient.istio.io/dns-capture';
    const BYPASS_ANN = 'ambient.istio.io/bypass-inbound-capture';
    try {
      kube.api.createPod({
        name: 'ann',
        namespace: 'shop',
        nodeName: NODE,
        ip: ip(1),
        hostIp: OUTSIDE_HOST_IP,
        annotations: { [DNS_ANN]: 'true', [BYPASS_ANN]: 'true' },
      });
      await mapBecomes([ip(0), ip(1)]);
      /** The ztunnel listener a TCP connection from pod i to the outside's address on `port` reached. */
      const listener = async (i: number, port: number) => {
        const n = ztunnel.accepted.length;
        const [r] = await sim.connect(sim.pods[i]!, { ip: sim.outside.ip, port }, 1);
        expect(r?.ok, r?.error).toBe(true);
        await ztunnel.waitForAccepted(n + 1);
        return [ztunnel.accepted[n]!.port, ztunnel.accepted[n]!.origDst];
      };
      // The node's DNS capture is off: only the annotated pod's TCP/53 goes to the DNS port.
      expect(await listener(1, 53)).toEqual([15053, `${sim.outside.ip}:53`]);
      expect(await listener(0, 53)).toEqual([15001, `${sim.outside.ip}:53`]);
      // Inbound bypassed: the outside reaches the app itself, ztunnel sees nothing of it.
      const z = ztunnel.accepted.length;
      expect(await sim.connect('outside', { ip: ip(1), port: APP }, 2)).toEqual(Array(2).fill({ ok: true, reply: sim.pods[1]!.name }));
      await app.waitForAccepted(2);
      expect(ztunnel.accepted.length).toBe(z);
      // Its own outbound connections are still captured.
      expect(await route(1)).toBe('ztunnel');
      // Pod 0 (no annotation): inbound captured.
      const p0 = await sim.startPodServer(sim.pods[0]!, APP);
      try {
        expect(await sim.connect('outside', { ip: ip(0), port: APP }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        expect(p0.accepted).toHaveLength(0);
      } finally {
        await p0.stop();
      }
      // The annotations go: capture comes back for the pod, with the node's settings.
      kube.api.updatePod('shop', 'ann', (o) => {
        delete o.metadata.annotations[DNS_ANN];
        delete o.metadata.annotations[BYPASS_ANN];
      });
      const end = Date.now() + 10_000;
      let reply = '';
      while (Date.now() < end) {
        const [r] = await sim.connect('outside', { ip: ip(1), port: APP }, 1);
        reply = r?.reply ?? '';
        if (reply === 'ztunnel') break;
        await sleep(200);
      }
      expect(reply).toBe('ztunnel');
      expect(await listener(1, 53)).toEqual([15001, `${sim.outside.ip}:53`]);
    } finally {
      await app.stop();
      kube.api.deletePod('shop', 'ann');
      await mapBecomes([ip(0)]);
    }
  });

  it('410 Gone: exactly one relist, then events flow', async () => {
    const podLists = kube.api.count('list', '/api/v1/pods');
    const nsLists = kube.api.count('list', '/api/v1/namespaces');
    kube.api.expireWatches();
    await sleep(300);
    pod('web-2', 'shop', 2);
    await mapBecomes([ip(0), ip(2)]);
    await sleep(500);
    expect(kube.api.count('list', '/api/v1/pods') - podLists).toBe(1);
    expect(kube.api.count('list', '/api/v1/namespaces') - nsLists).toBe(1);
  });

  it('a stalled watch is restarted and converges', async () => {
    kube.api.stallWatches(true);
    kube.api.deletePod('shop', 'web-2');
    await sleep(300);
    kube.api.stallWatches(false); // the open watches stay silent: only a restart sees the delete
    await mapBecomes([ip(0)], 15_000);
    expect(controller!.events.some((e) => e.msg === 'watch failed; restarting after backoff' && String(e.error).includes('silent'))).toBe(true);
  });

  it('a non-410 watch error restarts the watch and events flow again', async () => {
    const watches = kube.api.count('watch', '/api/v1/pods');
    kube.api.failWatches(500);
    await sleep(100);
    pod('web-2b', 'shop', 2);
    await mapBecomes([ip(0), ip(2)]);
    expect(kube.api.count('watch', '/api/v1/pods')).toBeGreaterThan(watches);
  });

  it('500, 403 and truncated JSON on relists: nothing removed', async () => {
    kube.api.faults.failNext = { status: 500, count: 2 };
    kube.api.expireWatches();
    await mapStays([ip(0), ip(2)], 1_500);
    kube.api.faults.failNext = { status: 403, count: 2 };
    kube.api.expireWatches();
    await mapStays([ip(0), ip(2)], 1_500);
    kube.api.faults.truncateNextLists = 2;
    kube.api.expireWatches();
    await mapStays([ip(0), ip(2)], 2_000);
  });

  it('an empty list: the circuit breaker holds, nothing removed', async () => {
    const before = controller!.events.length;
    kube.api.faults.emptyNextLists = 1;
    kube.api.expireWatches();
    await until('the breaker', () => controller!.events.slice(before).some((e) => e.msg.startsWith('circuit breaker: holding')));
    await mapStays([ip(0), ip(2)], 2_000);
    expect(await route(0)).toBe('ztunnel');
  });

  it('out-of-order delete of an old pod after a new pod took its IP: the new pod keeps its entry', async () => {
    kube.api.updatePod('shop', 'web-2b', (o) => (o.status.phase = 'Succeeded'));
    await mapBecomes([ip(0)]);
    const before = controller!.events.length;
    kube.api.faults.reorderNext = 2;
    pod('web-2c', 'shop', 2);
    kube.api.deletePod('shop', 'web-2b'); // reaches the watch before the create
    await mapBecomes([ip(0), ip(2)]);
    await mapStays([ip(0), ip(2)], 1_500);
    expect(controller!.events.slice(before).filter((e) => e.msg === 'reconciled' && Number(e.deleted) > 0)).toEqual([]);
    expect(await route(2)).toBe('ztunnel');
    await until('annotation on the new pod', () => kube.api.getPod('shop', 'web-2c')?.metadata.annotations[ANN] === 'enabled');
  });

  it('malformed pod objects are rejected with a counted, rate-limited log line; no crash', async () => {
    const before = controller!.events.length;
    const good = kube.api.getPod('shop', 'web-0')!;
    const bad = [
      { ...good, metadata: { ...good.metadata, uid: 'm1', name: 'm1' }, status: { ...good.status, podIPs: [{ ip: '198.18.0.300' }] } },
      { ...good, metadata: { ...good.metadata, uid: 'm2', name: 'm2', annotations: { huge: 'x'.repeat(300_000) } } },
      { ...good, metadata: { ...good.metadata, uid: 'm3', name: 'm3', labels: { 'istio.io/dataplane-mode': 1 } } },
      { ...good, metadata: { name: 'm4', namespace: 'shop' } },
      { ...good, metadata: { ...good.metadata, uid: 'm5', name: 'm5' }, spec: { nodeName: NODE, hostNetwork: 'no' } },
    ];
    bad.forEach((o, i) => kube.api.putRawPod(`shop/m${i}`, o));
    pod('web-3', 'shop', 3);
    await mapBecomes([ip(0), ip(2), ip(3)]);
    const lines = controller!.events.slice(before).filter((e) => e.msg === 'rejected a malformed object');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ kind: 'pod' });
    kube.api.deletePod('shop', 'web-3');
    await mapBecomes([ip(0), ip(2)]);
  });

  it('API down: no entry removed, traffic unaffected, retries <= 1/s after the backoff cap; converged after recovery', async () => {
    const enrolled = [ip(0), ip(2)];
    kube.api.setDown(true);
    const start = Date.now();
    await mapStays(enrolled, 6_000);
    expect(await route(0)).toBe('ztunnel');
    await mapStays(enrolled, 6_000);
    const late = kube.api.refused.filter((t) => t - start > 6_000);
    const rate = late.length / ((Date.now() - start - 6_000) / 1000);
    expect(late.length).toBeGreaterThan(0); // still trying
    expect(rate).toBeLessThanOrEqual(1);
    kube.api.setDown(false);
    const back = Date.now();
    pod('web-3b', 'shop', 3);
    await mapBecomes([...enrolled, ip(3)], 30_000);
    console.log(
      `api down: ${late.length} connection attempts from 6 s to ${((back - start) / 1000).toFixed(1)} s of the outage (${rate.toFixed(2)}/s); converged ${Date.now() - back} ms after recovery`,
    );
  }, 60_000);

  it('churn against pinned maps: after quiescence the pinned map equals the desired state', async () => {
    // Start from a clean slate of this node's pods (the ztunnel pod stays).
    for (const p of kube.api.listPods())
      if (p.metadata?.namespace !== 'istio-system' && typeof p.metadata?.name === 'string') kube.api.deletePod(p.metadata.namespace, p.metadata.name);
    for (let i = 0; i < 5; i++) kube.api.deletePod('shop', `m${i}`);
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const pick = <T>(a: readonly T[]) => a[Math.floor(rnd() * a.length)]!;
    const ips = [0, 1, 2, 3].map(ip).concat(['198.18.0.99']); // the last has no route on the node
    const namespaces = ['shop', 'plain'];
    let n = 0;
    // The oracle, from the double's store alone.
    const oracle = (): string[] => {
      // biome-ignore lint/suspicious/noExplicitAny: API objects of any shape
      const owner = new Map<string, Record<string, any>>();
      for (const p of kube.api.listPods()) {
        const pip = p.status?.podIP as string | undefined;
        if (p.spec.nodeName !== NODE || p.spec.hostNetwork || ['Succeeded', 'Failed'].includes(p.status.phase) || !pip) continue;
        const cur = owner.get(pip);
        if (
          !cur ||
          p.metadata.creationTimestamp > cur.metadata.creationTimestamp ||
          (p.metadata.creationTimestamp === cur.metadata.creationTimestamp && Number(p.metadata.resourceVersion) > Number(cur.metadata.resourceVersion))
        )
          owner.set(pip, p);
      }
      const ambient = (ns: string) => kube.api.getNamespace(ns)?.metadata.labels['istio.io/dataplane-mode'] === 'ambient';
      return [...owner]
        .filter(([pip, p]) => {
          const mode = p.metadata.labels['istio.io/dataplane-mode'];
          return mode !== 'none' && (mode === 'ambient' || ambient(p.metadata.namespace)) && pip !== '198.18.0.99';
        })
        .map(([pip]) => pip)
        .sort();
    };
    const checkpoints: string[][] = [];
    for (let e = 0; e < 300; e++) {
      const live = kube.api.listPods().filter((p) => p.metadata.namespace !== 'istio-system');
      const r = rnd();
      if (r < 0.45 || live.length === 0) {
        const hostNetwork = rnd() < 0.1;
        kube.api.createPod({
          name: `c${n++}`,
          namespace: pick(namespaces),
          nodeName: rnd() < 0.1 ? 'other-node' : NODE,
          ip: pick(ips),
          hostIp: OUTSIDE_HOST_IP,
          hostNetwork,
          ...(rnd() < 0.2 && { labels: { 'istio.io/dataplane-mode': pick(['none', 'ambient']) } }),
        });
      } else if (r < 0.75) {
        const p = pick(live);
        kube.api.deletePod(p.metadata.namespace, p.metadata.name);
      } else if (r < 0.92) {
        const p = pick(live);
        kube.api.updatePod(p.metadata.namespace, p.metadata.name, (o) => (o.status.phase = pick(['Running', 'Running', 'Succeeded', 'Failed'])));
      } else {
        const ns = pick(namespaces);
        kube.api.upsertNamespace(ns, rnd() < 0.7 ? { 'istio.io/dataplane-mode': 'ambient' } : {});
      }
      if (e % 25 === 0) await sleep(20);
      if (e % 100 === 99) {
        // Quiescence: the pinned map must be exactly the desired state.
        const want = oracle();
        await mapBecomes(want, 20_000);
        await mapStays(want, 600);
        checkpoints.push(want);
      }
    }
    // A churn that always ends empty would prove little.
    expect(checkpoints.some((c) => c.length >= 2)).toBe(true);
    const want = checkpoints.at(-1)!;
    console.log(`churn (pinned maps): 1 seed x 300 events, checkpoints ${JSON.stringify(checkpoints)}; final ${JSON.stringify(want)}`);
  }, 60_000);

  it('an impostor with ztunnel’s labels in istio-system is not taken: the node fails closed with the reason logged, until it is gone', async () => {
    for (const p of kube.api.listPods())
      if (p.metadata?.namespace !== 'istio-system' && typeof p.metadata?.name === 'string') kube.api.deletePod(p.metadata.namespace, p.metadata.name);
    kube.api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
    await mapBecomes([]);
    pod('zt-web', 'shop', 0);
    await mapBecomes([ip(0)]);
    expect(await route(0)).toBe('ztunnel');
    const mark = controller!.events.length;
    // Newer than the real ztunnel, Ready, on this node, with its labels; no DaemonSet, default service account.
    kube.api.createPod({ name: 'evil', namespace: 'istio-system', nodeName: NODE, ip: ip(1), hostIp: OUTSIDE_HOST_IP, labels: { app: 'ztunnel' } });
    const refused = await controller!.waitForAfter(mark, 'ztunnel refused: enrolled pods fail closed');
    expect(String(refused.reason)).toMatch(/istio-system\/ztunnel-abc has ztunnel's identity but istio-system\/evil \(controlled by nothing/);
    expect(await route(0)).toBe('failed');
    kube.api.deletePod('istio-system', 'evil');
    const end = Date.now() + 10_000;
    let r = await route(0);
    while (r !== 'ztunnel' && Date.now() < end) {
      await sleep(300);
      r = await route(0);
    }
    expect(r).toBe('ztunnel');
  }, 60_000);

  it('IP reuse: a deleted enrolled pod’s IP handed to a new pod before the API shows the delete is not captured with the old identity', async () => {
    for (const p of kube.api.listPods())
      if (p.metadata?.namespace !== 'istio-system' && typeof p.metadata?.name === 'string') kube.api.deletePod(p.metadata.namespace, p.metadata.name);
    kube.api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
    kube.api.upsertNamespace('plain');
    await mapBecomes([]);
    pod('reuse-old', 'shop', 2);
    await mapBecomes([ip(2)]);
    expect(await route(2)).toBe('ztunnel');

    // The runtime tears down the old pod's sandbox and hands its IP to a new pod (another
    // netns, another veth); the API has not shown the delete yet.
    const old = sim.pods[2]!;
    const fresh = { ...old, name: 'reuse-new', ns: `${sim.prefix}-reuse`, hostVeth: `${sim.prefix}r2` };
    await systemRunner.run(['ip', '-n', sim.nodeNs, 'link', 'del', old.hostVeth]);
    try {
      await wirePod(systemRunner, sim.nodeNs, fresh.ns, fresh.hostVeth, old.ip, old.ip6);
      const mark = controller!.events.length;
      // A change of the enrolled view makes a pass (one that leaves it as it was, such as a
      // pod outside the mesh, waits for the resync): an enrolled pod with no route here.
      kube.api.createPod({ name: 'poke', namespace: 'shop', nodeName: NODE, ip: '198.18.9.9', hostIp: OUTSIDE_HOST_IP, phase: 'Running', ready: true });
      // Oracles first: the pinned map, the new pod's own traffic, the filters on its veth.
      await mapBecomes([]);
      await mapStays([], 1_500); // passes keep coming (the poke, the resync): none places it
      // The new pod's connections go where it sends them, not to ztunnel as the old pod.
      const z = ztunnel.accepted.length;
      const [r] = await sim.connect(fresh, sim.outside, 1);
      expect(r?.ok).toBe(true);
      await until('the outside server record', () => outside.accepted.some((a) => a.src === old.ip || a.src.startsWith(`${old.ip}:`)));
      expect(ztunnel.accepted.length).toBe(z);
      const tcOnNew = await systemRunner.run(['tc', '-n', sim.nodeNs, 'filter', 'show', 'dev', fresh.hostVeth, 'ingress']);
      expect(tcOnNew).not.toMatch(/bpf/);
      const refused = await controller!.waitForAfter(mark, 'enrolled pod not placed: bound to a sandbox that is gone');
      expect(refused).toMatchObject({ ip: old.ip });

      // The API catches up: terminating, then deleted. Nothing comes back.
      kube.api.updatePod('shop', 'reuse-old', (o) => (o.metadata.deletionTimestamp = new Date().toISOString()));
      await sleep(500);
      kube.api.deletePod('shop', 'reuse-old');
      await mapStays([], 1_000);
    } finally {
      await unwirePod(systemRunner, sim.nodeNs, fresh.ns, fresh.hostVeth);
    }
  }, 60_000);

  it('SIGTERM leaves the entries; the controller exits 0', async () => {
    const before = await mapKeys();
    expect(await controller!.stop('SIGTERM')).toBe(0);
    controller = undefined;
    expect(await mapKeys()).toEqual(before);
  });
});
