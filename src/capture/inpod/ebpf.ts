/**
 * The in-pod capture with eBPF (docs/datapath.md, "In-pod capture"): an implementation of
 * InPodCapture (src/capture/inpod.ts) with no iptables in the pod.
 *
 * In each pod's netns: inpod_out on the pod interface's TC egress, inpod_in on its TC
 * ingress, a policy-routing rule and table that deliver the loop mark locally, and
 * accept_local on the interface; inpod_lo_in on lo's TC ingress and, for a pod with only
 * that interface and no bypass or VM annotation, the local route: rules that send the
 * pod's own TCP to that table (so over lo, to inpod_lo_in) and the probe source's answers
 * past it, with the table's route carrying the pod's address as source, and a strict IPv4
 * rp_filter on the interface made loose. On the pod's host veth, in the node's netns:
 * inpod_host_in (TC egress) and inpod_host_out (TC ingress), the probe-source rewrite.
 * On each interface the pod's `reroute-virtual-interfaces` annotation lists that exists in
 * its netns (a VM's tap): inpod_vm_in (TC ingress), the VM's TCP to ztunnel's 15001.
 *
 * Entering a pod's netns: everything (rtnetlink for links, addresses, rules and routes;
 * /proc/sys for accept_local; libbpf for TC and the socket lookup link) runs in-process on
 * the loop thread moved into the netns with setns and back (src/bpf/netns.ts), through
 * the fd the ZDS flow holds, synchronously, so nothing else runs meanwhile: no process is
 * spawned per pod (install, check and remove spawned 8 to 11 before, 40-60 ms each on a
 * busy 2-core node).
 *
 * The pod's netns also gets inpod_lookup on its socket lookup hook, through a BPF link
 * pinned at `<pin folder>/inpod/links/lookup-<netns inode>`: the SYNs that meet a
 * TIME_WAIT reach ztunnel's listener through it (docs/datapath.md, "TIME_WAIT: the
 * handoff").
 *
 * Pins: `<pin folder>/inpod/` holds this object's maps (inpod_config, probe_flows,
 * inpod_handoff, inpod_listeners and inpod_pods, the agent's record of what it changed in each pod's netns,
 * so that remove undoes exactly that, after a restart too), `prog-<hash>/` its programs,
 * adopted by the next agent of the same build, and `links/`.
 */
