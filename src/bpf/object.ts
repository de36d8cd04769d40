/**
 * Handles over libbpf objects, maps and TC attachments. Each has an explicit close();
 * nothing relies on garbage collection. A handle remembers whether it created what it
 * wraps, so that cleanup removes only its own.
 */
import * as ffi from './ffi.js';
import { BpfError, isNotFound } from './errors.js';

export interface MapSizes {
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** Per-CPU maps read and write one value per possible CPU, each rounded up to 8 bytes. */
  perCpu?: boolean;
}

/** A pinned map whose kernel layout is not the one this build expects. */
export class PinnedMapMismatchError extends Error {
  constructor(
    readonly mapName: string,
    readonly path: string,
    readonly kernel: { type: number; keySize: number; valueSize: number },
    readonly expected: { type?: number; keySize: number; valueSize: number },
  ) {
    const typeNote = expected.type !== undefined && expected.type !== kernel.type ? `, map type ${kernel.type} where this build expects ${expected.type}` : '';
    super(
      `pinned map ${mapName} (${path}) has key ${kernel.keySize} bytes and value ${kernel.valueSize} bytes, this build expects key ${expected.keySize} and value ${expected.valueSize}${typeNote}: ` +
        'it was pinned by another build (an older version, or a schema change left half-way); `ambient-redirect run` of this build migrates it, `ambient-redirect uninstall` removes it',
    );
    this.name = 'PinnedMapMismatchError';
  }
}

/** A kernel (or map type) without batch operations: EINVAL before 5.6 (an unknown command), ENOTSUPP, EOPNOTSUPP. */
const NO_BATCH_ERRNOS = [22, 95, 524];

export class BpfMap {
  readonly name: string;
  readonly fd: number;
  readonly keySize: number;
  /** The size of one value, as the C struct is. */
  readonly valueSize: number;
  readonly maxEntries: number;
  /** The size of what lookup returns and update takes (all CPUs for per-CPU maps). */
  readonly bufferSize: number;
  /** Whether close() must close the fd (maps opened from a pin own it; an object's maps don't). */
  private readonly ownsFd: boolean;
  private closed = false;

  constructor(name: string, fd: number, sizes: MapSizes, ownsFd: boolean) {
    this.name = name;
    this.fd = fd;
    this.keySize = sizes.keySize;
    this.valueSize = sizes.valueSize;
    this.maxEntries = sizes.maxEntries;
    this.bufferSize = sizes.perCpu ? Math.ceil(sizes.valueSize / 8) * 8 * ffi.numPossibleCpus() : sizes.valueSize;
    this.ownsFd = ownsFd;
  }

  /**
   * Opens a pinned map (callers go through src/bpf/maps.ts, the catalogue) and checks the
   * kernel's bpf_map_info against the sizes (and type, when given) the caller expects:
   * a pin of another layout is refused before a buffer of the wrong size reaches the kernel.
   */
  static openPinned(path: string, name: string, sizes: MapSizes & { type?: number }): BpfMap {
    const fd = ffi.objGet(path);
    let k: KernelMapInfo;
    try {
      k = mapInfoOf(fd, name);
    } catch (err) {
      ffi.closeFd(fd);
      throw err;
    }
    if (k.keySize !== sizes.keySize || k.valueSize !== sizes.valueSize || (sizes.type !== undefined && k.type !== sizes.type)) {
      ffi.closeFd(fd);
      throw new PinnedMapMismatchError(
        name,
        path,
        { type: k.type, keySize: k.keySize, valueSize: k.valueSize },
        { type: sizes.type, keySize: sizes.keySize, valueSize: sizes.valueSize },
      );
    }
    return new BpfMap(name, fd, sizes, true);
  }

  private checkSize(what: string, buf: Buffer, size: number): void {
    if (buf.length !== size) throw new BpfError(`bpf_map ${what}`, this.name, 22, `${what} is ${buf.length} bytes, map wants ${size}`);
  }

