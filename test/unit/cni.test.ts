/**
 * The pure parts of the CNI gate: the wire format, request/netconf/prevResult parsing,
 * the enrollment decision, the config list edit and its reversal, the handler against a
 * membership double, and the membership's announced pods reconciled with API events.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync, existsSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Controller } from '../../src/controller/controller.js';
import type { NamespaceView, PodView } from '../../src/core/enrollment.js';
import { addPlugin, ConflistError, hasPlugin, pickConfigFile, removePlugin } from '../../src/cni/conflist.js';
import { namespaceDecision, podDecision } from '../../src/cni/decide.js';
import { CniHandler, type CniMembership } from '../../src/cni/handler.js';
import { installCni, uninstallCni } from '../../src/cni/install.js';
import { NamespaceListWriter } from '../../src/cni/nsfile.js';
import { decodeReply, decodeRequest, encodeReply, encodeRequest, frameLength, FrameError } from '../../src/cni/protocol.js';
import { parseCniArgs, parseRequest, passThrough } from '../../src/cni/request.js';
import { KubeMembership } from '../../src/kube/membership.js';
import { FakeMode, InProcessTransport, fakeNet, fakeZtunnel, quietLog } from './kube-harness.js';

// --- fixtures: what containerd hands the last plugin of a Calico chain ----------------------

const PREV_1_0 = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cali12345', mac: 'ee:ee:ee:ee:ee:ee' },
    { name: 'eth0', sandbox: '/var/run/netns/cni-1234' },
  ],
  ips: [
    { address: '10.244.1.10/32', interface: 1 },
    { address: 'FD00::A/128', interface: 1 },
  ],
  dns: {},
};
const PREV_0_4 = {
  cniVersion: '0.4.0',
  interfaces: [{ name: 'eth0' }],
  ips: [{ version: '4', address: '10.244.1.11/24', gateway: '10.244.1.1', interface: 0 }],
};

const env = (command: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: command,
  CNI_CONTAINERID: 'c0ffee',
  CNI_NETNS: '/var/run/netns/cni-1234',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=uid-web-0',
  ...extra,
});
const netconf = (prevResult: unknown, version = '1.0.0') =>
  Buffer.from(
    JSON.stringify({
      cniVersion: version,
      name: 'k8s-pod-network',
      type: 'ambient-redirect-cni',
      socketPath: '/run/x.sock',
      ...(prevResult !== undefined && { prevResult }),
    }),
  );

describe('the wire format', () => {
  it('a request survives encode and decode; frameLength waits for the whole frame', () => {
    const req = { env: env('ADD'), stdin: netconf(PREV_1_0) };
    const frame = encodeRequest(req);
    expect(frameLength(frame.subarray(0, 3))).toBe(0);
    expect(frameLength(frame.subarray(0, frame.length - 1))).toBe(0);
    expect(frameLength(Buffer.concat([frame, Buffer.from('x')]))).toBe(frame.length);
    expect(decodeRequest(frame)).toEqual(req);
  });

  it('refuses oversized, truncated and padded frames', () => {
    const big = Buffer.alloc(4);
    big.writeUInt32BE(64 << 20);
    expect(() => frameLength(big)).toThrow(FrameError);
    const frame = encodeRequest({ env: { A: 'b' }, stdin: Buffer.from('{}') });
    const padded = Buffer.concat([frame, Buffer.from('zz')]);
    padded.writeUInt32BE(frame.length - 4 + 2);
    expect(() => decodeRequest(padded)).toThrow(/after stdin/);
    const cut = Buffer.from(frame.subarray(0, 10));
    cut.writeUInt32BE(6);
    expect(() => decodeRequest(cut)).toThrow(FrameError);
  });

  it('a reply carries the exit code and stdout', () => {
    expect(decodeReply(encodeReply({ code: 1, stdout: '{"code":11}\n' }))).toEqual({ code: 1, stdout: '{"code":11}\n' });
  });
});

describe('request parsing', () => {
  it('reads the CNI environment, the Kubernetes arguments and the sandbox IPs (canonical, no prefix)', () => {
    const r = parseRequest({ env: env('ADD'), stdin: netconf(PREV_1_0) });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.req).toMatchObject({
      command: 'ADD',
      containerId: 'c0ffee',
      netns: '/var/run/netns/cni-1234',
      ifname: 'eth0',
      cniVersion: '1.0.0',
      pod: { namespace: 'shop', name: 'web-0', uid: 'uid-web-0' },
    });
    expect(r.req.ips).toEqual(['10.244.1.10', 'fd00::a']);
    expect(JSON.parse(passThrough(r.req))).toEqual(PREV_1_0);
  });

  it('reads a 0.4.0 prevResult (ips with "version" and a gateway)', () => {
    const r = parseRequest({ env: env('ADD'), stdin: netconf(PREV_0_4, '0.4.0') });
    expect(r.ok && r.req.ips).toEqual(['10.244.1.11']);
    expect(r.ok && r.req.cniVersion).toBe('0.4.0');
  });

  it('without prevResult: no IPs, and the pass-through result is a bare one of the configured version', () => {
    const r = parseRequest({ env: env('ADD'), stdin: netconf(undefined, '0.4.0') });
    expect(r.ok && r.req.ips).toEqual([]);
    expect(r.ok && JSON.parse(passThrough(r.req))).toEqual({ cniVersion: '0.4.0' });
  });

  it.each([
    ['not JSON', env('ADD'), Buffer.from('{"cniVersion":'), 6, /not JSON/],
    ['a JSON array', env('ADD'), Buffer.from('[]'), 6, /not a JSON object/],
    ['an unknown command', env('FOO'), netconf(PREV_1_0), 4, /CNI_COMMAND "FOO"/],
    ['an unsupported cniVersion', env('ADD'), netconf(PREV_1_0, '2.0.0'), 1, /cniVersion "2.0.0" is not supported/],
    [
      'stdin that is not UTF-8',
      env('ADD'),
      Buffer.concat([netconf(undefined).subarray(0, -1), Buffer.from([0x2c, 0x22, 0x78, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d])]),
      6,
      /not UTF-8/,
    ],
    ['GC without its list', env('GC'), netconf(undefined), 7, /valid-attachments/],
    ['no container ID', env('ADD', { CNI_CONTAINERID: '' }), netconf(PREV_1_0), 4, /CNI_CONTAINERID/],
    ['ADD without a netns', env('ADD', { CNI_NETNS: '' }), netconf(PREV_1_0), 4, /CNI_NETNS/],
    ['prevResult not an object', env('ADD'), netconf('x'), 6, /prevResult is not an object/],
    ['an address that is not one', env('ADD'), netconf({ ips: [{ address: '10.0.0.300/32' }] }), 6, /ips\[0\]/],
    ['an address missing', env('ADD'), netconf({ ips: [{ interface: 0 }] }), 6, /ips\[0\]\.address is missing/],
  ])('%s is a CNI error with the right code', (_what, e, stdin, code, msg) => {
    const r = parseRequest({ env: e, stdin });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.error.code).toBe(code);
    expect(r.error.msg).toMatch(msg);
  });

  it('DEL needs no netns (the runtime may have lost it)', () => {
    expect(parseRequest({ env: env('DEL', { CNI_NETNS: '' }), stdin: netconf(undefined) }).ok).toBe(true);
  });

  it('CNI_ARGS: later keys win, malformed terms are skipped', () => {
    expect(parseCniArgs('A=1;junk;B=x=y;A=2;=z')).toEqual({ A: '2', B: 'x=y' });
  });

  it('prevResult is passed through byte for byte, not re-serialised', () => {
    const prevText = '{ "cniVersion" : "1.0.0",\n  "ips": [ {"address": "10.244.1.10/32", "interface": 0} ], "mtu": 1.50e3, "note": "caf\u00e9 \u00e9" }';
    const stdin = Buffer.from(`{"cniVersion":"1.0.0","name":"k8s","type":"ambient-redirect-cni","prevResult":${prevText}}`);
    const r = parseRequest({ env: env('ADD'), stdin });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.req.ips).toEqual(['10.244.1.10']);
    expect(passThrough(r.req)).toEqual(Buffer.from(`${prevText}\n`));
  });

  it('prevResult and cniVersion are the members the plugin reads: raw key, last duplicate; null is none', () => {
    // The plugin matches raw key bytes: "prev\u0052esult" is another key to it, so to us.
    const escaped = parseRequest({ env: env('ADD'), stdin: Buffer.from('{"cniVersion":"1.0.0","prevResult":{"ips":[]},"prev\\u0052esult":5}') });
    expect(escaped.ok && escaped.req.prevResultRaw?.toString()).toBe('{"ips":[]}');
    const dup = parseRequest({ env: env('ADD'), stdin: Buffer.from('{"cniVersion":"1.0.0","prevResult":5,"prevResult":{"a":1}}') });
    expect(dup.ok && dup.req.prevResultRaw?.toString()).toBe('{"a":1}');
    const none = parseRequest({ env: env('ADD'), stdin: Buffer.from('{"cniVersion":"0.4.0","prevResult":null}') });
    expect(none.ok && passThrough(none.req).toString()).toBe('{"cniVersion":"0.4.0"}\n');
  });

  it('STATUS and GC need no container; GC reads the valid attachments (either spelling)', () => {
    const st = parseRequest({ env: { CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' }, stdin: netconf(undefined, '1.1.0') });
    expect(st.ok && st.req.command).toBe('STATUS');
    for (const key of ['cni.dev/valid-attachments', 'cni.dev/attachments']) {
      const gc = parseRequest({
        env: { CNI_COMMAND: 'GC' },
        stdin: Buffer.from(
          JSON.stringify({
            cniVersion: '1.1.0',
            name: 'n',
            [key]: [
              { containerID: 'a', ifname: 'eth0' },
              { containerID: 'b', ifname: 'eth0' },
            ],
          }),
        ),
      });
      expect(gc.ok && gc.req.validAttachments).toEqual(['a', 'b']);
    }
  });
});

// --- the decision ------------------------------------------------------------------------------

const ambient: NamespaceView = { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } };
const plain: NamespaceView = { name: 'plain', labels: {} };
const ctx = { nodeName: 'n1', reserved: new Set(['10.0.0.1']) };
const podView = (over: Partial<PodView> = {}): PodView => ({
  uid: 'uid-web-0',
  name: 'web-0',
  namespace: 'shop',
  nodeName: 'n1',
  resourceVersion: 5n,
  labels: {},
  ips: [],
  hostIp: '10.0.0.1',
  hostNetwork: false,
  phase: 'Pending',
  sidecar: false,
  ready: false,
  created: 1,
  statusAnnotation: null,
  ...over,
});

describe('the enrollment decision', () => {
  it('a namespace passes its pods before any pod lookup only when the rules rule them all out', () => {
    // Istio's default rules enroll a pod labelled ambient in any namespace: its labels decide.
    expect(namespaceDecision(plain, ctx)).toBeNull();
    expect(namespaceDecision(ambient, ctx)).toBeNull();
    expect(namespaceDecision(undefined, ctx)).toMatchObject({ kind: 'pass', reason: 'namespace unknown' });
    // Rules that all need a namespace label: an unlabelled namespace's pods pass at once.
    const byNamespace = { selectors: [{ namespaceSelector: { matchLabels: { 'istio.io/dataplane-mode': 'ambient' } } }] };
    expect(namespaceDecision(plain, byNamespace)).toMatchObject({ kind: 'pass', reason: 'namespace selected by no enablement rule' });
    expect(namespaceDecision(ambient, byNamespace)).toBeNull();
  });

  it('a pod labelled ambient in an unlabelled namespace is enrolled; one without the label passes', () => {
    const labelled = podView({ namespace: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } });
    expect(podDecision(labelled, plain, ['10.244.1.10'], ctx)).toMatchObject({ kind: 'enroll' });
    expect(podDecision(podView({ namespace: 'plain' }), plain, ['10.244.1.10'], ctx)).toMatchObject({ kind: 'pass', reason: 'no enablement selector matches' });
  });

  it('a Pending pod without IP in the API is enrolled with the sandbox IPs', () => {
    const d = podDecision(podView(), ambient, ['10.244.1.10', 'fd00::a'], ctx);
    expect(d).toMatchObject({ kind: 'enroll', pod: { uid: 'uid-web-0', ips: ['10.244.1.10', 'fd00::a'] } });
  });

  it.each([
    ['opted out', podView({ labels: { 'istio.io/dataplane-mode': 'none' } }), ['10.244.1.10'], /opted out/],
    ['hostNetwork', podView({ hostNetwork: true }), ['10.244.1.10'], /hostNetwork/],
    ['a sidecar', podView({ sidecar: true }), ['10.244.1.10'], /sidecar/],
    ['the node’s own IP', podView(), ['10.0.0.1'], /own address/],
    ['another node’s pod', podView({ nodeName: 'n2' }), ['10.244.1.10'], /another node/],
  ])('%s passes', (_w, pod, ips, reason) => {
    const d = podDecision(pod, ambient, ips, ctx);
    expect(d.kind).toBe('pass');
    expect(d.kind === 'pass' && d.reason).toMatch(reason);
  });

  it('an enrolled pod without any IP (plugin placed before the primary) is a configuration error', () => {
    const d = podDecision(podView(), ambient, [], ctx);
    expect(d).toMatchObject({ kind: 'error', error: { code: 7 } });
  });
});

// --- the config list ---------------------------------------------------------------------------

const LIST = '{"cniVersion":"1.0.0","name":"k8s-pod-network",\n  "plugins":[{"type":"calico"},{"type":"portmap","snat":true}]}\n';
const ENTRY = {
  type: 'ambient-redirect-cni' as const,
  socketPath: '/var/run/ambient-redirect/cni.sock',
  namespacesFile: '/var/lib/ambient-redirect/ambient-namespaces',
  timeoutMs: 10_000,
};

describe('the config list edit', () => {
  it('the runtime’s file is the first .conf/.conflist/.json in lexical order', () => {
    expect(pickConfigFile(['99-x.conflist', '10-calico.conflist', 'README', '.10-hidden.conflist', '05-a.conf.bak'])).toBe('10-calico.conflist');
    expect(pickConfigFile(['README'])).toBeNull();
  });

  it('adds our entry last, idempotently, replacing an older entry of ours; removes it again', () => {
    const once = addPlugin(LIST, ENTRY);
    expect((JSON.parse(once) as { plugins: { type: string }[] }).plugins.map((p) => p.type)).toEqual(['calico', 'portmap', 'ambient-redirect-cni']);
    expect(addPlugin(once, ENTRY)).toBe(once);
    const older = addPlugin(LIST, { ...ENTRY, timeoutMs: 1 });
    expect(JSON.parse(addPlugin(older, ENTRY)).plugins).toHaveLength(3);
    expect(JSON.parse(addPlugin(older, ENTRY)).plugins[2].timeoutMs).toBe(10_000);
    expect(hasPlugin(once)).toBe(true);
    expect(JSON.parse(removePlugin(once)!)).toEqual(JSON.parse(LIST));
    expect(removePlugin(LIST)).toBeNull();
  });

  it('refuses what it cannot chain into', () => {
    expect(() => addPlugin('{"type":"bridge"}', ENTRY)).toThrow(/no "plugins" list/);
    expect(() => addPlugin('nope', ENTRY)).toThrow(ConflistError);
  });

  it('never installs into a list of a spec version the plugin does not support', () => {
    const list = (over: Record<string, unknown>) => JSON.stringify({ ...JSON.parse(LIST), ...over });
    expect(() => addPlugin(list({ cniVersion: '2.0.0' }), ENTRY)).toThrow(/CNI version "2.0.0" is not one the plugin supports/);
    expect(() => addPlugin(list({ cniVersion: '1.0.0', cniVersions: ['1.0.0', '1.1.0', '1.2.0'] }), ENTRY)).toThrow(/"1.2.0"/);
    expect(() => addPlugin(list({ cniVersion: undefined }), ENTRY)).toThrow(/no "cniVersion"/);
    expect(hasPlugin(addPlugin(list({ cniVersion: '1.1.0', cniVersions: ['1.0.0', '1.1.0'] }), ENTRY))).toBe(true);
  });
});

describe('install and uninstall on a scratch host', () => {
  let dir = '';
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  function host() {
    dir = mkdtempSync(join(tmpdir(), 'ar-cni-unit-'));
    for (const d of ['bin', 'net.d', 'state']) mkdirSync(join(dir, d));
    writeFileSync(join(dir, 'plugin'), '#!/bin/true\n');
    chmodSync(join(dir, 'plugin'), 0o755);
    writeFileSync(join(dir, 'net.d', '10-calico.conflist'), LIST);
    return {
      binDir: join(dir, 'bin'),
      confDir: join(dir, 'net.d'),
      stateDir: join(dir, 'state'),
      plugin: join(dir, 'plugin'),
      entry: { socketPath: ENTRY.socketPath, namespacesFile: ENTRY.namespacesFile, timeoutMs: 10_000 },
    };
  }
  const file = () => join(dir, 'net.d', '10-calico.conflist');

  it('uninstall restores the file byte for byte and removes the binary; a second install changes nothing', () => {
    const o = host();
    expect(installCni(o).changed).toBe(true);
    expect(installCni(o).changed).toBe(false);
    expect(hasPlugin(readFileSync(file(), 'utf8'))).toBe(true);
    expect(existsSync(join(o.binDir, 'ambient-redirect-cni'))).toBe(true);
    expect(uninstallCni(o).restored).toBe('original');
    expect(readFileSync(file())).toEqual(Buffer.from(LIST));
    expect(existsSync(join(o.binDir, 'ambient-redirect-cni'))).toBe(false);
    expect(uninstallCni(o).restored).toBe('nothing to do');
  });

  it('a list rewritten since install (by the primary CNI) loses only our entry', () => {
    const o = host();
    installCni(o);
    const rewritten = JSON.parse(readFileSync(file(), 'utf8'));
    rewritten.plugins.splice(1, 0, { type: 'bandwidth' });
    writeFileSync(file(), JSON.stringify(rewritten));
    expect(uninstallCni(o).restored).toBe('entry removed');
    expect(JSON.parse(readFileSync(file(), 'utf8')).plugins.map((p: { type: string }) => p.type)).toEqual(['calico', 'bandwidth', 'portmap']);
  });

  it('a .conf as the runtime’s file is refused with the reason', () => {
    const o = host();
    writeFileSync(join(o.confDir, '05-bridge.conf'), '{"type":"bridge"}');
    expect(() => installCni(o)).toThrow(/not a \.conflist/);
  });

  it('the namespace list is written when it changes, even empty, one name per line', () => {
    dir = mkdtempSync(join(tmpdir(), 'ar-cni-unit-'));
    const w = new NamespaceListWriter(join(dir, 'state', 'ambient-namespaces'));
    expect(w.update([])).toBe(true);
    expect(readFileSync(w.file, 'utf8')).toBe('');
    expect(w.update(['b', 'a'])).toBe(true);
    expect(w.update(['a', 'b'])).toBe(false);
    expect(readFileSync(w.file, 'utf8')).toBe('a\nb\n');
  });
});

// --- the handler against a membership double ------------------------------------------------------

class FakeMembership implements CniMembership {
  synced = true;
  namespaces = new Map<string, NamespaceView>([
    ['shop', ambient],
    ['plain', plain],
  ]);
  /** What a GET of a namespace answers (by default what the cache holds); 'fail' throws. */
  apiNamespaces: Map<string, NamespaceView> | 'fail' = this.namespaces;
  nsLive = true;
  nsFetches = 0;
  pods: PodView[] = [];
  apiPods: PodView[] = [];
  fetches = 0;
  provisioned: { pod: PodView; containerId: string }[] = [];
  programmed = new Set<string>();
  private progCbs: ((ips: ReadonlySet<string>) => void)[] = [];
  private changeCbs: (() => void)[] = [];
  hasSynced = () => this.synced;
  namespace = (n: string) => this.namespaces.get(n);
  namespacesLive = () => this.nsLive;
  fetchNamespace = async (n: string) => {
    this.nsFetches++;
    if (this.apiNamespaces === 'fail') throw new Error('connect ECONNREFUSED');
    return this.apiNamespaces.get(n) ?? null;
  };
  announcedSandboxes = () => [...new Set(this.provisioned.map((p) => p.containerId))];
  cachedPod = (ns: string, name: string, uid?: string) => this.pods.find((p) => p.namespace === ns && p.name === name && (!uid || p.uid === uid));
  podDeleted = () => false;
  fetchPod = async (ns: string, name: string) => {
    this.fetches++;
    return this.apiPods.find((p) => p.namespace === ns && p.name === name) ?? null;
  };
  enrollmentContext = () => ctx;
  provisionPod = (pod: PodView, containerId: string) => void this.provisioned.push({ pod, containerId });
  releaseSandbox = (id: string) => {
    const n = this.provisioned.length;
    this.provisioned = this.provisioned.filter((p) => p.containerId !== id);
    return this.provisioned.length < n;
  };
  programmedNow = () => this.programmed;
  onProgrammed = (cb: (ips: ReadonlySet<string>) => void) => void this.progCbs.push(cb);
  onChange = (cb: () => void) => void this.changeCbs.push(cb);
  pass(ips: string[]) {
    this.programmed = new Set(ips);
    this.progCbs.forEach((c) => c(this.programmed));
  }
  change() {
    this.changeCbs.forEach((c) => c());
  }
}