import { existsSync, fstatSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as codec from '../../bpf/inpod-codec.js';
import { constants } from '../../bpf/inpod-layout.generated.js';
import { decodeAddrKey, encodeAddrKey } from '../../bpf/codec.js';
import { closeInstalled, commitInstall, loadOrAdopt, type Installed } from '../../bpf/install.js';
import type { BpfMap } from '../../bpf/object.js';
import { SWEEP_EVERY_MS, sweepHandoffs, type SweepResult } from './handoffs.js';
import { withNetns } from '../../bpf/netns.js';
import { ensurePinDir, pinDir } from '../../bpf/pins.js';
import { openPinnedMap } from '../../bpf/maps.js';
import { Cleanup, type CleanupReport } from '../cleanup.js';
import { attachTc, destroyClsact, detachTc, OUR_FILTER, queryTc, type Direction } from '../../bpf/tc.js';
import { listTcFilters } from '../../bpf/hooks.js';
import { BPF_SK_LOOKUP } from '../../bpf/ffi.js';
import { ensureNetnsLink, netnsLinkState, removeNetnsLink } from '../../bpf/netns-link.js';
import type { CommandRunner } from '../../host/runner.js';
import {
  AF_INET,
  AF_INET6,
  addFwmarkRule,
  addRule,
  delFwmarkRule,
  delRule,
  delLocalDefault,
  dumpAddrs,
  dumpFwmarkRules,
  dumpLinks,
  dumpRoutes,
  dumpRules,
  hostRoutes,
  NetlinkError,
  replaceLocalDefault,
  routeGet,
  RTN_LOCAL,
  sameRule,
  type NlRule,
} from '../../host/netlink.js';
import { PROBE_SNAT } from './iptables-rules.js';
import type { Logger } from '../../log.js';
import { DEFAULT_INPOD_OBJECT } from '../../lib/repo-path.js';
import { NO_OVERRIDES } from '../../core/enrollment.js';
import type { InPodCapture, PodNetns } from '../inpod.js';
import { probeReuseportAssign } from './probe.js';
import { bypassesRules, listeningPorts, wireAddr } from './stranded.js';
import { endConnections } from './end-connections.js';

export const INPOD_PROGRAMS = {
  /** TC egress of the pod's interface, in its netns. */
  out: 'inpod_out',
  /** TC ingress of the pod's interface, in its netns. */
  in: 'inpod_in',
  /** TC egress of the pod's host veth (frames to the pod). */
  hostIn: 'inpod_host_in',
  /** TC ingress of the pod's host veth (frames from the pod). */
  hostOut: 'inpod_host_out',
  /** The socket lookup (SK_LOOKUP) of the pod's netns: SYNs meeting a TIME_WAIT. */
  lookup: 'inpod_lookup',
  /** TC ingress of each interface in the pod's reroute-virtual-interfaces annotation (a VM's tap). */
  vm: 'inpod_vm_in',
  /** TC ingress of lo, in the pod's netns: the SYNs the local route brings to ztunnel's listener. */
  lo: 'inpod_lo_in',
} as const;

/** Where the link that attaches inpod_lookup to a pod's netns is pinned. */
export function lookupLinkPin(dir: string, inode: bigint): string {
  return join(dir, 'links', `lookup-${inode}`);
}

export const INPOD_PIN_SUBDIR = 'inpod';
const ROUTE_TABLE = String(constants.INPOD_ROUTE_TABLE);
const RULE_PREF = String(constants.INPOD_RULE_PREF);
const FAMILIES = [AF_INET, AF_INET6] as const;
/** The rule that sends the loop mark to the table of a local default route over lo. */
const LOOP_RULE = {
  priority: constants.INPOD_RULE_PREF,
  fwmark: constants.INPOD_MARK_LOOP,
  fwmask: constants.INPOD_MARK_LOOP,
  table: constants.INPOD_ROUTE_TABLE,
};
const familyFlag = (f: (typeof FAMILIES)[number]) => (f === AF_INET ? '-4' : '-6');
/** lo is ifindex 1 in every netns. */
const LO_IFINDEX = 1;
const IPPROTO_TCP = 6;
const RT_TABLE_MAIN = 254;
/**
 * The local route: the pod's own TCP (not ztunnel's: its mark) to the loop table's local
 * default over lo, where inpod_lo_in gives its SYNs to ztunnel's listener. Routes of the
 * local table come first (priority 0): the pod calling itself is not taken.
 */
const LOCAL_RULE = {
  priority: constants.INPOD_RULE_PREF_LOCAL,
  iif: 'lo',
  ipProto: IPPROTO_TCP,
  fwmark: 0,
  fwmask: constants.INPOD_ZTUNNEL_MARK_MASK,
  table: constants.INPOD_ROUTE_TABLE,
};
/** Before it: the app's answers to kubelet probes (to the probe source) leave by the main table. */
const probeRule = (f: (typeof FAMILIES)[number]): NlRule => ({
  priority: constants.INPOD_RULE_PREF_PROBE,
  ipProto: IPPROTO_TCP,
  dst: f === AF_INET ? { addr: PROBE_SNAT[4], len: 32 } : { addr: PROBE_SNAT[6], len: 128 },
  table: RT_TABLE_MAIN,
});
const familyOfIp = (ip: string) => (ip.includes(':') ? AF_INET6 : AF_INET);

/**
 * The source the local route gives the pod's connections, per family: its first address of
 * that family. None (no local route: its TCP takes the loop through its interface) for a
 * family it has no address of; and for a pod whose inbound capture is bypassed, that
 * reroutes VM interfaces, or whose netns holds any interface but lo and its own: those
 * answer connections ztunnel did not accept (the app's inbound, a VM's, another network's)
 * by the main table, which the local route would send to lo; and the local route makes the
 * reverse-path filter loose (install, below), which a second interface would feel.
 * In the pod's netns.
 */
function localRouteSources(pod: PodNetns, ethIfindex: number): Map<(typeof FAMILIES)[number], string> {
  const o = pod.overrides ?? NO_OVERRIDES;
  const out = new Map<(typeof FAMILIES)[number], string>();
  if (o.bypassInbound || (o.rerouteInterfaces?.length ?? 0) > 0) return out;
  if (dumpLinks().some((l) => l.ifindex !== ethIfindex && l.ifindex !== LO_IFINDEX)) return out;
  for (const ip of pod.ips) if (!out.has(familyOfIp(ip))) out.set(familyOfIp(ip), ip);
  return out;
}

const rpFilterPath = (ifname: string) => `/proc/sys/net/ipv4/conf/${ifname}/rp_filter`;
const readRpFilter = (ifname: string) => Number(readFileSync(rpFilterPath(ifname), 'utf8').trim());

/** The interface's effective IPv4 reverse-path filter, max(all, its own), in the calling thread's netns. */
function rpFilterOf(ifname: string): number {
  return Math.max(readRpFilter('all'), readRpFilter(ifname));
}

/** In the calling thread's netns: how many rules of the family are `want`. */
function ruleCount(family: (typeof FAMILIES)[number], want: NlRule): number {
  return dumpRules(family).filter((r) => sameRule(r, want)).length;
}

/** In the calling thread's netns: the local route's rules are there once for `src`'s families, and not for the others. */
function localRouteMatches(srcs: ReadonlyMap<(typeof FAMILIES)[number], string>): boolean {
  return FAMILIES.every((f) => [LOCAL_RULE, probeRule(f)].every((r) => ruleCount(f, r) === (srcs.has(f) ? 1 : 0)));
}

/** In the calling thread's netns: the loop rule is there. */
function hasRule(family: (typeof FAMILIES)[number]): boolean {
  return dumpFwmarkRules(family).some(
    (r) => r.priority === LOOP_RULE.priority && r.fwmark === LOOP_RULE.fwmark && r.fwmask === LOOP_RULE.fwmask && r.table === LOOP_RULE.table,
  );
}

/** In the calling thread's netns: the loop table's local default route over lo is there, with that source (or none). */
function hasRoute(family: (typeof FAMILIES)[number], src: string | undefined): boolean {
  return dumpRoutes(family).some((r) => r.table === LOOP_RULE.table && r.type === RTN_LOCAL && r.dstLen === 0 && r.oif === LO_IFINDEX && r.prefsrc === src);
}

/** accept_local of an interface of the calling thread's netns ('0' or '1'). */
function acceptLocal(ifname: string): string {
  return readFileSync(`/proc/sys/net/ipv4/conf/${ifname}/accept_local`, 'utf8').trim();
}

function setAcceptLocal(ifname: string, value: '0' | '1'): void {
  writeFileSync(`/proc/sys/net/ipv4/conf/${ifname}/accept_local`, value);
}

export interface InpodEbpfOptions {
  /** The compiled object; default DEFAULT_INPOD_OBJECT (build/inpod.bpf.o). */
  objectPath?: string;
  /** The bpffs root (as `run --pin-root`); pins go under `<root>/ambient-redirect/v1/inpod/`. */
  pinRoot: string;
  /** UDP and TCP to port 53 go to ztunnel's 15053 (default off). */
  dnsCapture?: boolean;
  runner: CommandRunner;
  log: Logger;
  /**
   * The node's network namespace (where the pods' host veths are), as a path; default:
   * the agent's own. Tests that run the agent's code in-process name a simulated node's.
   */
  hostNetns?: string;
  /**
   * Run the delivery probe in init (default true). False only where the caller has probed
   * already (src/capture/inpod/probe.ts); an init that probes and fails throws
   * InpodUnsupportedError, for the caller to pick the iptables in-pod capture.
   */
  probe?: boolean;
}

/** This kernel cannot run the eBPF in-pod capture: the caller falls back to iptables. */
export class InpodUnsupportedError extends Error {
  constructor(reason: string) {
    super(`the eBPF in-pod capture cannot run on this kernel: ${reason}; use the iptables in-pod capture`);
    this.name = 'InpodUnsupportedError';
  }
}

/** The one call that builds the eBPF in-pod capture (init() still to be awaited). */
export function createEbpfInPodCapture(opts: InpodEbpfOptions): EbpfInPodCapture {
  return new EbpfInPodCapture(opts);
}

interface PodPlace {
  /** `/proc/<pid>/fd/<fd>`: the pod's netns as this process holds it. */
  nsPath: string;
  inode: bigint;
  eth: { ifindex: number; name: string };
  hostIfindex: number;
}

/** The pod's interface or the node's route to it is not (or no longer) there. */
export class LocateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LocateError';
  }
}

