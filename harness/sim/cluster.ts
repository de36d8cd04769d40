/**
 * A simulated cluster of one node, as the Kubernetes tests of the agent and the CNI bench set
 * it up: the simulated node, the run's pin root, the Kubernetes API double with the three
 * standard namespaces, in node mode the node-level ztunnel stand-in (with its pod in the API)
 * and the outside server, an optional scratch folder, the agent's common flags, and one
 * teardown that undoes all of it whatever state it is in.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cleanup } from '../../src/capture/cleanup.js';
import { type ControllerProcess, runInNode, startController } from './controller.js';
import { ZTUNNEL_POD } from './kube-api.js';
import { type SimKubeApi, startSimKubeApi } from './kube-sim.js';
import { OUTSIDE_HOST_IP } from './names.js';
import { createSimNode, type SimNode, type SimServer } from './node.js';
import { pinRootFor } from './scenario.js';

/** The namespaces of the standard cluster: ztunnel's, one enabled for ambient, one not. */
export const SYSTEM_NS = 'istio-system';
export const AMBIENT_NS = 'shop';
export const PLAIN_NS = 'plain';

export interface SimClusterOptions {
  /** Pods of the simulated node (netns and veths; their API objects are the caller's). */
  pods: number;
  /** The node's name in the API (default sim-node). */
  nodeName?: string;
  /**
   * node: the node-level ztunnel stand-in and the outside server run, and ztunnel's pod is in
   * the API (istio-system). inpod: neither (the in-pod stand-in is the caller's).
   */
  ztunnel: 'node' | 'inpod';
  /** Start the API double now (default true); else startKube() starts it later. */
  kube?: boolean;
  /** A scratch folder (`dir`) is made with this name prefix, and removed at teardown. */
  scratch?: string;
  /** Give the agent `--host-proc <dir>/proc`, an empty folder the caller may fill (needs `scratch`). */
  hostProc?: boolean;
}

export class SimCluster {
  /** The agent last started (startAgent); teardown kills it. */
  controller: ControllerProcess | undefined;
  private api: SimKubeApi | undefined;
  private servers: { ztunnel: SimServer; outside: SimServer } | undefined;

  private constructor(
    readonly sim: SimNode,
    readonly pinRoot: string,
    readonly nodeName: string,
    private readonly opts: SimClusterOptions,
    /** The scratch folder, or '' without `scratch`. */
    readonly dir: string,
  ) {}

