/**
 * A program attached to a network namespace's hook (the socket lookup, BPF_SK_LOOKUP)
 * through a pinned BPF link: the pin keeps the attachment after the agent exits, the
 * link's info says which netns and which program, and removing the pin ends it.
 */
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import * as ffi from './ffi.js';

export interface NetnsLinkState {
  progId: number;
  /** The netns the link is attached to; 0 once detached or the netns is gone. */
  netnsIno: number;
}

/** struct bpf_link_info: type, id, prog_id, then (8-aligned) netns { netns_ino, attach_type }. */
const LINK_INFO_SIZE = 24;

function stateOf(fd: number, what: string): NetnsLinkState {
  const info = ffi.objGetInfo(fd, what, LINK_INFO_SIZE);
  return { progId: info.readUInt32LE(8), netnsIno: info.readUInt32LE(16) };
}

/** The pinned link's program and netns, or null when there is no pin. */
export function netnsLinkState(pinPath: string): NetnsLinkState | null {
  if (!existsSync(pinPath)) return null;
  const fd = ffi.objGet(pinPath);
  try {
    return stateOf(fd, pinPath);
  } finally {
    ffi.closeFd(fd);
  }
}

/**
 * Makes the link pinned at `pinPath` attach `prog` to the netns (`netnsFd`, inode
 * `netnsIno`) with hook `type`: kept when it already does, moved to the program in place
 * (no gap) when it runs another, created when there is none or the pinned one belongs to
 * a netns that is gone (an inode can be reused).
 */
export function ensureNetnsLink(
  pinPath: string,
  netnsFd: number,
  netnsIno: number,
  type: number,
  prog: { fd: number; id: number },
): 'kept' | 'updated' | 'created' {
  const what = `${pinPath} (netns ${netnsIno})`;
  if (existsSync(pinPath)) {
    const fd = ffi.objGet(pinPath);
    try {
      const s = stateOf(fd, what);
      if (s.netnsIno === netnsIno) {
        if (s.progId === prog.id) return 'kept';
        ffi.linkUpdate(fd, prog.fd, what);
        return 'updated';
      }
    } finally {
      ffi.closeFd(fd);
    }
    unlinkSync(pinPath);
  }
  mkdirSync(dirname(pinPath), { recursive: true, mode: 0o700 });
  const fd = ffi.netnsLinkCreate(netnsFd, type, prog.fd, what);
  try {
    ffi.objPin(fd, pinPath);
  } finally {
    ffi.closeFd(fd);
  }
  return 'created';
}

/** Detaches the pinned link and removes its pin; false when there was none. */
export function removeNetnsLink(pinPath: string): boolean {
  if (!existsSync(pinPath)) return false;
  const fd = ffi.objGet(pinPath);
  try {
    if (stateOf(fd, pinPath).netnsIno !== 0) ffi.linkDetach(fd, pinPath);
  } finally {
    ffi.closeFd(fd);
  }
  unlinkSync(pinPath);
  return true;
}
