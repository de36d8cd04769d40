/**
 * One of the two modules that import koffi: the system libbpf (`libbpf.so.1`, >= 1.0) and
 * the few libc calls the BPF layer needs. Its sibling src/host/libc.ts holds the libc
 * calls of the ZDS protocol (SEQPACKET sockets, SCM_RIGHTS, epoll); nothing else in src/
 * imports koffi (the harness's harness/sim/transparent.ts binds its own socket calls). Functions are shaped like the C API,
 * synchronous, and checked: a failing call throws a BpfError naming the operation and errno.
 *
 * Structs the kernel and we share never cross here as koffi types: keys and values are
 * Buffers built by the codec. Only libbpf's own option structs are declared below.
 */
import koffi, { type LibraryHandle } from 'koffi';
import { BpfError, checkInt, checkPtr } from './errors.js';

/**
 * A library opened on the first call of one of its functions, not at import: the unit tests
 * import modules that reach this one and must run where the system libbpf is missing
 * (test/unit/no-libbpf.test.ts). `func` declares a binding as koffi's does; the returned
 * function binds it on its first call and calls the bound function from then on.
 */
type Binding = ReturnType<LibraryHandle['func']>;

function lazyLibrary(path: string, onLoad?: (lib: LibraryHandle) => void) {
  let lib: LibraryHandle | undefined;
  const open = (): LibraryHandle => {
    if (!lib) {
      const opened = koffi.load(path);
      onLoad?.(opened);
      lib = opened;
    }
    return lib;
  };
  return {
    func(definition: string): Binding {
      let fn: Binding | undefined;
      return ((...args: unknown[]) => {
        fn ??= open().func(definition);
        return fn(...args);
      }) as Binding;
    },
  };
}

// libbpf prints warnings to stderr by default; the controller reports through its own
// errors instead (the verifier log travels in the BpfError).
const bpf = lazyLibrary('libbpf.so.1', (lib) => lib.func('void *libbpf_set_print(void *fn)')(null));
const libc = lazyLibrary('libc.so.6');

// Opaque libbpf handles.
koffi.opaque('bpf_object');
koffi.opaque('bpf_program');
koffi.opaque('bpf_map');

koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'const char *',
  relaxed_maps: 'bool',
  pin_root_path: 'const char *',
  _removed_attach_prog_fd: 'uint32_t',
  kconfig: 'const char *',
  btf_custom_path: 'const char *',
  kernel_log_buf: 'void *',
  kernel_log_size: 'size_t',
  kernel_log_level: 'uint32_t',
});
const OPEN_OPTS_SIZE = koffi.sizeof('bpf_object_open_opts');

