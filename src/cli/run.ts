/** `ambient-redirect run`: the node agent. */
import { ConfigError, parseRunConfig, RUN_FLAGS, usageOf, type RunConfig } from '../config.js';
import { Controller, staticMembership, type Membership } from '../controller/controller.js';
import { DEFAULT_BACKOFF } from '../controller/queue.js';
import { systemRunner } from '../host/runner.js';
import { DnsServiceReader, KubeMembership, kubeTransport, loadKubeConfig, type KubeTransport } from '../kube/index.js';
import { createLogger, type Logger } from '../log.js';
import { AgentMetrics, Readiness, instrumentMembership, readScrape, serveMetrics } from '../metrics/index.js';
import { createRedirectMode, resolveMode } from '../capture/factory.js';
import type { RedirectMode } from '../capture/mode.js';
import { errorMessage } from './errors.js';
import { describeFinding } from '../core/ordering.js';
import { selectHook } from '../core/modes.js';
import { startCniGate, type CniGate } from '../cni/gate.js';
import { startInPodCapture } from '../capture/inpod/factory.js';
import { closeFd } from '../host/libc.js';
import { InPodAgent, type NetnsPort } from '../zds/agent.js';
import { netnsIdAt, openNetns, ownNetnsId, scanHostNetns } from '../host/pod-netns.js';
import { ZdsServer } from '../zds/server.js';
import { mkdirSync } from 'node:fs';
import { release } from 'node:os';
import { dirname, join } from 'node:path';

