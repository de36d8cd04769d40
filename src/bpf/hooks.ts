/**
 * Lists what is on the hooks we use, for the ordering check (src/core/ordering.ts),
 * in-process and without a process per hook: the clsact filters through an rtnetlink dump
 * (what `tc filter show` reads), the tcx programs through BPF_PROG_QUERY, and the devices'
 * kinds through one `ip -d -j link show`.
 */
import { BpfError, isNotFound } from './errors.js';
import * as ffi from './ffi.js';
import type { Direction } from './tc.js';
import type { TcFilterEntry, TcxEntry } from '../core/ordering.js';

const RTM_NEWTFILTER = 44;
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TCA_CHAIN = 11;
const TCA_BPF_ID = 11;

/** The rtattrs of a netlink payload: type → value. */
function attrs(buf: Buffer, off: number, end: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  while (off + 4 <= end) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2) & 0x3fff; // without NLA_F_NESTED / NET_BYTEORDER
    if (len < 4 || off + len > end) break;
    out.set(type, buf.subarray(off + 4, off + len));
    off += (len + 3) & ~3;
  }
  return out;
}

/**
 * A hook's RTM_GETTFILTER dump → its filters in dump order (run order). A hook without a
 * clsact qdisc, or a device that is gone, has none; another netlink error throws.
 * `name` resolves a program id to its name.
 */
export function parseFilterDump(msgs: readonly Buffer[], what: string, name: (id: number) => string | null = () => null): TcFilterEntry[] {
  const out: TcFilterEntry[] = [];
  for (const m of msgs) {
    const type = m.readUInt16LE(4);
    if (type === 2 /* NLMSG_ERROR */) {
      const err = -m.readInt32LE(16);
      if (err === 0) continue;
      if (err === 22 /* EINVAL: no clsact */ || err === 19 /* ENODEV */ || err === 2 /* ENOENT */) return [];
      throw new BpfError('RTM_GETTFILTER', what, err);
    }
    if (type !== RTM_NEWTFILTER || m.length < 36) continue;
    const handle = m.readUInt32LE(24);
    const info = m.readUInt32LE(32);
    const a = attrs(m, 36, m.length);
    const kind = a.get(TCA_KIND)?.toString('latin1').replace(/\0.*$/s, '') ?? '?';
    const opts = a.get(TCA_OPTIONS);
    const o = opts ? attrs(opts, 0, opts.length) : new Map<number, Buffer>();
    const id = kind === 'bpf' && o.get(TCA_BPF_ID)?.length === 4 ? o.get(TCA_BPF_ID)!.readUInt32LE(0) : null;
    out.push({
      pref: info >>> 16,
      kind,
      chain: a.get(TCA_CHAIN)?.readUInt32LE(0) ?? 0,
      // The message that opens a priority carries no options (tc shows it without a handle).
      handle: opts ? `0x${handle.toString(16)}` : null,
      progId: id,
      progName: id !== null ? name(id) : null,
    });
  }
  return out;
}

/** The clsact filters on a hook of a device of the calling thread's netns, in run order. */
export function listTcFilters(ifindex: number, direction: Direction): TcFilterEntry[] {
  const point = direction === 'ingress' ? ffi.TcAttachPoint.INGRESS : ffi.TcAttachPoint.EGRESS;
  return parseFilterDump(ffi.netlinkDumpFilters(ifindex, point), `ifindex ${ifindex} ${direction}`, programName);
}

const TCX: Record<Direction, ffi.TcxAttachType> = { ingress: ffi.TcxAttachType.INGRESS, egress: ffi.TcxAttachType.EGRESS };

/** A program's name, or null when it is gone or unreadable. */
export function programName(id: number): string | null {
  let fd: number;
  try {
    fd = ffi.progGetFdById(id);
  } catch {
    return null;
  }
  try {
    // struct bpf_prog_info: name[16] at offset 64.
    const info = ffi.objGetInfo(fd, `program ${id}`, 80);
    const name = info.subarray(64, 80);
    const end = name.indexOf(0);
    return name.subarray(0, end < 0 ? 16 : end).toString('latin1') || null;
  } catch {
    return null;
  } finally {
    ffi.closeFd(fd);
  }
}

/**
 * The tcx programs on a hook of a device of the calling thread's netns, in run order;
 * null when the kernel has no tcx; [] for a device that is gone.
 */
export function listTcx(ifindex: number, direction: Direction): TcxEntry[] | null {
  try {
    return ffi.tcxQuery(ifindex, TCX[direction]).map((id) => ({ id, name: programName(id) }));
  } catch (err) {
    if ((err as { code?: string }).code === 'EINVAL') return null;
    if (isNotFound(err)) return [];
    throw err;
  }
}

/** Whether this kernel has tcx hooks: a read-only query of loopback's. */
export function probeTcx(): boolean {
  return listTcx(1, 'ingress') !== null;
}
