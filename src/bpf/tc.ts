/**
 * TC attachment through libbpf's netlink API (bpf_tc_hook_create / bpf_tc_attach). The
 * kernel keeps a netlink filter without any process holding it. Our filters sit at one
 * handle and priority of our own, so we detach only what we attached.
 */
import * as ffi from './ffi.js';
import { isNotFound } from './errors.js';

export { TcAttachPoint } from './ffi.js';
export type Direction = 'ingress' | 'egress';

/**
 * Our filter's place on a hook: a handle easy to tell apart from others', at priority 1,
 * the lowest there is, so that no clsact filter runs before ours; one at the same priority
 * (Cilium's and Calico's use 1) is reported by the ordering check (docs/datapath.md,
 * "Ordering"), since which of the two runs first depends on the order of attachment.
 */
export const OUR_FILTER: ffi.TcFilter = { handle: 0xa4b1, priority: 1 };

/** Where builds before the ordering work put our filter (priority 9393): moved on upgrade. */
export const LEGACY_FILTER: ffi.TcFilter = { handle: 0xa4b1, priority: 0xa4b1 & 0x7fff };

const point = (d: Direction): ffi.TcAttachPoint => (d === 'ingress' ? ffi.TcAttachPoint.INGRESS : ffi.TcAttachPoint.EGRESS);

export interface TcAttachment {
  ifindex: number;
  direction: Direction;
  progId: number;
  /** True when the clsact qdisc did not exist before we attached. */
  createdQdisc: boolean;
}

/**
 * Attaches progFd at our handle/priority; an existing filter of ours there is replaced in
 * place (never detached first), so the hook is never empty.
 */
export function attachTc(ifindex: number, direction: Direction, progFd: number): TcAttachment {
  const createdQdisc = ffi.tcHookCreate(ifindex, point(direction));
  const progId = ffi.tcAttach(ifindex, point(direction), progFd, OUR_FILTER, true);
  return { ifindex, direction, progId, createdQdisc };
}

/** The id of the program at our place (or at `filter`) on the hook, or null. */
export function queryTc(ifindex: number, direction: Direction, filter: ffi.TcFilter = OUR_FILTER): number | null {
  try {
    return ffi.tcQuery(ifindex, point(direction), filter);
  } catch (err) {
    if (isNotFound(err) || (err as { code?: string }).code === 'EINVAL') return null;
    throw err;
  }
}

/** Removes our filter (or the one at `filter`); returns false when it was not there. Other filters stay. */
export function detachTc(ifindex: number, direction: Direction, filter: ffi.TcFilter = OUR_FILTER): boolean {
  try {
    ffi.tcDetach(ifindex, point(direction), filter);
    return true;
  } catch (err) {
    if (isNotFound(err) || (err as { code?: string }).code === 'EINVAL') return false;
    throw err;
  }
}

/** Removes the clsact qdisc; only for one we created and whose hooks are now empty. */
export function destroyClsact(ifindex: number): void {
  try {
    ffi.tcHookDestroy(ifindex);
  } catch (err) {
    if (!isNotFound(err) && (err as { code?: string }).code !== 'EINVAL') throw err;
  }
}
