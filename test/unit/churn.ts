/**
 * The churn property driver (test/unit/kube-churn.test.ts runs it against a map double,
 * test/kernel/churn-maps.test.ts against the real pinned pods map): random API histories (creates, deletes, namespace label flips,
 * opt-outs, phase changes, IP reuse, hostNetwork pods, pods of other nodes, stale replays,
 * events delivered out of order) for many seeds. Properties, checked against an oracle
 * written here independently of the enrollment code:
 *   - after quiescence the map holds exactly the desired IPs;
 *   - a pass never deletes the entry of a pod the API says is enrolled (while the cache
 *     has seen every event).
 * Runs the real parse -> cache -> enrollment -> controller (breaker included) in process,
 * with a map double; test/kernel/membership.test.ts runs a churn against pinned maps.
 * A failing seed prints how to replay it: CHURN_SEED=<seed> npx vitest run <this file>.
 */
import { Controller } from '../../src/controller/controller.js';
import { KubeMembership } from '../../src/kube/membership.js';
import type { RedirectMode } from '../../src/capture/mode.js';
import { rng } from '../../harness/lib/rng.js';
import { FakeMode, InProcessTransport, fakeNet, fakeZtunnel, quietLog } from './kube-harness.js';

export const SEEDS = process.env.CHURN_SEED ? [Number(process.env.CHURN_SEED)] : Array.from({ length: 100 }, (_, i) => i + 1);
export const EVENTS = 1000;

/** A capture mode the churn can drive and read back. */
export interface ChurnMode extends RedirectMode {
  /** Called with each IP before its entry is deleted. */
  onDelete: (ip: string) => void;
  /** The IPs the map holds now. */
  ips(): string[];
}
const NODE = 'node-a';
const HOST_IP = '10.0.0.1';
const ZT_IP = '10.244.9.2';
const ROUTABLE = Array.from({ length: 12 }, (_, i) => `10.244.1.${10 + i}`);
const POOL = [...ROUTABLE, '10.244.2.1', '10.244.2.2'];
const NAMESPACES = ['a1', 'a2', 'p1'];

// biome-ignore lint/suspicious/noExplicitAny: API objects of any shape, read and written by path
type Obj = Record<string, any>;

/** The API's truth, and the watch lines it produced. */
class Model {
  rv = 1;
  created = 0;
  uidSeq = 0;
  pods = new Map<string, Obj>();
  ns = new Map<string, Obj>();
  sent: { path: string; line: Obj }[] = [];
  commit(path: string, type: string, obj: Obj): { path: string; line: Obj } {
    obj.metadata.resourceVersion = String(++this.rv);
    if (path === '/api/v1/pods') {
      if (type === 'DELETED') this.pods.delete(obj.metadata.uid);
      else this.pods.set(obj.metadata.uid, obj);
    } else this.ns.set(obj.metadata.name, obj);
    const ev = { path, line: { type, object: structuredClone(obj) } };
    this.sent.push(ev);
    return ev;
  }
  list(path: string) {
    const items = path === '/api/v1/pods' ? [...this.pods.values()].filter((p) => p.spec.nodeName === NODE) : [...this.ns.values()];
    return { items, resourceVersion: String(this.rv) };
  }
}

function podObj(
  m: Model,
  o: {
    ns: string;
    ip: string | null;
    node?: string;
    hostNetwork?: boolean;
    labels?: Record<string, string>;
    sidecar?: boolean;
    phase?: string;
    ready?: boolean;
    ztunnel?: boolean;
  },
): Obj {
  const uid = `uid-${++m.uidSeq}`;
  const ip = o.hostNetwork ? HOST_IP : o.ip;
  return {
    metadata: {
      name: `p${m.uidSeq}`,
      namespace: o.ns,
      uid,
      labels: o.labels ?? {},
      annotations: o.sidecar ? { 'sidecar.istio.io/status': '{}' } : {},
      creationTimestamp: new Date(1_700_000_000_000 + ++m.created * 1000).toISOString(),
      ...(o.ztunnel && { ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'ztunnel', uid: 'ds-1', controller: true }] }),
    },
    spec: { nodeName: o.node ?? NODE, hostNetwork: o.hostNetwork ?? false, containers: [{ name: 'app' }], ...(o.ztunnel && { serviceAccountName: 'ztunnel' }) },
    status: {
      phase: o.phase ?? 'Running',
      hostIP: o.node && o.node !== NODE ? '10.0.0.2' : HOST_IP,
      ...(ip && { podIP: ip, podIPs: [{ ip }] }),
      conditions: [{ type: 'Ready', status: o.ready === false ? 'False' : 'True' }],
    },
  };
}

