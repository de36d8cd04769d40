/**
 * What is pinned, and how a new controller takes it over. The data path must not depend
 * on the controller process, so:
 *
 * - maps are pinned by name in the pin folder and reused;
 * - programs are pinned in `prog-<hash of the object files>/` (the XDP hook's object is a
 *   companion of the TC one: its programs use the same pinned maps, and both objects' hash
 *   names the folder; with one object the hash is of that file alone): a restarted controller
 *   with the same build adopts them (same program IDs, nothing loaded, nothing
 *   re-attached); a new build loads new programs beside them, which the caller swaps in
 *   place on every hook, then drops the old folder;
 * - a map whose definition changed (value size, max entries, ...) is a schema change:
 *   the new map is created beside the old one as `<name>__next`, filled, and takes the
 *   old one's pin only after the new programs (which use it) are attached everywhere.
 *   Until then the old programs and maps keep working; a load that fails changes nothing.
 *
 * `<pin dir>/` holds: pods, ztunnel, dns_servers, host_flows, host_flows4, counters,
 * veth_slots, qdiscs, prog-<hash>/<program>... (host_flows4 came later: the first load that
 * creates it copies host_flows's IPv4 flows into it, and its commit moves them. counters
 * was a per-CPU hash keyed by ifindex before it became an array indexed by slot, with
 * veth_slots and the slot in pods values: the controller refills pods, and
 * carryHashCounters adds the old counts into the array before the commit.) A map an older build pinned that this build no longer has
 * (host_addrs, before host_flows replaced it) is unpinned with the old programs.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as codec from './codec.js';
import { isNotFound } from './errors.js';
import * as ffi from './ffi.js';
import { isPinnedMapName, MapType, openPinnedMap } from './maps.js';
import { BpfMap, BpfObject, mapInfoOf, PinnedMapMismatchError, programId, type MapDef } from './object.js';

// bpffs refuses dots in names (they are kept for its own files).
const NEXT = '__next';

/** The build's name: a hash of its object files (one object: of that file alone, as before there were two). */
export function objectHash(objectPath: string, ...more: string[]): string {
  const h = createHash('sha256').update(readFileSync(objectPath));
  for (const p of more) h.update(readFileSync(p));
  return h.digest('hex').slice(0, 16);
}

/** A further object of the same build: its programs use the first object's maps, by pin. */
export interface CompanionObject {
  objectPath: string;
  programs: readonly string[];
}

/** A companion's maps must be the first object's (same pins, same definitions). */
function checkCompanionMaps(first: string, defs: Map<string, MapDef>, companion: string): void {
  const probe = BpfObject.open(companion, { programs: [] });
  try {
    for (const [name, def] of probe.mapDefs()) {
      const want = defs.get(name);
      if (!want || want.type !== def.type || want.keySize !== def.keySize || want.valueSize !== def.valueSize || want.maxEntries !== def.maxEntries)
        throw new Error(`${companion} defines map ${name} ${want ? 'differently from' : 'which is not in'} ${first}: the two objects are not of one build`);
    }
  } finally {
    probe.close();
  }
}

export interface Installed {
  /** Program fds by name, owned by the caller (close with closeInstalled). */
  programs: Map<string, { fd: number; id: number }>;
  /** Maps by name: the live ones, or the `__next` ones of a schema change. */
  maps: Map<string, BpfMap>;
  /** True when every wanted program was already pinned for this build. */
  adopted: boolean;
  /** Maps whose schema changed: their `__next` pins await commitInstall. */
  migrating: string[];
  /** This load created host_flows4 beside an older build's host_flows: commitInstall moves the IPv4 flows over. */
  carryHostFlows4?: boolean;
  progDir: string;
}

/** Maps pinned in `dir` whose kernel definition differs from the object's. */
function changedMaps(dir: string, defs: Map<string, MapDef>): string[] {
  const changed: string[] = [];
  for (const [name, def] of defs) {
    const path = join(dir, name);
    if (!existsSync(path)) continue;
    const fd = ffi.objGet(path);
    try {
      const k = mapInfoOf(fd, name);
      if (k.type !== def.type || k.keySize !== def.keySize || k.valueSize !== def.valueSize || k.maxEntries !== def.maxEntries) changed.push(name);
    } finally {
      ffi.closeFd(fd);
    }
  }
  return changed;
}

function openProgram(path: string, name: string): { fd: number; id: number } {
  const fd = ffi.objGet(path);
  return { fd, id: programId(fd, name) };
}

/**
 * Adopts what is pinned for this build, or loads what is missing (see the module
 * comment). Reads the kernel and pins only: attaches nothing.
 */