function isGone(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === 'ENOENT' || code === 'EBADF' || code === 'ENODEV';
}

export class EbpfInPodCapture implements InPodCapture {
  readonly name = 'ebpf' as const;
  private installed: Installed | null = null;
  private dir = '';

  private readonly objectPath: string;

  constructor(private readonly opts: InpodEbpfOptions) {
    this.objectPath = opts.objectPath ?? DEFAULT_INPOD_OBJECT;
  }

  private sweeper: NodeJS.Timeout | null = null;
  /** Handoffs the sweeps deleted since init (for tests and status). */
  sweptTotal = 0;

  async init(): Promise<void> {
    if (this.opts.probe !== false) {
      const p = await probeReuseportAssign(this.objectPath, this.opts.runner);
      if (!p.reuseportAssign) throw new InpodUnsupportedError(p.reason ?? 'the delivery probe failed');
    }
    this.dir = join(ensurePinDir(this.opts.pinRoot), INPOD_PIN_SUBDIR);
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.installed = loadOrAdopt(this.objectPath, this.dir, Object.values(INPOD_PROGRAMS));
    // Pods attached to an older build's programs keep them (the kernel holds attached
    // programs) until check() finds them outdated and install() replaces them in place.
    if (!this.installed.adopted) commitInstall(this.dir, this.installed);
    this.sweepLinks();
    this.map('inpod_config').update(codec.encodeConfigSlot(), codec.encodeInpodConfig(this.opts.dnsCapture ? codec.InpodFlags.DNS_CAPTURE : 0));
    if (!this.sweeper) {
      this.sweeper = setInterval(() => this.sweepTick(), SWEEP_EVERY_MS);
      this.sweeper.unref();
    }
    const ids = Object.fromEntries([...this.installed.programs].map(([n, p]) => [n, p.id]));
    this.opts.log.info(this.installed.adopted ? 'in-pod ebpf adopted' : 'in-pod ebpf loaded', {
      pinDir: this.dir,
      programs: ids,
      dnsCapture: !!this.opts.dnsCapture,
    });
  }

  /** Links of pods whose netns is gone (detached by the kernel with it): their pins go. */
  private sweepLinks(): void {
    const links = join(this.dir, 'links');
    for (const f of existsSync(links) ? readdirSync(links) : []) {
      const path = join(links, f);
      if (netnsLinkState(path)?.netnsIno === 0) removeNetnsLink(path);
    }
  }

  private map(name: 'inpod_config' | 'probe_flows' | 'inpod_pods' | 'inpod_handoff' | 'inpod_listeners' | 'inpod_overrides'): BpfMap {
    const m = this.installed?.maps.get(name);
    if (!m) throw new Error(`in-pod ebpf capture not initialised (map ${name})`);
    return m;
  }

  private program(name: string): { fd: number; id: number } {
    const p = this.installed?.programs.get(name);
    if (!p) throw new Error(`in-pod ebpf capture not initialised (program ${name})`);
    return p;
  }

  // --- where things are ---------------------------------------------------------------

  private hostDo<T>(fn: () => T extends Promise<unknown> ? never : T): T {
    return this.opts.hostNetns ? withNetns(this.opts.hostNetns, fn) : fn();
  }