koffi.struct('bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});
koffi.struct('bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});
const TC_HOOK_SIZE = koffi.sizeof('bpf_tc_hook');

koffi.struct('bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'const void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'const void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});
const TEST_RUN_OPTS_SIZE = koffi.sizeof('bpf_test_run_opts');

koffi.struct('bpf_xdp_attach_opts', {
  sz: 'size_t',
  old_prog_fd: 'int',
});
const XDP_ATTACH_OPTS_SIZE = koffi.sizeof('bpf_xdp_attach_opts');
const TC_OPTS_SIZE = koffi.sizeof('bpf_tc_opts');

const c = {
  libbpf_major_version: bpf.func('uint32_t libbpf_major_version(void)'),
  libbpf_minor_version: bpf.func('uint32_t libbpf_minor_version(void)'),
  libbpf_set_print: bpf.func('void *libbpf_set_print(void *fn)'),
  libbpf_probe_bpf_helper: bpf.func('int libbpf_probe_bpf_helper(int prog_type, int helper_id, const void *opts)'),
  libbpf_probe_bpf_prog_type: bpf.func('int libbpf_probe_bpf_prog_type(int prog_type, const void *opts)'),

  bpf_object__open_file: bpf.func('bpf_object *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)'),
  bpf_object__load: bpf.func('int bpf_object__load(bpf_object *obj)'),
  bpf_object__close: bpf.func('void bpf_object__close(bpf_object *obj)'),
  bpf_object__find_program_by_name: bpf.func('bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)'),
  bpf_object__find_map_by_name: bpf.func('bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)'),
  bpf_object__next_program: bpf.func('bpf_program *bpf_object__next_program(bpf_object *obj, bpf_program *prog)'),
  bpf_object__next_map: bpf.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *map)'),
  bpf_program__name: bpf.func('const char *bpf_program__name(bpf_program *prog)'),
  bpf_program__set_autoload: bpf.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)'),
  bpf_program__fd: bpf.func('int bpf_program__fd(bpf_program *prog)'),
  bpf_map__name: bpf.func('const char *bpf_map__name(bpf_map *map)'),
  bpf_map__fd: bpf.func('int bpf_map__fd(bpf_map *map)'),
  bpf_map__key_size: bpf.func('uint32_t bpf_map__key_size(bpf_map *map)'),
  bpf_map__value_size: bpf.func('uint32_t bpf_map__value_size(bpf_map *map)'),
  bpf_map__max_entries: bpf.func('uint32_t bpf_map__max_entries(bpf_map *map)'),
  bpf_map__type: bpf.func('int bpf_map__type(bpf_map *map)'),
  libbpf_num_possible_cpus: bpf.func('int libbpf_num_possible_cpus(void)'),
  bpf_map__set_pin_path: bpf.func('int bpf_map__set_pin_path(bpf_map *map, const char *path)'),

  bpf_map_update_elem: bpf.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
  bpf_map_lookup_elem: bpf.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)'),
  bpf_map_update_batch: bpf.func('int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, const void *opts)'),
  bpf_map_lookup_batch: bpf.func(
    'int bpf_map_lookup_batch(int fd, const void *in_batch, _Out_ void *out_batch, _Out_ void *keys, _Out_ void *values, _Inout_ uint32_t *count, const void *opts)',
  ),
  bpf_map_delete_elem: bpf.func('int bpf_map_delete_elem(int fd, const void *key)'),
  bpf_map_get_next_key: bpf.func('int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next_key)'),
  bpf_obj_get: bpf.func('int bpf_obj_get(const char *pathname)'),
  bpf_obj_get_info_by_fd: bpf.func('int bpf_obj_get_info_by_fd(int fd, void *info, _Inout_ uint32_t *info_len)'),
  bpf_obj_pin: bpf.func('int bpf_obj_pin(int fd, const char *pathname)'),
  bpf_prog_get_fd_by_id: bpf.func('int bpf_prog_get_fd_by_id(uint32_t id)'),

  bpf_tc_hook_create: bpf.func('int bpf_tc_hook_create(bpf_tc_hook *hook)'),
  bpf_tc_hook_destroy: bpf.func('int bpf_tc_hook_destroy(bpf_tc_hook *hook)'),
  bpf_tc_attach: bpf.func('int bpf_tc_attach(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)'),
  bpf_tc_detach: bpf.func('int bpf_tc_detach(const bpf_tc_hook *hook, const bpf_tc_opts *opts)'),
  bpf_tc_query: bpf.func('int bpf_tc_query(const bpf_tc_hook *hook, _Inout_ bpf_tc_opts *opts)'),
  bpf_xdp_attach: bpf.func('int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const bpf_xdp_attach_opts *opts)'),
  bpf_xdp_detach: bpf.func('int bpf_xdp_detach(int ifindex, uint32_t flags, const bpf_xdp_attach_opts *opts)'),
  bpf_xdp_query_id: bpf.func('int bpf_xdp_query_id(int ifindex, int flags, _Out_ uint32_t *prog_id)'),
  bpf_prog_test_run_opts: bpf.func('int bpf_prog_test_run_opts(int prog_fd, _Inout_ bpf_test_run_opts *opts)'),

  close: libc.func('int close(int fd)'),
  setns: libc.func('int setns(int fd, int nstype)'),
  syscall: libc.func('long syscall(long number, ...)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  send: libc.func('long send(int fd, const void *buf, size_t len, int flags)'),
  recv: libc.func('long recv(int fd, _Out_ void *buf, size_t len, int flags)'),
};

/** Pointers returned by libbpf: opaque to us. */
export type ObjectPtr = { readonly __brand: 'bpf_object' };
export type ProgramPtr = { readonly __brand: 'bpf_program' };
export type MapPtr = { readonly __brand: 'bpf_map' };

const errno = (): number => koffi.errno();
const VERIFIER_LOG_SIZE = 4 << 20;

export function libbpfVersion(): string {
  return `${c.libbpf_major_version()}.${c.libbpf_minor_version()}`;
}

export interface OpenedObject {
  obj: ObjectPtr;
  /** Frees the verifier log buffer; call after close. */
  release(): void;
  /** The kernel's log of the last load, if any. */
  log(): string;
}

export function objectOpenFile(path: string, pinRootPath: string | null): OpenedObject {
  const logBuf = koffi.alloc('char', VERIFIER_LOG_SIZE);
  koffi.encode(logBuf, 'char', 0);
  const opts = {
    sz: OPEN_OPTS_SIZE,
    object_name: null,
    relaxed_maps: false,
    pin_root_path: pinRootPath,
    _removed_attach_prog_fd: 0,
    kconfig: null,
    btf_custom_path: null,
    kernel_log_buf: logBuf,
    kernel_log_size: VERIFIER_LOG_SIZE,
    kernel_log_level: 0,
  };
  let obj: ObjectPtr;
  try {
    obj = checkPtr('bpf_object__open_file', path, c.bpf_object__open_file(path, opts), errno);
  } catch (err) {
    koffi.free(logBuf);
    throw err;
  }
  return {
    obj,
    release: () => koffi.free(logBuf),
    log: () => (koffi.decode(logBuf, 'char', -1) as string) ?? '',
  };
}

export function objectLoad(o: OpenedObject, what: string): void {
  checkInt('bpf_object__load', what, c.bpf_object__load(o.obj), () => o.log().trim());
}

export function objectClose(obj: ObjectPtr): void {
  c.bpf_object__close(obj);
}

export function findProgram(obj: ObjectPtr, name: string): ProgramPtr {
  return checkPtr('bpf_object__find_program_by_name', name, c.bpf_object__find_program_by_name(obj, name), errno);
}

export function findMap(obj: ObjectPtr, name: string): MapPtr {
  return checkPtr('bpf_object__find_map_by_name', name, c.bpf_object__find_map_by_name(obj, name), errno);
}

export function programNames(obj: ObjectPtr): string[] {
  const names: string[] = [];
  for (let p = c.bpf_object__next_program(obj, null); p; p = c.bpf_object__next_program(obj, p)) {
    names.push(c.bpf_program__name(p) as string);
  }
  return names;
}

export function mapNames(obj: ObjectPtr): string[] {
  const names: string[] = [];
  for (let m = c.bpf_object__next_map(obj, null); m; m = c.bpf_object__next_map(obj, m)) {
    names.push(c.bpf_map__name(m) as string);
  }
  return names;
}

export function programSetAutoload(prog: ProgramPtr, name: string, autoload: boolean): void {
  checkInt('bpf_program__set_autoload', name, c.bpf_program__set_autoload(prog, autoload));
}

export function programFd(prog: ProgramPtr, name: string): number {
  return checkInt('bpf_program__fd', name, c.bpf_program__fd(prog));
}

export function mapFd(map: MapPtr, name: string): number {
  return checkInt('bpf_map__fd', name, c.bpf_map__fd(map));
}

const PERCPU_MAP_TYPES = new Set([5 /* PERCPU_HASH */, 6 /* PERCPU_ARRAY */, 10 /* LRU_PERCPU_HASH */]);

export function mapInfo(map: MapPtr): { type: number; keySize: number; valueSize: number; maxEntries: number; perCpu: boolean } {
  return {
    type: c.bpf_map__type(map) as number,
    keySize: c.bpf_map__key_size(map),
    valueSize: c.bpf_map__value_size(map),
    maxEntries: c.bpf_map__max_entries(map),
    perCpu: PERCPU_MAP_TYPES.has(c.bpf_map__type(map) as number),
  };
}

/** CPUs a per-CPU map holds a value for. */
export function numPossibleCpus(): number {
  return checkInt('libbpf_num_possible_cpus', 'cpus', c.libbpf_num_possible_cpus());
}

export function mapSetPinPath(map: MapPtr, name: string, path: string | null): void {
  checkInt('bpf_map__set_pin_path', name, c.bpf_map__set_pin_path(map, path));
}

/** BPF_ANY / BPF_NOEXIST / BPF_EXIST */
export const UpdateFlags = { ANY: 0, NOEXIST: 1, EXIST: 2 } as const;

export function mapUpdateElem(fd: number, name: string, key: Buffer, value: Buffer, flags = 0): void {
  checkInt('bpf_map_update_elem', name, c.bpf_map_update_elem(fd, key, value, flags));
}

export function mapLookupElem(fd: number, name: string, key: Buffer, value: Buffer): boolean {
  const ret = c.bpf_map_lookup_elem(fd, key, value) as number;
  if (ret === -2 /* ENOENT */) return false;
  checkInt('bpf_map_lookup_elem', name, ret);
  return true;
}

/**
 * Writes `count` entries in one syscall (keys and values packed back to back). Returns how
 * many the kernel wrote; on an error the ones before it stay written.
 */
export function mapUpdateBatch(fd: number, name: string, keys: Buffer, values: Buffer, count: number): number {
  const n = [count];
  checkInt('bpf_map_update_batch', name, c.bpf_map_update_batch(fd, keys, values, n, null));
  return n[0]!;
}

/**
 * Reads up to `count` entries after the position `inBatch` (null: from the start) into
 * `keys` and `values`, and the next position into `outBatch`. Returns how many it read
 * and whether the walk is over (ENOENT: the last entries are in this answer).
 */
export function mapLookupBatch(
  fd: number,
  name: string,
  inBatch: Buffer | null,
  outBatch: Buffer,
  keys: Buffer,
  values: Buffer,
  count: number,
): { count: number; done: boolean } {
  const n = [count];
  const ret = c.bpf_map_lookup_batch(fd, inBatch, outBatch, keys, values, n, null) as number;
  if (ret === -2 /* ENOENT */) return { count: n[0]!, done: true };
  checkInt('bpf_map_lookup_batch', name, ret);
  return { count: n[0]!, done: false };
}

export function mapDeleteElem(fd: number, name: string, key: Buffer): void {
  checkInt('bpf_map_delete_elem', name, c.bpf_map_delete_elem(fd, key));
}

/** Writes the key after `key` (or the first key, for null) into `next`; false at the end. */
export function mapGetNextKey(fd: number, name: string, key: Buffer | null, next: Buffer): boolean {
  const ret = c.bpf_map_get_next_key(fd, key, next) as number;
  if (ret === -2 /* ENOENT */) return false;
  checkInt('bpf_map_get_next_key', name, ret);
  return true;
}

export function objGet(path: string): number {
  return checkInt('bpf_obj_get', path, c.bpf_obj_get(path));
}

/** The first `len` bytes of the kernel's info struct for a program, map or link fd. */
export function objGetInfo(fd: number, what: string, len: number): Buffer {
  const info = Buffer.alloc(len);
  const size = [len];
  checkInt('bpf_obj_get_info_by_fd', what, c.bpf_obj_get_info_by_fd(fd, info, size));
  return info;
}

/** An fd for the program with this id (close it); throws ENOENT when it is gone. */
export function progGetFdById(id: number): number {
  return checkInt('bpf_prog_get_fd_by_id', `program ${id}`, c.bpf_prog_get_fd_by_id(id));
}

export function objPin(fd: number, path: string): void {
  checkInt('bpf_obj_pin', path, c.bpf_obj_pin(fd, path));
}

export function closeFd(fd: number): void {
  if (c.close(fd) < 0) throw new BpfError('close', String(fd), errno());
}

// --- TC (netlink) attachment -----------------------------------------------------------

export const TcAttachPoint = { INGRESS: 1, EGRESS: 2 } as const;
export type TcAttachPoint = (typeof TcAttachPoint)[keyof typeof TcAttachPoint];
const BPF_TC_F_REPLACE = 1;

function hook(ifindex: number, attachPoint: number) {
  return { sz: TC_HOOK_SIZE, ifindex, attach_point: attachPoint, parent: 0 };
}

function describeHook(ifindex: number, attachPoint: number): string {
  return `ifindex ${ifindex} ${attachPoint === TcAttachPoint.INGRESS ? 'ingress' : attachPoint === TcAttachPoint.EGRESS ? 'egress' : 'ingress+egress'}`;
}

/** Creates the clsact qdisc; returns false when it already existed. */
export function tcHookCreate(ifindex: number, attachPoint: number): boolean {
  const ret = c.bpf_tc_hook_create(hook(ifindex, attachPoint)) as number;
  if (ret === -17 /* EEXIST */) return false;
  checkInt('bpf_tc_hook_create', describeHook(ifindex, attachPoint), ret);
  return true;
}

/** Removes the clsact qdisc (both directions) with every filter on it. */
export function tcHookDestroy(ifindex: number): void {
  checkInt('bpf_tc_hook_destroy', describeHook(ifindex, 3), c.bpf_tc_hook_destroy(hook(ifindex, 3)));
}

export interface TcFilter {
  handle: number;
  priority: number;
}

/** Attaches (or, with replace, swaps in place) a program at handle/priority; returns its prog id. */
export function tcAttach(ifindex: number, attachPoint: TcAttachPoint, progFd: number, filter: TcFilter, replace: boolean): number {
  const opts = { sz: TC_OPTS_SIZE, prog_fd: progFd, flags: replace ? BPF_TC_F_REPLACE : 0, prog_id: 0, handle: filter.handle, priority: filter.priority };
  checkInt('bpf_tc_attach', describeHook(ifindex, attachPoint), c.bpf_tc_attach(hook(ifindex, attachPoint), opts));
  return opts.prog_id;
}

export function tcDetach(ifindex: number, attachPoint: TcAttachPoint, filter: TcFilter): void {
  const opts = { sz: TC_OPTS_SIZE, prog_fd: 0, flags: 0, prog_id: 0, handle: filter.handle, priority: filter.priority };
  checkInt('bpf_tc_detach', describeHook(ifindex, attachPoint), c.bpf_tc_detach(hook(ifindex, attachPoint), opts));
}

/** The program id at handle/priority, or null when no filter is there. */
export function tcQuery(ifindex: number, attachPoint: TcAttachPoint, filter: TcFilter): number | null {
  const opts = { sz: TC_OPTS_SIZE, prog_fd: 0, flags: 0, prog_id: 0, handle: filter.handle, priority: filter.priority };
  const ret = c.bpf_tc_query(hook(ifindex, attachPoint), opts) as number;
  if (ret === -2 /* ENOENT */) return null;
  checkInt('bpf_tc_query', describeHook(ifindex, attachPoint), ret);
  return opts.prog_id;
}

// --- XDP (netlink) attachment ------------------------------------------------------------

/** linux/if_link.h's XDP_FLAGS_*. */
export const XdpFlags = { UPDATE_IF_NOEXIST: 1 << 0, SKB_MODE: 1 << 1, DRV_MODE: 1 << 2, HW_MODE: 1 << 3, REPLACE: 1 << 4 } as const;

/**
 * Attaches a program to a device's XDP hook. With XDP_FLAGS_REPLACE and `oldProgFd`, only
 * if that program is the one there (EEXIST otherwise), swapped in one step; with
 * XDP_FLAGS_UPDATE_IF_NOEXIST, only if the hook is empty (EBUSY otherwise).
 */
export function xdpAttach(ifindex: number, progFd: number, flags: number, oldProgFd: number | null): void {
  const opts = oldProgFd === null ? null : { sz: XDP_ATTACH_OPTS_SIZE, old_prog_fd: oldProgFd };
  checkInt('bpf_xdp_attach', `ifindex ${ifindex} xdp`, c.bpf_xdp_attach(ifindex, progFd, flags, opts));
}

/** Empties a device's XDP hook; with XDP_FLAGS_REPLACE and `oldProgFd`, only if that program is there. */
export function xdpDetach(ifindex: number, flags: number, oldProgFd: number | null): void {
  const opts = oldProgFd === null ? null : { sz: XDP_ATTACH_OPTS_SIZE, old_prog_fd: oldProgFd };
  checkInt('bpf_xdp_detach', `ifindex ${ifindex} xdp`, c.bpf_xdp_detach(ifindex, flags, opts));
}

/** The id of the program on a device's XDP hook in the mode `flags` names (0: none there). */
export function xdpQueryId(ifindex: number, flags: number): number {
  const id = [0];
  checkInt('bpf_xdp_query_id', `ifindex ${ifindex} xdp`, c.bpf_xdp_query_id(ifindex, flags, id));
  return id[0]!;
}

// --- tcx (kernel 6.6+): the raw bpf(2) syscall, since libbpf 1.1 predates it ----------------
//
// The attr layouts below are the kernel's union bpf_attr (include/uapi/linux/bpf.h) for the
// two commands we need; offsets are fixed by the ABI.

const SYS_BPF: Record<string, number> = { x64: 321, arm64: 280 };
const BPF_PROG_QUERY = 16;
const BPF_LINK_CREATE = 28;
const BPF_LINK_UPDATE = 29;
const BPF_LINK_DETACH = 34;
const BPF_ATTR_SIZE = 64;

export const TcxAttachType = { INGRESS: 46, EGRESS: 47 } as const;
export type TcxAttachType = (typeof TcxAttachType)[keyof typeof TcxAttachType];
/** BPF_F_BEFORE: with no relative program, the new one goes first. */
export const BPF_F_BEFORE = 1 << 3;

function bpfSyscall(op: string, target: string, cmd: number, attr: Buffer): number {
  const nr = SYS_BPF[process.arch];
  if (nr === undefined) throw new BpfError(op, target, 38 /* ENOSYS */, `no bpf(2) syscall number known for ${process.arch}`);
  const ret = Number(c.syscall(nr, 'int', cmd, 'void *', attr, 'uint32_t', BPF_ATTR_SIZE));
  if (ret < 0) throw new BpfError(op, target, errno());
  return ret;
}

function describeTcx(ifindex: number, type: TcxAttachType): string {
  return `ifindex ${ifindex} tcx ${type === TcxAttachType.INGRESS ? 'ingress' : 'egress'}`;
}

/**
 * The programs on a device's tcx hook, in the order they run (BPF_PROG_QUERY). Throws
 * EINVAL on kernels without tcx, ENODEV for a device that is gone.
 */
export function tcxQuery(ifindex: number, type: TcxAttachType, max = 64): number[] {
  const ids = koffi.alloc('uint32_t', max);
  try {
    const attr = Buffer.alloc(BPF_ATTR_SIZE);
    attr.writeUInt32LE(ifindex, 0); // target_ifindex
    attr.writeUInt32LE(type, 4); // attach_type
    attr.writeBigUInt64LE(BigInt(koffi.address(ids)), 16); // prog_ids
    attr.writeUInt32LE(max, 24); // count
    bpfSyscall('bpf(BPF_PROG_QUERY)', describeTcx(ifindex, type), BPF_PROG_QUERY, attr);
    const count = attr.readUInt32LE(24);
    return count === 0 ? [] : Array.from(koffi.decode(ids, 'uint32_t', Math.min(count, max)) as ArrayLike<number>);
  } finally {
    koffi.free(ids);
  }
}

/**
 * Attaches a program to a device's tcx hook through a BPF link (BPF_LINK_CREATE); returns
 * the link fd. The link, and the attachment, end when its last fd closes (or its pin goes).
 */
export function tcxLinkCreate(ifindex: number, type: TcxAttachType, progFd: number, flags = 0): number {
  const attr = Buffer.alloc(BPF_ATTR_SIZE);
  attr.writeUInt32LE(progFd, 0);
  attr.writeUInt32LE(ifindex, 4); // target_ifindex
  attr.writeUInt32LE(type, 8);
  attr.writeUInt32LE(flags, 12);
  return bpfSyscall('bpf(BPF_LINK_CREATE)', describeTcx(ifindex, type), BPF_LINK_CREATE, attr);
}

/** enum bpf_attach_type: the socket lookup of a network namespace (5.9). */
export const BPF_SK_LOOKUP = 36;

/** The programs attached to a network namespace's hook (BPF_PROG_QUERY on its fd). */
export function netnsQuery(netnsFd: number, type: number, what: string, max = 64): number[] {
  const ids = koffi.alloc('uint32_t', max);
  try {
    const attr = Buffer.alloc(BPF_ATTR_SIZE);
    attr.writeUInt32LE(netnsFd, 0); // target_fd
    attr.writeUInt32LE(type, 4); // attach_type
    attr.writeBigUInt64LE(BigInt(koffi.address(ids)), 16); // prog_ids
    attr.writeUInt32LE(max, 24); // count
    bpfSyscall('bpf(BPF_PROG_QUERY)', what, BPF_PROG_QUERY, attr);
    const count = attr.readUInt32LE(24);
    return count === 0 ? [] : Array.from(koffi.decode(ids, 'uint32_t', Math.min(count, max)) as ArrayLike<number>);
  } finally {
    koffi.free(ids);
  }
}

/**
 * Attaches a program to a network namespace's hook (`type`, e.g. BPF_SK_LOOKUP) through a
 * BPF link; returns the link fd. The attachment ends when the link's last fd and pin go,
 * or with the namespace.
 */
export function netnsLinkCreate(netnsFd: number, type: number, progFd: number, what: string): number {
  const attr = Buffer.alloc(BPF_ATTR_SIZE);
  attr.writeUInt32LE(progFd, 0);
  attr.writeUInt32LE(netnsFd, 4); // target_fd
  attr.writeUInt32LE(type, 8);
  return bpfSyscall('bpf(BPF_LINK_CREATE)', what, BPF_LINK_CREATE, attr);
}

/** Puts another program behind an existing link (BPF_LINK_UPDATE), with no gap. */
export function linkUpdate(linkFd: number, progFd: number, what: string): void {
  const attr = Buffer.alloc(BPF_ATTR_SIZE);
  attr.writeUInt32LE(linkFd, 0);
  attr.writeUInt32LE(progFd, 4); // new_prog_fd
  bpfSyscall('bpf(BPF_LINK_UPDATE)', what, BPF_LINK_UPDATE, attr);
}

/** Ends a link's attachment now, whoever else holds it (BPF_LINK_DETACH, 5.9). */
export function linkDetach(linkFd: number, what: string): void {
  const attr = Buffer.alloc(BPF_ATTR_SIZE);
  attr.writeUInt32LE(linkFd, 0);
  bpfSyscall('bpf(BPF_LINK_DETACH)', what, BPF_LINK_DETACH, attr);
}

// --- rtnetlink: listing a hook's tc filters in-process ------------------------------------

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const RTM_GETTFILTER = 46;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const TC_H_CLSACT = 0xfffffff1;

/**
 * Sends one RTM_GETTFILTER dump request for a device's clsact hook (in the calling
 * thread's netns) and returns the raw reply messages, up to and including NLMSG_DONE or
 * the first NLMSG_ERROR. Parsing is src/bpf/hooks.ts's.
 */
export function netlinkDumpFilters(ifindex: number, attachPoint: TcAttachPoint): Buffer[] {
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) as number;
  if (fd < 0) throw new BpfError('socket(AF_NETLINK)', describeHook(ifindex, attachPoint), errno());
  try {
    const req = Buffer.alloc(16 + 20);
    req.writeUInt32LE(req.length, 0); // nlmsg_len
    req.writeUInt16LE(RTM_GETTFILTER, 4);
    req.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    req.writeUInt32LE(1, 8); // seq
    // struct tcmsg: family, pad[3], ifindex, handle, parent, info
    req.writeInt32LE(ifindex, 20);
    // parent: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS 0xfff2 | TC_H_MIN_EGRESS 0xfff3)
    req.writeUInt32LE(((TC_H_CLSACT & 0xffff0000) | (attachPoint === TcAttachPoint.INGRESS ? 0xfff2 : 0xfff3)) >>> 0, 28);
    if (Number(c.send(fd, req, req.length, 0)) < 0) throw new BpfError('send(RTM_GETTFILTER)', describeHook(ifindex, attachPoint), errno());
    const out: Buffer[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = Number(c.recv(fd, buf, buf.length, 0));
      if (n < 0) throw new BpfError('recv(RTM_GETTFILTER)', describeHook(ifindex, attachPoint), errno());
      let off = 0;
      while (off + 16 <= n) {
        const len = buf.readUInt32LE(off);
        const type = buf.readUInt16LE(off + 4);
        if (len < 16 || off + len > n) return out;
        out.push(Buffer.from(buf.subarray(off, off + len)));
        if (type === 3 /* NLMSG_DONE */ || type === 2 /* NLMSG_ERROR */) return out;
        off += (len + 3) & ~3;
      }
      if (n === 0) return out;
    }
  } finally {
    c.close(fd);
  }
}

