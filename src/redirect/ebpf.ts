/**
 * The ebpf capture mode: our TC program on each enrolled pod's host veth, the pods and
 * ztunnel maps pinned under the pin folder.
 */
import { BpfObject, type BpfMap } from '../bpf/object.js';
import * as codec from '../bpf/codec.js';
import { BPF_PROG_TYPE_SCHED_CLS, probeHelper } from '../bpf/ffi.js';
import { ensurePinDir, removePins } from '../bpf/pins.js';
import { attachTc, destroyClsact, detachTc, queryTc } from '../bpf/tc.js';
import { parseLinks } from '../host/netinfo.js';
import type { CommandRunner } from '../host/runner.js';
import type { Desired } from '../controller/desired.js';
import { diffHooks, diffPods } from '../controller/desired.js';
import type { Logger } from '../log.js';
import type { ActualState, ApplyResult, RedirectMode } from './mode.js';

const BPF_FUNC_redirect_peer = 155;

export type Variant = 'redirect_peer' | 'redirect';

/** The outbound program for a variant. */
export const OUTBOUND_PROGRAM: Record<Variant, string> = {
  redirect_peer: 'out_redir_peer',
  redirect: 'out_redirect',
};

/** bpf_redirect_peer (5.10) where the kernel offers it, plain bpf_redirect otherwise. */
export function probeVariant(): Variant {
  return probeHelper(BPF_PROG_TYPE_SCHED_CLS, BPF_FUNC_redirect_peer) ? 'redirect_peer' : 'redirect';
}

export interface EbpfOptions {
  objectPath: string;
  pinRoot: string;
  /** Forces a variant; probed when absent. */
  variant?: Variant;
  log: Logger;
}

export class EbpfRedirect implements RedirectMode {
  readonly name = 'ebpf' as const;
  private obj: BpfObject | null = null;
  private variantInUse: Variant | null = null;

  constructor(private readonly opts: EbpfOptions) {}

  get variant(): Variant {
    if (!this.variantInUse) throw new Error('ebpf mode not initialised');
    return this.variantInUse;
  }

  async init(): Promise<void> {
    const dir = ensurePinDir(this.opts.pinRoot);
    const variant = this.opts.variant ?? probeVariant();
    // Maps declared LIBBPF_PIN_BY_NAME are reused from the folder when pinned there.
    this.obj = BpfObject.openAndLoad(this.opts.objectPath, { pinRoot: dir, programs: [OUTBOUND_PROGRAM[variant]] });
    this.variantInUse = variant;
    this.opts.log.info('ebpf data path loaded', { object: this.opts.objectPath, pinDir: dir, variant });
  }

  private map(name: 'pods' | 'ztunnel'): BpfMap {
    if (!this.obj) throw new Error('ebpf mode not initialised');
    return this.obj.map(name);
  }

  async actual(candidateLinks: Iterable<number>): Promise<ActualState> {
    const pods = new Map<string, codec.PodInfo>();
    for (const [k, v] of this.map('pods').entries()) pods.set(codec.decodeAddrKey(k), codec.decodePodInfo(v));
    const slot = this.map('ztunnel').lookup(codec.encodeSlot(codec.ZTUNNEL_SLOT));
    const zt = slot ? codec.decodeZtunnelInfo(slot) : null;
    const hooks = new Set<number>();
    for (const ifindex of candidateLinks) if (queryTc(ifindex, 'ingress') !== null) hooks.add(ifindex);
    return { pods, ztunnel: zt && zt.flags & codec.ZtunnelFlags.PRESENT ? zt : null, hooks };
  }

  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const pods = this.map('pods');
    const ztunnel = this.map('ztunnel');
    const slotKey = codec.encodeSlot(codec.ZTUNNEL_SLOT);
    const emptySlot: codec.ZtunnelInfo = { ifindex: 0, peerIfindex: 0, mac: '00:00:00:00:00:00', flags: 0, netnsCookie: 0n };
    ztunnel.update(slotKey, codec.encodeZtunnelInfo(desired.ztunnel ?? emptySlot));

    const podDiff = diffPods(desired.pods, actual.pods);
    // Entries before hooks: a program attached to a veth finds its pod already there.
    for (const [ip, info] of podDiff.upserts) pods.update(codec.encodeAddrKey(ip), codec.encodePodInfo(info));

    const hookDiff = diffHooks(desired.hooks, actual.hooks);
    const progFd = this.obj!.programFd(OUTBOUND_PROGRAM[this.variant]);
    for (const ifindex of hookDiff.attach) attachTc(ifindex, 'ingress', progFd);
    for (const ifindex of hookDiff.detach) detachTc(ifindex, 'ingress');
    for (const ip of podDiff.deletes) pods.delete(codec.encodeAddrKey(ip));

    return { upserted: podDiff.upserts.size, deleted: podDiff.deletes.length, attached: hookDiff.attach.length, detached: hookDiff.detach.length };
  }

  close(): void {
    this.obj?.close();
    this.obj = null;
  }
}

export interface UninstallReport {
  detached: { ifindex: number; name: string; direction: 'ingress' | 'egress' }[];
  qdiscsRemoved: string[];
  pinsRemoved: string[];
}

/**
 * Removes our filters from every link of this netns, the clsact qdiscs left empty by
 * that, and our pins. Other filters, and qdiscs that still hold them, stay.
 */
export async function uninstallEbpf(pinRoot: string, runner: CommandRunner): Promise<UninstallReport> {
  const report: UninstallReport = { detached: [], qdiscsRemoved: [], pinsRemoved: [] };
  const links = parseLinks(await runner.run(['ip', '-j', 'link', 'show']));
  for (const link of links.values()) {
    let ours = false;
    for (const direction of ['ingress', 'egress'] as const) {
      if (detachTc(link.ifindex, direction)) {
        ours = true;
        report.detached.push({ ifindex: link.ifindex, name: link.name, direction });
      }
    }
    if (ours && (await clsactIsEmpty(runner, link.name))) {
      destroyClsact(link.ifindex);
      report.qdiscsRemoved.push(link.name);
    }
  }
  report.pinsRemoved = removePins(pinRoot);
  return report;
}

async function clsactIsEmpty(runner: CommandRunner, dev: string): Promise<boolean> {
  for (const direction of ['ingress', 'egress']) {
    const out = (await runner.run(['tc', '-j', 'filter', 'show', 'dev', dev, direction])).trim();
    if (out !== '' && out !== '[]') return false;
  }
  return true;
}
