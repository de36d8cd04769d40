/**
 * The ebpf capture mode (docs/datapath.md): on each enrolled pod's host veth the outbound
 * program (TC ingress, or with the xdp hook that veth's XDP hook) and the inbound one (TC
 * egress); on ztunnel's eth0, inside its netns, the delivery program plus the policy
 * routing (and TPROXY rules) it relies on, and with the xdp hook an XDP_PASS program that
 * puts that eth0 in NAPI mode (an XDP redirect into a veth delivers only then).
 * Maps are pinned under the pin folder and adopted when already there; the XDP object's
 * programs share them (one build, two objects: src/bpf/install.ts).
 */
import { PinnedMapMismatchError, type BpfMap } from '../../bpf/object.js';
import { openPinnedMap, type PinnedMapName } from '../../bpf/maps.js';
import { carryHashCounters, closeInstalled, commitInstall, loadOrAdopt, type Installed } from '../../bpf/install.js';
import * as codec from '../../bpf/codec.js';
import { BPF_PROG_TYPE_SCHED_CLS, probeHelper } from '../../bpf/ffi.js';
import { netnsPath, withNetns } from '../../bpf/netns.js';
import { ensurePinDir, pinDir, removePins } from '../../bpf/pins.js';
import { attachTc, destroyClsact, detachTc, LEGACY_FILTER, OUR_FILTER, queryTc, type Direction } from '../../bpf/tc.js';
import { listTcFilters, listTcx, programName } from '../../bpf/hooks.js';
import { attachXdp, detachXdp, queryXdp, type XdpProgram } from '../../bpf/xdp.js';
import { pinnedProgramIds } from '../../bpf/install.js';
import { linkKinds, parseLinks, readHostNet, type Link } from '../../host/netinfo.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Desired, ZtunnelPlacement } from '../../core/desired.js';
import { diffHooks, diffPods } from '../../core/desired.js';
import { SlotAllocator, type SlotRecord } from '../../core/slots.js';
import type { PodInfo } from '../../core/values.js';
import { deviceBypass, programsAhead, type Finding } from '../../core/ordering.js';
import type { Logger } from '../../log.js';
import { Cleanup, type CleanupReport } from '../cleanup.js';
import type { ActualState, ApplyResult, RedirectMode } from '../mode.js';
import { configureZtunnelNetns, unconfigureZtunnelNetns, type Delivery } from './ztunnel-netns.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { openRpFilter, restoreRpFilter } from '../../host/rpfilter.js';

const BPF_FUNC_sk_assign = 124;
const BPF_FUNC_redirect_peer = 155;

export type { Variant } from '../../core/modes.js';
import type { Hook, NonTcpPolicy, Variant } from '../../core/modes.js';
export type { Delivery };

export const PROGRAMS = {
  outbound: { redirect_peer: 'out_redir_peer', redirect: 'out_redirect' },
  inbound: 'in_redirect',
  ztunnel: { sk_assign: 'zt_assign', tproxy: 'zt_mark' },
  /** build/xdp.bpf.o: the outbound program at the veth's XDP hook, and ztunnel's eth0's NAPI switch. */
  xdp: { outbound: 'xdp_out', napi: 'xdp_pass' },
} as const;

/** bpf_redirect_peer (5.10) where the kernel offers it, plain bpf_redirect otherwise. */
export function probeVariant(): Variant {
  return probeHelper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_redirect_peer) ? 'redirect_peer' : 'redirect';
}

/** bpf_sk_assign (5.7) where the kernel offers it, mark + TPROXY otherwise. */
export function probeDelivery(): Delivery {
  return probeHelper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_sk_assign) ? 'sk_assign' : 'tproxy';
}

export interface EbpfOptions {
  objectPath: string;
  pinRoot: string;
  /** Forces a redirect variant; probed when absent. */
  variant?: Variant;
  /** Forces the ztunnel-side delivery; probed when absent. */
  delivery?: Delivery;
  /** The outbound program's hook on each enrolled veth (default tc). */
  hook?: Hook;
  /** The XDP hook's object (hook xdp). */
  xdpObjectPath?: string;
  /** Capture the pods' DNS (UDP 53) to ztunnel's 15053 (default off). */
  dnsCapture?: boolean;
  /** UDP (but captured DNS) and ICMP (but errors): pass uncaptured (default) or drop (ZT_F_NON_TCP_DROP). */
  nonTcp?: NonTcpPolicy;
  /**
   * The cluster's DNS servers, read on every pass: with DNS capture off, UDP to port 53
   * of these (and answers from them) is all of port 53 that passes (docs/datapath.md O15).
   */
  dnsServers?: () => readonly string[];
  runner: CommandRunner;
  log: Logger;
}

const POD_HOOKS: Direction[] = ['ingress', 'egress'];

