/** `ambient-redirect run`: the node agent. */
import http from 'node:http';
import { ConfigError, parseRunConfig, RUN_FLAGS, usageOf, type RunConfig } from '../config.js';
import { Controller, staticMembership, type Membership } from '../controller/controller.js';
import { systemRunner } from '../host/runner.js';
import { KubeMembership, kubeTransport, loadKubeConfig } from '../kube/index.js';
import { createLogger, type Logger } from '../log.js';
import { createRedirectMode, resolveMode } from '../redirect/factory.js';
import type { RedirectMode } from '../redirect/mode.js';
import { errorMessage } from './errors.js';

export const runUsage = `usage: ambient-redirect run [flags]

Runs the node agent: loads the capture programs (or adopts the pinned ones), keeps the
maps equal to the enrolled pods of this node, and repairs drift every resync interval.
Membership comes from the Kubernetes API (--kubeconfig, or in-cluster) or, for tests and
demos, from a static list (--enroll, with --ztunnel-ip). SIGTERM and SIGINT stop the agent
and leave the data path as it is; only \`uninstall\` removes it.

flags (environment equivalents in brackets):
${usageOf(RUN_FLAGS)}
`;

function kubeMembership(cfg: RunConfig, log: Logger): KubeMembership {
  if (cfg.membership.kind !== 'kubernetes') throw new Error('not Kubernetes membership');
  const kc = loadKubeConfig({ kubeconfig: cfg.membership.kubeconfig });
  const api = kubeTransport(kc);
  log.info('watching the Kubernetes API', { server: api.server, node: cfg.nodeName });
  return new KubeMembership(api, {
    nodeName: cfg.nodeName,
    ztunnel: { namespace: cfg.ztunnelNamespace, labels: cfg.ztunnelSelector },
    backoff: { initialMs: cfg.backoffInitialMs, maxMs: cfg.backoffMaxMs, jitter: 0.2 },
    stallTimeoutMs: cfg.watchStallSeconds * 1000,
    // The server ends each watch after 5-10 minutes (client-go's spread).
    watchTimeoutSeconds: Math.round(300 + Math.random() * 300),
    log,
  });
}

/** /healthz: the process answers; /readyz: the first pass has been applied. */
function serveHealth(address: string, ready: () => boolean, log: Logger): http.Server {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[(.*)\]$/, '$1') || undefined;
  const server = http.createServer((req, res) => {
    const ok = req.url === '/healthz' ? true : req.url === '/readyz' ? ready() : null;
    res.writeHead(ok === null ? 404 : ok ? 200 : 503, { 'Content-Type': 'text/plain' });
    res.end(ok === null ? 'not found\n' : ok ? 'ok\n' : 'not ready\n');
  });
  server.on('error', (err) => log.error('health server failed', { address, error: err.message }));
  server.listen(Number(address.slice(i + 1)), host);
  return server;
}

export async function runCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(runUsage);
    return 0;
  }
  const cfg = parseRunConfig(argv, process.env);
  const log = createLogger(cfg.logLevel);
  let membership: Membership;
  let kube: KubeMembership | null = null;
  try {
    if (cfg.membership.kind === 'kubernetes') membership = kube = kubeMembership(cfg, log);
    else membership = staticMembership(cfg.membership.enroll);
  } catch (err) {
    log.error('cannot read the Kubernetes configuration', { error: errorMessage(err) });
    return 1;
  }
  let mode: RedirectMode;
  try {
    mode = createRedirectMode(resolveMode(cfg.mode, { log }), {
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
  const controller = new Controller({
    mode,
    membership,
    ztunnelIp: cfg.ztunnelIp,
    runner: systemRunner,
    log,
    maxDeleteShare: cfg.maxDeleteShare,
    backoff: { initialMs: cfg.backoffInitialMs, maxMs: cfg.backoffMaxMs, jitter: 0.2 },
  });
  let first = true;
  let ready = false;
  const health = cfg.healthAddress ? serveHealth(cfg.healthAddress, () => ready, log) : null;
  kube?.start();
  controller.start(
    cfg.resyncSeconds * 1000,
    (r) => {
      const changed = r.upserted + r.deleted + r.attached + r.detached > 0;
      const synced = membership.view().synced;
      // "programmed" once: the first pass on a synced membership.
      if (first && synced) {
        log.info('programmed', { ...r });
        first = false;
        ready = true;
      } else if (changed || r.breaker !== 'closed') log.info('reconciled', { ...r });
    },
    (err) => log.error('reconcile failed; retrying with backoff', { error: errorMessage(err) }),
  );
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  await controller.stop();
  await kube?.stop();
  health?.close();
  mode.close();
  log.info('stopped; data path left in place', { signal });
  return 0;
}

export { ConfigError };
