/**
 * What /metrics and `status` read from the kernel: the pinned maps' fill levels and the
 * per-CPU counters of every pod. Both open the pins for the duration of one read (holding
 * no fd between reads, so `uninstall` and a restarted agent see nothing of ours).
 *
 * `status` reads whole entries (PinnedMaps, podCounters). A scrape reads less and must
 * not hold the event loop that answers CNI ADDs: readScrape walks each map once in
 * batches into reused buffers, decodes each batch in place (no object, string or BigInt
 * per entry, save the addresses of the pods that get series of their own), and yields to
 * the loop between batches (docs/operations.md, "Metrics").
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import * as codec from '../bpf/codec.js';
import { openPinnedMap, PINNED_MAPS, type PinnedMapName } from '../bpf/maps.js';
import type { BpfMap } from '../bpf/object.js';
import { pinDir } from '../bpf/pins.js';

export interface MapUsage {
  map: string;
  entries: number;
  capacity: number;
}

export interface PodCounterSample {
  ip: string;
  ifindex: number;
  /** The veth's slot in the counters array (0: none). */
  slot: number;
  counters: codec.PodCounters;
}

/** Raw entries of our pinned maps, or null when the map is not pinned. */
export interface PinnedMaps {
  entries(name: PinnedMapName): [Buffer, Buffer][] | null;
}

/** Capacities as compiled (bpf/include/ambient_redirect.h, through the catalogue); the counters' is its slots but slot 0. */
export const MAP_CAPACITY = {
  pods: PINNED_MAPS.pods.maxEntries,
  counters: PINNED_MAPS.counters.maxEntries - 1,
  dns_servers: PINNED_MAPS.dns_servers.maxEntries,
  host_flows: PINNED_MAPS.host_flows.maxEntries,
  host_flows4: PINNED_MAPS.host_flows4.maxEntries,
} as const;

/**
 * The counters array always has all its entries: what it holds in use is the slots the
 * pods map names (slot 0 aside), and its capacity the slots the controller hands out.
 */
export function mapUsage(maps: PinnedMaps): MapUsage[] {
  const out: MapUsage[] = [];
  for (const [map, capacity] of Object.entries(MAP_CAPACITY)) {
    const e = maps.entries(map as keyof typeof MAP_CAPACITY);
    if (!e) continue;
    if (map === 'counters') {
      const used = new Set<number>();
      for (const [, v] of maps.entries('pods') ?? []) used.add(codec.decodePodSlot(v).slot);
      used.delete(0);
      out.push({ map, entries: used.size, capacity });
    } else out.push({ map, entries: e.length, capacity });
  }
  return out;
}