export class EbpfRedirect implements RedirectMode {
  readonly name = 'ebpf' as const;
  private installed: Installed | null = null;
  private dir = '';
  private chosen: { variant: Variant; delivery: Delivery } | null = null;
  /** The ztunnel netns whose routing we configured last, so an unchanged one is not redone. */
  private ztunnelDone: string | null = null;
  /** Hooked veths whose programs are not (all) this build's, from the last actual(). */
  private readonly outdated = new Set<number>();
  /** Program ids pinned in our folders (any build's): the XDP programs we may replace or remove. */
  private ours = new Map<number, string>();
  /**
   * Why the XDP hook of a veth (or of ztunnel's eth0, key -1) does not hold ours (a foreign
   * program left in place, an attach the kernel refused), from the last pass: a finding.
   */
  private readonly xdpProblems = new Map<number, string>();
  /** Enrolled veths' device kinds by ifindex (with the name they had, to notice a new device). */
  private readonly kinds = new Map<number, { name: string; kind: string | null }>();
  /** Each pod veth's slot in the counters array, rebuilt from the pinned pods map by init(). */
  private slots: SlotAllocator | null = null;

  constructor(private readonly opts: EbpfOptions) {}

  get variant(): Variant {
    return this.choice().variant;
  }

  get delivery(): Delivery {
    return this.choice().delivery;
  }

  get hook(): Hook {
    return this.opts.hook ?? 'tc';
  }

  private choice() {
    if (!this.chosen) throw new Error('ebpf mode not initialised');
    return this.chosen;
  }

  async init(): Promise<void> {
    this.dir = ensurePinDir(this.opts.pinRoot);
    const variant = this.opts.variant ?? probeVariant();
    const delivery = this.opts.delivery ?? probeDelivery();
    // With the xdp hook the TC outbound program is loaded too: a veth whose XDP hook holds
    // someone else's program keeps it, and a switch back to tc has it ready.
    const programs = [PROGRAMS.outbound[variant], PROGRAMS.inbound, PROGRAMS.ztunnel[delivery]];
    const companions = this.hook === 'xdp' ? [{ objectPath: this.xdpObjectPath(), programs: [PROGRAMS.xdp.outbound, PROGRAMS.xdp.napi] }] : [];
    this.installed = loadOrAdopt(this.opts.objectPath, this.dir, programs, companions);
    this.ours = pinnedProgramIds(this.dir);
    this.chosen = { variant, delivery };
    this.slots = this.adoptSlots();
    const { adopted, migrating, progDir } = this.installed;
    const ids = Object.fromEntries([...this.installed.programs].map(([n, p]) => [n, p.id]));
    this.opts.log.info(adopted ? 'ebpf data path adopted' : 'ebpf data path loaded', {
      pinDir: this.dir,
      progDir,
      variant,
      delivery,
      hook: this.hook,
      programs: ids,
      migrating,
    });
  }

  /**
   * The counters slots the pinned pods map holds (a restarted agent keeps its pods' counts),
   * and veth_slots made to say the same. A migrating pods map starts empty: the slots are
   * the old map's where its layout has them (a change of size), else every veth gets a
   * fresh, zeroed one.
   */
  private adoptSlots(): SlotAllocator {
    const records: SlotRecord[] = [];
    for (const [, v] of this.slotSource()) records.push(codec.decodePodSlot(v));
    const slots = new SlotAllocator(this.map('counters').maxEntries - 1, records);
    const vethSlots = this.map('veth_slots');
    for (const [k, v] of vethSlots.entries()) {
      const ifindex = codec.decodeU32Key(k);
      if (slots.slotOf(ifindex) !== codec.decodeVethSlot(v)) vethSlots.delete(k);
    }
    for (const { ifindex } of records) {
      const slot = slots.slotOf(ifindex);
      if (slot !== undefined) vethSlots.update(codec.encodeU32Key(ifindex), codec.encodeVethSlot(slot));
    }
    return slots;
  }

  /** The pods entries that record the slots in use: the old pin's while pods migrates, if it has slots. */
  private slotSource(): [Buffer, Buffer][] {
    if (!this.installed!.migrating.includes('pods')) return this.map('pods').entries();
    let old: BpfMap;
    try {
      old = openPinnedMap(this.dir, 'pods');
    } catch (err) {
      if (err instanceof PinnedMapMismatchError) return [];
      throw err;
    }
    try {
      return old.entries();
    } finally {
      old.close();
    }
  }