  /** Sets the cluster up; a failure part-way tears down what was made, then throws. */
  static async create(opts: SimClusterOptions): Promise<SimCluster> {
    if (opts.hostProc && !opts.scratch) throw new Error('SimCluster: hostProc needs a scratch folder');
    const sim = await createSimNode({ pods: opts.pods });
    const pinRoot = pinRootFor(sim);
    let dir = '';
    let cluster: SimCluster | undefined;
    try {
      mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
      if (opts.scratch) dir = mkdtempSync(join(tmpdir(), opts.scratch));
      cluster = new SimCluster(sim, pinRoot, opts.nodeName ?? 'sim-node', opts, dir);
      if (opts.hostProc) mkdirSync(cluster.hostProc!);
      if (opts.ztunnel === 'node') {
        const [ztunnel, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
        cluster.servers = { ztunnel, outside };
      }
      if (opts.kube !== false) await cluster.startKube();
      return cluster;
    } catch (err) {
      // The set-up's error is the one to report; what its teardown could not undo is lost with it.
      if (cluster) await cluster.teardown().catch(() => undefined);
      else {
        await sim.teardown();
        rmSync(pinRoot, { recursive: true, force: true });
        if (dir) rmSync(dir, { recursive: true, force: true });
      }
      throw err;
    }
  }

  /** The API double (throws while it is not running). */
  get kube(): SimKubeApi {
    if (!this.api) throw new Error('SimCluster: the API double is not running');
    return this.api;
  }

  /** The node-level ztunnel stand-in (node mode only). */
  get ztunnel(): SimServer {
    if (!this.servers) throw new Error('SimCluster: no node-level ztunnel in inpod mode');
    return this.servers.ztunnel;
  }

  /** The outside server (node mode only). */
  get outside(): SimServer {
    if (!this.servers) throw new Error('SimCluster: no outside server in inpod mode');
    return this.servers.outside;
  }

  /** The --host-proc folder given to the agent (and to uninstall), if any. */
  get hostProc(): string | undefined {
    return this.opts.hostProc ? join(this.dir, 'proc') : undefined;
  }

  /** Starts the API double with the standard namespaces (and in node mode ztunnel's pod). */
  async startKube(): Promise<SimKubeApi> {
    if (this.api) throw new Error('SimCluster: the API double is already running');
    const kube = await startSimKubeApi(this.sim.nodeNs, { bookmarkMs: 500 });
    this.api = kube;
    if (this.opts.ztunnel === 'node') kube.api.upsertNamespace(SYSTEM_NS);
    kube.api.upsertNamespace(AMBIENT_NS, { 'istio.io/dataplane-mode': 'ambient' });
    kube.api.upsertNamespace(PLAIN_NS);
    if (this.opts.ztunnel === 'node')
      kube.api.createPod({
        name: 'ztunnel-abc',
        namespace: SYSTEM_NS,
        nodeName: this.nodeName,
        ip: this.sim.ztunnel.ip,
        hostIp: OUTSIDE_HOST_IP,
        ...ZTUNNEL_POD,
      });
    return kube;
  }

  async stopKube(): Promise<void> {
    const kube = this.api;
    this.api = undefined;
    await kube?.stop();
  }

  /** The flags every agent of this cluster gets: its pin root, the API double (while it runs), --host-proc. */
  agentFlags(): string[] {
    return [
      '--pin-root',
      this.pinRoot,
      ...(this.api ? ['--kubeconfig', this.api.kubeconfig, '--node-name', this.nodeName] : []),
      ...(this.hostProc ? ['--host-proc', this.hostProc] : []),
    ];
  }

  /** The agent's CNI socket (cniFlags). */
  get cniSocket(): string {
    return join(this.dir, 'run', 'cni.sock');
  }

  /** The agent's CNI state folder (cniFlags): the ambient namespace list is there. */
  get cniStateDir(): string {
    return join(this.dir, 'state');
  }

  /**
   * The CNI gate's flags, its files in the scratch folder: the socket run/cni.sock, the state
   * folder state/ and, with `install`, the plugin copied into bin/ and our entry in the
   * config lists of net.d/ (folders the caller makes, with the primary's list).
   */
  cniFlags(addTimeoutS: number, install: boolean): string[] {
    if (!this.dir) throw new Error('SimCluster: the CNI gate needs a scratch folder');
    return [
      '--cni-socket',
      this.cniSocket,
      '--cni-state-dir',
      this.cniStateDir,
      '--cni-add-timeout',
      String(addTimeoutS),
      ...(install ? ['--cni-install', 'true', '--cni-bin-dir', join(this.dir, 'bin'), '--cni-conf-dir', join(this.dir, 'net.d')] : []),
    ];
  }

  /** Starts `run` in the node netns with the common flags and `extra`; teardown kills it. */
  startAgent(extra: readonly string[]): ControllerProcess {
    this.controller = startController(this.sim.nodeNs, [...this.agentFlags(), ...extra]);
    return this.controller;
  }

  /**
   * Kills the agent, uninstalls what it installed, stops the API double, deletes the node's
   * namespaces, the pin root and the scratch folder: every step runs even when an earlier
   * one fails, and the error at the end names each step that failed. A second call finds
   * little left to do.
   */
  async teardown(): Promise<void> {
    const c = new Cleanup();
    const controller = this.controller;
    this.controller = undefined;
    await c.step('kill the agent', () => controller?.stop('SIGKILL'));
    await c.step('uninstall and tear down the simulated node', () => teardownNode(this.sim, this.pinRoot, undefined, this.hostProc));
    await c.step('stop the API double', () => this.stopKube());
    if (this.dir) await c.step(`remove ${this.dir}`, () => rmSync(this.dir, { recursive: true, force: true }));
    c.throwIfFailed('cluster teardown');
  }
}

/**
 * Kills the controller, uninstalls what it installed, deletes the node's namespaces and
 * the pin root: every step runs even when an earlier one fails, and the error at the end
 * names each step that failed (an uninstall that fails is one of them). `hostProc`: the
 * /proc the agent was given (its pods' netns), for uninstall to look in.
 */
export async function teardownNode(sim: SimNode | undefined, pinRoot: string | undefined, controller?: ControllerProcess, hostProc?: string): Promise<void> {
  const c = new Cleanup();
  await c.step('kill the controller', () => controller?.stop('SIGKILL'));
  // A second teardown (a failed beforeAll's, then afterAll's) finds the node gone: nothing to uninstall.
  if (sim && pinRoot && existsSync(`/var/run/netns/${sim.nodeNs}`))
    await c.step('uninstall', () => runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot, ...(hostProc ? ['--host-proc', hostProc] : [])]));
  await c.step('tear down the simulated node', () => sim?.teardown());
  if (pinRoot) await c.step(`remove ${pinRoot}`, () => rmSync(pinRoot, { recursive: true, force: true }));
  c.throwIfFailed('teardown');
}
