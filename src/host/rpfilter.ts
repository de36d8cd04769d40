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
 * Every change is returned so that the caller can record it and uninstall can put it back.
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

function write(procSys: string, dev: string, value: number, out: RpFilterWrite[]): void {
  const was = read(procSys, dev);
  if (was === value) return;
  writeFileSync(path(procSys, dev), String(value));
  out.push({ dev, was, wrote: value });
}

/**
 * Makes `dev` accept packets whose source routes elsewhere, keeping every other link as
 * strict as it was. Returns the writes in the order made (empty: nothing was needed).
 */
export function openRpFilter(dev: string, procSys = '/proc/sys'): RpFilterWrite[] {
  if (!dev || dev.includes('/') || dev === '.' || dev === '..' || dev === 'all' || dev === 'default') throw new Error(`"${dev}" is not a device name`);
  const out: RpFilterWrite[] = [];
  const all = read(procSys, 'all');
  if (all === 0 && read(procSys, dev) === 0) return out;
  if (all > 0) {
    if (read(procSys, 'default') < all) write(procSys, 'default', all, out);
    for (const other of readdirSync(confDir(procSys))) {
      if (other === 'all' || other === 'default' || other === dev) continue;
      try {
        if (read(procSys, other) < all) write(procSys, other, all, out);
      } catch {
        // A device that went away meanwhile: nothing to keep strict.
      }
    }
    write(procSys, 'all', 0, out);
  }
  write(procSys, dev, 0, out);
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