  /**
   * Slots for the desired pods' veths: the fresh ones zeroed and recorded in veth_slots
   * before any pods entry names them. Returns every veth's slot, and the veths whose slots
   * were given back (their veth_slots entries go once their pods entries have). `add` (the
   * fast path: one pod's desired state) gives slots and takes none back.
   */
  private assignSlots(desired: ReadonlyMap<string, PodInfo>, how: 'assign' | 'add' = 'assign'): { slots: ReadonlyMap<number, number>; freed: SlotRecord[] } {
    const ifindexes = [...desired.values()].map((p) => p.ifindex);
    const { slots, fresh, freed } = how === 'assign' ? this.slots!.assign(ifindexes) : this.slots!.add(ifindexes);
    if (fresh.length > 0) {
      const counters = this.map('counters');
      const keys = Buffer.alloc(4 * fresh.length);
      const vals = Buffer.alloc(counters.bufferSize * fresh.length);
      fresh.forEach((f, i) => keys.writeUInt32LE(f.slot, 4 * i));
      counters.updateBatch(keys, vals, fresh.length);
      const vethKeys = Buffer.alloc(4 * fresh.length);
      const vethVals = Buffer.alloc(codec.VETH_SLOT_SIZE * fresh.length);
      fresh.forEach((f, i) => {
        vethKeys.writeUInt32LE(f.ifindex, 4 * i);
        vethVals.set(codec.encodeVethSlot(f.slot), codec.VETH_SLOT_SIZE * i);
      });
      this.map('veth_slots').updateBatch(vethKeys, vethVals, fresh.length);
    }
    return { slots, freed };
  }

  private xdpObjectPath(): string {
    if (!this.opts.xdpObjectPath) throw new Error('the xdp hook needs the XDP object (--xdp-object)');
    return this.opts.xdpObjectPath;
  }

  private map(name: PinnedMapName): BpfMap {
    const m = this.installed?.maps.get(name);
    if (!m) throw new Error(`ebpf mode not initialised (map ${name})`);
    return m;
  }

  private program(name: string): { fd: number; id: number } {
    const p = this.installed?.programs.get(name);
    if (!p) throw new Error(`ebpf mode not initialised (program ${name})`);
    return p;
  }

  async actual(links: Iterable<number>): Promise<ActualState> {
    const candidateLinks = [...links];
    const pods = new Map<string, codec.PodInfo>();
    for (const [k, v] of this.map('pods').entries()) pods.set(codec.decodeAddrKey(k), codec.decodePodInfo(v));
    const slot = this.map('ztunnel').lookup(codec.encodeSlot(codec.ZTUNNEL_SLOT));
    const zt = slot ? codec.decodeZtunnelInfo(slot) : null;
    // Hooked: a veth with our filter in either direction. Outdated: one that lacks this
    // build's program in a direction (removed by someone, or an older build's): apply
    // attaches it again, replacing in place.
    this.outdated.clear();
    this.pruneQdiscRecords(new Set(candidateLinks));
    return { pods, ztunnel: zt && zt.flags & codec.ZtunnelFlags.PRESENT ? zt : null, hooks: this.readHooks(candidateLinks) };
  }

  /** The fast path's read: these IPs' entries and these links' hooks; no record pruned. */
  async actualOf(ips: Iterable<string>, links: Iterable<number>): Promise<ActualState> {
    const pods = new Map<string, codec.PodInfo>();
    const map = this.map('pods');
    for (const ip of ips) {
      const v = map.lookup(codec.encodeAddrKey(ip));
      if (v) pods.set(ip, codec.decodePodInfo(v));
    }
    return { pods, ztunnel: null, hooks: this.readHooks([...links]) };
  }

  /**
   * The links that carry a filter of ours in either direction; each one that lacks this
   * build's program in a direction (removed by someone, or an older build's) is marked
   * outdated, the others unmarked: apply attaches it again, replacing in place.
   */
  private readHooks(links: readonly number[]): Set<number> {
    const hooks = new Set<number>();
    const want = this.wanted();
    // A filter at the legacy priority (an older build's) counts as ours and as outdated:
    // apply attaches at our place, then removes it.
    for (const ifindex of links) {
      this.outdated.delete(ifindex);
      const ingress = queryTc(ifindex, 'ingress');
      const egress = queryTc(ifindex, 'egress');
      const legacy = POD_HOOKS.some((d) => queryTc(ifindex, d, LEGACY_FILTER) !== null);
      const xdp = queryXdp(ifindex);
      const xdpOurs = xdp !== null && this.ours.has(xdp.id);
      if (!legacy && ingress === null && egress === null && !xdpOurs) continue;
      hooks.add(ifindex);
      if (legacy || egress !== want.inbound || !outboundInPlace(this.hook, want, ingress, xdp, xdpOurs)) this.outdated.add(ifindex);
    }
    return hooks;
  }

  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const { delivery } = this.choice();
    const pods = this.map('pods');
    const emptySlot: codec.ZtunnelInfo = { ifindex: 0, peerIfindex: 0, mac: '00:00:00:00:00:00', flags: 0, netnsCookie: 0n };