export function loadOrAdopt(objectPath: string, dir: string, programs: readonly string[], companions: readonly CompanionObject[] = []): Installed {
  const progDir = join(dir, `prog-${objectHash(objectPath, ...companions.map((c) => c.objectPath))}`);
  const probe = BpfObject.open(objectPath, { programs: [] });
  let defs: Map<string, MapDef>;
  try {
    defs = probe.mapDefs();
  } finally {
    probe.close();
  }
  for (const c of companions) checkCompanionMaps(objectPath, defs, c.objectPath);
  const objects = [{ objectPath, programs }, ...companions];
  const everyProgram = objects.flatMap((o) => o.programs);
  const migrating = changedMaps(dir, defs);
  const missing = everyProgram.filter((p) => !existsSync(join(progDir, p)));
  // A map this build adds (none pinned yet) is created by a load, even with no program to load.
  const newMaps = [...defs.keys()].filter((m) => !existsSync(join(dir, m)));

  if (missing.length > 0 || migrating.length > 0 || newMaps.length > 0) {
    // A stale `__next` from a migration that failed half-way is not reused.
    for (const name of migrating) if (existsSync(join(dir, name + NEXT))) unlinkSync(join(dir, name + NEXT));
    const mapPinPaths = Object.fromEntries(migrating.map((m) => [m, join(dir, m + NEXT)]));
    // With a schema change every program is reloaded: the pinned ones use the old maps.
    // The first object loads first: it creates the maps (new or `__next`) the others reuse.
    for (const [i, o] of objects.entries()) {
      const toLoad = migrating.length > 0 ? [...o.programs] : o.programs.filter((p) => missing.includes(p));
      if (i > 0 && toLoad.length === 0) continue;
      const obj = BpfObject.openAndLoad(o.objectPath, { pinRoot: dir, programs: toLoad, mapPinPaths: i === 0 ? mapPinPaths : only(mapPinPaths, o.objectPath) });
      try {
        mkdirSync(progDir, { recursive: true, mode: 0o700 });
        for (const p of toLoad) {
          const path = join(progDir, p);
          if (existsSync(path)) unlinkSync(path);
          obj.pinProgram(p, path);
        }
      } finally {
        obj.close();
      }
    }
  }

  const maps = new Map<string, BpfMap>();
  for (const [name, def] of defs) {
    const path = join(dir, migrating.includes(name) ? name + NEXT : name);
    if (!isPinnedMapName(name)) throw new Error(`${objectPath} defines map ${name}, which the pinned-map catalogue (src/bpf/maps.ts) does not know`);
    maps.set(name, openPinnedMap(dir, name, { path, maxEntries: def.maxEntries }));
  }
  // A migration carries over what the controller cannot derive again (its qdisc records,
  // the counters) where the layout allows: same key and value sizes, a raw copy.
  for (const name of migrating) copyEntries(join(dir, name), maps.get(name)!, defs.get(name)!);
  // An older build kept IPv4 flows in host_flows too: they are copied to the new
  // host_flows4, so the answers on connections the node opened before the upgrade still
  // pass (O10). The old programs still read them there until commitInstall, which copies
  // what they recorded meanwhile and only then removes them.
  const carryHostFlows4 = newMaps.includes('host_flows4') && maps.has('host_flows4') && maps.has('host_flows');
  if (carryHostFlows4) copyHostFlows4(maps.get('host_flows')!, maps.get('host_flows4')!, false);
  const progs = new Map(everyProgram.map((p) => [p, openProgram(join(progDir, p), p)]));
  return { programs: progs, maps, adopted: missing.length === 0 && migrating.length === 0, migrating, progDir, carryHostFlows4 };
}

/** host_flows's IPv4 flows into host_flows4 (`move`: and out of host_flows). */
function copyHostFlows4(from: BpfMap, into: BpfMap, move: boolean): void {
  for (const [key, value] of from.entries()) {
    const flow = codec.decodeHostFlowKey(key);
    if (codec.hostFlowMapOf(flow) !== 'host_flows4') continue;
    into.update(codec.encodeHostFlow4Key(flow), value);
    if (move) from.delete(key);
  }
}

/**
 * The counters of a build before the counters array (a per-CPU hash keyed by the veth's
 * ifindex, pinned as `counters` until commitInstall) added into the array, each veth's to
 * its slot's: the counts survive the upgrade. Called once the old programs are off every
 * hook (their counts are final) and before commitInstall unpins the old map; a pin of any
 * other layout is left alone. Returns the veths carried over.
 */