describe('the handler', () => {
  const req = (command: string, ns = 'shop', extra: Record<string, string> = {}) => ({
    env: env(command, { CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=web-0;K8S_POD_UID=uid-web-0`, ...extra }),
    stdin: netconf(PREV_1_0),
  });

  it('a pod outside the mesh gets prevResult back at once: from the watch’s cache, nothing announced', async () => {
    const m = new FakeMembership();
    m.pods = [podView({ namespace: 'plain' })];
    const r = await new CniHandler(m, { addTimeoutMs: 1000, log: quietLog }).handle(req('ADD', 'plain'));
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toEqual(PREV_1_0);
    expect([m.fetches, m.provisioned.length]).toEqual([0, 0]);
  });

  it('with rules that all need a namespace label, a pod of an unlabelled namespace passes without any pod lookup', async () => {
    const m = new FakeMembership();
    m.enrollmentContext = () => ({ ...ctx, selectors: [{ namespaceSelector: { matchLabels: { 'istio.io/dataplane-mode': 'ambient' } } }] });
    m.apiPods = [podView({ namespace: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } })];
    const r = await new CniHandler(m, { addTimeoutMs: 1000, log: quietLog }).handle(req('ADD', 'plain'));
    expect(r.code).toBe(0);
    expect([m.fetches, m.provisioned.length]).toEqual([0, 0]);
  });

  it('a pod labelled ambient in an unlabelled namespace is held until a pass programs it (read from the API when the watch is behind)', async () => {
    const m = new FakeMembership();
    m.apiPods = [podView({ namespace: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } })];
    const pending = new CniHandler(m, { addTimeoutMs: 2000, log: quietLog }).handle(req('ADD', 'plain'));
    await new Promise((r) => setTimeout(r, 20));
    expect(m.fetches).toBe(1);
    expect(m.provisioned.map((p) => [p.pod.namespace, p.pod.ips])).toEqual([['plain', ['10.244.1.10', 'fd00::a']]]);
    let answered = false;
    void pending.then(() => (answered = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(answered).toBe(false);
    m.pass(['10.244.1.10', 'fd00::a']);
    expect((await pending).code).toBe(0);
  });

  it('an enrolled pod is announced and held until a pass programs all its IPs', async () => {
    const m = new FakeMembership();
    m.pods = [podView()];
    const pending = new CniHandler(m, { addTimeoutMs: 2000, log: quietLog }).handle(req('ADD'));
    await new Promise((r) => setTimeout(r, 20));
    expect(m.provisioned.map((p) => p.pod.ips)).toEqual([['10.244.1.10', 'fd00::a']]);
    let answered = false;
    void pending.then(() => (answered = true));
    m.pass(['10.244.1.10']); // only one of two
    await new Promise((r) => setTimeout(r, 20));
    expect(answered).toBe(false);
    m.pass(['10.244.1.10', 'fd00::a']);
    const r = await pending;
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toEqual(PREV_1_0);
  });

  it('the fast path: asked before the announcement, ADD answers only once it has programmed every IP; short of that, a pass decides', async () => {
    const m = new FakeMembership();
    m.pods = [podView()];
    const order: string[] = [];
    const provision = m.provisionPod;
    m.provisionPod = (pod, id) => {
      order.push('announce');
      provision(pod, id);
    };
    let finish: (ips: ReadonlySet<string>) => void = () => {};
    const programPod = (uid: string) => {
      order.push(`fast ${uid}`);
      return new Promise<ReadonlySet<string>>((r) => (finish = r));
    };
    const h = new CniHandler(m, { addTimeoutMs: 2000, log: quietLog, programPod });
    let answered = false;
    const pending = h.handle(req('ADD'));
    void pending.then(() => (answered = true));
    await new Promise((r) => setTimeout(r, 20));
    // Its turn taken ahead of the pass the announcement kicks.
    expect(order).toEqual(['fast uid-web-0', 'announce']);
    expect(answered).toBe(false); // still programming
    finish(new Set(['10.244.1.10', 'fd00::a']));
    expect((await pending).code).toBe(0); // no pass needed

    // Programmed only one IP (the other had no route yet): the pass must cover both.
    const m2 = new FakeMembership();
    m2.pods = [podView()];
    const h2 = new CniHandler(m2, { addTimeoutMs: 2000, log: quietLog, programPod: async () => new Set(['10.244.1.10']) });
    answered = false;
    const pending2 = h2.handle(req('ADD'));
    void pending2.then(() => (answered = true));
    await new Promise((r) => setTimeout(r, 20));
    expect(answered).toBe(false);
    m2.pass(['10.244.1.10', 'fd00::a']);
    expect((await pending2).code).toBe(0);
  });

  it('a pod the watch has not seen yet is read from the API', async () => {
    const m = new FakeMembership();
    m.apiPods = [podView()];
    m.programmed = new Set(['10.244.1.10', 'fd00::a']);
    const r = await new CniHandler(m, { addTimeoutMs: 1000, log: quietLog }).handle(req('ADD'));
    expect(r.code).toBe(0);
    expect(m.fetches).toBe(1);
  });

  it('not programmed in time, a pod missing from the API, an agent not synced: code 11 with the reason', async () => {
    const m = new FakeMembership();
    m.pods = [podView()];
    const h = new CniHandler(m, { addTimeoutMs: 50, log: quietLog });
    const slow = await h.handle(req('ADD'));
    expect(slow.code).toBe(1);
    expect(JSON.parse(slow.stdout.toString())).toMatchObject({
      cniVersion: '1.0.0',
      code: 11,
      msg: expect.stringMatching(/shop\/web-0: not programmed within 50 ms/),
    });
    m.pods = [];
    expect(JSON.parse((await h.handle(req('ADD'))).stdout.toString()).msg).toMatch(/does not exist in the API/);
    m.synced = false;
    expect(JSON.parse((await h.handle(req('ADD'))).stdout.toString()).msg).toMatch(/not synced/);
  });

  it('waits for the first sync instead of guessing', async () => {
    const m = new FakeMembership();
    m.pods = [podView({ namespace: 'plain' })];
    m.synced = false;
    const p = new CniHandler(m, { addTimeoutMs: 1000, log: quietLog }).handle(req('ADD', 'plain'));
    setTimeout(() => {
      m.synced = true;
      m.change();
    }, 20);
    expect((await p).code).toBe(0);
  });

  it('DEL releases the sandbox and succeeds, even for garbage', async () => {
    const m = new FakeMembership();
    m.provisioned = [{ pod: podView(), containerId: 'c0ffee' }];
    const h = new CniHandler(m, { addTimeoutMs: 1000, log: quietLog });
    expect(await h.handle(req('DEL'))).toEqual({ code: 0, stdout: '' });
    expect(m.provisioned).toEqual([]);
    expect(await h.handle({ env: { CNI_COMMAND: 'DEL' }, stdin: Buffer.from('garbage') })).toEqual({ code: 0, stdout: '' });
  });

  it('the cache vouches only for an ambient namespace with its watch up; otherwise the API is asked', async () => {
    const m = new FakeMembership();
    m.pods = [podView()];
    m.programmed = new Set(['10.244.1.10', 'fd00::a']);
    const h = new CniHandler(m, { addTimeoutMs: 500, log: quietLog });
    expect((await h.handle(req('ADD'))).code).toBe(0);
    expect([m.nsFetches, m.provisioned.length]).toEqual([0, 1]);
    // Labelled ambient a moment ago: the cache still says plain, the API says ambient.
    m.namespaces = new Map([['plain', plain]]);
    m.apiNamespaces = new Map([
      ['shop', ambient],
      ['plain', plain],
    ]);
    m.provisioned = [];
    expect((await h.handle(req('ADD'))).code).toBe(0);
    expect([m.nsFetches, m.provisioned.length]).toEqual([1, 1]);
    // The namespace watch is down: even an ambient cache entry is read again.
    m.namespaces = new Map([['shop', ambient]]);
    m.nsLive = false;
    await h.handle(req('ADD'));
    expect(m.nsFetches).toBe(2);
  });

  it('a namespace neither the cache nor the API can vouch for: code 11, not a pass', async () => {
    const m = new FakeMembership();
    m.namespaces = new Map();
    m.apiNamespaces = 'fail';
    const r = await new CniHandler(m, { addTimeoutMs: 500, log: quietLog }).handle(req('ADD', 'shop'));
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ code: 11, msg: expect.stringMatching(/cannot tell whether namespace shop is ambient/) });
    // A namespace the API says does not exist, or a name no namespace can have, has no pods to hold.
    m.apiNamespaces = new Map();
    expect((await new CniHandler(m, { addTimeoutMs: 500, log: quietLog }).handle(req('ADD', 'gone'))).code).toBe(0);
    const fetches = m.nsFetches;
    expect((await new CniHandler(m, { addTimeoutMs: 500, log: quietLog }).handle(req('ADD', '..'))).code).toBe(0);
    expect(m.nsFetches).toBe(fetches);
  });

  it('STATUS succeeds; GC releases the announcements of sandboxes the runtime no longer has', async () => {
    const m = new FakeMembership();
    m.provisioned = [
      { pod: podView(), containerId: 'keep' },
      { pod: podView({ uid: 'u2' }), containerId: 'stale' },
    ];
    const h = new CniHandler(m, { addTimeoutMs: 500, log: quietLog });
    expect(await h.handle({ env: { CNI_COMMAND: 'STATUS' }, stdin: netconf(undefined, '1.1.0') })).toEqual({ code: 0, stdout: '' });
    const gc = Buffer.from(JSON.stringify({ cniVersion: '1.1.0', name: 'k8s', 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth0' }] }));
    expect(await h.handle({ env: { CNI_COMMAND: 'GC' }, stdin: gc })).toEqual({ code: 0, stdout: '' });
    expect(m.provisioned.map((p) => p.containerId)).toEqual(['keep']);
  });

  it('a request that is not a Kubernetes pod passes', async () => {
    const m = new FakeMembership();
    const r = await new CniHandler(m, { addTimeoutMs: 1000, log: quietLog }).handle({ env: env('ADD', { CNI_ARGS: '' }), stdin: netconf(PREV_1_0) });
    expect(r.code).toBe(0);
  });
});

// --- announced pods in the real membership ---------------------------------------------------------

describe('announced pods in KubeMembership', () => {
  const NODE = 'node-a';
  const IP = '10.244.1.10';
  function setup() {
    let rv = 10;
    const nsObj = { metadata: { name: 'shop', resourceVersion: '1', labels: { 'istio.io/dataplane-mode': 'ambient' } } };
    const pod = (ip: string | null, over: Record<string, unknown> = {}) => ({
      metadata: { name: 'web-0', namespace: 'shop', uid: 'uid-1', resourceVersion: String(++rv), creationTimestamp: '2026-01-01T00:00:00Z', labels: {} },
      spec: { nodeName: NODE, containers: [{ name: 'app' }] },
      status: { phase: ip ? 'Running' : 'Pending', hostIP: '10.0.0.1', ...(ip && { podIP: ip, podIPs: [{ ip }] }) },
      ...over,
    });
    const api = new InProcessTransport((p) =>
      p.includes('namespaces') ? { items: [nsObj], resourceVersion: '5' } : { items: [pod(null)], resourceVersion: '5' },
    );
    const m = new KubeMembership(api, {
      nodeName: NODE,
      ztunnel: { namespace: 'istio-system', labels: { app: 'ztunnel' } },
      backoff: { initialMs: 1, maxMs: 5 },
      stallTimeoutMs: 3_600_000,
      watchTimeoutSeconds: 3600,
      log: quietLog,
      writeStatus: false,
    });
    const mode = new FakeMode();
    const deletes: string[] = [];
    mode.onDelete = (ip) => deletes.push(ip);
    const controller = new Controller({
      mode,
      membership: m,
      ztunnelIp: '10.244.9.2',
      runner: { run: async () => '' },
      log: quietLog,
      readNet: async () => fakeNet([IP, '10.244.1.11']),
      placeZtunnel: fakeZtunnel,
    });
    return { api, m, mode, deletes, controller, pod };
  }
  const settle = async (c: Controller) => {
    await new Promise((r) => setTimeout(r, 20));
    await c.idle();
  };

  it('enrolled with the sandbox IP before the API has one; the API’s IP later changes nothing (no flap)', async () => {
    const { api, m, mode, deletes, controller, pod } = setup();
    m.start();
    controller.start(
      3_600_000,
      () => {},
      () => {},
    );
    try {
      while (!m.hasSynced()) await new Promise((r) => setTimeout(r, 5));
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual([]);
      const cached = m.cachedPod('shop', 'web-0')!;
      m.provisionPod({ ...cached, ips: [IP] }, 'sandbox-1');
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual([IP]);
      expect(m.programmedNow().has(IP)).toBe(true);
      api.emit('/api/v1/pods', { type: 'MODIFIED', object: pod(IP) });
      await settle(controller);
      expect(m.provisionalCount()).toBe(0); // the API confirmed it
      expect([...mode.pods.keys()]).toEqual([IP]);
      expect(m.releaseSandbox('sandbox-1')).toBe(false); // nothing announced any more; the API owns it
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual([IP]);
      expect(deletes).toEqual([]);
    } finally {
      await controller.stop();
      await m.stop();
    }
  });

  it('an event that leaves the enrolled view as it was (a pod outside the mesh) kicks no pass; an announcement does', async () => {
    const { api, m, mode, controller, pod } = setup();
    let passes = 0;
    m.start();
    controller.start(
      3_600_000,
      () => passes++,
      () => {},
    );
    try {
      while (!m.hasSynced()) await new Promise((r) => setTimeout(r, 5));
      await settle(controller);
      const before = passes;
      const outside = pod('10.244.1.20', {});
      outside.metadata = { ...outside.metadata, name: 'plain-0', namespace: 'plain', uid: 'uid-plain' };
      api.emit('/api/v1/pods', { type: 'ADDED', object: outside });
      await settle(controller);
      expect(m.cachedPod('plain', 'plain-0')?.uid).toBe('uid-plain'); // seen, and changed nothing
      expect(passes).toBe(before);
      m.provisionPod({ ...m.cachedPod('shop', 'web-0')!, ips: [IP] }, 'sandbox-1');
      await settle(controller);
      expect(passes).toBe(before + 1);
      expect([...mode.pods.keys()]).toEqual([IP]);
    } finally {
      await controller.stop();
      await m.stop();
    }
  });

  it('a pod the API never confirmed is removed by DEL; an API delete ends an announcement too', async () => {
    const { api, m, mode, controller, pod } = setup();
    m.start();
    controller.start(
      3_600_000,
      () => {},
      () => {},
    );
    try {
      while (!m.hasSynced()) await new Promise((r) => setTimeout(r, 5));
      const ghost: PodView = { ...m.cachedPod('shop', 'web-0')!, uid: 'uid-ghost', name: 'ghost', ips: ['10.244.1.11'] };
      m.provisionPod(ghost, 'sandbox-g');
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual(['10.244.1.11']);
      expect(m.releaseSandbox('sandbox-g')).toBe(true);
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual([]);

      m.provisionPod({ ...m.cachedPod('shop', 'web-0')!, ips: [IP] }, 'sandbox-2');
      await settle(controller);
      expect([...mode.pods.keys()]).toEqual([IP]);
      api.emit('/api/v1/pods', { type: 'DELETED', object: pod(null) });
      await settle(controller);
      expect(m.provisionalCount()).toBe(0);
      expect([...mode.pods.keys()]).toEqual([]);
      // A late ADD for the deleted UID announces nothing.
      m.provisionPod({ ...ghost, uid: 'uid-1', ips: [IP] }, 'sandbox-3');
      expect(m.provisionalCount()).toBe(0);
    } finally {
      await controller.stop();
      await m.stop();
    }
  });
});

// --- run's CNI flags -------------------------------------------------------------------------------

describe('run’s CNI flags', () => {
  const base = ['--kubeconfig', '/k', '--node-name', 'n1'];
  it('off by default; flags and environment fill the CNI settings', async () => {
    const { parseRunConfig } = await import('../../src/config.js');
    expect(parseRunConfig(base, {}).cni).toMatchObject({
      socket: '',
      install: false,
      addTimeoutMs: 8000,
      binDir: '/opt/cni/bin',
      confDir: '/etc/cni/net.d',
      stateDir: '/var/lib/ambient-redirect',
    });
    expect(
      parseRunConfig([...base, '--cni-socket', '/run/ar/cni.sock', '--cni-add-timeout', '2.5'], { CNI_INSTALL: 'true', CNI_CONF_DIR: '/etc/k/net.d' }).cni,
    ).toMatchObject({
      socket: '/run/ar/cni.sock',
      addTimeoutMs: 2500,
      install: true,
      confDir: '/etc/k/net.d',
    });
  });

  it.each([
    [['--cni-socket', 'rel.sock'], /cni-socket.*absolute/],
    [['--cni-install', 'true'], /cni-install needs --cni-socket/],
    [['--cni-socket', '/s', '--cni-add-timeout', '0'], /cni-add-timeout/],
    [['--cni-socket', '/s', '--cni-conf-dir', 'etc'], /cni-conf-dir.*absolute/],
  ])('rejects %j with one clear line', async (argv, msg) => {
    const { parseRunConfig } = await import('../../src/config.js');
    expect(() => parseRunConfig([...base, ...argv], {})).toThrow(msg);
  });

  it('needs Kubernetes membership (the plugin names pods, not IPs)', async () => {
    const { parseRunConfig } = await import('../../src/config.js');
    expect(() => parseRunConfig(['--enroll', '10.0.0.5', '--ztunnel-ip', '10.0.0.2', '--cni-socket', '/s'], {})).toThrow(/needs Kubernetes membership/);
  });
});
