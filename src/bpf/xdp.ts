/**
 * XDP attachments on a device of the calling thread's network namespace, through libbpf's
 * netlink calls (bpf_xdp_attach, bpf_xdp_detach, bpf_xdp_query_id). A device has one XDP
 * program at most (native or generic, not both), so "ours" is decided by program id: the
 * caller passes the id it expects there, and a swap or a removal happens only if that is
 * still the program on the hook (XDP_FLAGS_REPLACE, 5.7+), never over someone else's.
 * Our programs run in native (driver) mode: veths have it from 4.19.
 */
import { BpfError, isNotFound } from './errors.js';
import * as ffi from './ffi.js';

const { UPDATE_IF_NOEXIST, SKB_MODE, DRV_MODE, REPLACE } = ffi.XdpFlags;

export interface XdpProgram {
  id: number;
  /** native: the driver's hook (veth's, ours); generic: the stack's, for any device. */
  mode: 'native' | 'generic';
}

/** The program on the device's XDP hook, or null (also for a device that is gone). */
export function queryXdp(ifindex: number): XdpProgram | null {
  try {
    const native = ffi.xdpQueryId(ifindex, DRV_MODE);
    if (native) return { id: native, mode: 'native' };
    const generic = ffi.xdpQueryId(ifindex, SKB_MODE);
    return generic ? { id: generic, mode: 'generic' } : null;
  } catch (err) {
    if (isNotFound(err)) return null;
    throw err;
  }
}

/** An fd of the program with this id, given to `f` and closed after. */
function withProgram<T>(id: number, f: (fd: number) => T): T {
  const fd = ffi.progGetFdById(id);
  try {
    return f(fd);
  } finally {
    ffi.closeFd(fd);
  }
}

/**
 * Puts `progFd` on the device's XDP hook in native mode: on an empty hook only (`expect`
 * null; EBUSY when a program came meanwhile), or in place of the program `expect` in one
 * step (EEXIST when another one is there by then), so the hook is never empty.
 */
export function attachXdp(ifindex: number, progFd: number, expect: number | null): void {
  if (expect === null) {
    ffi.xdpAttach(ifindex, progFd, DRV_MODE | UPDATE_IF_NOEXIST, null);
    return;
  }
  withProgram(expect, (old) => {
    try {
      ffi.xdpAttach(ifindex, progFd, DRV_MODE | REPLACE, old);
    } catch (err) {
      // Before 5.7 the kernel knows no XDP_FLAGS_REPLACE (EINVAL): check, then swap. Still
      // one step on the hook (an attach replaces), only the check is not atomic with it.
      if (!(err instanceof BpfError && err.code === 'EINVAL' && queryXdp(ifindex)?.id === expect)) throw err;
      ffi.xdpAttach(ifindex, progFd, DRV_MODE, null);
    }
  });
}

/**
 * Empties the device's XDP hook if the program `id` is on it (native mode). Returns false
 * when it is not there (the hook is left as it is), or the device is gone.
 */
export function detachXdp(ifindex: number, id: number): boolean {
  const have = queryXdp(ifindex);
  if (have?.id !== id || have.mode !== 'native') return false;
  try {
    withProgram(id, (old) => {
      try {
        ffi.xdpDetach(ifindex, DRV_MODE | REPLACE, old);
      } catch (err) {
        if (!(err instanceof BpfError && err.code === 'EINVAL' && queryXdp(ifindex)?.id === id)) throw err;
        ffi.xdpDetach(ifindex, DRV_MODE, null);
      }
    });
    return true;
  } catch (err) {
    // Gone meanwhile, or replaced by someone: not ours to remove.
    if (isNotFound(err) || (err as { code?: string }).code === 'EEXIST') return false;
    throw err;
  }
}