  update(key: Buffer, value: Buffer, flags: number = ffi.UpdateFlags.ANY): void {
    this.checkSize('key', key, this.keySize);
    this.checkSize('value', value, this.bufferSize);
    ffi.mapUpdateElem(this.fd, this.name, key, value, flags);
  }

  /**
   * Writes `count` entries packed back to back (`keys`: count × keySize, `values`: count ×
   * bufferSize) in one syscall where the kernel has batch operations (5.6+), else one
   * update per entry. Either way, on an error the entries before it stay written.
   */
  updateBatch(keys: Buffer, values: Buffer, count: number): void {
    if (count === 0) return;
    this.checkSize('keys', keys, count * this.keySize);
    this.checkSize('values', values, count * this.bufferSize);
    if (!BpfMap.noBatch) {
      try {
        const n = ffi.mapUpdateBatch(this.fd, this.name, keys, values, count);
        if (n === count) return;
        throw new BpfError('bpf_map_update_batch', this.name, 5 /* EIO */, `wrote ${n} of ${count} entries`);
      } catch (err) {
        // Before 5.6 the command is unknown (EINVAL before anything is written); some map
        // types have no batch operations (ENOTSUPP, EOPNOTSUPP).
        if (!(err instanceof BpfError) || !NO_BATCH_ERRNOS.includes(err.errno)) throw err;
        BpfMap.noBatch = true;
      }
    }
    for (let i = 0; i < count; i++) {
      ffi.mapUpdateElem(
        this.fd,
        this.name,
        keys.subarray(i * this.keySize, (i + 1) * this.keySize),
        values.subarray(i * this.bufferSize, (i + 1) * this.bufferSize),
      );
    }
  }

  /** Set once the kernel refused a batch update as unknown: every later one goes entry by entry. */
  private static noBatch = false;

  lookup(key: Buffer): Buffer | null {
    this.checkSize('key', key, this.keySize);
    const value = Buffer.alloc(this.bufferSize);
    return ffi.mapLookupElem(this.fd, this.name, key, value) ? value : null;
  }

  /** Deletes the key; returns false when it was not there (deletes are idempotent). */
  delete(key: Buffer): boolean {
    this.checkSize('key', key, this.keySize);
    try {
      ffi.mapDeleteElem(this.fd, this.name, key);
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /** All keys, read with get_next_key. */
  keys(): Buffer[] {
    const out: Buffer[] = [];
    let prev: Buffer | null = null;
    for (;;) {
      const next = Buffer.alloc(this.keySize);
      if (!ffi.mapGetNextKey(this.fd, this.name, prev, next)) return out;
      out.push(next);
      prev = next;
    }
  }

  /**
   * Every entry as [key, value] pairs, read by walk() in batches of up to 4,096. Not a
   * snapshot: entries changing meanwhile may be seen or not.
   */
  entries(): [Buffer, Buffer][] {
    const out: [Buffer, Buffer][] = [];
    // Fresh buffers per batch: the pairs are views into them.
    const w = this.walk(4096, { reuse: false });
    while (!w.done) {
      const n = w.next();
      for (let i = 0; i < n; i++)
        out.push([w.keys.subarray(i * this.keySize, (i + 1) * this.keySize), w.values.subarray(i * this.bufferSize, (i + 1) * this.bufferSize)]);
    }
    return out;
  }

  /**
   * A walk over every entry, up to `chunk` entries at a time (fewer for per-CPU maps on
   * many CPUs: a batch's two buffers stay under 4 MiB): one syscall a batch where the
   * kernel has batch lookups (5.6+), else key by key with get_next_key and lookup. By
   * default every batch is read into the same two buffers (valid until the next batch):
   * a reader that decodes each batch before asking for the next allocates nothing per entry.
   */
  walk(chunk = 4096, opts: { reuse?: boolean } = {}): MapWalk {
    const cap = Math.floor(WALK_BUFFER_BYTES / (this.keySize + this.bufferSize));
    return new MapWalk(this, Math.max(1, Math.min(chunk, this.maxEntries, cap)), opts.reuse ?? true);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsFd) ffi.closeFd(this.fd);
  }
}

/** The most a walk's batch buffers hold (keys and values), unless one hash bucket needs more. */
const WALK_BUFFER_BYTES = 4 << 20;

/** Set once the kernel refused a batch lookup as unknown: every later walk goes key by key. */
let noLookupBatch = false;

/**
 * One walk over a map's entries (BpfMap.walk): next() reads the next batch into `keys` and
 * `values` (count × keySize and count × bufferSize, back to back) and returns its count;
 * `done` once the last batch is in. The buffers sit at offset 0 of their own ArrayBuffers,
 * so a DataView over `.buffer` reads the kernel's host-order fields directly.
 */
export class MapWalk {
  keys: Buffer;
  values: Buffer;
  done = false;
  private chunk: number;
  /** The kernel's position (a bucket index for hash maps, a key for arrays); null before the first batch. */
  private token: Buffer | null = null;
  /** Key by key: the last key read, null before the first. */
  private lastKey: Buffer | null = null;
  private started = false;

