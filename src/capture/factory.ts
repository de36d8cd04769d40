/**
 * The one place a capture mode is chosen and built. `run` and `uninstall` go through
 * here; nothing else switches on the mode.
 */
import { uninstallInpod } from './inpod/ebpf.js';
import { uninstallInpodIptablesHost, uninstallInpodIptablesPods } from './inpod/iptables.js';
import { gatherKernelFacts } from '../host/kernel.js';
import type { Link } from '../host/netinfo.js';
import type { CommandRunner } from '../host/runner.js';
import { createLogger, type Logger } from '../log.js';
import { EbpfRedirect, uninstallEbpf, type Delivery, type Variant } from './ebpf/ebpf.js';
import type { BackendKind } from './iptables/backend.js';
import { IptablesRedirect } from './iptables/iptables.js';
import { uninstallIptables } from './iptables/uninstall.js';
import type { Desired } from '../core/desired.js';
import type { Hook, NonTcpPolicy } from '../core/modes.js';
import { Cleanup, type CleanupReport } from './cleanup.js';
import type { ActualState, ApplyResult, RedirectMode } from './mode.js';
import { selectMode, selectTunnel, type KernelFacts, type RequestedTunnel } from './select.js';

export type ModeName = RedirectMode['name'];
export type RequestedMode = ModeName | 'auto';

export interface ModeOptions {
  objectPath: string;
  pinRoot: string;
  variant?: Variant;
  /** ebpf mode's ztunnel-side delivery: bpf_sk_assign or mark + TPROXY (default: probed). */
  delivery?: Delivery;
  /** ebpf mode: the pods' outbound hook (src/core/modes.ts selectHook; default tc). */
  hook?: Hook;
  /** ebpf mode, hook xdp: the XDP object. */
  xdpObjectPath?: string;
  runner: CommandRunner;
  log: Logger;
  /** iptables mode's tunnel: Geneve where the kernel has it, else VXLAN (default auto). */
  tunnel?: RequestedTunnel;
  /** iptables mode: forces the iptables backend (default: what the node uses). */
  iptablesBackend?: BackendKind;
  /** Capture the pods' DNS to ztunnel's 15053 (default off). */
  dnsCapture?: boolean;
  /** Both modes: UDP (but captured DNS) and ICMP (but errors) pass uncaptured or are dropped (default pass). */
  nonTcp?: NonTcpPolicy;
  /** Both modes: the cluster's DNS servers, exempt from capture when DNS capture is off; read on every pass. */
  dnsServers?: () => readonly string[];
  /** Injected kernel facts (tests); gathered from this kernel when absent. */
  facts?: KernelFacts;
  /** iptables mode: where the node's sysctls are (default /proc/sys). */
  procSys?: string;
}

/**
 * The mode to use for a request: `iptables` as asked; `auto` and `ebpf` after probing the
 * kernel. One log line says which and why; a fallback from `ebpf` is a warning.
 */
export function resolveMode(requested: RequestedMode, opts: { log?: Logger; facts?: KernelFacts } = {}): ModeName {
  const log = opts.log ?? createLogger('info');
  if (requested === 'iptables') {
    const s = selectMode('iptables', { release: '', probes: null, geneve: null });
    log.info('capture mode selected', { requested, mode: s.mode, reason: s.reason, fallback: false });
    return s.mode;
  }
  const facts = opts.facts ?? gatherKernelFacts();
  const s = selectMode(requested, facts);
  const fields = { requested, mode: s.mode, reason: s.reason, fallback: s.fallback, kernel: facts.release, probes: facts.probes };
  if (s.fallback) log.warn('capture mode selected', fields);
  else log.info('capture mode selected', fields);
  return s.mode;
}

