/** `ambient-redirect run`: the node agent. */
import { ConfigError, parseRunConfig, RUN_FLAGS, usageOf } from '../config.js';
import { Controller, staticMembership } from '../controller/controller.js';
import { systemRunner } from '../host/runner.js';
import { createLogger } from '../log.js';
import { createRedirectMode, resolveMode } from '../redirect/factory.js';
import type { RedirectMode } from '../redirect/mode.js';
import { errorMessage } from './errors.js';

export const runUsage = `usage: ambient-redirect run [flags]

Runs the node agent: loads the capture programs (or adopts the pinned ones), keeps the
maps equal to the enrolled pods, and repairs drift every resync interval. SIGTERM and
SIGINT stop the agent and leave the data path as it is; only \`uninstall\` removes it.

flags (environment equivalents in brackets):
${usageOf(RUN_FLAGS)}
`;

export async function runCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(runUsage);
    return 0;
  }
  const cfg = parseRunConfig(argv, process.env);
  const log = createLogger(cfg.logLevel);
  let mode: RedirectMode;
  try {
    mode = createRedirectMode(resolveMode(cfg.mode), {
      objectPath: cfg.objectPath,
      pinRoot: cfg.pinRoot,
      runner: systemRunner,
      log,
      ...(cfg.variant !== 'auto' && { variant: cfg.variant }),
    });
    await mode.init();
  } catch (err) {
    log.error('cannot start the data path', { error: errorMessage(err) });
    return 1;
  }
  const controller = new Controller({ mode, membership: staticMembership(cfg.enroll), ztunnelIp: cfg.ztunnelIp, runner: systemRunner, log });
  let first = true;
  controller.start(
    cfg.resyncSeconds * 1000,
    (r) => {
      const changed = r.upserted + r.deleted + r.attached + r.detached > 0;
      if (first || changed) log.info(first ? 'programmed' : 'reconciled', { ...r });
      first = false;
    },
    (err) => log.error('reconcile failed; retrying next pass', { error: errorMessage(err) }),
  );
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  await controller.stop();
  mode.close();
  log.info('stopped; data path left in place', { signal });
  return 0;
}

export { ConfigError };