  constructor(
    private readonly map: BpfMap,
    chunk: number,
    private readonly reuse: boolean,
  ) {
    this.chunk = chunk;
    this.keys = ownBuffer(chunk * map.keySize);
    this.values = ownBuffer(chunk * map.bufferSize);
  }

  next(): number {
    if (this.done) return 0;
    if (this.started && !this.reuse) this.resize(this.chunk);
    this.started = true;
    if (!noLookupBatch) {
      try {
        return this.nextBatch();
      } catch (err) {
        // Only the first batch can meet a kernel without batch lookups (nothing read yet).
        if (this.token !== null || !(err instanceof BpfError) || !NO_BATCH_ERRNOS.includes(err.errno)) throw err;
        noLookupBatch = true;
      }
    }
    return this.nextByKey();
  }

  private resize(chunk: number): void {
    this.chunk = chunk;
    this.keys = ownBuffer(chunk * this.map.keySize);
    this.values = ownBuffer(chunk * this.map.bufferSize);
  }

  private nextBatch(): number {
    const m = this.map;
    for (;;) {
      const out = Buffer.alloc(Math.max(8, m.keySize));
      let r: { count: number; done: boolean };
      try {
        r = ffi.mapLookupBatch(m.fd, m.name, this.token, out, this.keys, this.values, this.chunk);
      } catch (err) {
        // A hash bucket holds more entries than the chunk: ask again with room for it.
        if (err instanceof BpfError && err.errno === 28 /* ENOSPC */ && this.chunk < m.maxEntries) {
          this.resize(Math.min(m.maxEntries, this.chunk * 2));
          continue;
        }
        throw err;
      }
      this.token = out;
      if (r.done) this.done = true;
      return r.count;
    }
  }

  private nextByKey(): number {
    const m = this.map;
    let n = 0;
    while (n < this.chunk) {
      const key = this.keys.subarray(n * m.keySize, (n + 1) * m.keySize);
      if (!ffi.mapGetNextKey(m.fd, m.name, this.lastKey, key)) {
        this.done = true;
        break;
      }
      this.lastKey = Buffer.from(key);
      // An entry deleted between the key walk and its lookup is left out.
      if (ffi.mapLookupElem(m.fd, m.name, key, this.values.subarray(n * m.bufferSize, (n + 1) * m.bufferSize))) n++;
    }
    return n;
  }
}

/** Zeroed, at offset 0 of an ArrayBuffer of its own (never a slice of Node's pool). */
function ownBuffer(size: number): Buffer {
  return Buffer.from(new ArrayBuffer(size));
}

export interface OpenOptions {
  /**
   * Folder for maps declared with LIBBPF_PIN_BY_NAME: reused when pinned there, pinned
   * when not. Without it nothing is pinned (libbpf would otherwise pin in /sys/fs/bpf).
   */
  pinRoot?: string;
  /** Programs to load; the others are not loaded (variants the kernel cannot run). */
  programs?: readonly string[];
  /** Pin paths for single maps, overriding pinRoot (a migration's new maps). */
  mapPinPaths?: Readonly<Record<string, string>>;
}

export interface MapDef {
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
}

export class BpfObject {
  readonly path: string;
  private readonly opened: ffi.OpenedObject;
  private loaded = false;
  private closed = false;
  private readonly maps = new Map<string, BpfMap>();

