/**
 * The watches against the API double over real HTTP (127.0.0.1 of this process), with the
 * controller reconciling into a map double. Each fault of issue 5 at unit scale; the same
 * faults with the controller as a real process and pinned maps are in
 * test/kernel/membership.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Controller } from '../../src/controller/controller.js';
import { KubeMembership, kubeTransport, loadKubeConfig } from '../../src/kube/index.js';
import { KubeApiDouble, ZTUNNEL_POD } from '../../harness/sim/kube-api.js';
import { FakeMode, fakeNet, fakeZtunnel, recordingLog } from './kube-harness.js';
import { sleep, until as waitUntil } from '../support/wait.js';

const NODE = 'node-a';
const IPS = Array.from({ length: 8 }, (_, i) => `10.244.1.${10 + i}`);

let diag: () => string = () => '';

const until = (what: string, cond: () => boolean, ms = 5_000) => waitUntil(() => `${what}; ${diag()}`, cond, ms, 10);

interface Stack {
  api: KubeApiDouble;
  mode: FakeMode;
  membership: KubeMembership;
  controller: Controller;
  log: ReturnType<typeof recordingLog>;
  deleted: string[];
  keys(): string[];
  stop(): Promise<void>;
}

const stacks: Stack[] = [];
afterEach(async () => {
  // allSettled: one stack failing to stop must not leave the others running.
  const results = await Promise.allSettled(stacks.splice(0).map((s) => s.stop()));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
});

async function stack(opts: { stallMs?: number; backoffMaxMs?: number; pods?: number; mode?: FakeMode; startDown?: boolean } = {}): Promise<Stack> {
  const api = new KubeApiDouble({ bookmarkMs: 100 });
  if (opts.startDown) api.setDown(true);
  const server = await api.listen({ port: 0 });
  const dir = mkdtempSync(join(tmpdir(), 'kube-watch-'));
  api.writeKubeconfig(join(dir, 'kubeconfig'), server);
  api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
  api.upsertNamespace('plain');
  api.upsertNamespace('istio-system');
  api.createPod({ name: 'ztunnel-1', namespace: 'istio-system', nodeName: NODE, ip: '10.244.9.2', ...ZTUNNEL_POD });
  for (let i = 0; i < (opts.pods ?? 4); i++) api.createPod({ name: `web-${i}`, namespace: 'shop', nodeName: NODE, ip: IPS[i]! });
  const log = recordingLog();
  const transport = kubeTransport(loadKubeConfig({ kubeconfig: join(dir, 'kubeconfig') }), 2_000);
  const membership = new KubeMembership(transport, {
    nodeName: NODE,
    ztunnel: { namespace: 'istio-system', labels: { app: 'ztunnel' } },
    backoff: { initialMs: 50, maxMs: opts.backoffMaxMs ?? 200, jitter: 0.2 },
    stallTimeoutMs: opts.stallMs ?? 10_000,
    watchTimeoutSeconds: 300,
    log,
  });
  const mode = opts.mode ?? new FakeMode();
  const deleted: string[] = [];
  mode.onDelete = (ip) => deleted.push(ip);
  const controller = new Controller({
    mode,
    membership,
    runner: { run: async () => '' },
    log,
    readNet: async () => fakeNet(IPS),
    placeZtunnel: fakeZtunnel,
    backoff: { initialMs: 50, maxMs: 200 },
  });
  membership.start();
  controller.start(
    60_000,
    () => {},
    () => {},
  );
  const s: Stack = {
    api,
    mode,
    membership,
    controller,
    log,
    deleted,
    keys: () => [...mode.pods.keys()].sort(),
    async stop() {
      rmSync(dir, { recursive: true, force: true });
      await controller.stop();
      await membership.stop();
      await api.close();
    },
  };
  stacks.push(s);
  diag = () => `log: ${JSON.stringify(log.lines.slice(-6))} requests: ${JSON.stringify(api.requests.slice(-6))}`;
  if (!opts.startDown) await until('first sync', () => s.keys().length === (opts.pods ?? 4));
  return s;
}

describe('Kubernetes watches against the API double', () => {
  it('programs the enrolled pods of this node and writes the status annotation through pods/status', async () => {
    const s = await stack();
    expect(s.keys()).toEqual(IPS.slice(0, 4));
    await until('annotations', () =>
      [0, 1, 2, 3].every((i) => s.api.getPod('shop', `web-${i}`)?.metadata.annotations['ambient.istio.io/redirection'] === 'enabled'),
    );
    expect(s.api.getPod('istio-system', 'ztunnel-1')?.metadata.annotations['ambient.istio.io/redirection']).toBeUndefined();
    // Every patch went to the status subresource as a merge patch (the double answers 415 otherwise).
    expect(s.api.requests.filter((r) => r.kind === 'patch').every((r) => r.status === 200 && r.path.endsWith('/status'))).toBe(true);

    s.api.upsertNamespace('shop', {});
    await until('namespace flip removes the entries', () => s.keys().length === 0);
    await until('annotation removed', () => s.api.getPod('shop', 'web-0')?.metadata.annotations['ambient.istio.io/redirection'] === undefined);
  });

  it('a restarted controller adopts the maps: nothing touched before its first full sync', async () => {
    const mode = new FakeMode();
    const left = { ifindex: 100, mac: '00:00:00:00:00:00', flags: 1 };
    mode.pods.set(IPS[0]!, left); // programmed by the previous run
    mode.pods.set(IPS[7]!, left); // a pod that left while no controller ran
    mode.ztunnel = { ifindex: 100, peerIfindex: 2, mac: '02:00:00:00:00:10', flags: 1, netnsCookie: 0n };
    const s = await stack({ mode, startDown: true });
    await sleep(500);
    expect(s.keys()).toEqual([IPS[0], IPS[7]]);
    expect(mode.ztunnel).not.toBeNull(); // enrolled pods keep reaching ztunnel meanwhile
    expect(s.api.requests.filter((r) => r.kind === 'patch')).toEqual([]);
    s.api.setDown(false);
    await until('converged once the API answers', () => JSON.stringify(s.keys()) === JSON.stringify(IPS.slice(0, 4)), 5_000);
  });

  it('ignores pods of other nodes even when the server ignores the field selector', async () => {
    const s = await stack();
    s.api.faults.ignoreFieldSelector = true;
    s.api.createPod({ name: 'elsewhere', namespace: 'shop', nodeName: 'node-b', ip: IPS[6]! });
    s.api.expireWatches(); // the relist now returns every node's pods
    s.api.createPod({ name: 'here', namespace: 'shop', nodeName: NODE, ip: IPS[5]! });
    await until('the pod of this node', () => s.keys().includes(IPS[5]!));
    expect(s.keys()).not.toContain(IPS[6]);
    expect(s.membership.stats.foreign).toBeGreaterThan(0);
  });

  it('410 Gone: exactly one relist, then events flow', async () => {
    const s = await stack();
    const lists = s.api.count('list', '/api/v1/pods');
    s.api.expireWatches();
    s.api.createPod({ name: 'after', namespace: 'shop', nodeName: NODE, ip: IPS[4]! });
    await until('event after relist', () => s.keys().includes(IPS[4]!));
    await sleep(300);
    expect(s.api.count('list', '/api/v1/pods') - lists).toBe(1);
    expect(s.membership.podReflector.stats.relists410).toBe(1);
  });

  it('a stalled watch is restarted and converges', async () => {
    const s = await stack({ stallMs: 500 });
    s.api.stallWatches(true);
    s.api.createPod({ name: 'during-stall', namespace: 'shop', nodeName: NODE, ip: IPS[4]! });
    await sleep(100);
    s.api.stallWatches(false); // the open watch stays dead; only a new one sees the pod
    await until('converged after the stall', () => s.keys().includes(IPS[4]!), 5_000);
    expect(s.membership.podReflector.stats.stalls).toBeGreaterThanOrEqual(1);
  });

  it('a non-410 watch error restarts the watch and events flow again', async () => {
    const s = await stack();
    const watches = s.api.count('watch', '/api/v1/pods');
    s.api.failWatches(500);
    await sleep(50);
    s.api.createPod({ name: 'after-error', namespace: 'shop', nodeName: NODE, ip: IPS[4]! });
    await until('event after restart', () => s.keys().includes(IPS[4]!));
    expect(s.api.count('watch', '/api/v1/pods')).toBeGreaterThan(watches);
  });

  it.each([
    ['500', (a: KubeApiDouble) => (a.faults.failNext = { status: 500, count: 3 })],
    ['403', (a: KubeApiDouble) => (a.faults.failNext = { status: 403, count: 3 })],
    ['truncated JSON', (a: KubeApiDouble) => (a.faults.truncateNextLists = 3)],
  ])('%s on relist: nothing removed, converged once the API answers', async (_name, fault) => {
    const s = await stack();
    fault(s.api);
    s.api.expireWatches();
    await sleep(600);
    expect(s.deleted).toEqual([]);
    expect(s.keys()).toEqual(IPS.slice(0, 4));
    s.api.deletePod('shop', 'web-0');
    await until('converged', () => !s.keys().includes(IPS[0]!), 5_000);
  });

  it('empty list: the circuit breaker holds; a confirming list keeps every entry', async () => {
    const s = await stack();
    s.api.faults.emptyNextLists = 1;
    s.api.expireWatches();
    await until('breaker tripped', () => s.log.lines.some((l) => l.msg.startsWith('circuit breaker: holding')));
    await sleep(500);
    expect(s.deleted).toEqual([]);
    expect(s.keys()).toEqual(IPS.slice(0, 4));
  });

  it('a real mass removal is confirmed by the second list and applied', async () => {
    const s = await stack();
    for (let i = 0; i < 4; i++) s.api.deletePod('shop', `web-${i}`);
    await until('all removed', () => s.keys().length === 0);
    expect(s.log.lines.some((l) => l.msg.startsWith('circuit breaker: a second list confirms'))).toBe(true);
  });

  it('out-of-order delete of an old pod after a new pod took its IP: the new pod keeps its entry', async () => {
    const s = await stack();
    // web-0 finishes (terminal pods keep their IP in the API for a while); a new pod takes its IP.
    s.api.updatePod('shop', 'web-0', (o) => (o.status.phase = 'Succeeded'));
    s.api.faults.reorderNext = 2;
    s.api.createPod({ name: 'web-0-new', namespace: 'shop', nodeName: NODE, ip: IPS[0]! });
    s.api.deletePod('shop', 'web-0'); // delivered before the create
    await sleep(300);
    await s.controller.idle();
    expect(s.keys()).toContain(IPS[0]);
    await until('annotation on the new pod', () => s.api.getPod('shop', 'web-0-new')?.metadata.annotations['ambient.istio.io/redirection'] === 'enabled');
  });

  it('malformed pods are rejected, counted, logged at a limited rate; nothing crashes', async () => {
    const s = await stack();
    const good = s.api.getPod('shop', 'web-1')!;
    const bad: Record<string, unknown>[] = [
      {
        ...good,
        metadata: { ...good.metadata, uid: 'b1', name: 'bad-ip' },
        status: { ...good.status, podIP: '10.244.1.300', podIPs: [{ ip: '10.244.1.300' }] },
      },
      {
        ...good,
        metadata: { ...good.metadata, uid: 'b2', name: 'odd-ip' },
        status: { ...good.status, podIP: '010.244.1.17', podIPs: [{ ip: '010.244.1.17' }] },
      },
      {
        ...good,
        metadata: { ...good.metadata, uid: 'b3', name: 'huge', annotations: { big: 'x'.repeat(300_000) } },
        status: { ...good.status, podIPs: [{ ip: IPS[6] }] },
      },
      { ...good, metadata: { ...good.metadata, uid: 'b4', name: 'num', labels: { 'istio.io/dataplane-mode': 7 } } },
      { ...good, metadata: { ...good.metadata, uid: 'b5', name: 5 } },
      { ...good, metadata: { name: 'no-uid', namespace: 'shop' } },
      { ...good, spec: { ...good.spec, hostNetwork: 'yes' }, metadata: { ...good.metadata, uid: 'b6', name: 'hn' } },
      { kind: 'Pod', metadata: { uid: 'b7', name: 'sparse', namespace: 'shop' }, spec: { nodeName: NODE }, status: { podIPs: [{ ip: 12 }] } },
    ];
    bad.forEach((o, i) => s.api.putRawPod(`shop/bad-${i}`, o));
    s.api.createPod({ name: 'fine', namespace: 'shop', nodeName: NODE, ip: IPS[5]! });
    await until('the good pod after the bad ones', () => s.keys().includes(IPS[5]!));
    expect(s.membership.stats.rejected, JSON.stringify(s.log.lines.filter((l) => l.msg.includes('rejected')))).toBeGreaterThanOrEqual(bad.length);
    expect(s.keys()).toEqual([...IPS.slice(0, 4), IPS[5]].sort());
    const lines = s.log.lines.filter((l) => l.msg === 'rejected a malformed object');
    expect(lines.length).toBe(1); // one line per 10 s, however many objects
    expect(lines[0]!.fields).toMatchObject({ kind: 'pod', rejected: 1 });
    // A relist with the same objects does not crash either.
    s.api.expireWatches();
    await sleep(300);
    expect(s.keys()).toEqual([...IPS.slice(0, 4), IPS[5]].sort());
  });

  it('API down: nothing removed, retries slow to the backoff cap, converged after recovery', async () => {
    // The real cap is 30 s; scaled to 3 s here, the cap still bounds two watches to <= 1 attempt/s.
    const s = await stack({ backoffMaxMs: 3_000, stallMs: 5_000 });
    s.api.setDown(true);
    const start = Date.now();
    await sleep(8_000);
    const late = s.api.refused.filter((t) => t - start > 4_000);
    expect(late.length / 4).toBeLessThanOrEqual(1);
    expect(late.length).toBeGreaterThan(0); // it does keep trying
    expect(s.deleted).toEqual([]);
    expect(s.keys()).toEqual(IPS.slice(0, 4));
    s.api.setDown(false);
    s.api.createPod({ name: 'after-outage', namespace: 'shop', nodeName: NODE, ip: IPS[4]! });
    await until('converged after recovery', () => s.keys().includes(IPS[4]!), 5_000);
  }, 20_000);
});
