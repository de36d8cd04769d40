/**
 * What /metrics reads from the kernel at scrape time: the pinned maps' fill levels and the
 * per-CPU counters of every pod, each map read once per scrape. The pure part works on raw map entries; the kernel part
 * opens the pins for the duration of one scrape (holding no fd between scrapes, so
 * `uninstall` and a restarted agent see nothing of ours).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as codec from '../bpf/codec.js';
import { openPinnedMap, PINNED_MAPS, type PinnedMapName } from '../bpf/maps.js';
import { pinDir } from '../bpf/pins.js';

export interface MapUsage {
  map: string;
  entries: number;
  capacity: number;
}

export interface PodCounterSample {
  ip: string;
  ifindex: number;
  counters: codec.PodCounters;
}

/** Raw entries of our pinned maps, or null when the map is not pinned. */
export interface PinnedMaps {
  entries(name: PinnedMapName): [Buffer, Buffer][] | null;
}

/** Capacities as compiled (bpf/include/ambient_redirect.h, through the catalogue). */
export const MAP_CAPACITY = {
  pods: PINNED_MAPS.pods.maxEntries,
  counters: PINNED_MAPS.counters.maxEntries,
  dns_servers: PINNED_MAPS.dns_servers.maxEntries,
  host_flows: PINNED_MAPS.host_flows.maxEntries,
} as const;

export function mapUsage(maps: PinnedMaps): MapUsage[] {
  const out: MapUsage[] = [];
  for (const [map, capacity] of Object.entries(MAP_CAPACITY)) {
    const e = maps.entries(map as keyof typeof MAP_CAPACITY);
    if (e) out.push({ map, entries: e.length, capacity });
  }
  return out;
}

/** Each pod of the pods map with its veth's summed per-CPU counters (zero when none yet). */
export function podCounters(maps: PinnedMaps): PodCounterSample[] {
  const pods = maps.entries('pods');
  if (!pods) return [];
  const byIfindex = new Map<number, codec.PodCounters>();
  for (const [k, v] of maps.entries('counters') ?? []) byIfindex.set(codec.decodeU32Key(k), codec.decodePodCountersPerCpu(v));
  return pods.map(([k, v]) => {
    const ip = codec.decodeAddrKey(k);
    // Only the ifindex: decoding the whole value (its MAC as text) for every pod of a full map costs a scrape dearly.
    const ifindex = codec.decodePodIfindex(v);
    return { ip, ifindex, counters: byIfindex.get(ifindex) ?? codec.zeroCounters() };
  });
}

/**
 * Reads the maps pinned under <pinRoot>/ambient-redirect/v1/ (ebpf mode). Each map is read
 * once per scrape (in batches, src/bpf/object.ts) however many metrics ask for it: the
 * entries are kept until the event loop's next turn, and a scrape's collectors all run in
 * one turn (prom-client calls them together), so the next scrape reads afresh.
 */
export function pinnedMaps(pinRoot: string): PinnedMaps {
  return cachePerTurn({ entries: (name) => readPinned(pinRoot, name) });
}

/** `maps` with each map's entries kept until the event loop's next turn. */
export function cachePerTurn(maps: PinnedMaps): PinnedMaps {
  let turn: Map<PinnedMapName, [Buffer, Buffer][] | null> | null = null;
  return {
    entries(name) {
      if (!turn) {
        turn = new Map();
        setImmediate(() => {
          turn = null;
        }).unref();
      }
      if (!turn.has(name)) turn.set(name, maps.entries(name));
      return turn.get(name)!;
    },
  };
}

function readPinned(pinRoot: string, name: PinnedMapName): [Buffer, Buffer][] | null {
  const path = join(pinDir(pinRoot), name);
  if (!existsSync(path)) return null;
  const map = openPinnedMap(pinDir(pinRoot), name);
  try {
    return map.entries();
  } finally {
    map.close();
  }
}
