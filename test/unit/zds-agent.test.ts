/**
 * The in-pod agent (src/zds/agent.ts) without a kernel: a recording in-pod capture, a
 * recording ZDS server whose acks the test sends, a host of network namespaces as
 * fixtures, and the real CNI handler on top for the gate's answers. One log records
 * capture and server calls together, so the order (install before add, remove after
 * del) is asserted, not assumed.
 */
import { describe, expect, it } from 'vitest';
import type { InPodCapture, PodNetns } from '../../src/capture/inpod.js';
import type { NamespaceView, PodView } from '../../src/core/enrollment.js';
import { CniHandler, type CniMembership } from '../../src/cni/handler.js';
import { InPodAgent, type InPodSource, type NetnsPort, type ZdsPort } from '../../src/zds/agent.js';
import type { WorkloadInfo, WorkloadRequest } from '../../src/zds/codec.js';
import type { NetnsCandidate } from '../../src/host/pod-netns.js';
import type { ConnStatus } from '../../src/zds/state.js';
import { quietLog } from './kube-harness.js';

const pod = (n: number, over: Partial<PodView> = {}): PodView => ({
  uid: `uid-${n}`,
  name: `web-${n}`,
  namespace: 'shop',
  nodeName: 'n1',
  resourceVersion: 1n,
  labels: {},
  ips: [`10.244.1.${n}`],
  hostIp: '10.0.0.1',
  hostNetwork: false,
  phase: 'Running',
  sidecar: false,
  ready: true,
  created: 1,
  statusAnnotation: null,
  serviceAccount: 'sa',
  ...over,
});

class Recorder {
  log: string[] = [];
}

class FakeCapture implements InPodCapture {
  readonly name = 'ebpf' as const;
  failInstall: string | null = null;
  drifted = new Set<string>();
  installed = new Set<string>();
  constructor(private readonly r: Recorder) {}
  async init() {}
  async install(p: PodNetns) {
    this.r.log.push(`install ${p.uid} fd${p.fd}`);
    if (this.failInstall) throw new Error(this.failInstall);
    this.installed.add(p.uid);
    this.drifted.delete(p.uid);
  }
  async remove(p: PodNetns) {
    this.r.log.push(`remove ${p.uid} fd${p.fd}`);
    this.installed.delete(p.uid);
  }
  async check(p: PodNetns) {
    return this.installed.has(p.uid) && !this.drifted.has(p.uid);
  }
  close() {}
}

class FakeZds implements ZdsPort {
  conns: ConnStatus[] = [];
  private subs: { ack(c: number, r: WorkloadRequest, e: string | null): void; closed(c: number): void }[] = [];
  constructor(private readonly r: Recorder) {}
  addPod(uid: string, _info: WorkloadInfo, fd: number | null) {
    this.r.log.push(fd === null ? `keep ${uid}` : `add ${uid} fd${fd}`);
  }
  removePod(uid: string) {
    this.r.log.push(`del ${uid}`);
  }
  connections() {
    return this.conns;
  }
  subscribe(s: (typeof this.subs)[number]) {
    this.subs.push(s);
  }
  ack(conn: number, request: WorkloadRequest, error: string | null = null) {
    for (const s of this.subs) s.ack(conn, request, error);
  }
  close(conn: number) {
    this.conns = this.conns.filter((c) => c.id !== conn);
    for (const s of this.subs) s.closed(conn);
  }
}

/** The host's namespaces: id -> addresses, the process in each, CNI paths, open fds. */
class FakeHost implements NetnsPort {
  nss: NetnsCandidate[] = [];
  paths = new Map<string, string>();
  open_ = new Set<number>();
  private nextFd = 100;
  constructor(private readonly r: Recorder) {}
  scan() {
    return this.nss;
  }
  open(path: string, expectId?: string) {
    const m = /^\/proc\/(\d+)\/ns\/net$/.exec(path);
    const id = m ? this.nss.find((n) => n.pid === Number(m[1]))?.id : this.paths.get(path);
    if (!id) throw new Error(`ENOENT ${path}`);
    if (expectId && id !== expectId) throw new Error('another netns');
    const fd = this.nextFd++;
    this.open_.add(fd);
    return { fd, id };
  }
  idAt(path: string) {
    return this.paths.get(path) ?? null;
  }
  procPath(pid: number) {
    return `/proc/${pid}/ns/net`;
  }
  ownId() {
    return 'host';
  }
  close(fd: number) {
    this.r.log.push(`close fd${fd}`);
    this.open_.delete(fd);
  }
}