/** Each pod of the pods map with its veth's summed per-CPU counters (its slot's; zero when it has none). */
export function podCounters(maps: PinnedMaps): PodCounterSample[] {
  const pods = maps.entries('pods');
  if (!pods) return [];
  const bySlot = new Map<number, Buffer>();
  for (const [k, v] of maps.entries('counters') ?? []) bySlot.set(codec.decodeU32Key(k), v);
  return pods.map(([k, v]) => {
    const ip = codec.decodeAddrKey(k);
    // Only the ifindex and slot: decoding the whole value (its MAC as text) for every pod of a full map costs a scrape dearly.
    const { ifindex, slot } = codec.decodePodSlot(v);
    const c = slot === 0 ? undefined : bySlot.get(slot);
    return { ip, ifindex, slot, counters: c ? codec.decodePodCountersPerCpu(c) : codec.zeroCounters() };
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

// --- the scrape's reader -----------------------------------------------------------------

/**
 * The per-pod counters a scrape exposes: the first `maxSeries` pods of the pods map (in
 * the map's order) each with its veth's counters, and the pods beyond summed. Values are
 * the PodCounters fields in codec.POD_COUNTER_KEYS order, six per pod, as the Numbers
 * Number(bigint) gives for the exact sums.
 */
export interface PodSeries {
  ips: string[];
  /** 6 × ips.length values. */
  values: Float64Array;
  /** The six sums over the pods beyond the first `maxSeries`; null when there are none. */
  other: Float64Array | null;
}

/** One scrape's view of the kernel: map usage and the per-pod series. */
export interface KernelSample {
  usage: MapUsage[];
  pods: PodSeries;
}

/** The same view from whole samples (tests, and sources that already hold PodCounterSamples). */
export function podSeriesOf(samples: readonly PodCounterSample[], maxSeries: number): PodSeries {
  const n = Math.min(samples.length, maxSeries);
  const values = new Float64Array(6 * n);
  const sums = codec.POD_COUNTER_KEYS.map(() => 0n);
  samples.forEach((s, i) => {
    codec.POD_COUNTER_KEYS.forEach((k, c) => {
      if (i < n) values[6 * i + c] = Number(s.counters[k]);
      else sums[c]! += s.counters[k];
    });
  });
  return {
    ips: samples.slice(0, n).map((s) => s.ip),
    values,
    other: samples.length > n ? Float64Array.from(sums, (v) => Number(v)) : null,
  };
}

export interface ScrapeOptions {
  /** Pods with series of their own (the registry's MAX_POD_SERIES). */
  maxSeries: number;
  /** Entries a batch reads and decodes between two turns of the loop. */
  batch?: number;
}

/**
 * Entries per batch: a batch's read and decode hold the loop well under a millisecond
 * (about 0.3 µs an entry in the kernel and as much here, for the pods and counters maps).
 */
export const SCRAPE_BATCH = 1024;

const TWO32 = 2 ** 32;

/**
 * Reads the pinned maps under <pinRoot>/ambient-redirect/v1/ for one scrape, each once,
 * in batches with a turn of the event loop between them. Maps that are not pinned count
 * as absent (iptables mode has none).
 */
export async function readScrape(pinRoot: string, opts: ScrapeOptions): Promise<KernelSample> {
  const batch = opts.batch ?? SCRAPE_BATCH;
  const dir = pinDir(pinRoot);
  const usage: MapUsage[] = [];
  const open = (name: keyof typeof MAP_CAPACITY) => (existsSync(join(dir, name)) ? openPinnedMap(dir, name) : null);
  const pods = open('pods');
  const counters = open('counters');
  const pj = new PodJoin(opts.maxSeries, counters?.maxEntries ?? 0);
  if (pods) usage.push({ map: 'pods', entries: await walkMap(pods, batch, (k, v, n) => pj.pods(k, v, n)), capacity: MAP_CAPACITY.pods });
  if (counters) {
    pj.startCounters(counters.bufferSize);
    await walkMap(counters, batch, (k, v, n) => pj.counters(k, v, n));
    usage.push({ map: 'counters', entries: pj.slotsInUse, capacity: MAP_CAPACITY.counters });
  }
  for (const name of ['dns_servers', 'host_flows', 'host_flows4'] as const) {
    const m = open(name);
    if (m) usage.push({ map: name, entries: await walkMap(m, batch, () => {}), capacity: MAP_CAPACITY[name] });
  }
  return { usage, pods: pj.series() };
}

/**
 * The pods map joined to the counters array by slot, batch by batch. A class, not closures
 * made per scrape: its methods keep their optimised code from one scrape to the next (a
 * closure made anew each scrape started cold every time). Per slot, typed arrays indexed by
 * the slot itself: no table to build, one index per counters entry.
 */
class PodJoin {
  /** The addresses of the first maxSeries pods, in the map's order. */
  private readonly ips: string[] = [];
  /** Per slot: the pods beyond the first maxSeries that have it. */
  private readonly beyond: Uint32Array;
  /** Per slot: a series pod with it (next chains the others), -1 for none. */
  private readonly head: Int32Array;
  /** Series pod → the next series pod with the same slot (a dual-stack pod has two), -1 for none. */
  private readonly next: number[] = [];
  private beyondPods = 0;
  /** Slots (but 0) the pods map names. */
  slotsInUse = 0;
  private values = new Float64Array(0);
  /** The sums of the pods beyond, as two exact halves per counter. */
  private readonly otherHi = new Float64Array(6);
  private readonly otherLo = new Float64Array(6);
  private readonly hi = new Float64Array(6);
  private readonly lo = new Float64Array(6);
  private bufferSize = 0;

  constructor(
    private readonly maxSeries: number,
    slots: number,
  ) {
    this.beyond = new Uint32Array(slots);
    this.head = new Int32Array(slots).fill(-1);
  }

  /** A batch of the pods map: the first maxSeries pods' addresses, and each pod's slot. */
  pods(keys: Buffer, values: Buffer, n: number): void {
    const v = new DataView(values.buffer, values.byteOffset, values.byteLength);
    const { head, beyond } = this;
    for (let i = 0; i < n; i++) {
      const slot = v.getUint32(i * codec.POD_INFO_SIZE + codec.POD_INFO_SLOT_OFFSET, true);
      // Slot 0 counts what no slot names, no pod's own; a slot beyond the array has no counters.
      if (slot === 0 || slot >= head.length) {
        if (this.ips.length < this.maxSeries) {
          this.next.push(-1);
          this.ips.push(codec.decodeAddrKey(keys.subarray(i * codec.ADDR_KEY_SIZE, (i + 1) * codec.ADDR_KEY_SIZE)));
        } else this.beyondPods++;
        continue;
      }
      if (head[slot] === -1 && beyond[slot] === 0) this.slotsInUse++;
      if (this.ips.length < this.maxSeries) {
        this.next.push(head[slot]!);
        head[slot] = this.ips.length;
        this.ips.push(codec.decodeAddrKey(keys.subarray(i * codec.ADDR_KEY_SIZE, (i + 1) * codec.ADDR_KEY_SIZE)));
      } else {
        beyond[slot]!++;
        this.beyondPods++;
      }
    }
  }

  startCounters(bufferSize: number): void {
    this.bufferSize = bufferSize;
    this.values = new Float64Array(6 * this.ips.length);
  }

  /**
   * A batch of the counters array: each named slot's per-CPU counters summed, to the pods
   * that have series, or into the sums of the others. Exact: each 64-bit counter is summed
   * as two 32-bit halves. Slots no pod names (slot 0 among them) are skipped undecoded.
   */
  counters(keys: Buffer, vals: Buffer, n: number): void {
    const k = new DataView(keys.buffer, keys.byteOffset, keys.byteLength);
    const v = new DataView(vals.buffer, vals.byteOffset, vals.byteLength);
    const { hi, lo, bufferSize, head, beyond, next, values } = this;
    const stride = codec.POD_COUNTERS_STRIDE;
    const cpus = bufferSize / stride;
    const offsets = codec.POD_COUNTER_OFFSETS;
    for (let i = 0; i < n; i++) {
      const slot = k.getUint32(i * 4, true);
      if (slot === 0 || slot >= head.length) continue;
      const first = head[slot]!;
      const times = beyond[slot]!;
      if (first < 0 && times === 0) continue;
      const base = i * bufferSize;
      for (let c = 0; c < 6; c++) {
        let l = 0;
        let h = 0;
        for (let cpu = 0, off = base + offsets[c]!; cpu < cpus; cpu++, off += stride) {
          l += v.getUint32(off, true);
          h += v.getUint32(off + 4, true);
        }
        const carry = Math.floor(l / TWO32);
        lo[c] = l - carry * TWO32;
        hi[c] = h + carry;
      }
      for (let p = first; p >= 0; p = next[p]!) for (let c = 0; c < 6; c++) values[6 * p + c] = hi[c]! * TWO32 + lo[c]!;
      if (times > 0)
        for (let c = 0; c < 6; c++) {
          this.otherHi[c]! += hi[c]! * times;
          this.otherLo[c]! += lo[c]! * times;
        }
    }
  }

  series(): PodSeries {
    if (this.values.length !== 6 * this.ips.length) this.values = new Float64Array(6 * this.ips.length); // no counters map
    let other: Float64Array | null = null;
    if (this.beyondPods > 0) {
      other = new Float64Array(6);
      for (let c = 0; c < 6; c++) {
        const carry = Math.floor(this.otherLo[c]! / TWO32);
        other[c] = (this.otherHi[c]! + carry) * TWO32 + (this.otherLo[c]! - carry * TWO32);
      }
    }
    return { ips: this.ips, values: this.values, other };
  }
}

/** Walks `map` (and closes it) batch by batch, a turn of the loop between batches; returns the entries seen. */
async function walkMap(map: BpfMap, batch: number, onBatch: (keys: Buffer, values: Buffer, n: number) => void): Promise<number> {
  let total = 0;
  try {
    const w = map.walk(batch);
    while (!w.done) {
      const n = w.next();
      onBatch(w.keys, w.values, n);
      total += n;
      if (!w.done) await nextTurn();
    }
  } finally {
    map.close();
  }
  return total;
}
