/**
 * Reverse-path filtering where ztunnel's transparent packets arrive (docs/operations.md
 * "Sysctls"). ztunnel answers a captured connection with the original destination as its
 * source, and opens inbound ones with the original client's: those packets enter the node
 * on ztunnel's host veth while the route back to their source leaves by another link, so
 * strict filtering (1) drops them. The kernel applies the larger of `conf.all` and the
 * device's own value, and a device without an IPv4 address (a CNI's host veth) passes
 * only at 0 (loose mode drops there too). So:
 *
 * - `conf.all` 0: the device is set to 0; nothing else changes.
 * - `conf.all` above 0: `all` cannot stay, and lowering it alone would loosen every link
 *   of the node. First `default` and every other device are raised to the old `all`
 *   where lower (each device's effective value, and that of devices made later, stays as
 *   it was), then `all` is lowered to 0, then the device set to 0.
 *
 * Every change is returned so that the caller can record it and uninstall can put it back;
 * a mode that opens several devices (iptables mode: ztunnel's and each enrolled pod's veth)
 * plans them together.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** One sysctl we wrote: `conf.<dev>.rp_filter` (dev may be "all" or "default"). */
export interface RpFilterWrite {
  dev: string;
  was: number;
  wrote: number;
}

const confDir = (procSys: string) => join(procSys, 'net', 'ipv4', 'conf');
const path = (procSys: string, dev: string) => join(confDir(procSys), dev, 'rp_filter');

function read(procSys: string, dev: string): number {
  const p = path(procSys, dev);
  const v = Number(readFileSync(p, 'utf8').trim());
  if (![0, 1, 2].includes(v)) throw new Error(`${p} reads ${v}, not 0, 1 or 2`);
  return v;
}

const checkDev = (dev: string) => {
  if (!dev || dev.includes('/') || dev === '.' || dev === '..' || dev === 'all' || dev === 'default') throw new Error(`"${dev}" is not a device name`);
};

/**
 * The writes that make each of `devs` accept packets whose source routes elsewhere, keeping
 * every other link as strict as it was, in the order to make them; reads only. Empty:
 * nothing is needed. Planned apart from the writes so that a caller can record them first
 * (a crash between the two then leaves a record of a write not made, which restore skips
 * since the value does not read what it names).
 */
export function planOpenRpFilter(devs: readonly string[], procSys = '/proc/sys'): RpFilterWrite[] {
  for (const d of devs) checkDev(d);
  const out: RpFilterWrite[] = [];
  const plan = (dev: string, value: number) => {
    const was = read(procSys, dev);
    if (was !== value) out.push({ dev, was, wrote: value });
  };
  const all = read(procSys, 'all');
  if (all > 0) {
    if (read(procSys, 'default') < all) plan('default', all);
    for (const other of readdirSync(confDir(procSys))) {
      if (other === 'all' || other === 'default' || devs.includes(other)) continue;
      try {
        if (read(procSys, other) < all) plan(other, all);
      } catch {
        // A device that went away meanwhile: nothing to keep strict.
      }
    }
    plan('all', 0);
  }
  for (const d of devs) {
    try {
      plan(d, 0);
    } catch {
      // Gone since the caller listed it: nothing to open.
    }
  }
  return out;
}

/** Makes the planned writes, in order. */
export function writeRpFilter(writes: readonly RpFilterWrite[], procSys = '/proc/sys'): void {
  for (const w of writes) writeFileSync(path(procSys, w.dev), String(w.wrote));
}

/**
 * Makes `dev` accept packets whose source routes elsewhere, keeping every other link as
 * strict as it was. Returns the writes in the order made (empty: nothing was needed).
 */
export function openRpFilter(dev: string, procSys = '/proc/sys'): RpFilterWrite[] {
  const out = planOpenRpFilter([dev], procSys);
  writeRpFilter(out, procSys);
  return out;
}

/** Puts back one write while the value is still ours; false when the device is gone or someone changed it since. */
export function restoreRpFilter(w: RpFilterWrite, procSys = '/proc/sys'): boolean {
  let now: number;
  try {
    now = read(procSys, w.dev);
  } catch {
    return false;
  }
  if (now !== w.wrote) return false;
  writeFileSync(path(procSys, w.dev), String(w.was));
  return true;
}

// --- records that outlive the agent --------------------------------------------------------
//
// A mode keeps one record per device it changed, in storage of its own (ebpf mode: the
// pinned qdiscs map; iptables mode: a chain of comments, src/capture/iptables/rpfilter-record.ts).
// What goes in a record and what is undone when is decided here, for both.

/** What a device held before our first change (`was`), and what we last wrote (`wrote`). */
export interface RpFilterRecord extends RpFilterWrite {
  /** The device's ifindex when first changed (not for all/default): a device of the same name made later is another device. */
  ifindex?: number;
}

/**
 * Records after `writes`: the first change of a device keeps its `was` (the value to undo
 * to), a later one only moves `wrote`. `ifindexOf` names each device's ifindex now.
 */
export function mergeRpFilterRecords(
  records: readonly RpFilterRecord[],
  writes: readonly RpFilterWrite[],
  ifindexOf: (dev: string) => number | undefined,
): RpFilterRecord[] {
  const out = records.map((r) => ({ ...r }));
  for (const w of writes) {
    const have = out.find((r) => r.dev === w.dev);
    if (have) have.wrote = w.wrote;
    else {
      const ifindex = w.dev === 'all' || w.dev === 'default' ? undefined : ifindexOf(w.dev);
      out.push({ dev: w.dev, ...(ifindex !== undefined && { ifindex }), was: w.was, wrote: w.wrote });
    }
  }
  return out;
}

/** Whether a record still names a device that exists: same name, same ifindex (all/default always). */
export function recordLive(r: RpFilterRecord, ifindexOf: (dev: string) => number | undefined): boolean {
  return r.ifindex === undefined ? r.dev === 'all' || r.dev === 'default' : ifindexOf(r.dev) === r.ifindex;
}

/**
 * The write that makes an opened device (a pod that left the mesh, a former ztunnel link)
 * strict again while the rest stays opened: its own old value, raised to the old
 * `conf.all` when we lowered that (the device's effective value is then what it was before
 * us). Null when the record is not of an opened device, or the value is no longer ours.
 */
export function planCloseRpFilter(r: RpFilterRecord, all: RpFilterRecord | undefined, procSys = '/proc/sys'): RpFilterWrite | null {
  if (r.wrote !== 0 || r.dev === 'all' || r.dev === 'default') return null;
  let now: number;
  try {
    now = read(procSys, r.dev);
  } catch {
    return null;
  }
  const target = Math.max(r.was, all ? all.was : 0);
  if (now !== r.wrote || target === now) return null;
  return { dev: r.dev, was: now, wrote: target };
}

/**
 * Puts back every live record while its value is still ours: devices first, then
 * `default`, then `all` (so that no device is ever looser than before meanwhile). Returns
 * what was restored.
 */
export function restoreRpFilterRecords(
  records: readonly RpFilterRecord[],
  ifindexOf: (dev: string) => number | undefined,
  procSys = '/proc/sys',
): RpFilterRecord[] {
  const rank = (r: RpFilterRecord) => (r.dev === 'all' ? 2 : r.dev === 'default' ? 1 : 0);
  const done: RpFilterRecord[] = [];
  for (const r of [...records].sort((a, b) => rank(a) - rank(b))) {
    if (recordLive(r, ifindexOf) && restoreRpFilter(r, procSys)) done.push(r);
  }
  return done;
}
