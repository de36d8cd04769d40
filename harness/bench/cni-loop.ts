/**
 * CNI ADDs answered on the calling process's event loop, for the scrape benchmark
 * (harness/bench/scrape.ts) and its test (test/kernel/metrics-scrape.test.ts): the agent's
 * own CNI socket server and handler (src/cni/server.ts, src/cni/handler.ts) over a
 * membership double that already holds the pods' answers, so an ADD costs what the
 * agent's loop spends on it and nothing else: framing, parsing, the decision, the reply.
 * Two kinds alternate as in harness/bench/cni.ts: a pod of a namespace outside the mesh
 * (passes), and an enrolled pod whose IPs the last pass programmed (answered at once).
 * `cniAdd` is the plugin's side: one connection, one request, one reply.
 */
import net from 'node:net';
import { CniHandler, type CniMembership } from '../../src/cni/handler.js';
import { decodeReply, encodeRequest, frameLength, type Reply } from '../../src/cni/protocol.js';
import { serveCni, type CniServer } from '../../src/cni/server.js';
import type { NamespaceView, PodView } from '../../src/core/enrollment.js';
import type { Logger } from '../../src/log.js';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

const NODE = 'bench-node';
const ENROLLED_IP = '10.244.1.10';
const NAMESPACES = new Map<string, NamespaceView>([
  ['shop', { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } }],
  ['plain', { name: 'plain', labels: {} }],
]);
const POD: PodView = {
  uid: 'uid-web-0',
  name: 'web-0',
  namespace: 'shop',
  nodeName: NODE,
  resourceVersion: 1n,
  labels: {},
  ips: [ENROLLED_IP],
  hostIp: '10.0.0.1',
  hostNetwork: false,
  phase: 'Pending',
  sidecar: false,
  ready: false,
  created: 1,
  statusAnnotation: null,
};

/** The same pod's name in the namespace outside the mesh: found in the API, not enrolled (no label). */
const PLAIN_POD: PodView = { ...POD, uid: 'uid-web-0-plain', namespace: 'plain', ips: ['10.244.1.11'] };

/** A membership that has synced, knows both namespaces and both pods, and has programmed the enrolled one's IP. */
function settledMembership(): CniMembership {
  const programmed = new Set([ENROLLED_IP]);
  return {
    hasSynced: () => true,
    namespace: (n) => NAMESPACES.get(n),
    namespacesLive: () => true,
    fetchNamespace: async (n) => NAMESPACES.get(n) ?? null,
    // The gate looks a pod up wherever a pod label could enroll it (any namespace, by default).
    cachedPod: (ns, name) => [POD, PLAIN_POD].find((p) => p.namespace === ns && p.name === name),
    podDeleted: () => false,
    fetchPod: async () => null,
    enrollmentContext: () => ({ nodeName: NODE, reserved: new Set(['10.0.0.1']) }),
    provisionPod: () => {},
    releaseSandbox: () => true,
    announcedSandboxes: () => [],
    programmedNow: () => programmed,
    onProgrammed: () => {},
    onChange: () => {},
  };
}

/** Serves CNI requests at `socket` on this process's loop. */
export function serveAdds(socket: string): Promise<CniServer> {
  const handler = new CniHandler(settledMembership(), { addTimeoutMs: 10_000, log: quiet });
  return serveCni(socket, (r) => handler.handle(r), quiet);
}

/** The request containerd hands the plugin for a pod of `namespace` (enrolled: "shop"; outside the mesh: "plain"). */
export function addRequest(namespace: 'shop' | 'plain'): Buffer {
  return encodeRequest({
    env: {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: 'c0ffee',
      CNI_NETNS: '/var/run/netns/cni-1234',
      CNI_IFNAME: 'eth0',
      CNI_PATH: '/opt/cni/bin',
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${namespace};K8S_POD_NAME=web-0;K8S_POD_UID=${namespace === 'plain' ? PLAIN_POD.uid : POD.uid}`,
    },
    stdin: Buffer.from(
      JSON.stringify({
        cniVersion: '1.0.0',
        name: 'k8s-pod-network',
        type: 'ambient-redirect-cni',
        prevResult: {
          cniVersion: '1.0.0',
          interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/cni-1234' }],
          ips: [{ address: `${ENROLLED_IP}/32`, interface: 0 }],
        },
      }),
    ),
  });
}

/** One ADD as the plugin sends it: connect, request, the whole reply, close. */
export function cniAdd(socket: string, request: Buffer): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    let buf = Buffer.alloc(0);
    s.on('connect', () => s.write(request));
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      const n = frameLength(buf);
      if (n === 0) return;
      s.destroy();
      resolve(decodeReply(buf.subarray(0, n)));
    });
    s.on('error', reject);
    s.on('close', () => reject(new Error('the agent closed the connection without a whole reply')));
  });
}
