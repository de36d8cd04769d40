import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PodFlags } from '../../src/bpf/codec.js';
import { IptablesRedirect } from '../../src/capture/iptables/iptables.js';
import { parseRpFilterRecords, recordRule, recordsRestoreInput } from '../../src/capture/iptables/rpfilter-record.js';
import { parseSave } from '../../src/capture/iptables/rules.js';
import type { Desired } from '../../src/core/desired.js';
import {
  mergeRpFilterRecords,
  openRpFilter,
  planCloseRpFilter,
  planOpenRpFilter,
  recordLive,
  restoreRpFilter,
  restoreRpFilterRecords,
} from '../../src/host/rpfilter.js';
import type { CommandRunner } from '../../src/host/runner.js';
import { createLogger } from '../../src/log.js';

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

describe('rp_filter records (iptables mode keeps them in a chain of comments)', () => {
  it('several devices opened at once: none of them is raised on the way, every other one is', () => {
    const p = procSys({ all: 1, default: 1, pod: 0, zt: 1, other: 0 });
    expect(planOpenRpFilter(['pod', 'zt'], p)).toEqual([
      { dev: 'other', was: 0, wrote: 1 },
      { dev: 'all', was: 1, wrote: 0 },
      { dev: 'zt', was: 1, wrote: 0 },
    ]);
    // Planned only: nothing written yet.
    expect(values(p, ['all', 'other', 'zt'])).toEqual({ all: 1, other: 0, zt: 1 });
    expect(planOpenRpFilter(['pod', 'gone'], procSys({ all: 0, default: 0, pod: 1 }))).toEqual([{ dev: 'pod', was: 1, wrote: 0 }]);
  });

  it('the first change of a device is the one undone; later ones only move what we wrote', () => {
    const ifindexOf = (d: string) => ({ pod: 7 })[d];
    const r1 = mergeRpFilterRecords(
      [],
      [
        { dev: 'pod', was: 0, wrote: 1 },
        { dev: 'all', was: 1, wrote: 0 },
      ],
      ifindexOf,
    );
    expect(r1).toEqual([
      { dev: 'pod', ifindex: 7, was: 0, wrote: 1 },
      { dev: 'all', was: 1, wrote: 0 },
    ]);
    expect(mergeRpFilterRecords(r1, [{ dev: 'pod', was: 1, wrote: 0 }], ifindexOf)[0]).toEqual({ dev: 'pod', ifindex: 7, was: 0, wrote: 0 });
  });

  it('a device that leaves is made as strict as it was in effect (its value, raised to the old all); not if someone changed it', () => {
    const all = { dev: 'all', was: 1, wrote: 0 };
    const p = procSys({ all: 0, default: 1, pod: 0, zt: 2 });
    expect(planCloseRpFilter({ dev: 'pod', ifindex: 7, was: 0, wrote: 0 }, all, p)).toEqual({ dev: 'pod', was: 0, wrote: 1 });
    expect(planCloseRpFilter({ dev: 'pod', ifindex: 7, was: 2, wrote: 0 }, undefined, p)).toEqual({ dev: 'pod', was: 0, wrote: 2 });
    expect(planCloseRpFilter({ dev: 'zt', ifindex: 8, was: 1, wrote: 0 }, all, p)).toBeNull();
    // A raised device is not an opened one: nothing to close.
    expect(planCloseRpFilter({ dev: 'pod', ifindex: 7, was: 0, wrote: 1 }, all, p)).toBeNull();
  });

  it('restore: devices, then default, then all; a device recreated under the same name is not ours', () => {
    const p = procSys({ all: 0, default: 1, pod: 0, newpod: 0 });
    const ifindexOf = (d: string) => ({ pod: 7, newpod: 9 })[d];
    const done = restoreRpFilterRecords(
      [
        { dev: 'all', was: 1, wrote: 0 },
        { dev: 'default', was: 0, wrote: 1 },
        { dev: 'pod', ifindex: 7, was: 1, wrote: 0 },
        { dev: 'newpod', ifindex: 8, was: 1, wrote: 0 },
      ],
      ifindexOf,
      p,
    );
    expect(done.map((r) => r.dev)).toEqual(['pod', 'default', 'all']);
    expect(values(p, ['all', 'default', 'pod', 'newpod'])).toEqual({ all: 1, default: 0, pod: 1, newpod: 0 });
    expect(recordLive({ dev: 'newpod', ifindex: 8, was: 1, wrote: 0 }, ifindexOf)).toBe(false);
  });

  it('records round-trip through iptables-save; a name that would need quoting is refused', () => {
    const records = [
      { dev: 'veth3a2b', ifindex: 12, was: 1, wrote: 0 },
      { dev: 'all', was: 1, wrote: 0 },
    ];
    const input = recordsRestoreInput(records, false)!;
    expect(input).toBe(
      '*mangle\n:ztunnel-RPFILTER - [0:0]\n-A ztunnel-RPFILTER -m comment --comment "rp_filter dev=veth3a2b ifindex=12 was=1 wrote=0"\n-A ztunnel-RPFILTER -m comment --comment "rp_filter dev=all was=1 wrote=0"\nCOMMIT\n',
    );
    // iptables-save prints the chain back as it was written.
    expect(parseRpFilterRecords(parseSave(input.replace('*mangle\n', '*mangle\n:PREROUTING ACCEPT [0:0]\n')))).toEqual(records);
    expect(recordsRestoreInput([], true)).toBe('*mangle\n-F ztunnel-RPFILTER\n-X ztunnel-RPFILTER\nCOMMIT\n');
    expect(recordsRestoreInput([], false)).toBeNull();
    expect(() => recordRule({ dev: 'a"b', was: 1, wrote: 0 })).toThrow('not a device name we record');
  });

  it('iptables mode records each change before it makes it, and a second pass on the same node writes nothing', async () => {
    const p = procSys({ all: 1, default: 1, veth0: 1, vethzt: 1, eth0: 1 });
    let save = '*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n';
    const seenAtRecord: Record<string, number>[] = [];
    const runner: CommandRunner = {
      async run(argv, opts) {
        const cmd = argv.join(' ');
        if (cmd === 'ip -j -d addr show')
          return JSON.stringify([
            { ifindex: 10, ifname: 'veth0' },
            { ifindex: 5, ifname: 'vethzt' },
            { ifindex: 2, ifname: 'eth0' },
          ]);
        if (cmd === 'iptables-nft-save') return save;
        if (cmd === 'ip -n zt -j addr show dev eth0') return JSON.stringify([{ ifname: 'eth0', addr_info: [{ local: '10.244.1.3', prefixlen: 32 }] }]);
        if (cmd === 'ip -j route get 10.244.1.3') return JSON.stringify([{ dst: '10.244.1.3', dev: 'vethzt', prefsrc: '10.0.0.5' }]);
        if (cmd === 'iptables-nft-restore --noflush' && opts?.input?.includes('ztunnel-RPFILTER')) {
          seenAtRecord.push(values(p, ['all', 'veth0', 'vethzt']));
          save = opts.input.replace('*mangle\n', '*mangle\n:PREROUTING ACCEPT [0:0]\n');
        }
        return cmd.includes(' -j ') ? '[]' : '';
      },
    };
    const mode = new IptablesRedirect({ runner, log: createLogger('error', () => {}), tunnel: 'vxlan', backend: 'nft', procSys: p });
    const desired: Desired = {
      pods: new Map([['10.244.1.7', { ifindex: 10, mac: '00:00:00:00:00:00', flags: PodFlags.ENROLLED }]]),
      ztunnel: null,
      ztunnelPlacement: {
        hostLink: { ifindex: 5, name: 'vethzt', mac: '0a:58:0a:f4:01:01' },
        peer: { ifindex: 2, name: 'eth0', mac: '0a:58:0a:f4:01:03' },
        netns: 'zt',
      },
      hooks: new Set(),
      unplaced: [],
    };
    await mode.init();
    await mode.apply(desired, await mode.actual());
    expect(seenAtRecord).toEqual([{ all: 1, veth0: 1, vethzt: 1 }]);
    expect(values(p, ['all', 'default', 'veth0', 'vethzt', 'eth0'])).toEqual({ all: 0, default: 1, veth0: 0, vethzt: 0, eth0: 1 });
    expect(parseRpFilterRecords(parseSave(save))).toEqual([
      { dev: 'all', was: 1, wrote: 0 },
      { dev: 'vethzt', ifindex: 5, was: 1, wrote: 0 },
      { dev: 'veth0', ifindex: 10, was: 1, wrote: 0 },
    ]);
    await mode.apply(desired, await mode.actual());
    expect(seenAtRecord).toHaveLength(1);
    // The pod leaves: its veth goes back to 1, the record says so.
    await mode.apply({ ...desired, pods: new Map() }, await mode.actual());
    expect(values(p, ['veth0', 'vethzt'])).toEqual({ veth0: 1, vethzt: 0 });
    expect(parseRpFilterRecords(parseSave(save))).toContainEqual({ dev: 'veth0', ifindex: 10, was: 1, wrote: 1 });
  });
});