    // ztunnel's side first: its netns must deliver before pods are sent to it.
    if (desired.ztunnelPlacement) await this.ensureZtunnelSide(desired.ztunnelPlacement, delivery);
    // --non-tcp drop holds with or without a ztunnel (what passes while it is away must not
    // depend on it); DNS capture is written only beside a ztunnel, as before: without one a
    // pod's DNS to the cluster's servers passes (O15).
    const nonTcp = this.opts.nonTcp === 'drop' ? codec.ZtunnelFlags.NON_TCP_DROP : 0;
    const slot = desired.ztunnel
      ? { ...desired.ztunnel, flags: desired.ztunnel.flags | nonTcp | (this.opts.dnsCapture ? codec.ZtunnelFlags.DNS_CAPTURE : 0) }
      : { ...emptySlot, flags: nonTcp };
    this.map('ztunnel').update(codec.encodeSlot(codec.ZTUNNEL_SLOT), codec.encodeZtunnelInfo(slot ?? emptySlot));
    this.syncDnsServers();

    const slotted = this.assignSlots(desired.pods);
    const podDiff = diffPods(desired.pods, actual.pods, slotted.slots);
    const hookDiff = diffHooks(desired.hooks, actual.hooks);
    for (const ifindex of [...this.xdpProblems.keys()]) if (ifindex >= 0 && !desired.hooks.has(ifindex)) this.xdpProblems.delete(ifindex);
    const attach = this.place(podDiff.upserts, desired.hooks, actual.hooks);
    for (const ifindex of hookDiff.detach) {
      this.removeOurXdp(ifindex);
      for (const d of POD_HOOKS) for (const f of [OUR_FILTER, LEGACY_FILTER]) detachTc(ifindex, d, f);
    }
    for (const ip of podDiff.deletes) pods.delete(codec.encodeAddrKey(ip));
    // Their slots are handed out again (zeroed) from the next pass on.
    for (const f of slotted.freed) this.map('veth_slots').delete(codec.encodeU32Key(f.ifindex));

