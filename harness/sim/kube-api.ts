/**
 * A Kubernetes API double for tests, benchmarks and the demo: real HTTP, list and watch
 * of pods and namespaces with resourceVersion semantics (a global counter, a bounded
 * event history, 410 Gone for a resourceVersion older than it), field and label
 * selectors, bookmarks, server-side watch timeouts, and PATCH of pods/status (merge patch
 * only, with a UID precondition). Faults on demand: down, slow, 500/403, truncated JSON,
 * empty lists, stalled watches, events out of order, a field selector ignored.
 *
 * It serves TCP (127.0.0.1 of the test process) or a Unix socket. The controller runs
 * in the simulated node's netns, where the test process's 127.0.0.1 does not exist:
 * there, a byte relay (kube-relay.ts) listens on 127.0.0.1 of the node netns and pipes
 * each connection to this Unix socket, which the file system shares across netns. The
 * controller's client speaks plain HTTP over TCP as it would to a real API server; the
 * relay adds no semantics (a connection cut here is cut there).
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';

// biome-ignore lint/suspicious/noExplicitAny: API objects of any shape, read and written by path
type Obj = Record<string, any>;
type Kind = 'pods' | 'namespaces';
type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

interface HistoryEvent {
  rv: number;
  kind: Kind;
  type: EventType;
  obj: Obj;
}

export interface PodSpec {
  name: string;
  namespace: string;
  nodeName: string;
  ip?: string | null;
  uid?: string;
  labels?: Record<string, string>;
  hostNetwork?: boolean;
  hostIp?: string;
  phase?: string;
  ready?: boolean;
  sidecar?: boolean;
  annotations?: Record<string, string>;
  created?: Date;
  /** The controlling owner (ownerReferences, controller: true). */
  owner?: { kind: string; name: string };
  serviceAccount?: string;
}

/** What the real ztunnel pod carries: its labels, its DaemonSet as controller, its service account. */
export const ZTUNNEL_POD = { labels: { app: 'ztunnel' }, owner: { kind: 'DaemonSet', name: 'ztunnel' }, serviceAccount: 'ztunnel' } as const;

export interface Faults {
  /** Every connection is cut on arrival (and open ones at once). */
  down: boolean;
  /** Delay before each answer (and before a watch's headers). */
  slowMs: number;
  /** The next `count` requests (lists, watches, patches) get this HTTP status. */
  failNext: { status: number; count: number };
  /** The next n list answers are cut in the middle of the JSON. */
  truncateNextLists: number;
  /** The next n pod lists answer with no items (a plausible, wrong answer). */
  emptyNextLists: number;
  /** Open and new watches get nothing, not even bookmarks, until cleared (open ones stay dead). */
  stallWatches: boolean;
  /** The next n events reach the watches in reverse order (all at once, after the n-th). */
  reorderNext: number;
  /** Lists and watches ignore fieldSelector (answer every node's pods). */
  ignoreFieldSelector: boolean;
}

export interface RequestRecord {
  t: number;
  method: string;
  path: string;
  kind: 'list' | 'watch' | 'patch' | 'other';
  status: number | 'cut';
}

interface WatchStream {
  kind: Kind;
  match: (o: Obj) => boolean;
  res: http.ServerResponse;
  stalled: boolean;
  sentRv: number;
  timers: NodeJS.Timeout[];
}

export interface KubeApiOptions {
  /** Events kept for watches to resume from; older resourceVersions get 410. */
  historyLimit?: number;
  bookmarkMs?: number;
  token?: string;
}

const clone = <T>(o: T): T => structuredClone(o);

export class KubeApiDouble {
  private rv = 1;
  private readonly pods = new Map<string, Obj>();
  private readonly namespaces = new Map<string, Obj>();
  private readonly history: HistoryEvent[] = [];
  private readonly watches = new Set<WatchStream>();
  private readonly sockets = new Set<Socket>();
  private readonly held: HistoryEvent[] = [];
  private server: http.Server | null = null;
  readonly requests: RequestRecord[] = [];
  /** Connections cut while down, with their time. */
  readonly refused: number[] = [];
  readonly faults: Faults = {
    down: false,
    slowMs: 0,
    failNext: { status: 500, count: 0 },
    truncateNextLists: 0,
    emptyNextLists: 0,
    stallWatches: false,
    reorderNext: 0,
    ignoreFieldSelector: false,
  };
  readonly token: string;
  private readonly historyLimit: number;
  private readonly bookmarkMs: number;