  private constructor(path: string, opened: ffi.OpenedObject) {
    this.path = path;
    this.opened = opened;
  }

  static open(path: string, opts: OpenOptions = {}): BpfObject {
    const o = new BpfObject(path, ffi.objectOpenFile(path, opts.pinRoot ?? null));
    try {
      if (opts.pinRoot === undefined) {
        for (const name of ffi.mapNames(o.opened.obj)) ffi.mapSetPinPath(ffi.findMap(o.opened.obj, name), name, null);
      }
      for (const [name, path] of Object.entries(opts.mapPinPaths ?? {})) ffi.mapSetPinPath(ffi.findMap(o.opened.obj, name), name, path);
      if (opts.programs) {
        const all = ffi.programNames(o.opened.obj);
        for (const want of opts.programs) {
          if (!all.includes(want)) throw new BpfError('bpf_object__find_program_by_name', want, 2, `${path} has: ${all.join(', ')}`);
        }
        for (const name of all) {
          ffi.programSetAutoload(ffi.findProgram(o.opened.obj, name), name, opts.programs.includes(name));
        }
      }
    } catch (err) {
      o.close();
      throw err;
    }
    return o;
  }

  static openAndLoad(path: string, opts: OpenOptions = {}): BpfObject {
    const o = BpfObject.open(path, opts);
    try {
      o.load();
    } catch (err) {
      o.close();
      throw err;
    }
    return o;
  }

  load(): void {
    ffi.objectLoad(this.opened, this.path);
    this.loaded = true;
  }

  programFd(name: string): number {
    this.requireLoaded();
    return ffi.programFd(ffi.findProgram(this.opened.obj, name), name);
  }

  map(name: string): BpfMap {
    this.requireLoaded();
    let m = this.maps.get(name);
    if (!m) {
      const ptr = ffi.findMap(this.opened.obj, name);
      m = new BpfMap(name, ffi.mapFd(ptr, name), ffi.mapInfo(ptr), false);
      this.maps.set(name, m);
    }
    return m;
  }

  mapNames(): string[] {
    return ffi.mapNames(this.opened.obj);
  }

  /** The maps as the object declares them (readable before load). */
  mapDefs(): Map<string, MapDef> {
    const out = new Map<string, MapDef>();
    for (const name of ffi.mapNames(this.opened.obj)) {
      const { type, keySize, valueSize, maxEntries } = ffi.mapInfo(ffi.findMap(this.opened.obj, name));
      out.set(name, { type, keySize, valueSize, maxEntries });
    }
    return out;
  }

  programNames(): string[] {
    return ffi.programNames(this.opened.obj);
  }

  /** Pins a loaded program; the kernel keeps it while pinned or attached. */
  pinProgram(name: string, path: string): void {
    ffi.objPin(this.programFd(name), path);
  }

  private requireLoaded(): void {
    if (!this.loaded) throw new Error(`${this.path}: not loaded`);
    if (this.closed) throw new Error(`${this.path}: closed`);
  }

  /** Closes the object's fds. Pinned maps and attached programs live on in the kernel. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    ffi.objectClose(this.opened.obj);
    this.opened.release();
  }
}

/** What the kernel says of a loaded program or map (struct bpf_prog_info / bpf_map_info). */
export function programId(fd: number, what: string): number {
  return ffi.objGetInfo(fd, what, 8).readUInt32LE(4); // { __u32 type; __u32 id; }
}

export interface KernelMapInfo {
  type: number;
  id: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags: number;
}

export function mapInfoOf(fd: number, what: string): KernelMapInfo {
  const b = ffi.objGetInfo(fd, what, 24);
  return {
    type: b.readUInt32LE(0),
    id: b.readUInt32LE(4),
    keySize: b.readUInt32LE(8),
    valueSize: b.readUInt32LE(12),
    maxEntries: b.readUInt32LE(16),
    flags: b.readUInt32LE(20),
  };
}
