/**
 * A static-membership scenario on a simulated node, for the kernel tests of the data
 * path: the controller enrolls some pods by IP, every pod connects to the outside server,
 * and each connection is classified by who saw it. (`demo` tells the longer story of
 * story.ts, with Kubernetes.)
 */
import { mkdirSync, rmSync } from 'node:fs';
import { Cleanup } from '../../src/capture/cleanup.js';
import { runPinRoot } from './names.js';
import type { SimNode, SimServer } from './node.js';
import { runInNode, startController, type ControllerProcess } from './controller.js';
import type { Delivery, RequestedMode } from '../../src/core/modes.js';

export interface PodReport {
  pod: string;
  ip: string;
  enrolled: boolean;
  attempts: number;
  /** Connections that succeeded (whoever answered). */
  ok: number;
  /** Connections the ztunnel stand-in accepted, with their original destinations. */
  viaZtunnel: string[];
  /** Connections that reached the outside server with the pod's own IP: a bypass if enrolled. */
  direct: number;
}

export interface ScenarioOptions {
  /** Indexes of the pods to enroll. */
  enrolled: readonly number[];
  connections: number;
  /** bpffs folder for this run's pins (created, and removed at the end). */
  pinRoot: string;
  variant?: 'redirect' | 'redirect_peer';
  /** ebpf mode's ztunnel-side delivery, passed to `run --delivery`. */
  delivery?: Delivery;
  /** Capture mode passed to `run --mode` (default: the controller's own default). */
  mode?: RequestedMode;
  progress?: (line: string) => void;
  /** Called with the data path still installed, after the traffic: for tests' oracles. */
  beforeUninstall?: () => Promise<void>;
}

export interface ScenarioResult {
  reports: PodReport[];
  uninstall: string;
}

const srcIp = (src: string) => src.slice(0, src.lastIndexOf(':'));

/** The run's pin root: its teardown removes it by name, whatever a test left there. */
export function pinRootFor(sim: SimNode): string {
  return runPinRoot(sim.prefix);
}

export async function runStaticScenario(sim: SimNode, opts: ScenarioOptions): Promise<ScenarioResult> {
  const say = opts.progress ?? (() => {});
  const enrolledIps = opts.enrolled.map((i) => sim.pods[i]!.ip);
  mkdirSync(opts.pinRoot, { recursive: true, mode: 0o700 });
  let ztunnel: SimServer | undefined;
  let outside: SimServer | undefined;
  let controller: ControllerProcess | undefined;
  let failure: unknown;
  try {
    say('starting the ztunnel stand-in and the outside server');
    [ztunnel, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
    say(`starting the controller in ${sim.nodeNs}, enrolling ${enrolledIps.join(', ') || 'nobody'}`);
    controller = startController(sim.nodeNs, [
      '--pin-root',
      opts.pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--enroll',
      enrolledIps.join(','),
      ...(opts.variant ? ['--variant', opts.variant] : []),
      ...(opts.delivery ? ['--delivery', opts.delivery] : []),
      ...(opts.mode ? ['--mode', opts.mode] : []),
    ]);
    await controller.waitFor('programmed');

    say(`sending ${opts.connections} connections from each of ${sim.pods.length} pods to ${sim.outside.ip}:${sim.outside.port}`);
    const results = await Promise.all(sim.pods.map((pod) => sim.connect(pod, sim.outside, opts.connections)));
    const okTotal = results.flat().filter((r) => r.ok).length;
    // Servers report accepted connections asynchronously: wait until every success is seen.
    await waitForTotal([ztunnel, outside], okTotal);

    const reports = sim.pods.map(
      (pod, i): PodReport => ({
        pod: pod.name,
        ip: pod.ip,
        enrolled: enrolledIps.includes(pod.ip),
        attempts: opts.connections,
        ok: results[i]!.filter((r) => r.ok).length,
        viaZtunnel: ztunnel!.accepted.filter((a) => srcIp(a.src) === pod.ip).map((a) => a.origDst ?? '?'),
        direct: outside!.accepted.filter((a) => srcIp(a.src) === pod.ip).length,
      }),
    );

    say('stopping the controller (SIGTERM leaves the data path) and uninstalling');
    const exitCode = await controller.stop('SIGTERM');
    controller = undefined;
    if (exitCode !== 0) throw new Error(`controller exited with ${exitCode} on SIGTERM`);
    await opts.beforeUninstall?.();
    const uninstall = await runInNode(sim.nodeNs, ['uninstall', '--pin-root', opts.pinRoot]);
    return { reports, uninstall };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    const c = new Cleanup();
    await c.step('kill the controller', () => controller?.stop('SIGKILL'));
    await c.step('stop the ztunnel stand-in', () => ztunnel?.stop());
    await c.step('stop the outside server', () => outside?.stop());
    await c.step(`remove ${opts.pinRoot}`, () => rmSync(opts.pinRoot, { recursive: true, force: true }));
    // The scenario's own error wins; a cleanup error alone fails it too.
    if (failure === undefined) c.throwIfFailed('scenario cleanup');
    else if (c.failed.length) console.warn(`scenario cleanup after a failure: ${JSON.stringify(c.failed)}`);
  }
}

async function waitForTotal(servers: SimServer[], total: number, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (servers.reduce((n, s) => n + s.accepted.length, 0) < total && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
  }
}