  private locate(pod: PodNetns): PodPlace {
    const what = `pod ${pod.namespace}/${pod.name}`;
    if (pod.ips.length === 0) throw new LocateError(`${what}: no IP address to find its interface by`);
    const nsPath = `/proc/${process.pid}/fd/${pod.fd}`;
    const inode = BigInt(fstatSync(pod.fd).ino);
    const norm = (ip: string) => decodeAddrKey(encodeAddrKey(ip));
    const wanted = new Set(pod.ips.map(norm));
    const { links, addrs } = withNetns(nsPath, () => ({ links: dumpLinks(), addrs: dumpAddrs() }));
    const holder = addrs.find((a) => wanted.has(norm(a.address)));
    const link = holder && links.find((l) => l.ifindex === holder.ifindex);
    if (!link) throw new LocateError(`${what}: no interface in its netns holds ${pod.ips.join(', ')}`);
    const first = pod.ips[0]!;
    const host = this.hostDo(() => ({ routes: hostRoutes(dumpRoutes(first.includes(':') ? AF_INET6 : AF_INET)), links: dumpLinks() }));
    const oif = [...host.routes].find(([dst]) => norm(dst) === norm(first))?.[1];
    if (oif === undefined) throw new LocateError(`${what}: the node has no direct route to ${first}`);
    const hostLink = host.links.find((l) => l.ifindex === oif);
    if (!hostLink) throw new LocateError(`${what}: the node's link ${oif} is gone`);
    // The node's route must lead to this interface's veth peer, never to an uplink.
    if (link.link !== hostLink.ifindex || hostLink.link !== link.ifindex) {
      throw new LocateError(`${what}: the node's route to ${first} goes through ${hostLink.name}, which is not the veth peer of ${link.name}`);
    }
    return { nsPath, inode, eth: { ifindex: link.ifindex, name: link.name }, hostIfindex: hostLink.ifindex };
  }

  private record(inode: bigint): codec.InpodPod | null {
    const v = this.map('inpod_pods').lookup(codec.encodeNetnsKey(inode));
    return v ? codec.decodeInpodPod(v) : null;
  }

  // --- install ------------------------------------------------------------------------

  async install(pod: PodNetns): Promise<void> {
    const at = this.locate(pod);
    const had = this.record(at.inode);
    // The record first, with what was there before us (a repeated install keeps the
    // first one's): remove restores exactly that, even if this install stops half-way.
    let flags = had?.flags ?? 0;
    if (!had && withNetns(at.nsPath, () => acceptLocal(at.eth.name)) === '1') flags |= codec.InpodPodFlags.ACCEPT_LOCAL;
    const save = () =>
      this.map('inpod_pods').update(codec.encodeNetnsKey(at.inode), codec.encodeInpodPod({ ethIfindex: at.eth.ifindex, hostIfindex: at.hostIfindex, flags }));
    save();

    // Routing before programs: the first frame inpod_out loops is delivered. The local
    // route's rules come last, once inpod_lo_in is there to take what they send to lo.
    const srcs = withNetns(at.nsPath, () => localRouteSources(pod, at.eth.ifindex));
    withNetns(at.nsPath, () => {
      setAcceptLocal(at.eth.name, '1');
      for (const f of FAMILIES) {
        if (!hasRule(f)) addFwmarkRule(f, LOOP_RULE);
        replaceLocalDefault(f, LOOP_RULE.table, LO_IFINDEX, srcs.get(f));
      }
    });

    // The pod's annotations before its programs: its first frames already obey them.
    this.writeOverrides(pod);

    // The socket lookup before inpod_in: a SYN inpod_in hands over on the TIME_WAIT path
    // must find inpod_lookup there, or the kernel's own lookup would pick the listener of
    // its destination port.
    ensureNetnsLink(lookupLinkPin(this.dir, at.inode), pod.fd, Number(at.inode), BPF_SK_LOOKUP, this.program(INPOD_PROGRAMS.lookup));

    // inpod_in before inpod_out: a looped frame always finds its deliverer. Attached in
    // place (replace), so a re-install never leaves a hook empty.
    const podIn = this.program(INPOD_PROGRAMS.in);
    const podOut = this.program(INPOD_PROGRAMS.out);
    const created = withNetns(at.nsPath, () => {
      const a = attachTc(at.eth.ifindex, 'ingress', podIn.fd);
      const b = attachTc(at.eth.ifindex, 'egress', podOut.fd);
      return a.createdQdisc || b.createdQdisc;
    });
    if (created) flags |= codec.InpodPodFlags.QDISC_POD;
    if (this.syncVmInterfaces(at, pod, flags)) flags |= codec.InpodPodFlags.QDISC_VM;
    const hostIn = this.program(INPOD_PROGRAMS.hostIn);
    const hostOut = this.program(INPOD_PROGRAMS.hostOut);
    const hostCreated = this.hostDo(() => {
      const a = attachTc(at.hostIfindex, 'egress', hostIn.fd);
      const b = attachTc(at.hostIfindex, 'ingress', hostOut.fd);
      return a.createdQdisc || b.createdQdisc;
    });
    if (hostCreated) flags |= codec.InpodPodFlags.QDISC_HOST;
    const lo = this.program(INPOD_PROGRAMS.lo);
    if (withNetns(at.nsPath, () => attachTc(LO_IFINDEX, 'ingress', lo.fd).createdQdisc)) flags |= codec.InpodPodFlags.QDISC_LO;
    // The IPv4 reverse-path filter loose before the local route, whose rule the filter's
    // reverse lookup of every inbound TCP frame also meets (it is `iif lo` too): under a
    // strict filter that lookup's answer, lo, is not the frame's interface, and it is dropped.
    flags = withNetns(at.nsPath, () => {
      if (srcs.has(AF_INET) && rpFilterOf(at.eth.name) === 1) {
        if (!(flags & codec.InpodPodFlags.RP_FILTER_SET)) {
          flags |= codec.InpodPodFlags.RP_FILTER_SET | (readRpFilter(at.eth.name) === 1 ? codec.InpodPodFlags.RP_FILTER_WAS_1 : 0);
          save();
        }
        writeFileSync(rpFilterPath(at.eth.name), '2');
      }
      return flags;
    });
    save();
    // The local route last: its first SYN meets inpod_lo_in (and, on a TIME_WAIT, inpod_lookup).
    withNetns(at.nsPath, () => {
      const routed = new Set<number>();
      for (const f of FAMILIES) {
        for (const r of [probeRule(f), LOCAL_RULE]) {
          if (srcs.has(f)) {
            if (ruleCount(f, r) !== 1) {
              while (delRule(f, r));
              addRule(f, r);
              if (r === LOCAL_RULE) routed.add(f);
            }
          } else while (delRule(f, r));
        }
      }
      // The connections the route just cut off, ended now rather than left to time out.
      if (routed.size) this.endStranded(pod, routed);
      // The first install: in a family that keeps the loop, a connection older than the
      // capture would go on around ztunnel (PO9); ended now too.
      const loop = new Set(FAMILIES.filter((f) => !srcs.has(f)).map((f) => (f === AF_INET ? 4 : 6) as 4 | 6));
      if (!had && loop.size) {
        const local = new Set(dumpAddrs().map((a) => wireAddr(a.address)));
        const bypassInbound = pod.overrides?.bypassInbound === true;
        endConnections(this.opts.log, { pod: pod.name, namespace: pod.namespace, uid: pod.uid }, (s, all) =>
          bypassesRules(s, { families: loop, local, probe: PROBE_SNAT, ...(bypassInbound && { keepInbound: listeningPorts(all) }) }),
        );
      }
      // No IPv4 local route (any more): the filter as it was.
      if (!srcs.has(AF_INET) && flags & codec.InpodPodFlags.RP_FILTER_SET) {
        writeFileSync(rpFilterPath(at.eth.name), flags & codec.InpodPodFlags.RP_FILTER_WAS_1 ? '1' : '0');
        flags &= ~(codec.InpodPodFlags.RP_FILTER_SET | codec.InpodPodFlags.RP_FILTER_WAS_1);
        save();
      }
    });
    this.opts.log.info('in-pod capture installed', {
      pod: pod.name,
      namespace: pod.namespace,
      uid: pod.uid,
      interface: at.eth.name,
      hostIfindex: at.hostIfindex,
    });
  }