    // Every hook runs this build now: its schema change and upgrade are complete.
    if (this.installed!.migrating.length > 0 || !this.installed!.adopted) {
      const carried = carryHashCounters(this.dir, this.installed!, (ifindex) => this.slots!.slotOf(ifindex));
      if (carried) this.opts.log.info('counters carried over', { veths: carried });
      const done = commitInstall(this.dir, this.installed!);
      if (done.length) this.opts.log.info('upgrade complete', { done });
      this.installed!.adopted = true;
      this.ours = pinnedProgramIds(this.dir);
    }
    return { upserted: podDiff.upserts.size, deleted: podDiff.deletes.length, attached: attach.length, detached: hookDiff.detach.length };
  }

  /**
   * The fast path's write (one pod): its veth's slot (taking none back), its entries, then
   * its veths' hooks; nothing removed.
   */
  async programPod(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const slotted = this.assignSlots(desired.pods, 'add');
    const upserts = diffPods(desired.pods, actual.pods, slotted.slots).upserts;
    const attach = this.place(upserts, desired.hooks, actual.hooks);
    return { upserted: upserts.size, deleted: 0, attached: attach.length, detached: 0 };
  }

  /**
   * Writes `upserts`, then attaches our programs to each of `hooks` that lacks them (not in
   * `hooked`, or outdated); returns those attached.
   */
  private place(upserts: ReadonlyMap<string, codec.PodInfo>, hooks: ReadonlySet<number>, hooked: ReadonlySet<number>): number[] {
    const { variant } = this.choice();
    // Entries before hooks: a program attached to a veth finds its pod already there.
    // One batch update (packed with no allocation per entry): 65,536 pods in one syscall.
    const packed = codec.packPods(upserts);
    this.map('pods').updateBatch(packed.keys, packed.values, packed.count);
    const attach = [...hooks].filter((i) => !hooked.has(i) || this.outdated.has(i));
    const out = this.program(PROGRAMS.outbound[variant]).fd;
    const inb = this.program(PROGRAMS.inbound).fd;
    // Replaced in place at our handle and priority: a hook is never empty nor doubled.
    // One outbound hook per veth, and never none: the new hook's program is in place before
    // the other's is removed (tc→xdp: XDP attached, then our TC ingress filter removed).
    for (const ifindex of attach) {
      const b = attachTc(ifindex, 'egress', inb);
      let created = b.createdQdisc;
      if (this.hook === 'xdp' && this.placeXdp(ifindex)) {
        detachTc(ifindex, 'ingress');
      } else {
        created = attachTc(ifindex, 'ingress', out).createdQdisc || created;
        if (this.hook === 'tc') this.removeOurXdp(ifindex);
      }
      if (created) this.recordQdisc(ifindex, codec.QdiscNetns.NODE);
      // Only once ours runs at its place: the hook is never without our program.
      for (const d of POD_HOOKS) detachTc(ifindex, d, LEGACY_FILTER);
    }
    return attach;
  }

  /**
   * Lists every hook we use (each enrolled veth's ingress and egress, ztunnel's eth0
   * ingress) and reports what runs before our program there, or lets traffic skip it.
   */
  async verify(desired: Desired, links: ReadonlyMap<number, Link>): Promise<Finding[]> {
    const { delivery } = this.choice();
    const want = this.wanted();
    const findings: Finding[] = [];
    const veths = [...desired.hooks].map((i) => links.get(i)).filter((l): l is Link => l !== undefined);
    await this.learnKinds(veths);
    for (const l of veths) {
      const bypass = deviceBypass(this.kinds.get(l.ifindex)?.kind ?? null);
      if (bypass) findings.push({ where: 'pod', device: l.name, direction: 'egress', kind: 'bypass', program: bypass });
      const xdp = queryXdp(l.ifindex);
      const xdpHolds = this.hook === 'xdp' && xdp?.id === want.xdpOut;
      const problem = this.xdpProblems.get(l.ifindex);
      // A program on the XDP hook that is not the one we put there runs before every TC program.
      if (xdp && !xdpHolds) findings.push({ where: 'pod', device: l.name, direction: 'ingress', kind: 'xdp', program: xdpText(xdp, this.ours, problem) });
      else if (this.hook === 'xdp' && !xdpHolds && problem)
        findings.push({ where: 'pod', device: l.name, direction: 'ingress', kind: 'xdp', program: problem });
      for (const direction of POD_HOOKS) {
        // With xdp_out in place the outbound runs at XDP: TC ingress is not ours to check.
        if (direction === 'ingress' && xdpHolds) continue;
        const hook = { tcx: listTcx(l.ifindex, direction), tc: listTcFilters(l.ifindex, direction) };
        findings.push(
          ...programsAhead({ where: 'pod', device: l.name, direction }, hook, { ...OUR_FILTER, progId: direction === 'ingress' ? want.tcOut : want.inbound }),
        );
      }
    }
    const z = desired.ztunnelPlacement;
    if (z) {
      const { hook, xdp } = withNetns(netnsPath(z.netns), () => ({
        hook: { tcx: listTcx(z.peer.ifindex, 'ingress'), tc: listTcFilters(z.peer.ifindex, 'ingress') },
        xdp: queryXdp(z.peer.ifindex),
      }));
      const ours = { ...OUR_FILTER, progId: this.program(PROGRAMS.ztunnel[delivery]).id };
      findings.push(...programsAhead({ where: 'ztunnel', device: z.peer.name, direction: 'ingress' }, hook, ours));
      const napi = this.hook === 'xdp' ? want.napi : null;
      const problem = this.xdpProblems.get(ZTUNNEL_KEY);
      if (xdp && xdp.id !== napi)
        findings.push({ where: 'ztunnel', device: z.peer.name, direction: 'ingress', kind: 'xdp', program: xdpText(xdp, this.ours, problem) });
      else if (napi !== null && !xdp)
        findings.push({
          where: 'ztunnel',
          device: z.peer.name,
          direction: 'ingress',
          kind: 'xdp',
          program: problem ?? 'our XDP_PASS program (NAPI mode, which XDP redirects into this veth need) is not there',
        });
    }
    return findings;
  }

  /** The program ids each hook should hold. */
  private wanted(): Wanted {
    const { variant } = this.choice();
    const xdp = (n: string) => this.installed?.programs.get(n)?.id ?? null;
    return {
      tcOut: this.program(PROGRAMS.outbound[variant]).id,
      inbound: this.program(PROGRAMS.inbound).id,
      xdpOut: xdp(PROGRAMS.xdp.outbound),
      napi: xdp(PROGRAMS.xdp.napi),
    };
  }

  /**
   * Puts our XDP program (`name`, xdp_out by default) on a device's XDP hook (of the calling
   * thread's netns): onto an empty hook, or in place of one of ours (an older build's).
   * Someone else's program is left where it is. Returns whether ours is there now; when
   * not, the reason is kept for verify() (a finding) and logged once.
   */
  private placeXdp(ifindex: number, key: number = ifindex, name: string = PROGRAMS.xdp.outbound): boolean {
    const prog = this.program(name);
    const have = queryXdp(ifindex);
    if (have?.id === prog.id) {
      this.xdpProblems.delete(key);
      return true;
    }
    let problem: string;
    if (have && !this.ours.has(have.id)) {
      problem = `${xdpText(have, this.ours)}: left in place, ours (${name}) not attached`;
    } else {
      try {
        attachXdp(ifindex, prog.fd, have?.id ?? null);
        this.xdpProblems.delete(key);
        return true;
      } catch (err) {
        problem = `our ${name} could not be attached: ${(err as Error).message.split('\n')[0]}`;
      }
    }
    if (this.xdpProblems.get(key) !== problem) this.opts.log.warn('XDP hook not ours', { ifindex, ztunnel: key === ZTUNNEL_KEY, problem });
    this.xdpProblems.set(key, problem);
    return false;
  }

  /** Removes our XDP program (any build's) from a device of the calling thread's netns; others' stay. */
  private removeOurXdp(ifindex: number): void {
    const have = queryXdp(ifindex);
    if (have && this.ours.has(have.id)) detachXdp(ifindex, have.id);
  }

  /**
   * Device kinds of the enrolled veths, read (one `ip -d` call) only when one is new: a
   * device's kind is fixed for its life, so steady state spawns nothing.
   */
  private async learnKinds(veths: readonly Link[]): Promise<void> {
    if (veths.every((l) => this.kinds.get(l.ifindex)?.name === l.name)) return;
    const kinds = await linkKinds(this.opts.runner);
    this.kinds.clear();
    for (const l of veths) this.kinds.set(l.ifindex, { name: l.name, kind: kinds.get(l.ifindex) ?? null });
  }

  /** The delivery program on ztunnel's eth0 and the routing it needs; repaired if gone. */
  private async ensureZtunnelSide(z: ZtunnelPlacement, delivery: Delivery): Promise<void> {
    await this.loosenZtunnelLink(z);
    const name = PROGRAMS.ztunnel[delivery];
    const prog = this.program(name);
    const path = netnsPath(z.netns);
    if (this.ztunnelDone !== z.netns) {
      await configureZtunnelNetns(z.netns, delivery, this.opts.runner);
      this.ztunnelDone = z.netns;
    }
    // NAPI mode on ztunnel's eth0 before any pod's frames are redirected at XDP into it.
    withNetns(path, () => {
      if (this.hook === 'xdp') this.placeXdp(z.peer.ifindex, ZTUNNEL_KEY, PROGRAMS.xdp.napi);
      else this.removeOurXdp(z.peer.ifindex);
    });
    const [have, legacy] = withNetns(path, () => [queryTc(z.peer.ifindex, 'ingress'), queryTc(z.peer.ifindex, 'ingress', LEGACY_FILTER)]);
    if (have === prog.id && legacy === null) return;
    const a = withNetns(path, () => attachTc(z.peer.ifindex, 'ingress', prog.fd));
    if (a.createdQdisc) this.recordQdisc(z.peer.ifindex, codec.QdiscNetns.ZTUNNEL);
    if (legacy !== null) withNetns(path, () => detachTc(z.peer.ifindex, 'ingress', LEGACY_FILTER));
    this.opts.log.info('ztunnel side ready', { netns: z.netns, ifindex: z.peer.ifindex, program: name, id: prog.id });
  }

  /**
   * ztunnel's transparent packets (replies with the original destination as source,
   * inbound connections with the original client's) enter the node on ztunnel's host veth:
   * strict rp_filter there would drop them. Loosened on that link alone, recorded in the
   * qdiscs map so that uninstall can put the value back (docs/operations.md "Sysctls").
   */
  private async loosenZtunnelLink(z: ZtunnelPlacement): Promise<void> {
    const writes = openRpFilter(z.hostLink.name);
    if (writes.length === 0) return;
    const byName = new Map([...(await readHostNet(this.opts.runner)).links].map(([i, l]) => [l.name, i]));
    const map = this.map('qdiscs');
    for (const w of writes) {
      const ifindex = w.dev === 'all' ? codec.RP_ALL_IFINDEX : w.dev === 'default' ? codec.RP_DEFAULT_IFINDEX : byName.get(w.dev);
      if (ifindex === undefined) continue;
      const key = codec.encodeQdiscKey(ifindex, codec.QdiscNetns.NODE);
      const have = map.lookup(key);
      // The first change of a device is the one to undo: a later pass never overwrites it.
      const flags = have ? codec.decodeQdiscFlags(have) : 0;
      if (codec.decodeRpFilterFlags(flags)) continue;
      map.update(key, codec.encodeQdiscFlags(flags | codec.rpFilterFlags(w.was, w.wrote)));
    }
    this.opts.log.info('rp_filter opened for ztunnel’s link', { dev: z.hostLink.name, writes });
  }

  /** Uninstall removes a clsact qdisc only if we created it (and it is empty by then). */
  private recordQdisc(ifindex: number, netns: number): void {
    this.addQdiscFlags(ifindex, netns, codec.QdiscFlags.CREATED);
  }

  private addQdiscFlags(ifindex: number, netns: number, flags: number): void {
    const map = this.map('qdiscs');
    const key = codec.encodeQdiscKey(ifindex, netns);
    const have = map.lookup(key);
    map.update(key, codec.encodeQdiscFlags((have ? codec.decodeQdiscFlags(have) : 0) | flags));
  }

  /** Records of node-netns veths that are gone: a new link may get their ifindex. */
  private pruneQdiscRecords(links: ReadonlySet<number>): void {
    const map = this.map('qdiscs');
    for (const k of map.keys()) {
      const { ifindex, netns } = codec.decodeQdiscKey(k);
      if (netns === codec.QdiscNetns.NODE && ifindex !== codec.RP_ALL_IFINDEX && ifindex !== codec.RP_DEFAULT_IFINDEX && !links.has(ifindex)) map.delete(k);
    }
  }

  /** dns_servers := the configured and discovered servers (additions before removals). */
  private syncDnsServers(): void {
    const map = this.map('dns_servers');
    const want = new Set((this.opts.dnsServers?.() ?? []).map((ip) => codec.decodeAddrKey(codec.encodeAddrKey(ip))));
    const have = new Set(map.keys().map(codec.decodeAddrKey));
    for (const ip of want) if (!have.has(ip)) map.update(codec.encodeAddrKey(ip), codec.encodeDnsInfo());
    for (const ip of have) if (!want.has(ip)) map.delete(codec.encodeAddrKey(ip));
  }

  /** Summed per-CPU counters of a veth, or null when it has none. */
  counters(ifindex: number): codec.PodCounters | null {
    const v = this.map('counters').lookup(codec.encodeU32Key(ifindex));
    return v ? codec.decodePodCountersPerCpu(v) : null;
  }

  close(): void {
    if (this.installed) closeInstalled(this.installed);
    this.installed = null;
  }
}