function buildMode(mode: ModeName, opts: ModeOptions): RedirectMode {
  switch (mode) {
    case 'ebpf':
      return new EbpfRedirect({
        objectPath: opts.objectPath,
        pinRoot: opts.pinRoot,
        runner: opts.runner,
        log: opts.log,
        ...(opts.variant && { variant: opts.variant }),
        ...(opts.delivery && { delivery: opts.delivery }),
        ...(opts.hook && { hook: opts.hook }),
        ...(opts.xdpObjectPath && { xdpObjectPath: opts.xdpObjectPath }),
        ...(opts.dnsCapture !== undefined && { dnsCapture: opts.dnsCapture }),
        ...(opts.nonTcp && { nonTcp: opts.nonTcp }),
        ...(opts.dnsServers && { dnsServers: opts.dnsServers }),
      });
    case 'iptables': {
      const facts = opts.facts ?? gatherKernelFacts();
      const t = selectTunnel(opts.tunnel ?? 'auto', facts);
      opts.log.info('iptables mode tunnel selected', { tunnel: t.tunnel, reason: t.reason });
      return new IptablesRedirect({
        runner: opts.runner,
        log: opts.log,
        tunnel: t.tunnel,
        ...(opts.dnsCapture !== undefined && { dnsCapture: opts.dnsCapture }),
        ...(opts.nonTcp && { nonTcp: opts.nonTcp }),
        ...(opts.dnsServers && { dnsServers: opts.dnsServers }),
        ...(opts.iptablesBackend && { backend: opts.iptablesBackend }),
        ...(opts.procSys && { procSys: opts.procSys }),
      });
    }
  }
}

/** Removes what the other mode may have left: a node restarted with another mode. */
function removeOtherMode(mode: ModeName, opts: ModeOptions): Promise<CleanupReport> {
  return mode === 'iptables' ? uninstallEbpf(opts.pinRoot, opts.runner) : uninstallIptables(opts.runner, opts.procSys);
}

/**
 * A mode that, once its first pass is applied, removes what the other mode left behind.
 * Not before: whichever mode is installed keeps capturing until the new one does (TC
 * programs act before netfilter, so the two never fight over a packet meanwhile).
 */
class SwitchingMode implements RedirectMode {
  private cleaned = false;
  /** The inner mode's fast path, when it has one (only after a pass: the other mode is gone by then). */
  readonly actualOf?: RedirectMode['actualOf'];
  readonly programPod?: RedirectMode['programPod'];
  constructor(
    private readonly inner: RedirectMode,
    private readonly opts: ModeOptions,
  ) {
    const { actualOf, programPod } = inner;
    if (actualOf && programPod) {
      this.actualOf = actualOf.bind(inner);
      this.programPod = programPod.bind(inner);
    }
  }
  get name() {
    return this.inner.name;
  }
  init() {
    return this.inner.init();
  }
  actual(links: Iterable<number>) {
    return this.inner.actual(links);
  }
  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const r = await this.inner.apply(desired, actual);
    if (!this.cleaned) {
      const r = await removeOtherMode(this.inner.name, this.opts);
      this.cleaned = true;
      if (r.removed.length) this.opts.log.info('removed the state of the other capture mode', { mode: this.inner.name, removed: r.removed });
      for (const s of r.skipped) this.opts.log.info('skipped a cleanup step of the other capture mode', { mode: this.inner.name, ...s });
      for (const f of r.failed) this.opts.log.warn("could not remove part of the other capture mode's state", { mode: this.inner.name, ...f });
    }
    return r;
  }
  verify(desired: Desired, links: ReadonlyMap<number, Link>) {
    return this.inner.verify ? this.inner.verify(desired, links) : Promise.resolve([]);
  }
  close() {
    this.inner.close();
  }
}

export function createRedirectMode(mode: ModeName, opts: ModeOptions): RedirectMode {
  return new SwitchingMode(buildMode(mode, opts), opts);
}

/** Removes what every mode may have left on this node; every step runs, each is idempotent. */
export async function uninstallAll(opts: { pinRoot: string; hostProc: string; runner: CommandRunner }): Promise<CleanupReport> {
  const c = new Cleanup();
  // In-pod capture first: its host half (probe SNAT) must outlive the pods' rules.
  c.merge(await uninstallInpodIptablesPods(opts.runner, opts.hostProc));
  c.merge(await uninstallInpodIptablesHost(opts.runner));
  // Before uninstallEbpf: the pinned in-pod records say what each pod had before us.
  c.merge(await uninstallInpod({ pinRoot: opts.pinRoot, hostProc: opts.hostProc }));
  c.merge(await uninstallEbpf(opts.pinRoot, opts.runner));
  c.merge(await uninstallIptables(opts.runner));
  return c;
}