  /**
   * In the pod's netns, right after the local route came for `families`: ends the pod's
   * connections it strands (stranded.ts), as `ss -K` would. Best effort: the capture holds
   * without it (nothing of those connections leaves the pod), so a failure is a warning.
   */
  private endStranded(pod: PodNetns, families: ReadonlySet<number>): void {
    endConnections(this.opts.log, { pod: pod.name, namespace: pod.namespace, uid: pod.uid }, (s) => {
      const dst = wireAddr(s.dst);
      const family = familyOfIp(dst);
      if (!families.has(family)) return false;
      try {
        const r = routeGet(family, { dst, src: wireAddr(s.src), mark: s.mark, ipProto: IPPROTO_TCP });
        return r.type === RTN_LOCAL && r.table === LOCAL_RULE.table;
      } catch {
        return false; // no route for it at all: not the local route's
      }
    });
  }

  /**
   * inpod_vm_in on the ingress of each interface the annotation lists that is in the pod's
   * netns now, and off every other (an annotation changed). A listed interface made later
   * (a VM started after the pod) gets it on the next pass: check() sees it missing, and
   * until then inpod_out drops the VM's TCP (docs/operations.md, "Per-pod annotations").
   * True when a clsact qdisc was created for it.
   */
  private syncVmInterfaces(at: PodPlace, pod: PodNetns, flags: number): boolean {
    const want = new Set(pod.overrides?.rerouteInterfaces ?? []);
    const vm = this.program(INPOD_PROGRAMS.vm);
    return withNetns(at.nsPath, () => {
      let created = false;
      for (const l of dumpLinks()) {
        if (l.ifindex === at.eth.ifindex || l.ifindex === LO_IFINDEX) continue;
        if (want.has(l.name)) created = attachTc(l.ifindex, 'ingress', vm.fd).createdQdisc || created;
        else detachVm(l.ifindex, flags);
      }
      return created;
    });
  }

  /** In the pod's netns: inpod_vm_in runs on exactly the listed interfaces that exist. */
  private vmInterfacesMatch(at: PodPlace, pod: PodNetns): boolean {
    const want = new Set(pod.overrides?.rerouteInterfaces ?? []);
    const id = this.program(INPOD_PROGRAMS.vm).id;
    return withNetns(at.nsPath, () =>
      dumpLinks().every(
        (l) => l.ifindex === at.eth.ifindex || l.ifindex === LO_IFINDEX || (want.has(l.name) ? queryTc(l.ifindex, 'ingress') === id : !runsVm(l.ifindex)),
      ),
    );
  }