class FakeMembership implements InPodSource, CniMembership {
  synced = true;
  pods: PodView[] = [];
  programmedIps: ReadonlySet<string> = new Set();
  private changeCbs: (() => void)[] = [];
  private progCbs: ((ips: ReadonlySet<string>) => void)[] = [];
  hasSynced = () => this.synced;
  enrolled = () => new Map(this.pods.flatMap((p) => p.ips.map((ip) => [ip, p] as const)));
  onChange = (cb: () => void) => void this.changeCbs.push(cb);
  programmed = (ips: ReadonlySet<string>) => {
    this.programmedIps = ips;
    this.progCbs.forEach((c) => c(ips));
  };
  change() {
    this.changeCbs.forEach((c) => c());
  }
  // The CNI handler's side.
  namespace = (n: string): NamespaceView | undefined => (n === 'shop' ? { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } } : undefined);
  namespacesLive = () => true;
  fetchNamespace = async (n: string) => this.namespace(n) ?? null;
  cachedPod = (ns: string, name: string) => this.pods.find((p) => p.namespace === ns && p.name === name);
  podDeleted = () => false;
  fetchPod = async () => null;
  enrollmentContext = () => ({ nodeName: 'n1', reserved: new Set(['10.0.0.1']) });
  provisionPod = () => this.change();
  releaseSandbox = () => false;
  announcedSandboxes = () => [];
  programmedNow = () => this.programmedIps;
  onProgrammed = (cb: (ips: ReadonlySet<string>) => void) => void this.progCbs.push(cb);
}

function setup() {
  const r = new Recorder();
  const m = new FakeMembership();
  const zds = new FakeZds(r);
  const capture = new FakeCapture(r);
  const host = new FakeHost(r);
  const agent = new InPodAgent({ source: m, server: zds, capture, netns: host, log: quietLog, delWaitMs: 200 });
  return { r, m, zds, capture, host, agent };
}

const add = (uid: string): WorkloadRequest => ({ kind: 'add', uid, workloadInfo: { name: '', namespace: '', serviceAccount: '' } });
const del = (uid: string): WorkloadRequest => ({ kind: 'del', uid });
const tick = () => new Promise((r) => setTimeout(r, 10));

