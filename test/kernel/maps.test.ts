/**
 * The pinned-map catalogue (src/bpf/maps.ts) checks the kernel's bpf_map_info on open: a
 * pin of another layout (another value size, another map type) is a clear error naming
 * the map, both sizes and what to do, also through the metrics/status reader; a pin of the
 * catalogue's layout opens. Pins live in a bpffs folder of this run, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import { MapType, openPinnedMap, PINNED_MAPS } from '../../src/bpf/maps.js';
import { BpfMap, PinnedMapMismatchError } from '../../src/bpf/object.js';
import { pinDir } from '../../src/bpf/pins.js';
import { systemRunner } from '../../src/host/runner.js';
import { pinnedMaps } from '../../src/metrics/pinned.js';
import { kernelDescribe } from '../support/gate.js';

kernelDescribe('pinned-map catalogue', 'it creates and pins BPF maps', () => {
  const root = `/sys/fs/bpf/ar-maps-${randomBytes(4).toString('hex')}`;
  const dir = pinDir(root);
  const create = (name: string, type: string, key: number, value: number) =>
    systemRunner.run(['bpftool', 'map', 'create', join(dir, name), 'type', type, 'key', String(key), 'value', String(value), 'entries', '8', 'name', name]);

  beforeAll(async () => {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    // pods with a value 4 bytes larger than this build's pod_info; ztunnel with the right
    // sizes but a hash instead of an array; counters exactly as the catalogue says.
    await create('pods', 'hash', codec.ADDR_KEY_SIZE, codec.POD_INFO_SIZE + 4);
    await create('ztunnel', 'hash', 4, codec.ZTUNNEL_INFO_SIZE);
    await create('counters', 'percpu_array', 4, codec.POD_COUNTERS_SIZE);
  });

  afterAll(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it('knows every map bpf/include/maps.h and bpf/inpod.bpf.c declare, with its type', () => {
    const sources = ['bpf/include/maps.h', 'bpf/inpod.bpf.c'].map((f) => readFileSync(f, 'utf8')).join('\n');
    const declared = [...sources.matchAll(/__uint\(type, BPF_MAP_TYPE_(\w+)\);[^}]*\}\s*(\w+)\s+SEC\("\.maps"\)/g)].map((m) => [m[2], m[1]]);
    expect(Object.fromEntries(declared)).toEqual(
      Object.fromEntries(Object.entries(PINNED_MAPS).map(([n, s]) => [n, Object.entries(MapType).find(([, v]) => v === s.type)![0]])),
    );
  });

  it('refuses a map of another value size, naming the map, both sizes and the way out', () => {
    let err: unknown;
    try {
      openPinnedMap(dir, 'pods').close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PinnedMapMismatchError);
    const msg = (err as Error).message;
    expect(msg).toContain(`pinned map pods (${join(dir, 'pods')})`);
    expect(msg).toContain(`value ${codec.POD_INFO_SIZE + 4} bytes, this build expects key ${codec.ADDR_KEY_SIZE} and value ${codec.POD_INFO_SIZE}`);
    expect(msg).toMatch(/ambient-redirect run.*migrates.*ambient-redirect uninstall.*removes/);
  });

  it('refuses a map of another type with the same sizes', () => {
    expect(() => openPinnedMap(dir, 'ztunnel')).toThrow(new RegExp(`pinned map ztunnel .*map type 1 where this build expects ${PINNED_MAPS.ztunnel.type}`));
  });

  it('the metrics and status reader meets the same error, not a short buffer', () => {
    expect(() => pinnedMaps(root).entries('pods')).toThrow(PinnedMapMismatchError);
  });

  it('opens a map of the catalogue layout (per-CPU sized for every CPU)', () => {
    const m = openPinnedMap(dir, 'counters');
    try {
      expect(m.keySize).toBe(4);
      expect(m.bufferSize % 8).toBe(0);
      expect(m.bufferSize).toBeGreaterThanOrEqual(Math.ceil(codec.POD_COUNTERS_SIZE / 8) * 8);
      // An array: every slot is there, zero.
      const entries = m.entries();
      expect(entries.map(([k]) => codec.decodeU32Key(k))).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
      for (const [, v] of entries) expect(v.equals(Buffer.alloc(m.bufferSize))).toBe(true);
    } finally {
      m.close();
    }
    expect(pinnedMaps(root).entries('counters')).toHaveLength(8);
  });

  it('a batch update writes every packed entry where bpftool reads it, and refuses a short buffer', async () => {
    await create('batch', 'hash', codec.ADDR_KEY_SIZE, codec.POD_INFO_SIZE);
    const m = BpfMap.openPinned(join(dir, 'batch'), 'batch', { keySize: codec.ADDR_KEY_SIZE, valueSize: codec.POD_INFO_SIZE, maxEntries: 8, perCpu: false });
    try {
      const pods = new Map([
        ['10.1.2.3', { ifindex: 11, mac: '0a:58:0a:01:02:03', flags: codec.PodFlags.ENROLLED, slot: 3 }],
        ['fd00::7', { ifindex: 12, mac: '0a:58:00:00:00:07', flags: 0, slot: 0x01020304 }],
      ]);
      const p = codec.packPods(pods);
      m.updateBatch(p.keys, p.values, p.count);
      const dump = JSON.parse(await systemRunner.run(['bpftool', '-j', 'map', 'dump', 'pinned', join(dir, 'batch')])) as { key: string[]; value: string[] }[];
      const bytes = (xs: string[]) => Buffer.from(xs.map((x) => parseInt(x, 16)));
      const got = new Map(dump.map((e) => [codec.decodeAddrKey(bytes(e.key)), codec.decodePodInfo(bytes(e.value))]));
      expect(got).toEqual(pods);
      expect(() => m.updateBatch(p.keys.subarray(1), p.values, p.count)).toThrow(/keys is 31 bytes, map wants 32/);
    } finally {
      m.close();
    }
  });
});
