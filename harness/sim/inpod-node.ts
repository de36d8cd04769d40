/**
 * The in-pod topology on a simulated node, as `run --ztunnel-mode inpod` meets it on a real
 * one: a "pause" process in each pod's netns (the runtime keeps one; the agent finds a pod's
 * netns through the host's processes), the Kubernetes API double, the agent as a real
 * process serving ZDS, and in-pod ztunnel stand-ins (ztunnel-inpod.ts) connecting to it.
 *
 * The agent is given a /proc of this run's processes only (`--host-proc`: a folder of links
 * to /proc/<pid> of the pause processes), because this machine is shared and other runs use
 * the same pod addresses: it reads the kernel's own files through them and cannot meet
 * another run's netns. Nothing here installs a capture: the agent does, and `uninstall`
 * (with the same --host-proc) takes it out.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cleanup } from '../../src/capture/cleanup.js';
import type { SelectedMode } from '../../src/core/modes.js';
import { startProcess } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from './controller.js';
import { startSimKubeApi, type SimKubeApi } from './kube-sim.js';
import type { SimNode } from './node.js';
import { pinRootFor } from './scenario.js';
import { type StandInEvent, ZtunnelInpod } from './ztunnel-inpod.js';

export interface InpodNodeOptions {
  /** The in-pod capture asked of the agent (`run --mode`). */
  mode: SelectedMode;
  nodeName: string;
  /** Where the agent serves /metrics, /readyz and /zds in the node netns (`status` asks there). */
  healthAddress?: string;
  resyncSeconds?: number;
  /** The API double's watch bookmarks. */
  bookmarkMs?: number;
}

export interface InpodNode {
  kube: SimKubeApi;
  pinRoot: string;
  zdsSocket: string;
  /** The agent's (and uninstall's) --host-proc. */
  hostProc: string;
  healthAddress: string;
  /** The running agent, if any. */
  readonly agent: ControllerProcess | undefined;
  /** Starts `run --ztunnel-mode inpod --mode <mode>`; resolves once its first full pass is done. */
  startAgent(): Promise<ControllerProcess>;
  /** Stops the agent (SIGKILL: as a crash; SIGTERM: it leaves the data path in place). */
  stopAgent(signal: NodeJS.Signals): Promise<number | null>;
  /** A new in-pod ztunnel stand-in on the agent's ZDS socket (it retries until the socket answers). */
  startZtunnel(onEvent: (e: StandInEvent) => void): ZtunnelInpod;
  /** `status --ztunnel-mode inpod` against the running agent. */
  status(): Promise<string>;
  /** `uninstall` in the node netns with this run's --host-proc; its output. */
  uninstall(): Promise<string>;
  /**
   * Idempotent: kills the agent, closes the stand-ins, uninstalls if an agent ran and no
   * uninstall followed, ends the pause processes, stops the API double and removes the
   * run's files. The network namespaces are the simulated node's (its teardown).
   */
  stop(): Promise<void>;
}

export async function startInpodNode(sim: SimNode, o: InpodNodeOptions): Promise<InpodNode> {
  const pinRoot = pinRootFor(sim);
  const healthAddress = o.healthAddress ?? '127.0.0.1:15934';
  // Named after the run (its node netns), so a run's leftovers can be found by name.
  const dir = mkdtempSync(join(tmpdir(), `ar-inpod-${sim.nodeNs}-`));
  const hostProc = join(dir, 'proc');
  const zdsSocket = join(dir, 'ztunnel', 'ztunnel.sock');
  const pauses: ChildProcess[] = [];
  const standIns: ZtunnelInpod[] = [];
  let kube: SimKubeApi | undefined;
  let agent: ControllerProcess | undefined;
  /** An agent ran since the last uninstall: the pods' netns may hold its capture. */
  let installed = false;
  let stopped: Promise<void> | undefined;

  const stop = () =>
    (stopped ??= (async () => {
      const c = new Cleanup();
      await c.step('kill the agent', () => agent?.stop('SIGKILL'));
      agent = undefined;
      for (const z of standIns) z.close();
      // Before the pause processes end: uninstall finds the pods' netns through them.
      if (installed) await c.step('uninstall', () => runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot, '--host-proc', hostProc]));
      for (const p of pauses) p.kill('SIGKILL');
      await c.step('stop the API double', () => kube?.stop());
      rmSync(dir, { recursive: true, force: true });
      rmSync(pinRoot, { recursive: true, force: true });
      c.throwIfFailed('in-pod node cleanup');
    })());

  try {
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    mkdirSync(hostProc);
    for (const p of sim.pods) {
      // Its own process group: a Ctrl-C in the terminal (SIGINT to the demo's group) must not
      // end it before uninstall, which finds the pods' netns through it. stop() ends it.
      const child = startProcess(['ip', 'netns', 'exec', p.ns, 'sleep', 'infinity'], { detached: true, stdio: 'ignore' });
      pauses.push(child);
      symlinkSync(`/proc/${child.pid}`, join(hostProc, String(child.pid)));
    }
    kube = await startSimKubeApi(sim.nodeNs, { bookmarkMs: o.bookmarkMs ?? 1_000 });
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
  const api = kube;

  const args = [
    '--ztunnel-mode',
    'inpod',
    '--mode',
    o.mode,
    '--kubeconfig',
    api.kubeconfig,
    '--node-name',
    o.nodeName,
    '--pin-root',
    pinRoot,
    '--zds-socket',
    zdsSocket,
    '--host-proc',
    hostProc,
    '--health-address',
    healthAddress,
    '--resync-interval',
    String(o.resyncSeconds ?? 2),
    '--backoff-initial',
    '0.2',
    '--backoff-max',
    '2',
  ];

  return {
    kube: api,
    pinRoot,
    zdsSocket,
    hostProc,
    healthAddress,
    get agent() {
      return agent;
    },
    async startAgent() {
      if (stopped) throw new Error('the in-pod node is stopped');
      if (agent) throw new Error('the agent is running');
      installed = true;
      agent = startController(sim.nodeNs, args);
      await agent.waitFor('programmed', 30_000);
      return agent;
    },
    async stopAgent(signal) {
      const a = agent;
      agent = undefined;
      return a ? a.stop(signal) : null;
    },
    startZtunnel(onEvent) {
      const z = new ZtunnelInpod({ socket: zdsSocket, onEvent });
      standIns.push(z);
      return z;
    },
    status: () => runInNode(sim.nodeNs, ['status', '--ztunnel-mode', 'inpod', '--health-address', healthAddress]),
    async uninstall() {
      const out = await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot, '--host-proc', hostProc]);
      installed = false;
      return out;
    },
    stop,
  };
}