/** The oracle: which IPs must be in the map, from the API's truth alone. */
function oracle(m: Model): string[] {
  const owner = new Map<string, Obj>();
  for (const p of m.pods.values()) {
    const ip = p.status.podIP as string | undefined;
    if (p.spec.nodeName !== NODE || p.spec.hostNetwork || ['Succeeded', 'Failed'].includes(p.status.phase) || !ip) continue;
    const cur = owner.get(ip);
    if (!cur || p.metadata.creationTimestamp > cur.metadata.creationTimestamp) owner.set(ip, p);
  }
  const out: string[] = [];
  for (const [ip, p] of owner) {
    const ambient = m.ns.get(p.metadata.namespace)?.metadata.labels?.['istio.io/dataplane-mode'] === 'ambient';
    const optOut = p.metadata.labels['istio.io/dataplane-mode'] === 'none';
    const sidecar = 'sidecar.istio.io/status' in p.metadata.annotations;
    if (ambient && !optOut && !sidecar && ROUTABLE.includes(ip) && ip !== HOST_IP && ip !== ZT_IP) out.push(ip);
  }
  return out.sort();
}

const flush = () => new Promise((r) => setImmediate(r));

function fakeChurnMode(): ChurnMode {
  const m = new FakeMode();
  return Object.assign(m, { ips: () => [...m.pods.keys()] });
}

/** The replay hint and last events of a failing seed. */
export function describeFailure(seed: number, r: { why: string; trace: string[] }, file: string): string {
  return `seed ${seed}: ${r.why}\n  replay: CHURN_SEED=${seed} npx vitest run ${file}\n  last events:\n    ${r.trace.slice(-15).join('\n    ')}`;
}

