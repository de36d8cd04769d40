/** `ambient-redirect run`: the node agent. */
import { ConfigError, parseRunConfig, RUN_FLAGS, usageOf, type RunConfig } from '../config.js';
import { Controller, staticMembership, type Membership } from '../controller/controller.js';
import { DEFAULT_BACKOFF } from '../controller/queue.js';
import { systemRunner } from '../host/runner.js';
import { DnsServiceReader, KubeMembership, kubeTransport, loadKubeConfig, type KubeTransport } from '../kube/index.js';
import { createLogger, type Logger } from '../log.js';
import { AgentMetrics, Readiness, instrumentMembership, mapUsage, pinnedMaps, podCounters, serveMetrics } from '../metrics/index.js';
import { createRedirectMode, resolveMode } from '../capture/factory.js';
import type { RedirectMode } from '../capture/mode.js';
import { errorMessage } from './errors.js';
import { describeFinding } from '../core/ordering.js';
import { startCniGate, type CniGate } from '../cni/gate.js';

export const runUsage = `usage: ambient-redirect run [flags]

Runs the node agent: loads the capture programs (or adopts the pinned ones), keeps the
maps equal to the enrolled pods of this node, and repairs drift every resync interval.
Membership comes from the Kubernetes API (--kubeconfig, or in-cluster) or, for tests and
demos, from a static list (--enroll, with --ztunnel-ip). SIGTERM and SIGINT stop the agent
and leave the data path as it is; only \`uninstall\` removes it.

flags (environment equivalents in brackets):
${usageOf(RUN_FLAGS)}
`;

function kubeApi(cfg: RunConfig): KubeTransport {
  if (cfg.membership.kind !== 'kubernetes') throw new Error('not Kubernetes membership');
  return kubeTransport(loadKubeConfig({ kubeconfig: cfg.membership.kubeconfig }));
}