/** The key of ztunnel's eth0 in xdpProblems (veths are keyed by their ifindex, never negative). */
const ZTUNNEL_KEY = -1;

interface Wanted {
  tcOut: number;
  inbound: number;
  /** null: the xdp hook's programs are not loaded (hook tc). */
  xdpOut: number | null;
  napi: number | null;
}

/**
 * Whether a veth's outbound hook is as the chosen hook wants: tc, our TC ingress filter and
 * none of our XDP programs; xdp, our xdp_out and no TC ingress filter of ours, or, while
 * someone else's XDP program holds the hook, our TC ingress filter behind it.
 */
function outboundInPlace(hook: Hook, want: Wanted, ingress: number | null, xdp: XdpProgram | null, xdpOurs: boolean): boolean {
  if (hook === 'tc') return ingress === want.tcOut && !xdpOurs;
  if (xdp?.id === want.xdpOut) return ingress === null;
  return xdp !== null && !xdpOurs && ingress === want.tcOut;
}

/** An XDP program on a hook, in words (whether it is ours and why it is there). */
function xdpText(p: XdpProgram, ours: ReadonlyMap<number, string>, problem?: string): string {
  const mine = ours.get(p.id);
  const name = mine ?? programName(p.id);
  const what = `${p.mode} XDP program ${p.id}${name ? ` ${name}` : ''}`;
  if (mine) return `${what} (ours, not the one this build wants there)`;
  return problem ?? `${what} (not ours) runs before our TC programs`;
}

