import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ENABLEMENT_SELECTORS,
  enrolledPods,
  enrollment,
  ipProblem,
  parseEnablementSelectors,
  podOverrides,
  selectZtunnel,
  type NamespaceView,
  type PodView,
} from '../../src/core/enrollment.js';

const NODE = 'node-a';
const ambient: NamespaceView = { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } };
const plain: NamespaceView = { name: 'plain', labels: {} };
const nss = new Map([ambient, plain].map((n) => [n.name, n]));
const ctx = { nodeName: NODE, reserved: new Set(['10.0.0.1', '10.244.0.2']) };

let n = 0;
function pod(over: Partial<PodView> = {}): PodView {
  n++;
  return {
    uid: `uid-${n}`,
    name: `p${n}`,
    namespace: 'shop',
    nodeName: NODE,
    resourceVersion: BigInt(n),
    labels: {},
    ips: ['10.244.0.10'],
    hostIp: '10.0.0.1',
    hostNetwork: false,
    phase: 'Running',
    sidecar: false,
    ready: true,
    created: 1000 + n,
    statusAnnotation: null,
    ...over,
  };
}

describe('enrollment rules', () => {
  it.each([
    ['a running pod in an ambient namespace', pod(), ambient, true],
    ['a pod in a namespace without the label', pod({ namespace: 'plain' }), plain, 'no enablement selector matches'],
    ['a pod whose namespace is unknown', pod(), undefined, 'namespace unknown'],
    ['a pod that opts out', pod({ labels: { 'istio.io/dataplane-mode': 'none' } }), ambient, 'pod opted out'],
    ['a pod labelled ambient in a namespace without the label', pod({ namespace: 'plain', labels: { 'istio.io/dataplane-mode': 'ambient' } }), plain, true],
    [
      'a pod labelled ambient in a namespace labelled none',
      pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }),
      { name: 'x', labels: { 'istio.io/dataplane-mode': 'none' } },
      true,
    ],
    ['a pod labelled ambient whose namespace is unknown', pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }), undefined, true],
    ['a pod with another dataplane-mode value in an ambient namespace', pod({ labels: { 'istio.io/dataplane-mode': 'sidecar' } }), ambient, true],
    ['a pod labelled ambient with hostNetwork', pod({ hostNetwork: true, labels: { 'istio.io/dataplane-mode': 'ambient' } }), plain, 'hostNetwork'],
    ['a pod labelled ambient with a sidecar', pod({ sidecar: true, labels: { 'istio.io/dataplane-mode': 'ambient' } }), plain, 'has a sidecar'],
    ['a hostNetwork pod', pod({ hostNetwork: true }), ambient, 'hostNetwork'],
    ['a pod with a sidecar', pod({ sidecar: true }), ambient, 'has a sidecar'],
    ['a Succeeded pod', pod({ phase: 'Succeeded' }), ambient, 'terminal (Succeeded)'],
    ['a Failed pod', pod({ phase: 'Failed' }), ambient, 'terminal (Failed)'],
    ['a pod without an IP', pod({ ips: [] }), ambient, 'no IP yet'],
    ['a pod of another node', pod({ nodeName: 'node-b' }), ambient, 'pod of another node'],
    ['a pod with the node’s IP', pod({ ips: ['10.0.0.1'] }), ambient, 'IP 10.0.0.1: the node’s or ztunnel’s own address'],
    ['a pod with ztunnel’s IP', pod({ ips: ['10.244.0.2'] }), ambient, 'IP 10.244.0.2: the node’s or ztunnel’s own address'],
    ['a pod with a loopback IP', pod({ ips: ['127.0.0.5'] }), ambient, 'IP 127.0.0.5: loopback'],
  ])('%s', (_what, p, ns, want) => {
    const v = enrollment(p, ns, ctx);
    if (want === true) expect(v).toEqual({ enrolled: true });
    else expect(v).toEqual({ enrolled: false, reason: want });
  });

  it('the pod opt-out wins over every rule, custom ones included', () => {
    const all = parseEnablementSelectors('[{"namespaceSelector":{"matchExpressions":[{"key":"team","operator":"Exists"}]}}]');
    const ns: NamespaceView = { name: 't', labels: { team: 'a' } };
    expect(enrollment(pod({ namespace: 't' }), ns, { ...ctx, selectors: all })).toEqual({ enrolled: true });
    expect(enrollment(pod({ namespace: 't', labels: { 'istio.io/dataplane-mode': 'none' } }), ns, { ...ctx, selectors: all })).toEqual({
      enrolled: false,
      reason: 'pod opted out',
    });
    // The custom rules replace the defaults: the ambient label alone no longer enrolls.
    expect(enrollment(pod({ labels: { 'istio.io/dataplane-mode': 'ambient' } }), ambient, { ...ctx, selectors: all }).enrolled).toBe(false);
  });

  it('custom selectors: matchLabels and every operator, pod and namespace ANDed, rules ORed', () => {
    const sel = parseEnablementSelectors(
      JSON.stringify([
        { podSelector: { matchLabels: { mesh: 'on' }, matchExpressions: [{ key: 'tier', operator: 'In', values: ['web', 'api'] }] } },
        {
          podSelector: { matchExpressions: [{ key: 'legacy', operator: 'DoesNotExist' }] },
          namespaceSelector: {
            matchExpressions: [
              { key: 'env', operator: 'NotIn', values: ['dev'] },
              { key: 'owner', operator: 'Exists' },
            ],
          },
        },
      ]),
    );
    const c = { ...ctx, selectors: sel };
    const nsProd: NamespaceView = { name: 'p', labels: { env: 'prod', owner: 'x' } };
    const nsDev: NamespaceView = { name: 'd', labels: { env: 'dev', owner: 'x' } };
    const nsNoOwner: NamespaceView = { name: 'n', labels: { env: 'prod' } };
    expect(enrollment(pod({ labels: { mesh: 'on', tier: 'web' } }), nsDev, c).enrolled).toBe(true);
    expect(enrollment(pod({ labels: { mesh: 'on', tier: 'db' } }), nsNoOwner, c).enrolled).toBe(false);
    expect(enrollment(pod({ labels: { mesh: 'on' } }), nsNoOwner, c).enrolled).toBe(false);
    expect(enrollment(pod(), nsProd, c).enrolled).toBe(true);
    expect(enrollment(pod({ labels: { legacy: '' } }), nsProd, c).enrolled).toBe(false);
    expect(enrollment(pod(), nsDev, c).enrolled).toBe(false);
    expect(enrollment(pod(), nsNoOwner, c).enrolled).toBe(false);
    expect(enrollment(pod(), { name: 'e', labels: { owner: 'y' } }, c).enrolled).toBe(true); // NotIn: an absent key matches
  });

  it.each([
    [{}, { bypassInbound: false, dnsCapture: null, rerouteInterfaces: [] }],
    [
      {
        'ambient.istio.io/bypass-inbound-capture': 'true',
        'ambient.istio.io/dns-capture': 'false',
        'ambient.istio.io/reroute-virtual-interfaces': 'tap0, net1 ,',
      },
      { bypassInbound: true, dnsCapture: false, rerouteInterfaces: ['tap0', 'net1'] },
    ],
    [
      { 'ambient.istio.io/bypass-inbound-capture': 'yes', 'ambient.istio.io/dns-capture': 'TRUE' },
      { bypassInbound: false, dnsCapture: true, rerouteInterfaces: [] },
    ],
    [{ 'ambient.istio.io/dns-capture': 'maybe' }, { bypassInbound: false, dnsCapture: null, rerouteInterfaces: [] }],
  ])('the per-pod annotations %j', (annotations, want) => {
    expect(podOverrides(annotations)).toEqual(want);
  });

  it('the default selectors are Istio’s, and parse from their own JSON', () => {
    expect(parseEnablementSelectors(JSON.stringify(DEFAULT_ENABLEMENT_SELECTORS))).toEqual(DEFAULT_ENABLEMENT_SELECTORS);
  });

  it.each([
    ['{}', 'not a list'],
    ['[]', 'an empty list enrolls nothing'],
    ['[{"x', 'not JSON'],
    ['[{}]', '[0]: neither podSelector nor namespaceSelector'],
    ['[{"podSelecter":{}}]', '[0]: unknown field "podSelecter"'],
    ['[{"podSelector":{"matchLabels":{"a b":"c"}}}]', '[0].podSelector.matchLabels: "a b" is not a label key'],
    ['[{"podSelector":{"matchLabels":{"a":"c d"}}}]', '[0].podSelector.matchLabels: "c d" is not a label value'],
    ['[{"podSelector":{"matchLabels":{"a":1}}}]', '[0].podSelector.matchLabels: 1 is not a string'],
    [
      '[{"podSelector":{"matchExpressions":[{"key":"a","operator":"Equals","values":["b"]}]}}]',
      'operator: "Equals" is not one of In, NotIn, Exists, DoesNotExist',
    ],
    ['[{"podSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}}]', 'In needs at least one value'],
    [
      '[{"namespaceSelector":{"matchExpressions":[{"key":"a","operator":"Exists","values":["b"]}]}}]',
      '[0].namespaceSelector.matchExpressions[0]: Exists takes no values',
    ],
    ['[{"podSelector":{"matchLabels":{"UPPER.example/a":"b"}}}]', 'the prefix is not a DNS subdomain'],
  ])('a bad selector %s is a clear error', (text, message) => {
    expect(() => parseEnablementSelectors(text)).toThrow(message);
  });

  it.each([
    ['0.0.0.0', 'unspecified'],
    ['127.0.0.1', 'loopback'],
    ['169.254.1.1', 'link-local'],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'reserved or broadcast'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fe80::1', 'link-local'],
    ['ff02::1', 'multicast'],
    ['::ffff:10.0.0.1', 'IPv4-mapped'],
    ['10.0.0.1 ', 'not an IP address'],
    ['010.0.0.1', 'not an IP address'],
    ['10.244.1.7', null],
    ['fd00::7', null],
  ])('IP %j: %s', (ip, want) => expect(ipProblem(ip)).toBe(want));

  it('gives an IP to the newest live pod that claims it: a stale or terminal pod never takes it', () => {
    const old = pod({ ips: ['10.244.0.50'], created: 1 });
    const reused = pod({ ips: ['10.244.0.50'], namespace: 'plain', created: 5 });
    // The new owner is not enrolled: the old pod's enrollment must not keep the IP captured.
    expect([...enrolledPods([old, reused], nss, ctx).keys()]).toEqual([]);
    const done = pod({ ips: ['10.244.0.51'], phase: 'Succeeded', created: 9 });
    const live = pod({ ips: ['10.244.0.51'], created: 2 });
    expect(enrolledPods([done, live], nss, ctx).get('10.244.0.51')?.uid).toBe(live.uid);
  });

  it('enrolls both addresses of a dual-stack pod, and only valid ones', () => {
    const dual = pod({ ips: ['10.244.0.60', 'fd00::60'] });
    expect([...enrolledPods([dual], nss, ctx).keys()].sort()).toEqual(['10.244.0.60', 'fd00::60']);
    const odd = pod({ ips: ['10.244.0.61', 'fe80::1'] });
    expect([...enrolledPods([odd], nss, ctx).keys()]).toEqual(['10.244.0.61']);
  });

  it('finds ztunnel: Ready, on this node, matching, newest first', () => {
    const sel = { namespace: 'istio-system', labels: { app: 'ztunnel' } };
    const zt = (over: Partial<PodView>) =>
      pod({ namespace: 'istio-system', labels: { app: 'ztunnel' }, owner: { kind: 'DaemonSet', name: 'ztunnel' }, serviceAccount: 'ztunnel', ...over });
    const older = zt({ ips: ['10.244.0.2'], created: 10 });
    const newer = zt({ ips: ['10.244.0.3'], created: 20 });
    const notReady = zt({ ips: ['10.244.0.4'], created: 30, ready: false });
    const otherNode = zt({ ips: ['10.244.0.5'], created: 40, nodeName: 'node-b' });
    const wrongLabel = pod({ namespace: 'istio-system', labels: { app: 'other' }, ips: ['10.244.0.6'], created: 50 });
    expect(selectZtunnel([older, newer, notReady, otherNode, wrongLabel], sel, NODE)?.ips[0]).toBe('10.244.0.3');
    expect(selectZtunnel([notReady], sel, NODE)).toBeNull();
  });
});