export const runUsage = `usage: ambient-redirect run [flags]

Runs the node agent for one of two ztunnels (--ztunnel-mode, docs/zds.md):
  inpod  ztunnel >= 1.23 (the default): serves ZDS at --zds-socket, sends ztunnel each
         enrolled pod with its network namespace, and installs the in-pod capture there.
  node   ztunnel 1.18-1.22 in its own netns: loads the capture programs (or adopts the
         pinned ones) and keeps the maps equal to the enrolled pods.
Drift is repaired every resync interval. Membership comes from the Kubernetes API
(--kubeconfig, or in-cluster) or, for tests and demos in node mode, from a static list
(--enroll, with --ztunnel-ip). SIGTERM and SIGINT stop the agent and leave the data path
(and what ztunnel holds) as it is; only \`uninstall\` removes it.

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

/** What a started agent must release on the way out, in reverse order of start. */
class Teardown {
  private readonly steps: { what: string; run: () => unknown }[] = [];
  constructor(private readonly log: Logger) {}
  add(what: string, run: () => unknown): void {
    this.steps.push({ what, run });
  }
  async run(): Promise<void> {
    for (const s of this.steps.reverse()) {
      try {
        await s.run();
      } catch (err) {
        this.log.warn('stopping: a step failed', { step: s.what, error: errorMessage(err) });
      }
    }
    this.steps.length = 0;
  }
}

export async function runCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(runUsage);
    return 0;
  }
  const cfg = parseRunConfig(argv, process.env);
  const log = createLogger(cfg.logLevel);
  const teardown = new Teardown(log);
  const fail = async (what: string, fields: Record<string, unknown>) => {
    log.error(what, fields);
    await teardown.run();
    return 1;
  };
  let membership: Membership;
  let kube: KubeMembership | null = null;
  /** The DNS Service's addresses (Kubernetes membership, node mode), added to the flags' ones. */
  let dns: DnsServiceReader | null = null;
  try {
    if (cfg.membership.kind === 'kubernetes') {
      const api = kubeApi(cfg);
      membership = kube = kubeMembership(cfg, api, log);
      if (cfg.dnsService && cfg.ztunnelMode === 'node') dns = new DnsServiceReader(api, cfg.dnsService, log);
    } else membership = staticMembership(cfg.membership.enroll);
  } catch (err) {
    return fail('cannot read the Kubernetes configuration', { error: errorMessage(err) });
  }
  log.info('starting', { ztunnelMode: cfg.ztunnelMode, ...(cfg.ztunnelMode === 'inpod' && { zdsSocket: cfg.zdsSocket }) });

  // Not ready until the data path is in place (and after each pass, only while it stays so).
  const readiness = new Readiness();
  let started: Started;
  try {
    started = cfg.ztunnelMode === 'inpod' ? await startInPod(cfg, kube!, readiness, log, teardown) : await startNode(cfg, membership, kube, dns, log, teardown);
  } catch (err) {
    return fail(cfg.ztunnelMode === 'inpod' ? 'cannot start the in-pod mode' : 'cannot start the data path', { error: errorMessage(err) });
  }
  const metrics = started.metrics;
  const listeners = [
    { address: cfg.healthAddress, serve: 'all' as const, what: 'metrics and health' },
    { address: cfg.metricsAddress, serve: 'metrics' as const, what: 'the metrics scrape address' },
  ];
  for (const l of listeners) {
    if (!l.address) continue;
    try {
      const server = await serveMetrics(l.address, {
        metrics,
        readiness,
        serve: l.serve,
        ...(started.zdsView && { zds: started.zdsView }),
        onError: (e) => log.error('metrics server failed', { address: l.address, error: e.message }),
      });
      teardown.add(`close ${l.what}`, () => server.close());
    } catch (err) {
      return fail(`cannot serve ${l.what}`, { address: l.address, error: errorMessage(err) });
    }
  }

  // The membership starts first: the CNI gate writes the namespace list before it serves.
  kube?.start();
  if (kube) teardown.add('stop the Kubernetes watches', () => kube.stop());
  if (cfg.cni.socket && kube) {
    if (cfg.cni.install) readiness.setCniInstalled(false, 'not installed yet');
    try {
      const cni: CniGate = await startCniGate(cfg.cni, kube, log, {
        onInstalled: (ok, reason) => readiness.setCniInstalled(ok, reason),
        ...(started.inpod && { inpod: started.inpod }),
        ...(started.programPod && { programPod: started.programPod }),
      });
      teardown.add('close the CNI gate', () => cni.close());
    } catch (err) {
      return fail('cannot serve the CNI plugin', { socket: cfg.cni.socket, error: errorMessage(err) });
    }
  }
  await started.begin(readiness);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  await teardown.run();
  log.info('stopped; data path left in place', { signal });
  return 0;
}

/** A started mode: its metrics, what the CNI gate waits on (inpod), and its loop's start. */
interface Started {
  metrics: AgentMetrics;
  inpod?: InPodAgent;
  /** node mode: the CNI gate's fast path (Controller.programPod). */
  programPod?: (uid: string) => Promise<ReadonlySet<string>>;
  zdsView?: () => unknown;
  /** Starts the reconcile loop (after the membership and the CNI gate). */
  begin(readiness: Readiness): Promise<void>;
}

/** node mode: the capture programs on the host veths, the controller's passes. */
async function startNode(
  cfg: RunConfig,
  membership: Membership,
  kube: KubeMembership | null,
  dns: DnsServiceReader | null,
  log: Logger,
  teardown: Teardown,
): Promise<Started> {
  const modeName: RedirectMode['name'] = resolveMode(cfg.mode, { log });
  const hook = selectHook(cfg.hook, { ztunnelMode: 'node', mode: modeName, release: release() });
  // xdp asked for and iptables selected (the kernel cannot run ebpf mode), or a kernel below the XDP hook's floor: said loudly.
  if ((hook.hook === null && cfg.hook === 'xdp') || hook.fallback) log.warn('outbound hook selected', { requested: cfg.hook, hook: null, reason: hook.reason });
  else log.info('outbound hook selected', { requested: cfg.hook, hook: hook.hook, reason: hook.reason });
  const mode: RedirectMode = createRedirectMode(modeName, {
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
    ...(hook.hook && { hook: hook.hook, xdpObjectPath: cfg.xdpObjectPath }),
  });
  await mode.init();
  teardown.add('release the capture mode', () => mode.close());
  const k = kube;
  const metrics = new AgentMetrics(
    {
      ...(modeName === 'ebpf' && { kernel: (o: { maxSeries: number }) => readScrape(cfg.pinRoot, o) }),
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
  metrics.setZtunnelMode('node');
  const controller = new Controller({
    mode,
    membership: instrumentMembership(membership, (s) => metrics.observeEventToProgrammed(s)),
    ztunnelIp: cfg.ztunnelIp,
    runner: systemRunner,
    log,
    maxDeleteShare: cfg.maxDeleteShare,
    backoff: { initialMs: cfg.backoffInitialMs, maxMs: cfg.backoffMaxMs, jitter: DEFAULT_BACKOFF.jitter },
  });
  return {
    metrics,
    programPod: (uid) => controller.programPod(uid),
    begin: async (readiness) => {
      let first = true;
      // Read before the first pass, then every 30 s (backing off while the API fails): a failed read keeps the last.
      await dns?.refresh();
      // The timer only asks; the reader decides when a read is due (src/kube/dns.ts).
      const dnsTimer = dns ? setInterval(() => void dns.refresh(), 5_000) : null;
      dnsTimer?.unref();
      if (dnsTimer) teardown.add('stop the DNS Service reads', () => clearInterval(dnsTimer));
      teardown.add('stop the controller', () => controller.stop());
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
    },
  };
}

/** The host's network namespaces as the in-pod agent reads them (src/host/pod-netns.ts). */
function hostNetns(hostProc: string): NetnsPort {
  const own = ownNetnsId();
  return {
    scan: () => scanHostNetns(hostProc),
    open: (path, expectId) => openNetns(path, expectId),
    idAt: netnsIdAt,
    procPath: (pid) => join(hostProc, String(pid), 'ns', 'net'),
    ownId: () => own,
    close: closeFd,
  };
}

/** inpod mode: the ZDS server, the pods' netns, the in-pod capture; no host-veth programs. */
async function startInPod(cfg: RunConfig, kube: KubeMembership, readiness: Readiness, log: Logger, teardown: Teardown): Promise<Started> {
  // auto and ebpf on a kernel without the BPF features fall back as in the node topology;
  // then the delivery probe decides (src/capture/inpod/factory.ts).
  const capture = await startInPodCapture(cfg.mode === 'iptables' ? 'iptables' : resolveMode(cfg.mode, { log }), {
    objectPath: cfg.inpodObjectPath,
    pinRoot: cfg.pinRoot,
    dnsCapture: cfg.dnsCapture,
    runner: systemRunner,
    log,
  });
  teardown.add('release the in-pod capture', () => capture.close());
  if (cfg.hook !== 'auto')
    log.info('outbound hook selected', { requested: cfg.hook, hook: null, reason: selectHook(cfg.hook, { ztunnelMode: 'inpod', mode: 'ebpf' }).reason });
  log.info('in-pod capture ready', { capture: capture.name });
  const metrics = new AgentMetrics(
    {
      podName: (ip: string) => {
        const p = kube.enrolled().get(ip);
        return p ? { namespace: p.namespace, pod: p.name } : null;
      },
      watchRestarts: () => ({ pods: kube.podReflector.stats.restarts, namespaces: kube.nsReflector.stats.restarts }),
      rejectedPods: () => kube.stats.rejected,
    },
    { defaultMetrics: true },
  );
  metrics.setZtunnelMode('inpod');
  // ztunnel's host folder: created when missing (ztunnel connects once the socket is there).
  mkdirSync(dirname(cfg.zdsSocket), { recursive: true, mode: 0o755 });
  const server = new ZdsServer({
    path: cfg.zdsSocket,
    log,
    // A ztunnel that reconnects to a restarted agent gets its snapshot once the agent holds
    // every enrolled pod (after the first full pass), never a partial one.
    holdSnapshots: true,
    onAck: (_conn, request, error) => {
      if (request.kind === 'snapshot_sent' && error === null && server.counters.lastSnapshotMs !== null)
        metrics.observeZdsSnapshot(server.counters.lastSnapshotMs / 1000);
    },
  });
  teardown.add('close the ZDS server', () => server.close());
  metrics.setZdsSource(() => ({ connections: server.connections(), counters: server.counters }));
  const agent = new InPodAgent({ source: kube, server, capture, netns: hostNetns(cfg.hostProc), log });
  teardown.add('stop the in-pod agent', () => agent.stop());
  const connectedReason = `no ztunnel connected to the ZDS socket ${cfg.zdsSocket} (enrolled pods stay enrolled; new ones wait at the CNI gate)`;
  const ztunnelState = () =>
    readiness.setZtunnelConnected(
      server.connections().some((c) => c.phase !== 'hello'),
      connectedReason,
    );
  server.subscribe({ ack: ztunnelState, closed: ztunnelState });
  return {
    metrics,
    inpod: agent,
    zdsView: () => ({
      ztunnelMode: 'inpod',
      socket: cfg.zdsSocket,
      capture: capture.name,
      connections: server.connections(),
      counters: server.counters,
      pods: agent.status(),
    }),
    begin: async (readiness) => {
      readiness.setDataPathAttached(true);
      ztunnelState();
      let first = true;
      const pass = async () => {
        const t0 = performance.now();
        // Synced before the pass starts: only such a pass gathers every enrolled pod.
        const synced = kube.hasSynced();
        await agent.kick(true);
        const seconds = (performance.now() - t0) / 1000;
        const pods = agent.status();
        metrics.observePass({ enrolled: pods.length, programmed: pods.filter((p) => p.acked && p.installed).length, upserted: 0, attached: 0 }, seconds);
        ztunnelState();
        if (first && synced) {
          first = false;
          server.podSetComplete();
          readiness.markSynced();
          log.info('programmed', { ztunnelMode: 'inpod', enrolled: pods.length, found: pods.filter((p) => p.netns).length });
        }
      };
      let timer: NodeJS.Timeout | undefined;
      let stopped = false;
      const tick = () => {
        if (stopped) return;
        void pass().finally(() => {
          if (!stopped) timer = setTimeout(tick, cfg.resyncSeconds * 1000 * (0.9 + Math.random() * 0.2));
        });
      };
      teardown.add('stop the resync', () => {
        stopped = true;
        clearTimeout(timer);
      });
      // The first full pass once the lists are in; membership changes kick passes meanwhile.
      kube.onChange(() => {
        if (first && kube.hasSynced()) void pass();
      });
      tick();
    },
  };
}

export { ConfigError };