  constructor(opts: KubeApiOptions = {}) {
    this.historyLimit = opts.historyLimit ?? 10_000;
    this.bookmarkMs = opts.bookmarkMs ?? 1_000;
    this.token = opts.token ?? randomUUID();
  }

  // --- serving -------------------------------------------------------------------------

  /** Listens on a TCP port of 127.0.0.1 (0: any) or a Unix socket path. */
  async listen(where: { port: number } | { path: string }): Promise<string> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.on('connection', (s: Socket) => {
      if (this.faults.down) {
        this.refused.push(Date.now());
        s.destroy();
        return;
      }
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in where) server.listen(where.path, resolve);
      else server.listen(where.port, '127.0.0.1', resolve);
    });
    if ('path' in where) return where.path;
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  async close(): Promise<void> {
    for (const w of this.watches) this.endWatch(w);
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server = null;
  }

  /** A kubeconfig for `server` with this double's token. */
  writeKubeconfig(file: string, server: string): void {
    const cfg = {
      apiVersion: 'v1',
      kind: 'Config',
      // The client refuses plain HTTP unless told to skip TLS verification (there is no TLS).
      clusters: [{ name: 'sim', cluster: { server, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'sim', user: { token: this.token } }],
      contexts: [{ name: 'sim', context: { cluster: 'sim', user: 'sim' } }],
      'current-context': 'sim',
    };
    writeFileSync(file, JSON.stringify(cfg, null, 2), { mode: 0o600 });
  }

  setDown(down: boolean): void {
    this.faults.down = down;
    if (down) {
      for (const w of this.watches) this.endWatch(w);
      for (const s of this.sockets) s.destroy();
    }
  }

  /** Stalls open and new watches (nothing more, not even bookmarks) until unstalled; open ones stay dead. */
  stallWatches(on: boolean): void {
    this.faults.stallWatches = on;
    if (on) for (const w of this.watches) w.stalled = true;
  }

  /** Ends every open watch with a 410 ERROR event and forgets the history (as etcd compaction does). */
  expireWatches(): void {
    this.history.length = 0;
    for (const w of this.watches) {
      this.write(w, {
        type: 'ERROR',
        object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'Expired', code: 410, message: 'too old resource version' },
      });
      this.endWatch(w);
    }
  }

  /** Ends every open watch with an ERROR event of this code (e.g. 500). */
  failWatches(code: number): void {
    for (const w of this.watches) {
      this.write(w, { type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', code, message: `injected ${code}` } });
      this.endWatch(w);
    }
  }

  get openWatches(): number {
    return this.watches.size;
  }

  get resourceVersion(): number {
    return this.rv;
  }

  count(kind: RequestRecord['kind'], path?: string, since = 0): number {
    return this.requests.filter((r) => r.kind === kind && r.t >= since && (!path || r.path === path)).length;
  }

  // --- the store -----------------------------------------------------------------------

  upsertNamespace(name: string, labels: Record<string, string> = {}): Obj {
    const cur = this.namespaces.get(name);
    const obj: Obj = cur
      ? clone(cur)
      : {
          apiVersion: 'v1',
          kind: 'Namespace',
          metadata: { name, uid: randomUUID(), creationTimestamp: new Date().toISOString() },
          status: { phase: 'Active' },
        };
    obj.metadata.labels = { 'kubernetes.io/metadata.name': name, ...labels };
    this.commit('namespaces', cur ? 'MODIFIED' : 'ADDED', name, obj);
    return obj;
  }

  deleteNamespace(name: string): void {
    const cur = this.namespaces.get(name);
    if (cur) this.commit('namespaces', 'DELETED', name, clone(cur));
  }

  createPod(spec: PodSpec): Obj {
    const key = `${spec.namespace}/${spec.name}`;
    if (this.pods.has(key)) throw new Error(`pod ${key} exists`);
    const obj: Obj = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: spec.name,
        namespace: spec.namespace,
        uid: spec.uid ?? randomUUID(),
        labels: { ...(spec.labels ?? {}) },
        annotations: { ...(spec.annotations ?? {}), ...(spec.sidecar && { 'sidecar.istio.io/status': '{}' }) },
        creationTimestamp: (spec.created ?? new Date()).toISOString(),
        ...(spec.owner && {
          ownerReferences: [
            { apiVersion: 'apps/v1', kind: spec.owner.kind, name: spec.owner.name, uid: randomUUID(), controller: true, blockOwnerDeletion: true },
          ],
        }),
      },
      spec: {
        nodeName: spec.nodeName,
        ...(spec.serviceAccount && { serviceAccountName: spec.serviceAccount }),
        hostNetwork: spec.hostNetwork ?? false,
        containers: [{ name: 'app', image: 'app' }, ...(spec.sidecar ? [{ name: 'istio-proxy', image: 'proxy' }] : [])],
      },
      status: podStatus(spec),
    };
    this.commit('pods', 'ADDED', key, obj);
    return obj;
  }

  /** Changes a pod through a function of a copy of it. */
  updatePod(namespace: string, name: string, change: (o: Obj) => void): Obj {
    const key = `${namespace}/${name}`;
    const cur = this.pods.get(key);
    if (!cur) throw new Error(`no pod ${key}`);
    const next = clone(cur);
    change(next);
    this.commit('pods', 'MODIFIED', key, next);
    return next;
  }

  deletePod(namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const cur = this.pods.get(key);
    if (cur) this.commit('pods', 'DELETED', key, clone(cur));
  }

  /** Stores any object as a pod, as a broken or hostile writer could: for malformed-object tests. */
  putRawPod(key: string, raw: Obj): void {
    this.commit('pods', this.pods.has(key) ? 'MODIFIED' : 'ADDED', key, raw);
  }

  getPod(namespace: string, name: string): Obj | undefined {
    const o = this.pods.get(`${namespace}/${name}`);
    return o && clone(o);
  }

  getNamespace(name: string): Obj | undefined {
    const o = this.namespaces.get(name);
    return o && clone(o);
  }

  listPods(): Obj[] {
    return [...this.pods.values()].map(clone);
  }

  private commit(kind: Kind, type: EventType, key: string, obj: Obj): void {
    this.rv++;
    if (obj.metadata && typeof obj.metadata === 'object') obj.metadata.resourceVersion = String(this.rv);
    const store = kind === 'pods' ? this.pods : this.namespaces;
    if (type === 'DELETED') store.delete(key);
    else store.set(key, obj);
    const ev: HistoryEvent = { rv: this.rv, kind, type, obj: clone(obj) };
    this.history.push(ev);
    if (this.history.length > this.historyLimit) this.history.shift();
    if (this.faults.reorderNext > 0) {
      this.held.push(ev);
      if (--this.faults.reorderNext === 0)
        this.held
          .splice(0)
          .reverse()
          .forEach((e) => this.deliver(e));
      return;
    }
    this.deliver(ev);
  }

  private deliver(ev: HistoryEvent): void {
    for (const w of this.watches) if (w.kind === ev.kind && !w.stalled && w.match(ev.obj)) this.send(w, ev);
  }

  private send(w: WatchStream, ev: HistoryEvent): void {
    this.write(w, { type: ev.type, object: ev.obj });
    w.sentRv = Math.max(w.sentRv, ev.rv);
  }

  private write(w: WatchStream, line: unknown): void {
    if (!w.res.writableEnded) w.res.write(`${JSON.stringify(line)}\n`);
  }

  private endWatch(w: WatchStream): void {
    for (const t of w.timers) clearInterval(t);
    this.watches.delete(w);
    if (!w.res.writableEnded) w.res.end();
  }

  // --- HTTP ----------------------------------------------------------------------------

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://api');
    const watch = url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1';
    const kind: RequestRecord['kind'] = req.method === 'PATCH' ? 'patch' : req.method === 'GET' ? (watch ? 'watch' : 'list') : 'other';
    req.on('error', () => res.destroy()); // a client that hangs up mid-request
    const record: RequestRecord = { t: Date.now(), method: req.method ?? '', path: url.pathname, kind, status: 200 };
    this.requests.push(record);
    const reply = (status: number, body: unknown) => {
      record.status = status;
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    const fail = (status: number, message: string) => reply(status, { kind: 'Status', apiVersion: 'v1', status: 'Failure', message, code: status });

    if (this.faults.slowMs > 0) await new Promise((r) => setTimeout(r, this.faults.slowMs));
    if (this.faults.down || res.destroyed) {
      record.status = 'cut';
      req.socket.destroy();
      return;
    }
    if (req.headers.authorization !== `Bearer ${this.token}`) return fail(401, 'Unauthorized');
    if (this.faults.failNext.count > 0) {
      this.faults.failNext.count--;
      return fail(this.faults.failNext.status, `injected ${this.faults.failNext.status}`);
    }

    const patch = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/status$/.exec(url.pathname);
    if (patch && req.method === 'PATCH') return this.patchStatus(req, decodeURIComponent(patch[1]!), decodeURIComponent(patch[2]!), reply, fail);
    if (req.method !== 'GET') return fail(405, 'method not allowed');

    // One namespace by name (the CNI gate reads one when its cache cannot vouch).
    const oneNs = /^\/api\/v1\/namespaces\/([^/]+)$/.exec(url.pathname);
    if (oneNs && !watch) {
      const o = this.namespaces.get(decodeURIComponent(oneNs[1]!));
      return o ? reply(200, o) : fail(404, `namespaces "${decodeURIComponent(oneNs[1]!)}" not found`);
    }
    // One pod by name (the CNI gate reads one when the watch is behind the runtime).
    const onePod = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname);
    if (onePod && !watch) {
      const [ns, name] = [decodeURIComponent(onePod[1]!), decodeURIComponent(onePod[2]!)];
      const o = this.pods.get(`${ns}/${name}`);
      return o ? reply(200, o) : fail(404, `pods "${name}" not found`);
    }

    let resource: Kind;
    let nsFilter: string | null = null;
    const nsPods = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname);
    if (url.pathname === '/api/v1/pods') resource = 'pods';
    else if (url.pathname === '/api/v1/namespaces') resource = 'namespaces';
    else if (nsPods) {
      resource = 'pods';
      nsFilter = decodeURIComponent(nsPods[1]!);
    } else return fail(404, `no such path ${url.pathname}`);

    let match: (o: Obj) => boolean;
    try {
      match = this.matcher(url.searchParams, nsFilter);
    } catch (err) {
      return fail(400, (err as Error).message);
    }
    if (watch) return this.startWatch(resource, match, url.searchParams, res, record);

    const store = resource === 'pods' ? this.pods : this.namespaces;
    let items = [...store.values()].filter(match);
    if (resource === 'pods' && this.faults.emptyNextLists > 0) {
      this.faults.emptyNextLists--;
      items = [];
    }
    const body = JSON.stringify({
      kind: resource === 'pods' ? 'PodList' : 'NamespaceList',
      apiVersion: 'v1',
      metadata: { resourceVersion: String(this.rv) },
      items,
    });
    if (this.faults.truncateNextLists > 0) {
      this.faults.truncateNextLists--;
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(body.slice(0, Math.floor(body.length / 2)));
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(body);
  }

  private matcher(q: URLSearchParams, ns: string | null): (o: Obj) => boolean {
    const fields = parseSelector(q.get('fieldSelector') ?? '');
    const labels = parseSelector(q.get('labelSelector') ?? '');
    const field = (o: Obj, path: string): unknown => path.split('.').reduce<unknown>((v, k) => (v && typeof v === 'object' ? (v as Obj)[k] : undefined), o);
    for (const k of Object.keys(fields))
      if (!['spec.nodeName', 'metadata.name', 'metadata.namespace', 'status.phase'].includes(k)) throw new Error(`field label not supported: ${k}`);
    return (o) => {
      if (ns !== null && field(o, 'metadata.namespace') !== ns) return false;
      if (!this.faults.ignoreFieldSelector) for (const [k, v] of Object.entries(fields)) if ((field(o, k) ?? '') !== v) return false;
      const l = (field(o, 'metadata.labels') ?? {}) as Obj;
      return Object.entries(labels).every(([k, v]) => l[k] === v);
    };
  }

  private startWatch(kind: Kind, match: (o: Obj) => boolean, q: URLSearchParams, res: http.ServerResponse, record: RequestRecord): void {
    const rvText = q.get('resourceVersion') ?? '';
    const from = rvText === '' || rvText === '0' ? null : Number(rvText);
    const oldest = this.history[0]?.rv ?? this.rv + 1;
    res.writeHead(200, { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' });
    const w: WatchStream = { kind, match, res, stalled: this.faults.stallWatches, sentRv: from ?? this.rv, timers: [] };
    if (from !== null && (!Number.isInteger(from) || (from < oldest - 1 && from < this.rv))) {
      record.status = 410;
      this.write(w, {
        type: 'ERROR',
        object: {
          kind: 'Status',
          apiVersion: 'v1',
          status: 'Failure',
          reason: 'Expired',
          code: 410,
          message: `too old resource version: ${rvText} (${oldest - 1})`,
        },
      });
      res.end();
      return;
    }
    this.watches.add(w);
    res.on('close', () => this.endWatch(w));
    if (!w.stalled) {
      if (from === null) {
        const store = kind === 'pods' ? this.pods : this.namespaces;
        for (const o of store.values()) if (match(o)) this.write(w, { type: 'ADDED', object: o });
      } else {
        for (const ev of this.history) if (ev.rv > from && ev.kind === kind && match(ev.obj)) this.send(w, ev);
      }
    }
    if (q.get('allowWatchBookmarks') === 'true') {
      w.timers.push(
        setInterval(() => {
          if (!w.stalled)
            this.write(w, {
              type: 'BOOKMARK',
              object: {
                kind: kind === 'pods' ? 'Pod' : 'Namespace',
                apiVersion: 'v1',
                metadata: { resourceVersion: String(Math.max(w.sentRv, this.lastRvOf(kind))) },
              },
            });
        }, this.bookmarkMs),
      );
    }
    const timeout = Number(q.get('timeoutSeconds') ?? '0');
    if (timeout > 0) w.timers.push(setTimeout(() => this.endWatch(w), timeout * 1000));
  }

  /** A bookmark may only carry a resourceVersion the watch has seen everything up to. */
  private lastRvOf(_kind: Kind): number {
    return this.held.length > 0 ? 0 : this.rv;
  }

  private patchStatus(
    req: http.IncomingMessage,
    namespace: string,
    name: string,
    reply: (s: number, b: unknown) => void,
    fail: (s: number, m: string) => void,
  ): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if ((req.headers['content-type'] ?? '').split(';')[0] !== 'application/merge-patch+json') {
        return fail(415, `unsupported media type ${req.headers['content-type'] ?? '(none)'}: this double only takes merge patches`);
      }
      let patch: Obj;
      try {
        patch = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Obj;
      } catch {
        return fail(400, 'patch is not JSON');
      }
      const cur = this.pods.get(`${namespace}/${name}`);
      if (!cur) return fail(404, `pods "${name}" not found`);
      if (patch.metadata?.uid && patch.metadata.uid !== cur.metadata.uid) return fail(409, 'Precondition failed: UID in precondition does not match');
      const next = this.updatePod(namespace, name, (o) => {
        const ann: Obj = (o.metadata.annotations ??= {});
        for (const [k, v] of Object.entries((patch.metadata?.annotations ?? {}) as Obj)) {
          if (v === null) delete ann[k];
          else ann[k] = v;
        }
      });
      reply(200, next);
    });
  }
}

function podStatus(spec: PodSpec): Obj {
  const ip = spec.hostNetwork ? (spec.hostIp ?? '10.0.0.1') : spec.ip;
  return {
    phase: spec.phase ?? 'Running',
    hostIP: spec.hostIp ?? '10.0.0.1',
    ...(ip && { podIP: ip, podIPs: [{ ip }] }),
    conditions: [{ type: 'Ready', status: spec.ready === false ? 'False' : 'True' }],
  };
}

function parseSelector(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const m = /^([^=!]+)==?(.*)$/.exec(term);
    if (!m) throw new Error(`unsupported selector term "${term}"`);
    out[m[1]!.trim()] = m[2]!.trim();
  }
  return out;
}
