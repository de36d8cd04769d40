/**
 * The pinned-map catalogue: the one place that knows each map we pin under
 * `<pin-root>/ambient-redirect/v1/` (bpf/include/maps.h), its kernel type, its key and
 * value sizes (from the generated layouts) and whether it is per-CPU. Every opener of a
 * pinned map goes through openPinnedMap, and BpfMap.openPinned checks the kernel's
 * bpf_map_info against it: a pin of another layout is a clear error, never a buffer of the
 * wrong size handed to the kernel.
 */
import { join } from 'node:path';
import * as codec from './codec.js';
import { constants } from './layout.generated.js';
import { BpfMap, type MapSizes } from './object.js';
import * as inpod from './inpod-codec.js';
import { constants as inpodConstants } from './inpod-layout.generated.js';

/** enum bpf_map_type (linux/bpf.h), the ones maps.h uses. */
export const MapType = { HASH: 1, ARRAY: 2, PERCPU_HASH: 5, PERCPU_ARRAY: 6, LRU_HASH: 9, SOCKHASH: 18, SK_STORAGE: 24 } as const;

export interface PinnedMapSpec extends MapSizes {
  type: number;
  perCpu: boolean;
}

export const PINNED_MAPS = {
  pods: { type: MapType.HASH, keySize: codec.ADDR_KEY_SIZE, valueSize: codec.POD_INFO_SIZE, maxEntries: constants.MAX_PODS, perCpu: false },
  ztunnel: { type: MapType.ARRAY, keySize: 4, valueSize: codec.ZTUNNEL_INFO_SIZE, maxEntries: 1, perCpu: false },
  dns_servers: { type: MapType.HASH, keySize: codec.ADDR_KEY_SIZE, valueSize: codec.DNS_INFO_SIZE, maxEntries: constants.MAX_DNS_SERVERS, perCpu: false },
  host_flows: {
    type: MapType.LRU_HASH,
    keySize: codec.HOST_FLOW_KEY_SIZE,
    valueSize: codec.HOST_FLOW_INFO_SIZE,
    maxEntries: constants.MAX_HOST_FLOWS,
    perCpu: false,
  },
  host_flows4: {
    type: MapType.LRU_HASH,
    keySize: codec.HOST_FLOW4_KEY_SIZE,
    valueSize: codec.HOST_FLOW_INFO_SIZE,
    maxEntries: constants.MAX_HOST_FLOWS,
    perCpu: false,
  },
  // Indexed by slot: slot 0 (COUNTERS_NO_SLOT) and one per pod veth.
  counters: { type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: codec.POD_COUNTERS_SIZE, maxEntries: constants.MAX_PODS + 1, perCpu: true },
  veth_slots: { type: MapType.HASH, keySize: 4, valueSize: codec.VETH_SLOT_SIZE, maxEntries: constants.MAX_PODS, perCpu: false },
  qdiscs: { type: MapType.HASH, keySize: codec.QDISC_KEY_SIZE, valueSize: codec.QDISC_INFO_SIZE, maxEntries: constants.MAX_PODS, perCpu: false },
  // The in-pod capture's (bpf/inpod.bpf.c), pinned in the `inpod/` folder of the pin folder.
  inpod_config: { type: MapType.ARRAY, keySize: 4, valueSize: inpod.INPOD_CONFIG_SIZE, maxEntries: 1, perCpu: false },
  probe_flows: {
    type: MapType.LRU_HASH,
    keySize: inpod.PROBE_FLOW_KEY_SIZE,
    valueSize: inpod.PROBE_FLOW_INFO_SIZE,
    maxEntries: inpodConstants.MAX_PROBE_FLOWS,
    perCpu: false,
  },
  inpod_pods: {
    type: MapType.HASH,
    keySize: inpod.INPOD_POD_KEY_SIZE,
    valueSize: inpod.INPOD_POD_SIZE,
    maxEntries: inpodConstants.MAX_INPOD_PODS,
    perCpu: false,
  },
  inpod_overrides: {
    type: MapType.HASH,
    keySize: codec.ADDR_KEY_SIZE,
    valueSize: inpod.INPOD_OVERRIDE_SIZE,
    maxEntries: inpodConstants.MAX_INPOD_PODS,
    perCpu: false,
  },
  // Values are sockets: read back as socket cookies, never copied by a migration.
  inpod_handoff: { type: MapType.SOCKHASH, keySize: inpod.HANDOFF_KEY_SIZE, valueSize: 8, maxEntries: inpodConstants.MAX_HANDOFFS, perCpu: false },
  inpod_listeners: {
    type: MapType.SOCKHASH,
    keySize: inpod.LISTENER_KEY_SIZE,
    valueSize: 8,
    maxEntries: inpodConstants.MAX_INPOD_LISTENERS,
    perCpu: false,
  },
  // Per-socket storage (a socket's fd as key from user space): the agent never opens it.
  inpod_captured: { type: MapType.SK_STORAGE, keySize: 4, valueSize: 4, maxEntries: 0, perCpu: false },
  // The in-pod TC programs' "running on this CPU" flag (inpod_lookup reads it): the agent never opens it.
  inpod_tc_running: { type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: 4, maxEntries: 1, perCpu: true },
} as const satisfies Record<string, PinnedMapSpec>;

export type PinnedMapName = keyof typeof PINNED_MAPS;

export function isPinnedMapName(name: string): name is PinnedMapName {
  return Object.hasOwn(PINNED_MAPS, name);
}

/**
 * Opens the pinned map `name` at `path` (by default `<pin dir>/<name>`; a migration opens
 * its `__next` pin). maxEntries may be given where the loaded object's differs from the
 * header's default (test builds with smaller maps); the kernel is checked for type, key
 * and value size.
 */
export function openPinnedMap(pinDirPath: string, name: PinnedMapName, opts: { path?: string; maxEntries?: number } = {}): BpfMap {
  const spec: PinnedMapSpec = PINNED_MAPS[name];
  return BpfMap.openPinned(opts.path ?? join(pinDirPath, name), name, { ...spec, maxEntries: opts.maxEntries ?? spec.maxEntries });
}
