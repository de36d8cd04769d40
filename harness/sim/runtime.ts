/**
 * A container runtime stand-in for the simulated node: it creates a pod as containerd
 * does with a CNI chain. The pod object goes to the API double first (Pending, no IP, as
 * the scheduler leaves it); the sandbox gets its netns and the primary plugin's wiring
 * (veth, addresses, routes); then the chain runs: `build/ambient-redirect-cni` executed
 * with the CNI environment and the netconf with prevResult on stdin. The instant ADD
 * returns, the pod's first action starts (one connection out) and the kubelet's status
 * update (phase Running, the pod IP) goes to the API.
 *
 * The pod's "container" is a process started in the pod netns before ADD and released
 * by a line on its stdin, so its first SYN leaves within a millisecond of ADD returning
 * (process start-up would otherwise hide the window the gate closes).
 *
 * Run as a script (`runtime.js client --to IP:PORT --timeout-ms T`) it is that process.
 */
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { connect as netConnect } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startProcess, systemRunner, type CommandRunner } from '../../src/host/runner.js';
import { repoPath } from '../../src/lib/repo-path.js';
import { distEntry } from './dist.js';
import type { KubeApiDouble } from './kube-api.js';
import { names, OUTSIDE_HOST_IP } from './names.js';
import { unwirePod, wirePod, type SimNode, type SimPod } from './node.js';

export const DEFAULT_PLUGIN = repoPath('build/ambient-redirect-cni', import.meta.url);

export interface PluginConf {
  socketPath: string;
  namespacesFile: string;
  timeoutMs: number;
}

export interface RuntimeOptions {
  sim: SimNode;
  api: KubeApiDouble;
  nodeName: string;
  /** Our plugin's settings in the chain; null: the chain has only the primary plugin (the gate off). */
  chain: PluginConf | null;
  plugin?: string;
  runner?: CommandRunner;
  /**
   * Where the pod's first connection goes (default the outside server). The in-pod gate
   * test points it at the pod's own address on ztunnel's 15001: present only once ztunnel
   * has the pod.
   */
  target?: (pod: SimPod) => { ip: string; port: number };
  /** Called the instant our ADD returns, before anything else (the CNI fast path test stops the agent there). */
  afterAdd?: (pod: SimPod, add: PluginRun) => void;
}

export interface PluginRun {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface PodSpecRt {
  /** Index: picks the pod's IPs and names (names.podIp(i), ...). */
  index: number;
  name: string;
  namespace: string;
  labels?: Record<string, string>;
  /** Connect out the instant ADD returns (default true). */
  connect?: boolean;
}

export interface PodRun {
  pod: SimPod;
  uid: string;
  containerId: string;
  /** Our plugin's ADD (null when the gate is off). */
  add: PluginRun | null;
  /** ADD (the whole chain) succeeded: the sandbox is up. */
  started: boolean;
  /** The first connection's outcome, when it was made. */
  connection?: { ok: boolean; reply?: string; error?: string };
}

interface Client {
  ready: Promise<void>;
  go(): void;
  result: Promise<{ ok: boolean; reply?: string; error?: string }>;
  kill(): void;
}

export class SimRuntime {
  private readonly runner: CommandRunner;
  private readonly plugin: string;
  private readonly sandboxes = new Map<string, { pod: SimPod; containerId: string }>();

  constructor(private readonly o: RuntimeOptions) {
    this.runner = o.runner ?? systemRunner;
    this.plugin = o.plugin ?? DEFAULT_PLUGIN;
  }

  simPod(index: number, name: string): SimPod {
    const p = this.o.sim.prefix;
    return { index, name, ns: names.podNs(p, index), ip: names.podIp(index), ip6: names.podIp6(index), hostVeth: names.podVeth(p, index) };
  }

  /** The pod object, Pending and without IP, in the API. */
  createPodObject(spec: PodSpecRt): string {
    const obj = this.o.api.createPod({
      name: spec.name,
      namespace: spec.namespace,
      nodeName: this.o.nodeName,
      ip: null,
      hostIp: OUTSIDE_HOST_IP,
      phase: 'Pending',
      ready: false,
      ...(spec.labels && { labels: spec.labels }),
    });
    return (obj.metadata as { uid: string }).uid;
  }

  /**
   * One sandbox attempt: primary wiring, then the chain. On success the pod's first
   * connection starts at once and the kubelet's status update follows; on failure the
   * runtime tears the sandbox down (DEL through the chain), as it does before a retry.
   */
  async runSandbox(spec: PodSpecRt, uid: string): Promise<PodRun> {
    const pod = this.simPod(spec.index, spec.name);
    const containerId = randomBytes(16).toString('hex');
    await wirePod(this.runner, this.o.sim.nodeNs, pod.ns, pod.hostVeth, pod.ip, pod.ip6);
    this.sandboxes.set(containerId, { pod, containerId });
    const wantConnect = spec.connect !== false;
    const client = wantConnect ? this.startClient(pod) : null;
    try {
      await client?.ready;
      let add: PluginRun | null = null;
      if (this.o.chain) {
        add = await this.invoke('ADD', spec, uid, pod, containerId);
        this.o.afterAdd?.(pod, add);
      }
      const started = add === null || add.code === 0;
      if (!started) {
        client?.kill();
        await this.teardown(spec, uid, containerId);
        return { pod, uid, containerId, add, started };
      }
      client?.go();
      this.o.api.updatePod(spec.namespace, spec.name, (o) => {
        const st = o.status as Record<string, unknown>;
        st.phase = 'Running';
        st.podIP = pod.ip;
        st.podIPs = [{ ip: pod.ip }, { ip: pod.ip6 }];
        st.conditions = [{ type: 'Ready', status: 'True' }];
      });
      const connection = client ? await client.result : undefined;
      return { pod, uid, containerId, add, started, ...(connection && { connection }) };
    } catch (err) {
      client?.kill();
      throw err;
    }
  }