// --- BPF_PROG_RUN ------------------------------------------------------------------------

export interface TestRunIn {
  /** null for programs that run on a context alone (SK_LOOKUP). */
  dataIn: Buffer | null;
  /** Room for the program's output frame (the kernel fails with ENOSPC when too small). */
  dataOut: Buffer | null;
  ctxIn: Buffer | null;
  ctxOut: Buffer | null;
  repeat: number;
}

export interface TestRunOut {
  retval: number;
  dataSizeOut: number;
  ctxSizeOut: number;
  /** Average per repetition, ns. */
  duration: number;
}

/**
 * Runs a loaded program once (or `repeat` times) on a frame, in the calling thread's
 * network namespace. Returns -errno instead of throwing when the kernel refuses the input,
 * so that callers can tell an input the kernel will not run from a broken call.
 */
export function progTestRun(progFd: number, input: TestRunIn): TestRunOut | { errno: number } {
  const opts = {
    sz: TEST_RUN_OPTS_SIZE,
    data_in: input.dataIn,
    data_out: input.dataOut,
    data_size_in: input.dataIn?.length ?? 0,
    data_size_out: input.dataOut?.length ?? 0,
    ctx_in: input.ctxIn,
    ctx_out: input.ctxOut,
    ctx_size_in: input.ctxIn?.length ?? 0,
    ctx_size_out: input.ctxOut?.length ?? 0,
    retval: 0,
    repeat: input.repeat,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  const ret = c.bpf_prog_test_run_opts(progFd, opts) as number;
  if (ret < 0) return { errno: -ret };
  return { retval: opts.retval, dataSizeOut: opts.data_size_out, ctxSizeOut: opts.ctx_size_out, duration: opts.duration };
}

// --- network namespaces ------------------------------------------------------------------

const CLONE_NEWNET = 0x40000000;

/** Moves the calling thread into the network namespace open at `fd` (setns(2)). */
export function setNetns(fd: number, what: string): void {
  if (c.setns(fd, CLONE_NEWNET) < 0) throw new BpfError('setns', what, errno());
}

// --- probes ------------------------------------------------------------------------------

export const BPF_PROG_TYPE_SCHED_CLS = 3;

/** 1 when the kernel offers the helper to the program type, 0 when not. */
export function probeHelper(progType: number, helperId: number): boolean {
  const ret = c.libbpf_probe_bpf_helper(progType, helperId, null) as number;
  return checkInt('libbpf_probe_bpf_helper', `helper ${helperId}`, ret) === 1;
}

export function probeProgType(progType: number): boolean {
  const ret = c.libbpf_probe_bpf_prog_type(progType, null) as number;
  return checkInt('libbpf_probe_bpf_prog_type', `type ${progType}`, ret) === 1;
}
