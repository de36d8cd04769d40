import { describe, expect, it } from 'vitest';
import { ConfigError, parseRunConfig } from '../../src/config.js';

describe('run configuration', () => {
  it('takes flags over environment over defaults, frozen', () => {
    const cfg = parseRunConfig(['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.10, 10.0.0.11'], {
      LOG_LEVEL: 'debug',
      ZTUNNEL_IP: '10.9.9.9',
    });
    expect(cfg).toMatchObject({ ztunnelIp: '10.0.0.2', logLevel: 'debug', pinRoot: '/sys/fs/bpf', mode: 'auto', resyncSeconds: 5 });
    expect(cfg.membership).toEqual({ kind: 'static', enroll: ['10.0.0.10', '10.0.0.11'] });
    expect(Object.isFrozen(cfg)).toBe(true);
  });

  it('an empty --enroll is static membership with nobody enrolled', () => {
    expect(parseRunConfig(['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', ''], {}).membership).toEqual({ kind: 'static', enroll: [] });
  });

  it('reads Kubernetes settings from flags and environment, with client-go-like defaults', () => {
    const cfg = parseRunConfig(['--kubeconfig', '/k.yaml'], { NODE_NAME: 'n1', ZTUNNEL_NAMESPACE: 'zt', MAX_DELETE_SHARE: '0.25' });
    expect(cfg).toMatchObject({
      membership: { kind: 'kubernetes', kubeconfig: '/k.yaml' },
      nodeName: 'n1',
      ztunnelIp: null,
      ztunnelNamespace: 'zt',
      ztunnelSelector: { app: 'ztunnel' },
      maxDeleteShare: 0.25,
      backoffInitialMs: 800,
      backoffMaxMs: 30_000,
      watchStallSeconds: 120,
      healthAddress: '',
    });
    // In-cluster: no kubeconfig, the service account's environment.
    expect(parseRunConfig(['--node-name', 'n1'], { KUBERNETES_SERVICE_HOST: '10.96.0.1' }).membership).toEqual({ kind: 'kubernetes', kubeconfig: '' });
  });

  it('ztunnel identity and the scrape address: defaults, environment, bad values', () => {
    const base = ['--kubeconfig', '/k', '--node-name', 'n'];
    expect(parseRunConfig(base, {})).toMatchObject({ ztunnelDaemonSet: 'ztunnel', ztunnelServiceAccount: 'ztunnel', metricsAddress: '' });
    expect(parseRunConfig(base, { ZTUNNEL_DAEMONSET: 'zt-canary', ZTUNNEL_SERVICE_ACCOUNT: 'zt', METRICS_ADDRESS: '0.0.0.0:15035' })).toMatchObject({
      ztunnelDaemonSet: 'zt-canary',
      ztunnelServiceAccount: 'zt',
      metricsAddress: '0.0.0.0:15035',
    });
    expect(() => parseRunConfig([...base, '--ztunnel-daemonset', 'Zt_1'], {})).toThrow(/ztunnel-daemonset: "Zt_1" is not a Kubernetes object name/);
    expect(() => parseRunConfig([...base, '--ztunnel-service-account', ''], {})).toThrow(/ztunnel-service-account/);
    expect(() => parseRunConfig([...base, '--metrics-address', 'node:1'], {})).toThrow(/metrics-address/);
  });

  it.each([
    [['--ztunnel-mode', 'node', '--ztunnel-ip', 'x', '--enroll', ''], /ztunnel-ip.*not an IP/],
    [[], /no membership source: give --kubeconfig/],
    [['--enroll', '10.0.0.1'], /ztunnel-ip.*required with --enroll/],
    [['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.1,nope'], /enroll.*"nope"/],
    [['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '', '--mode', 'bogus'], /mode.*not one of/],
    [['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '', '--resync-interval', '0'], /resync-interval/],
    [['--ztunnel-ip', '10.0.0.2', '--what'], /Unknown option/],
    [['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '', '--log-level', 'loud'], /log-level/],
    [['--kubeconfig', '/k'], /node-name.*required/],
    [['--kubeconfig', '/k', '--node-name', 'n', '--max-delete-share', '2'], /max-delete-share: "2"/],
    [['--kubeconfig', '/k', '--node-name', 'n', '--ztunnel-selector', 'app in (x)'], /ztunnel-selector/],
    [['--kubeconfig', '/k', '--node-name', 'n', '--backoff-max', 'soon'], /backoff-max/],
    [['--kubeconfig', '/k', '--node-name', 'n', '--backoff-initial', '5', '--backoff-max', '1'], /below --backoff-initial/],
    [['--kubeconfig', '/k', '--node-name', 'n', '--health-address', 'localhost'], /health-address/],
  ])('rejects %j with one clear line', (argv, msg) => {
    expect(() => parseRunConfig(argv, {})).toThrow(ConfigError);
    expect(() => parseRunConfig(argv, {})).toThrow(msg);
  });

  it('rejects a bad environment value like a bad flag', () => {
    expect(() => parseRunConfig([], { KUBECONFIG: '/k', NODE_NAME: 'n', WATCH_STALL_TIMEOUT: '-1' })).toThrow(/watch-stall-timeout: "-1"/);
  });
});

describe('data-path flags', () => {
  const base = ['--ztunnel-mode', 'node', '--ztunnel-ip', '10.0.0.2', '--enroll', '10.0.0.10'];

  it('take delivery, tunnel and DNS capture from flags or environment', () => {
    expect(parseRunConfig(base, {})).toMatchObject({ delivery: 'auto', tunnel: 'auto', dnsCapture: false, resyncSeconds: 5 });
    expect(parseRunConfig([...base, '--delivery', 'tproxy', '--tunnel', 'vxlan', '--dns-capture', 'true'], {})).toMatchObject({
      delivery: 'tproxy',
      tunnel: 'vxlan',
      dnsCapture: true,
    });
    expect(parseRunConfig(base, { REDIRECT_DELIVERY: 'sk_assign', REDIRECT_TUNNEL: 'geneve', DNS_CAPTURE: 'true' })).toMatchObject({
      delivery: 'sk_assign',
      tunnel: 'geneve',
      dnsCapture: true,
    });
  });

  it('take DNS servers from flags or environment; the DNS Service only with Kubernetes membership', () => {
    expect(parseRunConfig(base, {})).toMatchObject({ dnsServers: [], dnsService: null });
    expect(parseRunConfig([...base, '--dns-servers', '10.96.0.10, fd00:96::a', '--node-local-dns', '169.254.20.10'], {}).dnsServers).toEqual([
      '10.96.0.10',
      'fd00:96::a',
      '169.254.20.10',
    ]);
    expect(parseRunConfig(base, { DNS_SERVERS: '10.96.0.10', NODE_LOCAL_DNS: '169.254.20.10,10.96.0.10' }).dnsServers).toEqual(['10.96.0.10', '169.254.20.10']);
    const kube = ['--kubeconfig', '/k', '--node-name', 'n'];
    expect(parseRunConfig(kube, {}).dnsService).toEqual({ namespace: 'kube-system', name: 'kube-dns' });
    expect(parseRunConfig([...kube, '--dns-service', 'dns/coredns'], {}).dnsService).toEqual({ namespace: 'dns', name: 'coredns' });
    expect(parseRunConfig(kube, { DNS_SERVICE: 'none' }).dnsService).toBeNull();
    expect(() => parseRunConfig([...kube, '--dns-service', 'kube-dns'], {})).toThrow(/dns-service: "kube-dns" is not namespace\/name/);
  });

  it.each([
    [['--delivery', 'magic'], /delivery/],
    [['--tunnel', 'gre'], /tunnel/],
    [['--dns-capture', 'yes'], /dns-capture/],
    [['--non-tcp', 'reject'], /--non-tcp: "reject" is not one of pass, drop/],
    [['--enablement-selectors', '[{}]'], /--enablement-selectors: \[0\]: neither podSelector nor namespaceSelector/],
    [['--dns-servers', '10.96.0.10,kube-dns'], /dns-servers: "kube-dns" is not an IP/],
    [['--node-local-dns', '169.254.20.10/32'], /node-local-dns/],
  ])('rejects %j', (extra, msg) => {
    expect(() => parseRunConfig([...base, ...extra], {})).toThrow(msg);
  });
});