export function carryHashCounters(dir: string, installed: Installed, slotOf: (ifindex: number) => number | undefined): number {
  const into = installed.maps.get('counters');
  if (!into || !installed.migrating.includes('counters')) return 0;
  let old: BpfMap;
  try {
    old = BpfMap.openPinned(join(dir, 'counters'), 'counters', {
      type: MapType.PERCPU_HASH,
      keySize: 4,
      valueSize: into.valueSize,
      maxEntries: into.maxEntries - 1,
      perCpu: true,
    });
  } catch (err) {
    if (err instanceof PinnedMapMismatchError) return 0;
    throw err;
  }
  let carried = 0;
  try {
    for (const [key, value] of old.entries()) {
      const slot = slotOf(codec.decodeU32Key(key));
      if (!slot) continue;
      const slotKey = codec.encodeU32Key(slot);
      const sum = into.lookup(slotKey);
      if (!sum) continue;
      for (let off = 0; off + 8 <= sum.length; off += 8) sum.writeBigUInt64LE(BigInt.asUintN(64, sum.readBigUInt64LE(off) + value.readBigUInt64LE(off)), off);
      into.update(slotKey, sum);
      carried++;
    }
  } finally {
    old.close();
  }
  return carried;
}

/** The pin paths of the maps `objectPath` declares (a companion declares a subset). */
function only(paths: Record<string, string>, objectPath: string): Record<string, string> {
  const probe = BpfObject.open(objectPath, { programs: [] });
  try {
    const names = new Set(probe.mapNames());
    return Object.fromEntries(Object.entries(paths).filter(([m]) => names.has(m)));
  } finally {
    probe.close();
  }
}

/**
 * The ids of every program pinned in the pin folder's program folders (this build's and
 * any other's not yet unpinned): what may be detached or replaced as ours.
 */
export function pinnedProgramIds(dir: string): Map<number, string> {
  const ids = new Map<number, string>();
  if (!existsSync(dir)) return ids;
  for (const entry of readdirSync(dir)) {
    if (!entry.startsWith('prog-')) continue;
    for (const p of readdirSync(join(dir, entry))) {
      try {
        const { fd, id } = openProgram(join(dir, entry, p), p);
        ffi.closeFd(fd);
        ids.set(id, p);
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
  }
  return ids;
}

function copyEntries(oldPath: string, into: BpfMap, def: MapDef): void {
  const fd = ffi.objGet(oldPath);
  try {
    const k = mapInfoOf(fd, into.name);
    if (k.keySize !== def.keySize || k.valueSize !== def.valueSize || k.type !== def.type) return;
    // A socket map's entries are sockets of the moment (inpod_handoff): nothing to carry over.
    if (def.type === MapType.SOCKHASH) return;
    if (!isPinnedMapName(into.name)) return;
    const old = openPinnedMap(dirname(oldPath), into.name, { path: oldPath, maxEntries: def.maxEntries });
    try {
      for (const [key, value] of old.entries()) {
        try {
          into.update(key, value);
        } catch (err) {
          // A smaller map takes what fits; the controller refills what it derives.
          if ((err as { code?: string }).code === 'E2BIG') return;
          throw err;
        }
      }
    } finally {
      old.close();
    }
  } finally {
    ffi.closeFd(fd);
  }
}

/**
 * After the new programs are attached everywhere: `__next` maps take their names (the
 * old maps live on only while old programs still reference them), and other builds'
 * program folders are unpinned, as are maps of an older build that this one no longer has.
 */
export function commitInstall(dir: string, installed: Installed): string[] {
  const done: string[] = [];
  if (installed.carryHostFlows4) {
    copyHostFlows4(installed.maps.get('host_flows')!, installed.maps.get('host_flows4')!, true);
    installed.carryHostFlows4 = false;
    done.push('moved IPv4 flows from host_flows to host_flows4');
  }
  for (const name of installed.migrating) {
    renameSync(join(dir, name + NEXT), join(dir, name));
    done.push(`migrated map ${name}`);
  }
  installed.migrating = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (!entry.startsWith('prog-') && !entry.endsWith(NEXT) && !installed.maps.has(entry) && !statSync(path).isDirectory()) {
      unlinkSync(path);
      done.push(`unpinned retired map ${entry}`);
      continue;
    }
    if (!entry.startsWith('prog-') || path === installed.progDir) continue;
    for (const p of readdirSync(path)) unlinkSync(join(path, p));
    rmdirSync(path);
    done.push(`unpinned old programs ${entry}`);
  }
  return done;
}

export function closeInstalled(installed: Installed): void {
  for (const m of installed.maps.values()) m.close();
  for (const p of installed.programs.values()) {
    try {
      ffi.closeFd(p.fd);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }
}