describe('the in-pod agent', () => {
  it('an existing pod is found through the host processes by its IPs; its capture goes in before its add', async () => {
    const { r, m, host, agent } = setup();
    host.nss = [
      { id: 'host', pid: 1, addrs: ['10.0.0.1'] },
      { id: 'ns-a', pid: 200, addrs: ['10.244.1.1', 'fd00::1'] },
    ];
    m.pods = [pod(1, { ips: ['10.244.1.1', 'fd00::1'] })];
    await agent.kick();
    expect(r.log).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
    expect(agent.status()[0]).toMatchObject({ netns: 'ns-a', installed: true, acked: false });
  });

  it('nothing before the first full lists: a restarted agent must not drop what ztunnel serves', async () => {
    const { r, m, agent } = setup();
    m.synced = false;
    m.pods = [pod(1)];
    await agent.kick(true);
    expect(r.log).toEqual([]);
  });

  it('a pod whose netns is not found is sent as keep, and found on a later pass', async () => {
    const { r, m, host, agent } = setup();
    m.pods = [pod(1)];
    await agent.kick();
    expect(r.log).toEqual(['keep uid-1']);
    expect(agent.status()[0]!.problem).toMatch(/no process's netns holds 10\.244\.1\.1/);
    host.nss = [{ id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] }];
    await agent.kick(true);
    expect(r.log.slice(1)).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
  });

  it('two netns holding the pod’s IP: no guess, keep', async () => {
    const { r, m, host, agent } = setup();
    host.nss = [
      { id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] },
      { id: 'ns-b', pid: 300, addrs: ['10.244.1.1'] },
    ];
    m.pods = [pod(1)];
    await agent.kick();
    expect(r.log).toEqual(['keep uid-1']);
    expect(agent.status()[0]!.problem).toMatch(/2 network namespaces/);
  });

  it('a pod that leaves: del first, the capture removed and the fd closed once every ztunnel acked the del', async () => {
    const { r, m, host, zds, capture, agent } = setup();
    host.nss = [{ id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] }];
    m.pods = [pod(1)];
    zds.conns = [
      { id: 1, phase: 'ready', podsSent: 1 },
      { id: 2, phase: 'ready', podsSent: 0 },
      { id: 3, phase: 'hello', podsSent: 0 },
    ];
    await agent.kick();
    r.log = [];
    m.pods = [];
    await agent.kick();
    expect(r.log).toEqual(['del uid-1']);
    zds.ack(1, del('uid-1'));
    await tick();
    expect(r.log).toEqual(['del uid-1']); // connection 2 has not acked
    zds.close(2); // ...and goes away instead
    await tick();
    expect(r.log).toEqual(['del uid-1', 'remove uid-1 fd100', 'close fd100']);
    expect(capture.installed.size).toBe(0);
    expect(host.open_.size).toBe(0);
  });

  it('no ztunnel connected: a leaving pod’s capture is removed at once; a ztunnel that never acks delays it only so long', async () => {
    const { r, m, host, zds, agent } = setup();
    host.nss = [
      { id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] },
      { id: 'ns-b', pid: 201, addrs: ['10.244.1.2'] },
    ];
    m.pods = [pod(1), pod(2)];
    await agent.kick();
    r.log = [];
    m.pods = [pod(2)];
    await agent.kick();
    expect(r.log).toEqual(['del uid-1', 'remove uid-1 fd100', 'close fd100']);
    zds.conns = [{ id: 7, phase: 'ready', podsSent: 2 }];
    r.log = [];
    m.pods = [];
    await agent.kick();
    expect(r.log).toEqual(['del uid-2']);
    await new Promise((res) => setTimeout(res, 300)); // delWaitMs 200
    expect(r.log).toEqual(['del uid-2', 'remove uid-2 fd101', 'close fd101']);
  });

  it('the membership’s programmed set holds a pod once ztunnel acked its add; an ack with error fails it', async () => {
    const { m, host, zds, agent } = setup();
    host.nss = [
      { id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] },
      { id: 'ns-b', pid: 201, addrs: ['10.244.1.2'] },
    ];
    m.pods = [pod(1), pod(2)];
    await agent.kick();
    expect([...m.programmedIps]).toEqual([]);
    zds.ack(1, add('uid-1'));
    expect([...m.programmedIps]).toEqual(['10.244.1.1']);
    zds.ack(1, add('uid-2'), 'netns not valid');
    expect(agent.failure('uid-2')).toBe('ztunnel refused pod shop/web-2: netns not valid');
    expect(agent.ready('uid-2')).toBe(false);
    expect(agent.ready('uid-1')).toBe(true);
  });

  it('a capture that fails to install: the pod is not sent, the failure is said, and the next pass retries', async () => {
    const { r, m, host, capture, agent } = setup();
    host.nss = [{ id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] }];
    capture.failInstall = 'netlink: EPERM';
    m.pods = [pod(1)];
    await agent.kick();
    expect(r.log).toEqual(['install uid-1 fd100']);
    expect(agent.failure('uid-1')).toMatch(/could not be installed: netlink: EPERM/);
    capture.failInstall = null;
    await agent.kick(true);
    expect(r.log).toEqual(['install uid-1 fd100', 'install uid-1 fd100', 'add uid-1 fd100']);
    expect(agent.failure('uid-1')).toBeNull();
  });

  it('each full pass checks the capture for drift and installs it again', async () => {
    const { r, m, host, capture, agent } = setup();
    host.nss = [{ id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] }];
    m.pods = [pod(1)];
    await agent.kick();
    await agent.kick(true);
    expect(r.log).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
    capture.drifted.add('uid-1');
    await agent.kick(true);
    expect(r.log.slice(2)).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
    expect(agent.stats.reinstalls).toBe(1);
  });

  it('a netns gone (no process in it, no CNI path naming it): del, then keep while it is looked for', async () => {
    const { r, m, host, agent } = setup();
    host.nss = [{ id: 'ns-a', pid: 200, addrs: ['10.244.1.1'] }];
    m.pods = [pod(1)];
    await agent.kick();
    host.nss = [];
    r.log = [];
    await agent.kick(true);
    expect(r.log).toEqual(['del uid-1', 'remove uid-1 fd100', 'close fd100', 'keep uid-1']);
  });

  it('the CNI netns is used for a new pod; a new sandbox of the same pod replaces the old netns (del, then add)', async () => {
    const { r, m, host, zds, agent } = setup();
    host.paths.set('/var/run/netns/cni-1', 'ns-1');
    host.paths.set('/var/run/netns/cni-2', 'ns-2');
    m.pods = [pod(1)];
    agent.sandbox('uid-1', '/var/run/netns/cni-1');
    await agent.idle();
    expect(r.log).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
    zds.ack(1, add('uid-1'));
    expect(agent.ready('uid-1')).toBe(true);
    r.log = [];
    agent.sandbox('uid-1', '/var/run/netns/cni-2');
    expect(agent.ready('uid-1')).toBe(false); // the new sandbox is not in place yet
    await agent.idle();
    expect(r.log).toEqual(['del uid-1', 'remove uid-1 fd100', 'close fd100', 'install uid-1 fd101', 'add uid-1 fd101']);
  });
});

