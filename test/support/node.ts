/** What the kernel tests of a simulated node share: its teardown, whatever state it is in. */
import { existsSync, rmSync } from 'node:fs';
import { Cleanup } from '../../src/capture/cleanup.js';
import type { ControllerProcess } from '../../harness/sim/controller.js';
import { runInNode } from '../../harness/sim/controller.js';
import type { SimNode } from '../../harness/sim/node.js';

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