  // --- check --------------------------------------------------------------------------

  async check(pod: PodNetns): Promise<boolean> {
    let at: PodPlace;
    try {
      at = this.locate(pod);
    } catch (err) {
      // No interface or route for the pod: nothing of ours can be in place.
      if (err instanceof LocateError) return false;
      throw err;
    }
    const rec = this.record(at.inode);
    if (!rec || rec.ethIfindex !== at.eth.ifindex || rec.hostIfindex !== at.hostIfindex) return false;
    const want: Record<Direction, number> = { ingress: this.program(INPOD_PROGRAMS.in).id, egress: this.program(INPOD_PROGRAMS.out).id };
    const podOk = withNetns(at.nsPath, () => queryTc(at.eth.ifindex, 'ingress') === want.ingress && queryTc(at.eth.ifindex, 'egress') === want.egress);
    if (!podOk) return false;
    if (!this.overridesMatch(pod)) return false;
    if (!this.vmInterfacesMatch(at, pod)) return false;
    if (withNetns(at.nsPath, () => queryTc(LO_IFINDEX, 'ingress')) !== this.program(INPOD_PROGRAMS.lo).id) return false;
    const link = netnsLinkState(lookupLinkPin(this.dir, at.inode));
    if (!link || link.progId !== this.program(INPOD_PROGRAMS.lookup).id || BigInt(link.netnsIno) !== at.inode) return false;
    const hostWant: Record<Direction, number> = { egress: this.program(INPOD_PROGRAMS.hostIn).id, ingress: this.program(INPOD_PROGRAMS.hostOut).id };
    const hostOk = this.hostDo(() => queryTc(at.hostIfindex, 'egress') === hostWant.egress && queryTc(at.hostIfindex, 'ingress') === hostWant.ingress);
    if (!hostOk) return false;
    return withNetns(at.nsPath, () => {
      const srcs = localRouteSources(pod, at.eth.ifindex);
      return (
        FAMILIES.every((f) => hasRule(f) && hasRoute(f, srcs.get(f))) &&
        localRouteMatches(srcs) &&
        (!srcs.has(AF_INET) || rpFilterOf(at.eth.name) !== 1) &&
        acceptLocal(at.eth.name) === '1'
      );
    });
  }

  // --- remove -------------------------------------------------------------------------

  async remove(pod: PodNetns): Promise<void> {
    let inode: bigint;
    try {
      inode = BigInt(fstatSync(pod.fd).ino);
    } catch (err) {
      if (isGone(err)) return this.forgetFlows(pod);
      throw err;
    }
    const rec = this.record(inode);
    const nsPath = `/proc/${process.pid}/fd/${pod.fd}`;
    let eth: { ifindex: number; name: string } | null = null;
    try {
      eth = this.locate(pod).eth;
    } catch (err) {
      // The pod's interface (or the node's route) is gone: what was on them went with them.
      if (!(err instanceof LocateError) && !(err instanceof NetlinkError)) throw err;
    }
    undoPod({ hostNetns: this.opts.hostNetns }, this.dir, inode, nsPath, rec, eth);
    this.forgetFlows(pod);
    this.map('inpod_pods').delete(codec.encodeNetnsKey(inode));
    this.opts.log.info('in-pod capture removed', { pod: pod.name, namespace: pod.namespace, uid: pod.uid });
  }

  /** inpod_overrides for each of the pod's addresses: its annotations' flags, or no entry. */
  private writeOverrides(pod: PodNetns): void {
    const flags = codec.overrideFlags(pod.overrides ?? NO_OVERRIDES);
    const m = this.map('inpod_overrides');
    for (const ip of pod.ips) {
      if (flags) m.update(encodeAddrKey(ip), codec.encodeInpodOverride(flags));
      else m.delete(encodeAddrKey(ip));
    }
  }

  private overridesMatch(pod: PodNetns): boolean {
    const flags = codec.overrideFlags(pod.overrides ?? NO_OVERRIDES);
    const m = this.map('inpod_overrides');
    return pod.ips.every((ip) => {
      const v = m.lookup(encodeAddrKey(ip));
      return v ? codec.decodeInpodOverride(v) === flags : flags === 0;
    });
  }

  /** The pod's probe flows and overrides go with it (a new pod may get its address). */
  private forgetFlows(pod: PodNetns): void {
    for (const ip of pod.ips) this.map('inpod_overrides').delete(encodeAddrKey(ip));
    const ips = new Set(pod.ips.map((ip) => decodeAddrKey(encodeAddrKey(ip))));
    const flows = this.map('probe_flows');
    for (const k of flows.keys()) if (ips.has(codec.decodeProbeFlowKey(k).pod)) flows.delete(k);
  }

  /**
   * Deletes the handoffs two generations old (src/capture/inpod/handoffs.ts): SYNs whose
   * socket lookup never came. Runs every SWEEP_EVERY_MS from init; `nowNs` for tests.
   */
  sweepHandoffs(nowNs?: bigint): SweepResult {
    return sweepHandoffs(this.map('inpod_handoff'), nowNs);
  }