/** ztunnel's placement from the pinned slot: where uninstall finds its netns. */
async function pinnedZtunnel(pinRoot: string, runner: CommandRunner): Promise<ZtunnelPlacement | null> {
  const path = join(pinDir(pinRoot), 'ztunnel');
  if (!existsSync(path)) return null;
  const map = openPinnedMap(pinDir(pinRoot), 'ztunnel');
  let zt: codec.ZtunnelInfo | null;
  try {
    const v = map.lookup(codec.encodeSlot(codec.ZTUNNEL_SLOT));
    zt = v ? codec.decodeZtunnelInfo(v) : null;
  } finally {
    map.close();
  }
  if (!zt?.ifindex) return null;
  const net = await readHostNet(runner);
  const hostLink = net.links.get(zt.ifindex);
  const netns = hostLink?.peerNetnsId !== undefined ? net.netnsById.get(hostLink.peerNetnsId) : undefined;
  if (!hostLink || !netns) return null;
  return { hostLink, peer: { ifindex: zt.peerIfindex, name: 'eth0', mac: zt.mac }, netns };
}

/** The pinned record of what we did to devices, by `${netns}/${ifindex}` (empty when nothing is pinned). */
function deviceRecords(pinRoot: string): Map<string, number> {
  const path = join(pinDir(pinRoot), 'qdiscs');
  if (!existsSync(path)) return new Map();
  const map = openPinnedMap(pinDir(pinRoot), 'qdiscs');
  try {
    return new Map(
      map.keys().map((k) => {
        const { ifindex, netns } = codec.decodeQdiscKey(k);
        const v = map.lookup(k);
        // A record without flags is an older build's: it recorded only created qdiscs.
        const flags = v ? codec.decodeQdiscFlags(v) : codec.QdiscFlags.CREATED;
        return [`${netns}/${ifindex}`, flags || codec.QdiscFlags.CREATED] as const;
      }),
    );
  } finally {
    map.close();
  }
}

/**
 * Removes our filters and XDP programs from every link of this netns and from ztunnel's eth0, the clsact
 * qdiscs we created (as the pinned qdiscs map records) once they are empty, the rules in
 * ztunnel's netns, and our pins. Other filters, and qdiscs someone else created or that
 * still hold filters, stay. Every step runs even when another failed; the report says
 * what each did.
 */
