/**
 * Whether anything runs before our programs on the hooks we use (docs/datapath.md,
 * "Ordering"). Pure: it takes what is on one hook, as listed from the kernel, and our
 * program's place there, and says what is ahead of it. A program ahead of ours that ends a
 * packet's walk with a verdict means ours never sees the packet, so any such program makes
 * the data path unverified, whatever it returns today.
 *
 * The kernel runs a device's hook in this order: the tcx programs (6.6+, in the order
 * BPF_PROG_QUERY lists them), then the clsact filters of chain 0 by ascending priority,
 * within one priority in the order the dump lists them (the filter attached last first).
 */

/** One clsact filter as `tc -j filter show` lists it. */
export interface TcFilterEntry {
  pref: number;
  kind: string;
  chain: number;
  /** "0xa4b1"; null on the line that only introduces a priority's filters. */
  handle: string | null;
  progId: number | null;
  progName: string | null;
}

export interface TcxEntry {
  id: number;
  name: string | null;
}

/** What is on one hook of one device. */
export interface HookListing {
  /** tcx programs in run order; null when the kernel has no tcx. */
  tcx: TcxEntry[] | null;
  /** clsact filters in dump order; empty when there is no clsact qdisc. */
  tc: TcFilterEntry[];
}

/** Where our program sits: a clsact filter at our handle and priority. */
export interface OurPlace {
  handle: number;
  priority: number;
  /** The program this build attached there. */
  progId: number;
}

export type FindingKind =
  /** A tcx program: it runs before every clsact filter. */
  | 'tcx'
  /** A clsact filter at a priority below ours. */
  | 'tc-lower-priority'
  /** Another filter at our priority listed before ours: attached after ours, it runs first. */
  | 'tc-same-priority'
  /** Our filter is not at its place (or holds another program) after the pass. */
  | 'missing'
  /** The device is of a kind whose traffic can skip this hook altogether. */
  | 'bypass'
  /**
   * The device's XDP hook (it runs before every TC program) holds a program that is not the
   * one we put there, or lacks ours (the xdp hook: attach refused, or someone else's there).
   */
  | 'xdp';

export interface Finding {
  /** "pod" for an enrolled pod's host veth, "ztunnel" for ztunnel's eth0. */
  where: 'pod' | 'ztunnel';
  device: string;
  direction: 'ingress' | 'egress';
  kind: FindingKind;
  /** The program or filter, in words ("tcx program 192 foreign_pass"). */
  program: string;
}

function describeFilter(f: TcFilterEntry): string {
  const prog = f.progId !== null ? ` program ${f.progId}${f.progName ? ` ${f.progName}` : ''}` : '';
  return `tc ${f.kind} filter pref ${f.pref}${f.handle ? ` handle ${f.handle}` : ''}${prog}`;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/**
 * The programs on a hook that run before ours (or may: another filter at our priority),
 * and whether ours is there at all.
 */
export function programsAhead(at: Pick<Finding, 'where' | 'device' | 'direction'>, hook: HookListing, ours: OurPlace): Finding[] {
  const found: Finding[] = [];
  const add = (kind: FindingKind, program: string) => found.push({ ...at, kind, program });
  for (const p of hook.tcx ?? []) add('tcx', `tcx program ${p.id}${p.name ? ` ${p.name}` : ''}`);
  // The line that opens a priority carries no handle: only the filters themselves count.
  const filters = hook.tc.filter((f) => f.chain === 0 && f.handle !== null);
  const isOurPlace = (f: TcFilterEntry) => f.pref === ours.priority && f.handle === hex(ours.handle);
  const mine = filters.find(isOurPlace);
  if (!mine) add('missing', `our filter (pref ${ours.priority} handle ${hex(ours.handle)}) is not there`);
  else if (mine.progId !== ours.progId) add('missing', `${describeFilter(mine)} holds another program than ours (${ours.progId})`);
  // Within one priority the dump lists the filters in the order they run (the one attached
  // last first): a filter listed after ours runs after ours and sees only what ours passes.
  // One attached (or re-attached) later moves ahead of ours, and the next pass sees it.
  const ourIndex = mine ? filters.indexOf(mine) : filters.length;
  for (const [i, f] of filters.entries()) {
    if (isOurPlace(f)) continue;
    if (f.pref < ours.priority) add('tc-lower-priority', describeFilter(f));
    else if (f.pref === ours.priority && i < ourIndex) add('tc-same-priority', describeFilter(f));
  }
  return found;
}

/** One line for logs, /readyz and status. */
export function describeFinding(f: Finding): string {
  const hook = `${f.where === 'ztunnel' ? "ztunnel's " : ''}${f.device} ${f.direction}`;
  switch (f.kind) {
    case 'tcx':
      return `${f.program} runs before ours on ${hook}`;
    case 'tc-lower-priority':
      return `${f.program} runs before ours on ${hook}`;
    case 'tc-same-priority':
      return `${f.program} shares our priority on ${hook} and may run first`;
    case 'missing':
      return `${f.program} on ${hook}`;
    case 'bypass':
      return `${f.program} on ${hook}: its traffic can skip our program`;
    case 'xdp':
      return `${f.program} on ${f.where === 'ztunnel' ? "ztunnel's " : ''}${f.device} XDP`;
  }
}

/**
 * A host-side pod device of a kind that peers deliver into without the host device's
 * hooks: netkit's peer (a CNI using it delivers with bpf_redirect_peer, skipping the
 * host device's egress). Veths are what we can vouch for; an unknown kind is not flagged.
 */
export function deviceBypass(kind: string | null): string | null {
  if (kind === 'netkit') return 'netkit device (delivery into the pod skips the host side)';
  return null;
}