  private sweepTick(): void {
    if (!this.installed) return;
    try {
      const r = this.sweepHandoffs();
      this.sweptTotal += r.deleted;
    } catch (err) {
      this.opts.log.warn('in-pod ebpf: sweeping inpod_handoff failed; tried again next time', { error: (err as Error).message });
    }
  }

  /** SYNs handed over to ztunnel's listeners and not yet taken by the socket lookup, nor swept (for tests and status). */
  handoffs(): codec.Handoff[] {
    return this.map('inpod_handoff')
      .keys()
      .map((k) => codec.decodeHandoffKey(k));
  }

  /** ztunnel's listeners inpod_in keeps while they live (for tests and status). */
  keptListeners(): codec.KeptListener[] {
    return this.map('inpod_listeners')
      .keys()
      .map((k) => codec.decodeListenerKey(k));
  }

  /** The probe flows the host veths' programs recorded (for tests and status). */
  probeFlows(): { flow: codec.ProbeFlow; node: string }[] {
    return this.map('probe_flows')
      .entries()
      .map(([k, v]) => ({ flow: codec.decodeProbeFlowKey(k), node: codec.decodeProbeFlowInfo(v).node }));
  }

  close(): void {
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    if (this.installed) closeInstalled(this.installed);
    this.installed = null;
  }
}

/** Our filter on the hook runs one of `names` (by name: any build's). */
function runsOurs(ifindex: number, direction: Direction, names: readonly string[]): boolean {
  const ours = listTcFilters(ifindex, direction).find((f) => f.handle === `0x${OUR_FILTER.handle.toString(16)}` && f.pref === OUR_FILTER.priority);
  return ours?.progName !== null && ours?.progName !== undefined && names.includes(ours.progName);
}

/**
 * Undoes what install did in a pod's netns (at `nsPath`) and on its host veth, as the
 * record says; returns what it removed. Filters are detached only where they run our
 * programs (an interface or veth may be gone, its ifindex another device's), qdiscs
 * destroyed only if we created them and they are empty, accept_local put back to 0 only if
 * it was 0. A part already gone is no error.
 */
function undoPod(
  u: { hostNetns?: string },
  dir: string,
  inode: bigint,
  nsPath: string,
  rec: codec.InpodPod | null,
  eth: { ifindex: number; name: string } | null,
): string[] {
  const removed: string[] = [];
  const ethIfindex = eth?.ifindex ?? rec?.ethIfindex;
  const podPrograms = [INPOD_PROGRAMS.in, INPOD_PROGRAMS.out];
  // The local route first: nothing is sent to lo for inpod_lo_in any more.
  withNetns(nsPath, () => {
    for (const f of FAMILIES) {
      for (const r of [LOCAL_RULE, probeRule(f)]) {
        while (delRule(f, r)) removed.push(`${familyFlag(f)} rule pref ${r.priority}`);
      }
    }
    if (runsOurs(LO_IFINDEX, 'ingress', [INPOD_PROGRAMS.lo]) && detachTc(LO_IFINDEX, 'ingress')) removed.push('ingress filter of lo');
    if (rec && rec.flags & codec.InpodPodFlags.QDISC_LO && hooksEmpty(LO_IFINDEX)) {
      destroyClsact(LO_IFINDEX);
      removed.push('clsact qdisc of lo');
    }
  });
  if (ethIfindex !== undefined) {
    withNetns(nsPath, () => {
      for (const d of ['ingress', 'egress'] as const) {
        if (runsOurs(ethIfindex, d, podPrograms) && detachTc(ethIfindex, d)) removed.push(`${d} filter of interface ${ethIfindex}`);
      }
      if (rec && rec.flags & codec.InpodPodFlags.QDISC_POD && hooksEmpty(ethIfindex)) {
        destroyClsact(ethIfindex);
        removed.push(`clsact qdisc of interface ${ethIfindex}`);
      }
    });
  }
  withNetns(nsPath, () => {
    for (const l of dumpLinks()) {
      if (l.ifindex === ethIfindex || l.ifindex === LO_IFINDEX) continue;
      removed.push(...detachVm(l.ifindex, rec?.flags ?? 0).map((r) => `${r} of VM interface ${l.name}`));
    }
  });
  // After inpod_in: nothing hands a SYN over any more.
  if (removeNetnsLink(lookupLinkPin(dir, inode))) removed.push('socket lookup link');
  withNetns(nsPath, () => {
    for (const f of FAMILIES) {
      while (delFwmarkRule(f, LOOP_RULE)) removed.push(`${familyFlag(f)} rule pref ${RULE_PREF}`);
      if (delLocalDefault(f, LOOP_RULE.table, LO_IFINDEX)) removed.push(`${familyFlag(f)} route table ${ROUTE_TABLE}`);
    }
    if (eth && rec && rec.flags & codec.InpodPodFlags.RP_FILTER_SET) {
      try {
        writeFileSync(rpFilterPath(eth.name), rec.flags & codec.InpodPodFlags.RP_FILTER_WAS_1 ? '1' : '0');
        removed.push(`rp_filter on ${eth.name}`);
      } catch {
        // The interface went meanwhile.
      }
    }
    if (eth && rec && !(rec.flags & codec.InpodPodFlags.ACCEPT_LOCAL)) {
      try {
        setAcceptLocal(eth.name, '0');
        removed.push(`accept_local on ${eth.name}`);
      } catch {
        // The interface went meanwhile: nothing of it to put back.
      }
    }
  });
  if (rec) {
    const host = () => {
      const hostPrograms = [INPOD_PROGRAMS.hostIn, INPOD_PROGRAMS.hostOut];
      for (const d of ['ingress', 'egress'] as const) {
        if (runsOurs(rec.hostIfindex, d, hostPrograms) && detachTc(rec.hostIfindex, d)) removed.push(`${d} filter of host veth ${rec.hostIfindex}`);
      }
      if (rec.flags & codec.InpodPodFlags.QDISC_HOST && hooksEmpty(rec.hostIfindex)) {
        destroyClsact(rec.hostIfindex);
        removed.push(`clsact qdisc of host veth ${rec.hostIfindex}`);
      }
    };
    if (u.hostNetns) withNetns(u.hostNetns, host);
    else host();
  }
  return removed;
}

