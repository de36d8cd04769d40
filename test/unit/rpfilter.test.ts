import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openRpFilter, restoreRpFilter } from '../../src/host/rpfilter.js';

let dir = '';
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A /proc/sys with these rp_filter values. */
function procSys(values: Record<string, number>): string {
  dir = mkdtempSync(join(tmpdir(), 'rpfilter-'));
  for (const [dev, v] of Object.entries(values)) {
    mkdirSync(join(dir, 'net/ipv4/conf', dev), { recursive: true });
    writeFileSync(join(dir, 'net/ipv4/conf', dev, 'rp_filter'), `${v}\n`);
  }
  return dir;
}
const values = (p: string, devs: string[]) => Object.fromEntries(devs.map((d) => [d, Number(readFileSync(join(p, 'net/ipv4/conf', d, 'rp_filter'), 'utf8'))]));

describe('rp_filter on ztunnel’s link', () => {
  it('conf.all 0: only the device is opened', () => {
    const p = procSys({ all: 0, default: 1, zt: 1, other: 1 });
    expect(openRpFilter('zt', p)).toEqual([{ dev: 'zt', was: 1, wrote: 0 }]);
    expect(values(p, ['all', 'default', 'zt', 'other'])).toEqual({ all: 0, default: 1, zt: 0, other: 1 });
  });

  it('conf.all 1: default and the laxer devices are raised first, so every other link stays as strict as it was; restoring in reverse gives the node back', () => {
    const before = { all: 1, default: 0, zt: 1, lax: 0, loose: 2, strict: 1 };
    const p = procSys(before);
    const writes = openRpFilter('zt', p);
    expect(writes).toEqual([
      { dev: 'default', was: 0, wrote: 1 },
      { dev: 'lax', was: 0, wrote: 1 },
      { dev: 'all', was: 1, wrote: 0 },
      { dev: 'zt', was: 1, wrote: 0 },
    ]);
    const now = values(p, Object.keys(before));
    // Effective value max(all, dev) of every other device is unchanged.
    for (const d of ['lax', 'loose', 'strict']) expect(Math.max(now.all!, now[d]!)).toBe(Math.max(before.all, before[d as keyof typeof before]));
    expect(Math.max(now.all!, now.zt!)).toBe(0);
    expect(openRpFilter('zt', p)).toEqual([]);
    for (const w of [...writes].reverse()) expect(restoreRpFilter(w, p)).toBe(true);
    expect(values(p, Object.keys(before))).toEqual(before);
  });

  it('a value someone changed since is left alone; a bad device name is an error', () => {
    const p = procSys({ all: 0, default: 0, zt: 1 });
    const [w] = openRpFilter('zt', p);
    writeFileSync(join(p, 'net/ipv4/conf/zt/rp_filter'), '2');
    expect(restoreRpFilter(w!, p)).toBe(false);
    expect(restoreRpFilter({ dev: 'gone', was: 1, wrote: 0 }, p)).toBe(false);
    expect(() => openRpFilter('../x', p)).toThrow('is not a device name');
    expect(() => openRpFilter('all', p)).toThrow('is not a device name');
  });
});
