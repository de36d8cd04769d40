/**
 * Attaches and detaches XDP programs on a device of the calling thread's network namespace
 * (libbpf's bpf_xdp_attach / bpf_xdp_detach over netlink; enter the netns first with
 * testrun.ts's enterNetns). Harness only, for tests that play someone else on a hook (a
 * foreign program, a program taken away); the agent attaches through src/bpf/xdp.ts.
 */
import koffi from 'koffi';

const bpf = koffi.load('libbpf.so.1');
const xdpAttach = bpf.func('int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, void *opts)');
const xdpDetach = bpf.func('int bpf_xdp_detach(int ifindex, uint32_t flags, void *opts)');

/** linux/if_link.h */
export const XdpFlags = { UPDATE_IF_NOEXIST: 1, SKB_MODE: 2, DRV_MODE: 4 } as const;

/** Attaches `progFd` to the XDP hook of `ifindex` in native (driver) mode; throws with the errno. */
export function attachXdp(ifindex: number, progFd: number, flags: number = XdpFlags.DRV_MODE): void {
  const ret = xdpAttach(ifindex, progFd, flags, null) as number;
  if (ret < 0) throw new Error(`bpf_xdp_attach(ifindex ${ifindex}, prog fd ${progFd}): errno ${-ret}`);
}

export function detachXdp(ifindex: number, flags: number = XdpFlags.DRV_MODE): void {
  const ret = xdpDetach(ifindex, flags, null) as number;
  if (ret < 0) throw new Error(`bpf_xdp_detach(ifindex ${ifindex}): errno ${-ret}`);
}