  /** DEL through the chain (ours first: reverse order), then the primary's teardown. */
  async teardown(spec: PodSpecRt, uid: string, containerId: string): Promise<PluginRun | null> {
    const sb = this.sandboxes.get(containerId);
    if (!sb) return null;
    const del = this.o.chain ? await this.invoke('DEL', spec, uid, sb.pod, containerId) : null;
    await unwirePod(this.runner, this.o.sim.nodeNs, sb.pod.ns, sb.pod.hostVeth);
    this.sandboxes.delete(containerId);
    return del;
  }

  /** Runs our plugin as the runtime does: CNI_* environment, netconf + prevResult on stdin. */
  invoke(command: 'ADD' | 'DEL' | 'CHECK', spec: PodSpecRt, uid: string, pod: SimPod, containerId: string): Promise<PluginRun> {
    const netnsPath = `/var/run/netns/${pod.ns}`;
    const conf = {
      cniVersion: '1.0.0',
      name: 'k8s-pod-network',
      type: 'ambient-redirect-cni',
      ...this.o.chain,
      prevResult: {
        cniVersion: '1.0.0',
        interfaces: [{ name: pod.hostVeth }, { name: 'eth0', sandbox: netnsPath }],
        ips: [
          { address: `${pod.ip}/32`, interface: 1 },
          { address: `${pod.ip6}/128`, interface: 1 },
        ],
        routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
      },
    };
    const env = {
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netnsPath,
      CNI_IFNAME: 'eth0',
      CNI_PATH: dirname(this.plugin),
      CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${spec.namespace};K8S_POD_NAME=${spec.name};K8S_POD_INFRA_CONTAINER_ID=${containerId};K8S_POD_UID=${uid}`,
    };
    return runPlugin(this.plugin, env, JSON.stringify(conf));
  }

  private startClient(pod: SimPod): Client {
    const { ip, port } = this.o.target?.(pod) ?? this.o.sim.outside;
    const child = startProcess(
      ['ip', 'netns', 'exec', pod.ns, process.execPath, distEntry('./runtime.js'), 'client', '--to', `${ip}:${port}`, '--timeout-ms', '3000'],
      {
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    const lines = createInterface({ input: child.stdout! });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2048)));
    const exited = new Promise<void>((r) => child.once('close', () => r()));
    const ready = new Promise<void>((resolve, reject) => {
      lines.on('line', (l) => l.includes('"ready"') && resolve());
      void exited.then(() => reject(new Error(`pod client in ${pod.ns} exited before ready: ${stderr}`)));
    });
    const result = new Promise<{ ok: boolean; reply?: string; error?: string }>((resolve) => {
      lines.on('line', (l) => {
        if (!l.includes('"result"')) return;
        const { ok, reply, error } = JSON.parse(l) as { ok: boolean; reply?: string; error?: string };
        resolve({ ok, ...(reply !== undefined && { reply }), ...(error !== undefined && { error }) });
      });
      void exited.then(() => resolve({ ok: false, error: `client exited: ${stderr.trim()}` }));
    });
    return {
      ready,
      go: () => child.stdin!.write('go\n'),
      result,
      kill: () => {
        if (child.exitCode === null) child.kill('SIGKILL');
      },
    };
  }
}

export function runPlugin(plugin: string, env: Record<string, string>, stdin: string): Promise<PluginRun> {
  const t0 = performance.now();
  const child = startProcess([plugin], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  child.stdin!.on('error', () => {}); // VERSION exits without reading its stdin
  child.stdin!.end(stdin);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr, ms: performance.now() - t0 }));
  });
}

// --- the pod's process -------------------------------------------------------------------

function clientMain(argv: string[]): void {
  const to = argv[argv.indexOf('--to') + 1] ?? '';
  const timeoutMs = Number(argv[argv.indexOf('--timeout-ms') + 1] ?? '3000');
  const [host, port] = [to.slice(0, to.lastIndexOf(':')), Number(to.slice(to.lastIndexOf(':') + 1))];
  const emit = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  const rl = createInterface({ input: process.stdin });
  rl.once('line', () => {
    const socket = netConnect({ host, port });
    const chunks: Buffer[] = [];
    const done = (r: Record<string, unknown>) => {
      clearTimeout(timer);
      socket.destroy();
      emit({ event: 'result', ...r });
      process.exit(0);
    };
    const timer = setTimeout(() => done({ ok: false, error: 'ETIMEDOUT' }), timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => done({ ok: true, reply: Buffer.concat(chunks).toString('utf8').trim() }));
    socket.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, error: err.code ?? err.message }));
  });
  rl.once('close', () => process.exit(0));
  emit({ event: 'ready' });
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1] && process.argv[2] === 'client') clientMain(process.argv.slice(3));