describe('the CNI gate in inpod mode', () => {
  const PREV = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1' }], ips: [{ address: '10.244.1.1/32', interface: 0 }] };
  const request = () => ({
    env: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'c1',
      CNI_NETNS: '/var/run/netns/cni-1',
      CNI_IFNAME: 'eth0',
      CNI_ARGS: 'K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=uid-1',
    },
    stdin: Buffer.from(JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ambient-redirect-cni', prevResult: PREV })),
  });

  function gated(timeoutMs: number) {
    const s = setup();
    s.host.paths.set('/var/run/netns/cni-1', 'ns-1');
    s.m.pods = [pod(1, { phase: 'Pending', ips: [] })];
    // The membership announces the pod with the sandbox's IPs (as KubeMembership does).
    s.m.provisionPod = () => {
      s.m.pods = [pod(1)];
      s.m.change();
    };
    const handler = new CniHandler(s.m, { addTimeoutMs: timeoutMs, log: quietLog, inpod: s.agent });
    return { ...s, handler };
  }

  it('ADD returns once the capture is in and ztunnel acked the add, with the CNI netns', async () => {
    const { r, zds, handler } = gated(2000);
    zds.conns = [{ id: 1, phase: 'ready', podsSent: 0 }];
    let answered = false;
    const pending = handler.handle(request()).then((x) => {
      answered = true;
      return x;
    });
    await tick();
    expect(r.log).toEqual(['install uid-1 fd100', 'add uid-1 fd100']);
    expect(answered).toBe(false);
    zds.ack(1, add('uid-1'));
    const reply = await pending;
    expect(reply.code).toBe(0);
    expect(JSON.parse(reply.stdout.toString())).toEqual(PREV);
  });

  it('ztunnel acks with an error: the ADD fails at once with ztunnel’s words (the runtime retries)', async () => {
    const { zds, handler } = gated(5000);
    zds.conns = [{ id: 1, phase: 'ready', podsSent: 0 }];
    const t0 = Date.now();
    const pending = handler.handle(request());
    await tick();
    zds.ack(1, add('uid-1'), 'failed to enter netns: EINVAL');
    const reply = await pending;
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(reply.code).toBe(1);
    const err = JSON.parse(reply.stdout.toString());
    expect(err.code).toBe(11);
    expect(err.msg).toBe('ambient-redirect: pod shop/web-1: ztunnel refused pod shop/web-1: failed to enter netns: EINVAL');
  });

  it('no ztunnel connected: the ADD fails after its timeout and says so', async () => {
    const { handler } = gated(300);
    const reply = await handler.handle(request());
    expect(reply.code).toBe(1);
    expect(JSON.parse(reply.stdout.toString()).msg).toBe(
      'ambient-redirect: pod shop/web-1: not in place within 300 ms: no ztunnel is connected to the ZDS socket',
    );
  });

  it('a connected ztunnel that does not ack: the ADD fails after its timeout and says so', async () => {
    const { zds, handler } = gated(300);
    zds.conns = [{ id: 1, phase: 'ready', podsSent: 0 }];
    const reply = await handler.handle(request());
    expect(JSON.parse(reply.stdout.toString()).msg).toMatch(/not in place within 300 ms: ztunnel has not acked its add yet/);
  });
});