/** Paths that hold each of `inodes`' network namespaces: named ones, then processes' under `proc`. */
function findNetns(inodes: ReadonlySet<bigint>, proc: string): Map<bigint, string> {
  const found = new Map<bigint, string>();
  const look = (path: string) => {
    try {
      const ino = BigInt(statSync(path).ino);
      if (inodes.has(ino) && !found.has(ino)) found.set(ino, path);
    } catch {
      // Gone meanwhile, or not ours to read.
    }
  };
  for (const dir of ['/var/run/netns', '/run/netns']) {
    let names: string[] = [];
    try {
      names = readdirSync(dir);
    } catch {
      continue;
    }
    for (const n of names) look(join(dir, n));
  }
  if (found.size < inodes.size) for (const pid of readdirSync(proc).filter((d) => /^\d+$/.test(d))) look(join(proc, pid, 'ns', 'net'));
  return found;
}

/**
 * `uninstall` for the in-pod capture: every pod the pinned record names is found by its
 * netns inode (a named netns or a process's) and put back as it was (undoPod), then the
 * `inpod/` pins go. A pod whose netns is gone had nothing left to undo but its host veth,
 * which is undone too. Every step runs even when another failed; the report says what each did.
 */
export async function uninstallInpod(opts: {
  pinRoot: string;
  /** The host's /proc (the agent's `--host-proc`), where pods' processes show their netns; default /proc. */
  hostProc?: string;
  hostNetns?: string;
}): Promise<CleanupReport> {
  const c = new Cleanup();
  const dir = join(pinDir(opts.pinRoot), INPOD_PIN_SUBDIR);
  if (!existsSync(join(dir, 'inpod_pods'))) {
    await c.step(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    return c;
  }
  const records =
    (await c.step('read the in-pod records', () => {
      const map = openPinnedMap(dir, 'inpod_pods');
      try {
        return map.entries().map(([k, v]) => ({ inode: k.readBigUInt64LE(0), rec: codec.decodeInpodPod(v) }));
      } finally {
        map.close();
      }
    })) ?? [];
  const paths = findNetns(new Set(records.map((r) => r.inode)), opts.hostProc ?? '/proc');
  for (const { inode, rec } of records) {
    await c.step(`undo the capture in netns ${inode}`, async () => {
      const nsPath = paths.get(inode);
      let eth: { ifindex: number; name: string } | null = null;
      if (nsPath) {
        const l = withNetns(nsPath, () => dumpLinks()).find((x) => x.ifindex === rec.ethIfindex);
        if (l) eth = { ifindex: l.ifindex, name: l.name };
        c.removed.push(...undoPod(opts, dir, inode, nsPath, rec, eth).map((r) => `${r} (netns ${inode})`));
      } else {
        c.skip(`the pod side of netns ${inode}`, 'the netns is gone, and with it what was in it');
        removeNetnsLink(lookupLinkPin(dir, inode));
        const host = () => {
          for (const d of ['ingress', 'egress'] as const) {
            if (runsOurs(rec.hostIfindex, d, [INPOD_PROGRAMS.hostIn, INPOD_PROGRAMS.hostOut])) detachTc(rec.hostIfindex, d);
          }
        };
        if (opts.hostNetns) withNetns(opts.hostNetns, host);
        else host();
      }
    });
  }
  await c.step(`remove ${dir}`, () => {
    rmSync(dir, { recursive: true, force: true });
    c.removed.push(`unpinned ${dir}`);
  });
  return c;
}

/** In the calling thread's netns: our ingress filter on the device runs inpod_vm_in (any build's). */
function runsVm(ifindex: number): boolean {
  return queryTc(ifindex, 'ingress') !== null && runsOurs(ifindex, 'ingress', [INPOD_PROGRAMS.vm]);
}

/**
 * In the calling thread's netns: inpod_vm_in off the device's ingress where it runs, and the
 * clsact qdisc with it when we created one on a VM interface (`flags`, the pod's record)
 * and nothing else is left on it. What it removed.
 */
function detachVm(ifindex: number, flags: number): string[] {
  if (!runsVm(ifindex) || !detachTc(ifindex, 'ingress')) return [];
  if (!(flags & codec.InpodPodFlags.QDISC_VM) || !hooksEmpty(ifindex)) return ['ingress filter'];
  destroyClsact(ifindex);
  return ['ingress filter', 'clsact qdisc'];
}

/** No clsact filter left on either hook of the device (of the calling thread's netns). */
function hooksEmpty(ifindex: number): boolean {
  return listTcFilters(ifindex, 'ingress').length === 0 && listTcFilters(ifindex, 'egress').length === 0;
}
