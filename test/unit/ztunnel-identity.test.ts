/**
 * Who may be ztunnel (issue 15, item 1): a pod matching the labels is taken only with
 * ztunnel's identity (its DaemonSet as controlling owner, its service account); a pod
 * without it is never taken, and next to the real one makes discovery fail closed with a
 * reason (logs, /readyz). Pure rules first, then the watches over HTTP against the API
 * double with the controller reconciling into a map double.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Controller } from '../../src/controller/controller.js';
import { chooseZtunnel, type PodView } from '../../src/core/enrollment.js';
import { KubeMembership, kubeTransport, loadKubeConfig } from '../../src/kube/index.js';
import { parsePod } from '../../src/kube/parse.js';
import { Readiness } from '../../src/metrics/readiness.js';
import { KubeApiDouble, ZTUNNEL_POD } from '../../harness/sim/kube-api.js';
import { FakeMode, fakeNet, fakeZtunnel, recordingLog } from './kube-harness.js';

const NODE = 'node-a';
const SEL = { namespace: 'istio-system', labels: { app: 'ztunnel' } };

let n = 0;
function zt(over: Partial<PodView> = {}): PodView {
  n++;
  return {
    uid: `uid-${n}`,
    name: `ztunnel-${n}`,
    namespace: 'istio-system',
    nodeName: NODE,
    resourceVersion: BigInt(n),
    labels: { app: 'ztunnel' },
    ips: [`10.244.0.${n}`],
    hostIp: '10.0.0.1',
    hostNetwork: false,
    phase: 'Running',
    sidecar: false,
    ready: true,
    created: 1000 + n,
    statusAnnotation: null,
    owner: { kind: 'DaemonSet', name: 'ztunnel' },
    serviceAccount: 'ztunnel',
    ...over,
  };
}

describe('chooseZtunnel', () => {
  it('takes the real ztunnel; of two real ones (a rolling update), the newest', () => {
    const a = zt({ created: 10 });
    const b = zt({ created: 20 });
    expect(chooseZtunnel([a, b], SEL, NODE)).toEqual({ pod: b, problem: null });
    expect(chooseZtunnel([], SEL, NODE)).toEqual({ pod: null, problem: null });
  });

  it.each([
    [
      'a relabelled pod (no owner, default service account)',
      { owner: null, serviceAccount: 'default' },
      /controlled by nothing, not DaemonSet ztunnel; service account "default", not "ztunnel"/,
    ],
    ['a pod of a ReplicaSet named ztunnel', { owner: { kind: 'ReplicaSet', name: 'ztunnel' } }, /controlled by ReplicaSet ztunnel/],
    ['a pod of another DaemonSet', { owner: { kind: 'DaemonSet', name: 'evil' } }, /controlled by DaemonSet evil/],
    ['a pod with ztunnel’s owner but another service account', { serviceAccount: 'builder' }, /service account "builder"/],
  ])('never takes %s, alone or newer than the real one', (_, over, why) => {
    const impostor = zt({ name: 'evil', created: 99, ...over });
    const alone = chooseZtunnel([impostor], SEL, NODE);
    expect(alone.pod).toBeNull();
    expect(alone.problem).toMatch(/no ztunnel candidate has ztunnel's identity: istio-system\/evil/);
    expect(alone.problem).toMatch(why);
    // Next to the real one: neither is taken (fail closed), and the reason names both.
    const real = zt({ name: 'ztunnel-real', created: 5 });
    const both = chooseZtunnel([real, impostor], SEL, NODE);
    expect(both.pod).toBeNull();
    expect(both.problem).toMatch(/refusing every ztunnel candidate: istio-system\/ztunnel-real has ztunnel's identity but istio-system\/evil/);
  });

  it('an impostor that is not Ready, of another node or not matching changes nothing', () => {
    const real = zt();
    const notReady = zt({ owner: null, ready: false });
    const elsewhere = zt({ owner: null, nodeName: 'node-b' });
    const unlabelled = zt({ owner: null, labels: { app: 'web' } });
    expect(chooseZtunnel([real, notReady, elsewhere, unlabelled], SEL, NODE)).toEqual({ pod: real, problem: null });
  });

  it('the identity is configurable', () => {
    const custom = zt({ owner: { kind: 'DaemonSet', name: 'ztunnel-canary' }, serviceAccount: 'zt' });
    expect(chooseZtunnel([custom], { ...SEL, daemonSet: 'ztunnel-canary', serviceAccount: 'zt' }, NODE).pod).toBe(custom);
    expect(chooseZtunnel([custom], SEL, NODE).pod).toBeNull();
  });
});

describe('parsePod: owner, service account, deletion', () => {
  const base = { metadata: { uid: 'u', name: 'p', namespace: 'ns', resourceVersion: '5' }, spec: { nodeName: NODE }, status: {} };
  it('reads the controlling owner and the service account', () => {
    const p = parsePod({
      ...base,
      metadata: {
        ...base.metadata,
        ownerReferences: [
          { kind: 'Node', name: 'n', controller: false },
          { kind: 'DaemonSet', name: 'ztunnel', controller: true },
        ],
      },
      spec: { ...base.spec, serviceAccountName: 'ztunnel' },
    });
    expect(p.ok && { owner: p.value.owner, sa: p.value.serviceAccount, terminating: p.value.terminating }).toEqual({
      owner: { kind: 'DaemonSet', name: 'ztunnel' },
      sa: 'ztunnel',
      terminating: false,
    });
    const d = parsePod({ ...base, metadata: { ...base.metadata, deletionTimestamp: '2026-01-01T00:00:00Z' } });
    expect(d.ok && d.value.terminating).toBe(true);
  });
  it.each([
    [{ ownerReferences: {} }, /ownerReferences is not a list/],
    [
      {
        ownerReferences: [
          { kind: 'DaemonSet', name: 'a', controller: true },
          { kind: 'DaemonSet', name: 'b', controller: true },
        ],
      },
      /more than one controller/,
    ],
    [{ ownerReferences: [{ kind: 7, name: 'a', controller: true }] }, /kind is a number/],
    [{ deletionTimestamp: 5 }, /deletionTimestamp is not a string/],
  ])('rejects %j', (meta, why) => {
    const p = parsePod({ ...base, metadata: { ...base.metadata, ...meta } });
    expect(p.ok).toBe(false);
    expect(!p.ok && p.reason).toMatch(why);
  });
});

describe('discovery through the watches (API double over HTTP)', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function stack() {
    const api = new KubeApiDouble({ bookmarkMs: 100 });
    const server = await api.listen({ port: 0 });
    const dir = mkdtempSync(join(tmpdir(), 'zt-identity-'));
    api.writeKubeconfig(join(dir, 'kubeconfig'), server);
    api.upsertNamespace('shop', { 'istio.io/dataplane-mode': 'ambient' });
    api.upsertNamespace('istio-system');
    api.createPod({ name: 'web-0', namespace: 'shop', nodeName: NODE, ip: '10.244.1.10' });
    const log = recordingLog();
    const membership = new KubeMembership(kubeTransport(loadKubeConfig({ kubeconfig: join(dir, 'kubeconfig') }), 2_000), {
      nodeName: NODE,
      ztunnel: SEL,
      backoff: { initialMs: 50, maxMs: 200, jitter: 0.2 },
      stallTimeoutMs: 10_000,
      watchTimeoutSeconds: 300,
      log,
      writeStatus: false,
    });
    const mode = new FakeMode();
    const readiness = new Readiness();
    const controller = new Controller({
      mode,
      membership,
      runner: { run: async () => '' },
      log,
      readNet: async () => fakeNet(['10.244.1.10', '10.244.9.2', '10.244.9.3']),
      placeZtunnel: fakeZtunnel,
      backoff: { initialMs: 50, maxMs: 200 },
    });
    membership.start();
    controller.start(
      60_000,
      (r) => readiness.setZtunnelKnown(r.ztunnel, r.ztunnelProblem),
      () => {},
    );
    cleanups.push(async () => {
      await controller.stop();
      await membership.stop();
      await api.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const until = async (what: string, cond: () => boolean) => {
      const end = Date.now() + 5_000;
      while (!cond()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; log: ${JSON.stringify(log.lines.slice(-4))}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    return { api, membership, mode, readiness, log, until };
  }

  it('a relabelled pod in istio-system with app=ztunnel is not taken; next to the real ztunnel it fails closed with a reason', async () => {
    const s = await stack();
    // Only the impostor: a pod someone created (or relabelled) with ztunnel's label.
    s.api.createPod({ name: 'evil', namespace: 'istio-system', nodeName: NODE, ip: '10.244.9.3', labels: { app: 'ztunnel' }, serviceAccount: 'default' });
    await s.until('first pass', () => s.mode.pods.size === 1);
    expect(s.membership.view().ztunnelIp).toBeNull();
    expect(s.mode.ztunnel).toBeNull();
    expect(s.readiness.state().missing.join()).toMatch(/ztunnel refused: no ztunnel candidate has ztunnel's identity: istio-system\/evil/);

    // The real ztunnel arrives: the impostor still matches, so neither is taken.
    s.api.createPod({ name: 'ztunnel-1', namespace: 'istio-system', nodeName: NODE, ip: '10.244.9.2', ...ZTUNNEL_POD });
    await s.until('the conflict seen', () => /refusing every/.test(s.membership.view().ztunnelProblem ?? ''));
    await new Promise((r) => setTimeout(r, 100));
    expect(s.mode.ztunnel).toBeNull();
    expect(s.readiness.state()).toMatchObject({ ready: false });
    expect(s.readiness.state().missing.join()).toMatch(/istio-system\/ztunnel-1 has ztunnel's identity but istio-system\/evil/);
    const warn = s.log.lines.find((l) => l.level === 'warn' && /ztunnel refused/.test(l.msg) && /refusing every/.test(String(l.fields.reason)));
    expect(warn, JSON.stringify(s.log.lines)).toBeDefined();

    // The impostor gone: the real one is taken.
    s.api.deletePod('istio-system', 'evil');
    await s.until('ztunnel taken', () => s.mode.ztunnel !== null);
    expect(s.membership.view()).toMatchObject({ ztunnelIp: '10.244.9.2', ztunnelProblem: null });
    expect(s.readiness.state().missing.join()).not.toMatch(/ztunnel/);

    // Relabelling an existing pod works the same way as creating one.
    s.api.createPod({ name: 'batch', namespace: 'istio-system', nodeName: NODE, ip: '10.244.9.3', labels: { app: 'batch' } });
    await new Promise((r) => setTimeout(r, 100));
    expect(s.mode.ztunnel).not.toBeNull();
    s.api.updatePod('istio-system', 'batch', (o) => (o.metadata.labels.app = 'ztunnel'));
    await s.until('fail closed after the relabel', () => s.mode.ztunnel === null);
    expect(s.membership.view().ztunnelProblem).toMatch(/istio-system\/batch/);
  });
});
