/**
 * The demo's story in the node topology (Istio 1.18-1.22's node-level ztunnel): ztunnel's
 * stand-in listens in its own netns (node.ts `startZtunnel`), a ztunnel pod in the API
 * double tells the agent where it is, and the agent runs `run --ztunnel-mode node --mode
 * <mode>` with its programs (or rules) on the pods' host veths. A captured connection
 * counts when the stand-in accepted it from the pod's address on 15001 with the outside
 * server as its original destination.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { Cleanup } from '../../src/capture/cleanup.js';
import type { SelectedMode } from '../../src/core/modes.js';
import { type LogEvent, runInNode, startController, type ControllerProcess } from './controller.js';
import { ZTUNNEL_POD } from './kube-api.js';
import { startSimKubeApi } from './kube-sim.js';
import type { SimNode, SimServer } from './node.js';
import { pinRootFor } from './scenario.js';
import { NODE_NAME, sleep, type StoryWorld } from './story.js';

const srcIp = (src: string) => src.slice(0, src.lastIndexOf(':')).replace(/^\[|\]$/g, '');

export async function nodeWorld(sim: SimNode, mode: SelectedMode): Promise<StoryWorld> {
  const pinRoot = pinRootFor(sim);
  mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
  const kube = await startSimKubeApi(sim.nodeNs, { bookmarkMs: 1_000 });
  let controller: ControllerProcess | undefined;
  let ztunnel: SimServer | undefined;
  /** Every connection the stand-ins accepted, across ztunnel's restarts. */
  const gone: SimServer['accepted'] = [];
  let installed = false;
  let stopped = false;
  let cleaned: Promise<void> | undefined;
  /** The log lines of the agents that ran before the current one. */
  const log: LogEvent[] = [];

  const records = () => [...gone, ...(ztunnel?.accepted ?? [])];
  const ztunnelPod = () =>
    kube.api.createPod({ name: 'ztunnel-1', namespace: 'istio-system', nodeName: NODE_NAME, ip: sim.ztunnel.ip, hostIp: sim.node.ip, ...ZTUNNEL_POD });
  const startAgent = async () => {
    if (stopped) throw new Error('the story is over');
    installed = true;
    controller = startController(sim.nodeNs, [
      '--ztunnel-mode',
      'node',
      '--mode',
      mode,
      '--kubeconfig',
      kube.kubeconfig,
      '--node-name',
      NODE_NAME,
      '--pin-root',
      pinRoot,
      '--resync-interval',
      '2',
      '--backoff-initial',
      '0.2',
      '--backoff-max',
      '2',
    ]);
    await controller.waitFor('programmed', 30_000);
  };
  const uninstall = async () => {
    const out = await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
    installed = false;
    return out;
  };

  return {
    topology: 'node',
    capturedHeader: 'via ztunnel',
    kube: kube.api,

    async start() {
      ztunnel = await sim.startZtunnel();
      ztunnelPod();
      await startAgent();
    },

    outbound(a, dst) {
      const mine = records().filter((r) => srcIp(r.src) === a.pod.ip);
      const captured = mine.filter((r) => r.port === 15001 && r.origDst === dst).length;
      return { captured, stray: mine.length - captured };
    },

    inbound: (_a, dst) => records().filter((r) => r.port === 15006 && r.origDst === dst).length,

    async restartAgent(signal) {
      const c = controller;
      controller = undefined;
      await c?.stop('SIGKILL');
      log.push(...(c?.events ?? []));
      await sleep(3_000, signal);
      await startAgent();
      return [];
    },

    async ztunnelAway() {
      kube.api.deletePod('istio-system', 'ztunnel-1');
      const z = ztunnel;
      ztunnel = undefined;
      gone.push(...(z?.accepted ?? []));
      await z?.stop();
    },

    async ztunnelBack() {
      ztunnel = await sim.startZtunnel();
      ztunnelPod();
    },

    async check() {
      return { facts: [], problems: [] };
    },

    async capture() {
      const status = await runInNode(sim.nodeNs, ['status', '--ztunnel-mode', 'node', '--pin-root', pinRoot]);
      const lines = status.split('\n').filter((l) => /^(mode|kernel):/.test(l));
      return [`the agent's capture (asked: --mode ${mode}); \`status\` says:`, ...lines.map((l) => `  ${l}`)];
    },

    async finish() {
      const c = controller;
      controller = undefined;
      const code = await c?.stop('SIGTERM');
      log.push(...(c?.events ?? []));
      if (code !== 0) throw new Error(`the agent exited with ${code} on SIGTERM`);
      return uninstall();
    },

    agentLog: () => [...log, ...(controller?.events ?? [])],

    cleanup: () =>
      (cleaned ??= (async () => {
        stopped = true;
        const c = new Cleanup();
        await c.step('kill the agent', () => controller?.stop('SIGKILL'));
        if (installed) await c.step('uninstall', uninstall);
        await c.step('stop ztunnel', () => ztunnel?.stop());
        await c.step('stop the API double', () => kube.stop());
        rmSync(pinRoot, { recursive: true, force: true });
        c.throwIfFailed('node topology cleanup');
      })()),
  };
}