function kubeMembership(cfg: RunConfig, api: KubeTransport, log: Logger): KubeMembership {
  log.info('watching the Kubernetes API', { server: api.server, node: cfg.nodeName });
  return new KubeMembership(api, {
    nodeName: cfg.nodeName,
    selectors: cfg.enablementSelectors,
    ztunnel: { namespace: cfg.ztunnelNamespace, labels: cfg.ztunnelSelector, daemonSet: cfg.ztunnelDaemonSet, serviceAccount: cfg.ztunnelServiceAccount },
    backoff: { initialMs: cfg.backoffInitialMs, maxMs: cfg.backoffMaxMs, jitter: DEFAULT_BACKOFF.jitter },
    stallTimeoutMs: cfg.watchStallSeconds * 1000,
    // The server ends each watch after 5-10 minutes (client-go's spread).
    watchTimeoutSeconds: Math.round(300 + Math.random() * 300),
    log,
  });
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
  /** The DNS Service's addresses (Kubernetes membership), added to the flags' ones. */
  let dns: DnsServiceReader | null = null;
  try {
    if (cfg.membership.kind === 'kubernetes') {
      const api = kubeApi(cfg);
      membership = kube = kubeMembership(cfg, api, log);
      if (cfg.dnsService) dns = new DnsServiceReader(api, cfg.dnsService, log);
    } else membership = staticMembership(cfg.membership.enroll);
  } catch (err) {
    log.error('cannot read the Kubernetes configuration', { error: errorMessage(err) });
    return 1;
  }
  let mode: RedirectMode;
  let modeName: RedirectMode['name'];
  try {
    modeName = resolveMode(cfg.mode, { log });
    mode = createRedirectMode(modeName, {
      objectPath: cfg.objectPath,
      pinRoot: cfg.pinRoot,
      runner: systemRunner,
      log,
      dnsCapture: cfg.dnsCapture,
      nonTcp: cfg.nonTcp,
      dnsServers: () => [...cfg.dnsServers, ...(dns?.servers ?? [])],
      tunnel: cfg.tunnel,
      ...(cfg.variant !== 'auto' && { variant: cfg.variant }),
      ...(cfg.delivery !== 'auto' && { delivery: cfg.delivery }),
    });
    await mode.init();
  } catch (err) {
    log.error('cannot start the data path', { error: errorMessage(err) });
    return 1;
  }

  // Not ready until a pass has attached and verified the data path (and after each
  // pass, only while it stays so).
  const readiness = new Readiness();
  const maps = pinnedMaps(cfg.pinRoot);
  const k = kube;
  const metrics = new AgentMetrics(
    {
      ...(modeName === 'ebpf' && { mapUsage: () => mapUsage(maps), podCounters: () => podCounters(maps) }),
      ...(k && {
        podName: (ip: string) => {
          const p = k.enrolled().get(ip);
          return p ? { namespace: p.namespace, pod: p.name } : null;
        },
        watchRestarts: () => ({ pods: k.podReflector.stats.restarts, namespaces: k.nsReflector.stats.restarts }),
        rejectedPods: () => k.stats.rejected,
      }),
    },
    { defaultMetrics: true },
  );
  metrics.setMode(modeName, cfg.mode);
  const servers: Awaited<ReturnType<typeof serveMetrics>>[] = [];
  const closeServers = () => Promise.all(servers.map((s) => s.close()));
  const listeners = [
    { address: cfg.healthAddress, serve: 'all' as const, what: 'metrics and health' },
    { address: cfg.metricsAddress, serve: 'metrics' as const, what: 'the metrics scrape address' },
  ];
  for (const l of listeners) {
    if (!l.address) continue;
    try {
      servers.push(
        await serveMetrics(l.address, {
          metrics,
          readiness,
          serve: l.serve,
          onError: (e) => log.error('metrics server failed', { address: l.address, error: e.message }),
        }),
      );
    } catch (err) {
      log.error(`cannot serve ${l.what}`, { address: l.address, error: errorMessage(err) });
      await closeServers();
      mode.close();
      return 1;
    }
  }

  const controller = new Controller({
    mode,
    membership: instrumentMembership(membership, (s) => metrics.observeEventToProgrammed(s)),
    ztunnelIp: cfg.ztunnelIp,
    runner: systemRunner,
    log,
    maxDeleteShare: cfg.maxDeleteShare,
    backoff: { initialMs: cfg.backoffInitialMs, maxMs: cfg.backoffMaxMs, jitter: DEFAULT_BACKOFF.jitter },
  });
  let cni: CniGate | null = null;
  // The membership starts first: the CNI gate writes the namespace list before it serves.
  kube?.start();
  if (cfg.cni.socket && kube) {
    if (cfg.cni.install) readiness.setCniInstalled(false, 'not installed yet');
    try {
      cni = await startCniGate(cfg.cni, kube, log, { onInstalled: (ok, reason) => readiness.setCniInstalled(ok, reason) });
    } catch (err) {
      log.error('cannot serve the CNI plugin', { socket: cfg.cni.socket, error: errorMessage(err) });
      await kube.stop();
      await closeServers();
      mode.close();
      return 1;
    }
  }
  let first = true;
  // Read before the first pass, then every 30 s (backing off while the API fails): a failed read keeps the last.
  await dns?.refresh();
  // The timer only asks; the reader decides when a read is due (src/kube/dns.ts).
  const dnsTimer = dns ? setInterval(() => void dns!.refresh(), 5_000) : null;
  dnsTimer?.unref();
  controller.start(
    cfg.resyncSeconds * 1000,
    (r, seconds) => {
      metrics.observePass(r, seconds);
      const synced = membership.view().synced;
      readiness.setPassFailed(null);
      // A pass before the first full sync touches nothing: it attaches nothing either.
      if (synced) readiness.setDataPathAttached(true);
      readiness.setZtunnelKnown(r.ztunnel, r.ztunnelProblem);
      readiness.setFindings(r.findings.map(describeFinding));
      const changed = r.upserted + r.deleted + r.attached + r.detached > 0;
      // "programmed" once: the first pass on a synced membership.
      if (first && synced) {
        log.info('programmed', { ...r });
        first = false;
        readiness.markSynced();
      } else if (changed || r.breaker !== 'closed') log.info('reconciled', { ...r });
    },
    (err, seconds) => {
      metrics.observeFailedPass(seconds);
      readiness.setPassFailed(errorMessage(err));
      log.error('reconcile failed; retrying with backoff', { error: errorMessage(err) });
    },
  );
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  await cni?.close();
  if (dnsTimer) clearInterval(dnsTimer);
  await controller.stop();
  await kube?.stop();
  await closeServers();
  mode.close();
  log.info('stopped; data path left in place', { signal });
  return 0;
}

export { ConfigError };