export async function uninstallEbpf(pinRoot: string, runner: CommandRunner): Promise<CleanupReport> {
  const c = new Cleanup();
  const records = (await c.step('read the pinned qdiscs record', () => deviceRecords(pinRoot))) ?? new Map<string, number>();
  // Our XDP programs are known by id, from our pins (any build's): others' XDP programs stay.
  const ourProgs = (await c.step('read our pinned programs', () => pinnedProgramIds(pinDir(pinRoot)))) ?? new Map<number, string>();
  const removeXdp = (ifindex: number, where: string) => {
    const have = queryXdp(ifindex);
    if (have && ourProgs.has(have.id) && detachXdp(ifindex, have.id)) c.removed.push(`detached XDP program ${ourProgs.get(have.id)} from ${where}`);
  };
  const ours = new Set([...records].filter(([, f]) => f & codec.QdiscFlags.CREATED).map(([k]) => k));
  const zt = await c.step('find ztunnel from the pinned slot', () => pinnedZtunnel(pinRoot, runner));
  if (zt) {
    const path = netnsPath(zt.netns);
    await c.step(`detach our XDP program from eth0 in ${zt.netns}`, () => withNetns(path, () => removeXdp(zt.peer.ifindex, `eth0 in ${zt.netns}`)));
    for (const f of [OUR_FILTER, LEGACY_FILTER]) {
      await c.step(`detach our ingress filter from eth0 in ${zt.netns}`, () => {
        if (withNetns(path, () => detachTc(zt.peer.ifindex, 'ingress', f))) c.removed.push(`detached ingress filter from eth0 in ${zt.netns}`);
      });
    }
    await c.step(`remove the clsact qdisc we created in ${zt.netns}`, async () => {
      const dev = (await runner.run(['ip', '-n', zt.netns, '-j', 'link', 'show'])).trim();
      const name = parseLinks(dev).get(zt.peer.ifindex)?.name;
      if (name && ours.has(`${codec.QdiscNetns.ZTUNNEL}/${zt.peer.ifindex}`) && (await clsactIsEmpty(runner, name, zt.netns))) {
        withNetns(path, () => destroyClsact(zt.peer.ifindex));
        c.removed.push(`removed clsact qdisc from ${name} in ${zt.netns}`);
      }
    });
    await c.step(`remove our rules in ${zt.netns}`, async () => c.removed.push(...(await unconfigureZtunnelNetns(zt.netns, runner))));
  }
  const links = (await c.step("read the node's links", async () => parseLinks(await runner.run(['ip', '-j', 'link', 'show'])))) ?? new Map();
  for (const link of links.values()) {
    await c.step(`detach our filters from ${link.name}`, async () => {
      removeXdp(link.ifindex, link.name);
      for (const direction of POD_HOOKS) {
        for (const f of [OUR_FILTER, LEGACY_FILTER]) {
          if (detachTc(link.ifindex, direction, f)) c.removed.push(`detached ${direction} filter from ${link.name}`);
        }
      }
      if (ours.has(`${codec.QdiscNetns.NODE}/${link.ifindex}`) && (await clsactIsEmpty(runner, link.name))) {
        destroyClsact(link.ifindex);
        c.removed.push(`removed clsact qdisc from ${link.name}`);
      }
    });
    const rp = codec.decodeRpFilterFlags(records.get(`${codec.QdiscNetns.NODE}/${link.ifindex}`) ?? 0);
    if (rp) {
      await c.step(`restore rp_filter on ${link.name}`, () => {
        if (restoreRpFilter({ dev: link.name, ...rp })) c.removed.push(`restored rp_filter=${rp.was} on ${link.name}`);
      });
    }
  }
  // conf.default, then conf.all last: every device is back first.
  for (const [ifindex, dev] of [
    [codec.RP_DEFAULT_IFINDEX, 'default'],
    [codec.RP_ALL_IFINDEX, 'all'],
  ] as const) {
    const rp = codec.decodeRpFilterFlags(records.get(`${codec.QdiscNetns.NODE}/${ifindex}`) ?? 0);
    if (rp)
      await c.step(`restore rp_filter ${dev}`, () => {
        if (restoreRpFilter({ dev, ...rp })) c.removed.push(`restored rp_filter=${rp.was} on ${dev}`);
      });
  }
  await c.step('remove our pins', () => c.removed.push(...removePins(pinRoot).map((p) => `unpinned ${p}`)));
  return c;
}

async function clsactIsEmpty(runner: CommandRunner, dev: string, netns?: string): Promise<boolean> {
  const ns = netns ? ['-n', netns] : [];
  for (const direction of POD_HOOKS) {
    const out = (await runner.run(['tc', ...ns, '-j', 'filter', 'show', 'dev', dev, direction])).trim();
    if (out !== '' && out !== '[]') return false;
  }
  return true;
}