export async function runSeed(seed: number, mode: ChurnMode = fakeChurnMode()): Promise<{ ok: true } | { ok: false; why: string; trace: string[] }> {
  const rnd = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rnd() * a.length)]!;
  const m = new Model();
  const trace: string[] = [];
  for (const name of NAMESPACES)
    m.commit('/api/v1/namespaces', 'ADDED', { metadata: { name, labels: name.startsWith('a') ? { 'istio.io/dataplane-mode': 'ambient' } : {} } });
  m.commit('/api/v1/namespaces', 'ADDED', { metadata: { name: 'istio-system', labels: {} } });
  m.commit('/api/v1/pods', 'ADDED', podObj(m, { ns: 'istio-system', ip: ZT_IP, labels: { app: 'ztunnel' }, ztunnel: true }));

  const api = new InProcessTransport((p) => m.list(p));
  const membership = new KubeMembership(api, {
    nodeName: NODE,
    ztunnel: { namespace: 'istio-system', labels: { app: 'ztunnel' } },
    backoff: { initialMs: 1, maxMs: 5 },
    stallTimeoutMs: 3_600_000,
    watchTimeoutSeconds: 3600,
    log: quietLog,
    writeStatus: false,
  });
  const net = fakeNet(ROUTABLE);
  const controller = new Controller({
    mode,
    membership,
    runner: { run: async () => '' },
    log: quietLog,
    readNet: async () => net,
    placeZtunnel: fakeZtunnel,
    maxDeleteShare: 0.5,
  });
  let held: { path: string; line: Obj }[] = [];
  let holdFor = 0;
  const violations: string[] = [];
  mode.onDelete = (ip) => {
    if (held.length === 0 && oracle(m).includes(ip)) violations.push(`deleted ${ip} while the API had it enrolled`);
  };
  const deliver = (ev: { path: string; line: Obj }) => {
    if (holdFor > 0) {
      held.push(ev);
      if (--holdFor === 0) {
        for (const h of held.reverse()) api.emit(h.path, h.line);
        held = [];
      }
    } else api.emit(ev.path, ev.line);
  };
  const livePods = () => [...m.pods.values()].filter((p) => p.metadata.namespace !== 'istio-system');

  membership.start();
  while (!api.watching('/api/v1/pods') || !api.watching('/api/v1/namespaces')) await flush();
  try {
    for (let i = 0; i < EVENTS; i++) {
      const r = rnd();
      const pods = livePods();
      let what: string;
      if (r < 0.3 || pods.length === 0) {
        const kind = rnd();
        const o = podObj(m, {
          ns: pick(NAMESPACES),
          ip: rnd() < 0.15 ? null : pick(POOL),
          ...(kind < 0.1 && { hostNetwork: true }),
          ...(kind >= 0.1 && kind < 0.2 && { node: 'node-b' }),
          ...(kind >= 0.2 && kind < 0.25 && { sidecar: true }),
          ...(kind >= 0.25 && kind < 0.35 && { labels: { 'istio.io/dataplane-mode': 'none' } }),
          phase: rnd() < 0.1 ? 'Pending' : 'Running',
        });
        // The other node's pods only reach us when the server ignores the field selector.
        what = `create ${o.metadata.uid} ns=${o.metadata.namespace} ip=${o.status.podIP} node=${o.spec.nodeName} hostNetwork=${o.spec.hostNetwork}`;
        deliver(m.commit('/api/v1/pods', 'ADDED', o));
      } else if (r < 0.5) {
        const p = structuredClone(pick(pods));
        what = `delete ${p.metadata.uid}`;
        deliver(m.commit('/api/v1/pods', 'DELETED', p));
      } else if (r < 0.65) {
        const p = structuredClone(pick(pods));
        const phase = pick(['Running', 'Succeeded', 'Failed']);
        p.status.phase = phase;
        if (phase === 'Running' && !p.status.podIP && !p.spec.hostNetwork) {
          const ip = pick(POOL);
          p.status.podIP = ip;
          p.status.podIPs = [{ ip }];
        }
        if (phase !== 'Running' && rnd() < 0.5) {
          delete p.status.podIP;
          delete p.status.podIPs;
        }
        what = `phase ${p.metadata.uid} ${phase} ip=${p.status.podIP}`;
        deliver(m.commit('/api/v1/pods', 'MODIFIED', p));
      } else if (r < 0.75) {
        const p = structuredClone(pick(pods));
        const out = p.metadata.labels['istio.io/dataplane-mode'] === 'none';
        if (out) delete p.metadata.labels['istio.io/dataplane-mode'];
        else p.metadata.labels['istio.io/dataplane-mode'] = 'none';
        what = `opt-${out ? 'in' : 'out'} ${p.metadata.uid}`;
        deliver(m.commit('/api/v1/pods', 'MODIFIED', p));
      } else if (r < 0.83) {
        const ns = structuredClone(m.ns.get(pick(NAMESPACES))!);
        const on = ns.metadata.labels['istio.io/dataplane-mode'] === 'ambient';
        ns.metadata.labels = on ? {} : { 'istio.io/dataplane-mode': 'ambient' };
        what = `namespace ${ns.metadata.name} ${on ? 'off' : 'on'}`;
        deliver(m.commit('/api/v1/namespaces', 'MODIFIED', ns));
      } else if (r < 0.9) {
        // A stale replay of an earlier pod event: fencing must make it harmless.
        const old = pick(m.sent.filter((e) => e.path === '/api/v1/pods'));
        what = `replay ${old.line.type} ${old.line.object.metadata.uid}@${old.line.object.metadata.resourceVersion}`;
        if (holdFor === 0) api.emit(old.path, old.line);
      } else {
        holdFor = holdFor || 2 + Math.floor(rnd() * 4);
        what = `reorder the next ${holdFor} events`;
      }
      trace.push(what);
      if (rnd() < 0.15) await controller.reconcile();
      if (violations.length > 0) return { ok: false, why: violations[0]!, trace };
    }
    // Quiescence: every event delivered, passes until the breaker has had its confirmation.
    for (const h of held.reverse()) api.emit(h.path, h.line);
    held = [];
    holdFor = 0;
    for (let i = 0; i < 5; i++) {
      const r = await controller.reconcile();
      await flush();
      if (r.held === 0) break;
    }
    const got = mode.ips().sort();
    const want = oracle(m);
    if (JSON.stringify(got) !== JSON.stringify(want)) return { ok: false, why: `map ${JSON.stringify(got)} != desired ${JSON.stringify(want)}`, trace };
    if (violations.length > 0) return { ok: false, why: violations[0]!, trace };
    return { ok: true };
  } finally {
    await membership.stop();
  }
}
