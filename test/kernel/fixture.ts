/** What the kernel tests of a simulated node share: its teardown, whatever state it is in. */
import { rmSync } from 'node:fs';
import type { ControllerProcess } from '../../src/sim/controller.js';
import { runInNode } from '../../src/sim/controller.js';
import type { SimNode } from '../../src/sim/node.js';

/**
 * Kills the controller, uninstalls what it installed, deletes the node's namespaces and
 * the pin root: every step runs even when an earlier one fails.
 */
export async function teardownNode(sim: SimNode | undefined, pinRoot: string | undefined, controller?: ControllerProcess): Promise<void> {
  await controller?.stop('SIGKILL').catch(() => null);
  if (!sim) return;
  if (pinRoot) await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]).catch(() => '');
  await sim.teardown();
  if (pinRoot) rmSync(pinRoot, { recursive: true, force: true });
}
