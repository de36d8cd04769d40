/**
 * The one error type of the BPF layer: it names the operation, what it acted on, the
 * errno and, where one is known, a hint for the operator.
 */
import { constants } from 'node:os';

const errnoNames = new Map<number, string>(Object.entries(constants.errno).map(([name, value]) => [value, name]));

/** Name of an errno value (`ENOENT`), or `E<n>` for one Node does not know. */
export function errnoName(errno: number): string {
  return errnoNames.get(Math.abs(errno)) ?? `E${Math.abs(errno)}`;
}

/** Hints for errnos whose usual cause on this kind of node is known. */
function hintFor(op: string, errno: number): string | undefined {
  switch (errnoName(errno)) {
    case 'EPERM':
      return op.startsWith('bpf_map') || op.includes('load')
        ? 'needs root (CAP_BPF + CAP_NET_ADMIN); on kernels < 5.11 RLIMIT_MEMLOCK may be too low'
        : 'needs root (CAP_BPF + CAP_NET_ADMIN)';
    case 'EACCES':
      return 'the verifier rejected the program; the log below says why';
    case 'ENOENT':
      return op.startsWith('bpf_tc') ? 'no such device or hook' : undefined;
    case 'ENODEV':
      return 'no such network device';
    case 'E2BIG':
      return 'map is full (max_entries reached)';
    case 'EEXIST':
      return op.startsWith('bpf_xdp') ? 'another XDP program than the one expected is on the hook' : 'already exists';
    case 'EBUSY':
      return op.startsWith('bpf_xdp') ? 'another XDP program is on the hook' : undefined;
    case 'ERANGE':
      return op.startsWith('bpf_xdp') ? 'the veth pair’s MTU is too large for XDP (a frame must fit a page)' : undefined;
    default:
      return undefined;
  }
}

export class BpfError extends Error {
  readonly op: string;
  readonly target: string;
  readonly errno: number;
  readonly code: string;
  readonly hint: string | undefined;

  constructor(op: string, target: string, errno: number, detail?: string) {
    const code = errnoName(errno);
    const hint = hintFor(op, errno);
    let message = `${op}(${target}): ${code}`;
    if (hint) message += ` (${hint})`;
    if (detail) message += `\n${detail}`;
    super(message);
    this.name = 'BpfError';
    this.op = op;
    this.target = target;
    this.errno = Math.abs(errno);
    this.code = code;
    this.hint = hint;
  }
}

/** True for the errors that mean "not there": deletes and detaches use it to be idempotent. */
export function isNotFound(err: unknown): boolean {
  return err instanceof BpfError && (err.code === 'ENOENT' || err.code === 'ENODEV');
}

/** True when the thing to create is already there. */
export function isExists(err: unknown): boolean {
  return err instanceof BpfError && err.code === 'EEXIST';
}

/**
 * Checks an int-returning libbpf call: a negative result is `-errno` (libbpf >= 1.0),
 * anything else is returned.
 */
export function checkInt(op: string, target: string, ret: number, detail?: () => string): number {
  if (ret < 0) throw new BpfError(op, target, -ret, detail?.());
  return ret;
}

/** Checks a pointer-returning libbpf call: NULL means failure, the cause is in errno. */
export function checkPtr<T>(op: string, target: string, ptr: T | null, errno: () => number): T {
  if (ptr === null || ptr === undefined) throw new BpfError(op, target, errno() || 22 /* EINVAL */);
  return ptr;
}
