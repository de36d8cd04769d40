/**
 * BPF_PROG_RUN for TC programs: runs a loaded program on a frame in the kernel and returns
 * its verdict, the frame as the program left it and the mark it set. Nothing is sent:
 * a TC_ACT_REDIRECT is only a return value here.
 *
 * The kernel runs the program in the calling thread's network namespace: `skb->ifindex`
 * must name a device there (0 or 1: loopback), and socket lookups see that namespace's
 * sockets. `enterNetns` moves the calling thread into a namespace of our own for that.
 */
import { closeSync, openSync } from 'node:fs';
import * as ffi from '../../src/bpf/ffi.js';

/** TC verdicts (linux/pkt_cls.h). */
/** UNSPEC is TC_ACT_UNSPEC (-1) as BPF_PROG_RUN reports it, a u32: the pod programs' pass. */
export const TcAct = { OK: 0, SHOT: 2, REDIRECT: 7, UNSPEC: 0xffffffff } as const;

/**
 * struct __sk_buff (linux/bpf.h) as BPF_PROG_RUN takes it: the kernel refuses (EINVAL) a
 * context with any field set that it does not copy into the skb, so only these are written.
 */
const SKB = {
  size: 192,
  mark: 8,
  priority: 32,
  ingressIfindex: 36,
  ifindex: 40,
} as const;

export interface RunContext {
  /** skb->mark before the program runs. */
  mark?: number;
  /** skb->ingress_ifindex: the device the frame came in on (any number). */
  ingressIfindex?: number;
  /** skb->ifindex: a device of the calling thread's netns (0/1: loopback). */
  ifindex?: number;
}

export interface RunOptions {
  ctx?: RunContext;
  /** Runs of the same frame; durationNs is their average. Default 1. */
  repeat?: number;
}

export interface RunResult {
  retval: number;
  /** The frame as the program left it. */
  dataOut: Buffer;
  /** skb->mark after the program. */
  mark: number;
  /** Average ns per run, as the kernel measured it. */
  durationNs: number;
}

export interface NotRunnable {
  /** Why the kernel refused to run the program on this input (EINVAL: too short, see refusedAsShort). */
  notRunnable: number;
}

/** Headroom for programs that grow the frame; ours never do, but a short buffer is ENOSPC. */
const OUT_SLACK = 256;

export function runProgram(progFd: number, frame: Buffer, opts: RunOptions = {}): RunResult | NotRunnable {
  const ctx = Buffer.alloc(SKB.size);
  const c = opts.ctx ?? {};
  ctx.writeUInt32LE((c.mark ?? 0) >>> 0, SKB.mark);
  ctx.writeUInt32LE((c.ingressIfindex ?? 0) >>> 0, SKB.ingressIfindex);
  ctx.writeUInt32LE((c.ifindex ?? 0) >>> 0, SKB.ifindex);
  const ctxOut = Buffer.alloc(SKB.size);
  const dataOut = Buffer.alloc(frame.length + OUT_SLACK);
  const r = ffi.progTestRun(progFd, { dataIn: frame, dataOut, ctxIn: ctx, ctxOut, repeat: opts.repeat ?? 1 });
  if ('errno' in r) {
    if (r.errno === 22 /* EINVAL */ && refusedAsShort(frame)) return { notRunnable: r.errno };
    throw new Error(`BPF_PROG_RUN(prog fd ${progFd}, ${frame.length} bytes): errno ${r.errno}`);
  }
  return {
    retval: r.retval,
    dataOut: Buffer.from(dataOut.subarray(0, r.dataSizeOut)),
    mark: ctxOut.readUInt32LE(SKB.mark),
    durationNs: r.duration,
  };
}

/**
 * Inputs the kernel refuses with EINVAL before running the program (measured on 6.18):
 * shorter than an Ethernet header, or an IPv4/IPv6 ethertype with less than a full
 * IPv4 (20) / IPv6 (40) header after it. Other ethertypes run from 14 bytes on.
 */
export function refusedAsShort(frame: Buffer): boolean {
  if (frame.length < 14) return true;
  const type = frame.readUInt16BE(12);
  return (type === 0x0800 && frame.length < 14 + 20) || (type === 0x86dd && frame.length < 14 + 40);
}

export function isNotRunnable(r: RunResult | NotRunnable): r is NotRunnable {
  return 'notRunnable' in r;
}

/**
 * Moves the calling thread into the network namespace at `path` (e.g.
 * /var/run/netns/<name>); returns the function that moves it back. Only this thread
 * moves: Node's own worker threads stay where they were.
 */
export function enterNetns(path: string): () => void {
  const home = openSync('/proc/thread-self/ns/net', 'r');
  const target = openSync(path, 'r');
  try {
    ffi.setNetns(target, path);
  } catch (err) {
    closeSync(home);
    throw err;
  } finally {
    closeSync(target);
  }
  return () => {
    try {
      ffi.setNetns(home, '/proc/thread-self/ns/net (home)');
    } finally {
      closeSync(home);
    }
  };
}

// --- SK_LOOKUP ------------------------------------------------------------------------------

/** struct bpf_sk_lookup (linux/bpf.h): offsets of the fields BPF_PROG_RUN takes (5.14). */
const SK_LOOKUP = {
  size: 72,
  cookie: 0,
  family: 8,
  protocol: 12,
  remoteIp4: 16,
  remoteIp6: 20,
  remotePort: 36,
  localIp4: 40,
  localIp6: 44,
  localPort: 60,
} as const;

export interface SkLookupInput {
  family: 4 | 6;
  protocol: number;
  /** Addresses as their wire bytes (4 or 16). */
  remote: Buffer;
  remotePort: number;
  local: Buffer;
  localPort: number;
}

export interface SkLookupResult {
  /** SK_PASS (1) or SK_DROP (0). */
  retval: number;
  /** The cookie of the socket the program selected, 0 for none. */
  cookie: bigint;
}

/** Runs an SK_LOOKUP program once on a lookup, in the calling thread's netns. */
export function runSkLookup(progFd: number, input: SkLookupInput): SkLookupResult {
  const ctx = Buffer.alloc(SK_LOOKUP.size);
  ctx.writeUInt32LE(input.family === 4 ? 2 : 10, SK_LOOKUP.family);
  ctx.writeUInt32LE(input.protocol, SK_LOOKUP.protocol);
  if (input.family === 4) {
    input.remote.copy(ctx, SK_LOOKUP.remoteIp4);
    input.local.copy(ctx, SK_LOOKUP.localIp4);
  } else {
    input.remote.copy(ctx, SK_LOOKUP.remoteIp6);
    input.local.copy(ctx, SK_LOOKUP.localIp6);
  }
  ctx.writeUInt16BE(input.remotePort, SK_LOOKUP.remotePort); // network order
  ctx.writeUInt32LE(input.localPort, SK_LOOKUP.localPort); // host order
  const out = Buffer.alloc(SK_LOOKUP.size);
  const r = ffi.progTestRun(progFd, { dataIn: null, dataOut: null, ctxIn: ctx, ctxOut: out, repeat: 1 });
  if ('errno' in r) throw new Error(`BPF_PROG_RUN(sk_lookup prog fd ${progFd}): errno ${r.errno}`);
  return { retval: r.retval, cookie: out.readBigUInt64LE(SK_LOOKUP.cookie) };
}

// --- XDP ------------------------------------------------------------------------------------

/** XDP actions (linux/bpf.h, enum xdp_action). */
export const XdpAction = { ABORTED: 0, DROP: 1, PASS: 2, TX: 3, REDIRECT: 4 } as const;

/**
 * struct xdp_md (linux/bpf.h) as BPF_PROG_RUN takes it: data (the metadata length, 0),
 * data_end (the frame's length), data_meta 0, the device the frame arrived on and its
 * receive queue; egress_ifindex must be 0.
 */
const XDP_MD = { size: 24, data: 0, dataEnd: 4, dataMeta: 8, ingressIfindex: 12, rxQueueIndex: 16, egressIfindex: 20 } as const;

export interface XdpRunResult {
  retval: number;
  /** The frame as the program left it. */
  dataOut: Buffer;
  /** Average ns per run, as the kernel measured it. */
  durationNs: number;
}

/**
 * Runs an XDP program once (or `repeat` times) on a frame, as if it arrived on
 * `ingressIfindex` (a device of the calling thread's netns; 0 for none), queue 0. The
 * kernel refuses (EINVAL) frames shorter than an Ethernet header: those are not runnable.
 * Nothing is sent: XDP_REDIRECT is only a return value here.
 */
export function runXdp(progFd: number, frame: Buffer, opts: { ingressIfindex?: number; repeat?: number; noCtx?: boolean } = {}): XdpRunResult | NotRunnable {
  // `noCtx`: no xdp_md at all, for kernels whose BPF_PROG_RUN takes none for XDP: the
  // frame then arrives on the netns's loopback device (ingress_ifindex 1).
  const ctx = opts.noCtx ? null : Buffer.alloc(XDP_MD.size);
  ctx?.writeUInt32LE(frame.length, XDP_MD.dataEnd);
  ctx?.writeUInt32LE((opts.ingressIfindex ?? 0) >>> 0, XDP_MD.ingressIfindex);
  const ctxOut = ctx ? Buffer.alloc(XDP_MD.size) : null;
  const dataOut = Buffer.alloc(frame.length + OUT_SLACK);
  const r = ffi.progTestRun(progFd, { dataIn: frame, dataOut, ctxIn: ctx, ctxOut, repeat: opts.repeat ?? 1 });
  if ('errno' in r) {
    if (r.errno === 22 /* EINVAL */ && frame.length < 14) return { notRunnable: r.errno };
    throw new Error(`BPF_PROG_RUN(xdp prog fd ${progFd}, ${frame.length} bytes): errno ${r.errno}`);
  }
  return { retval: r.retval, dataOut: Buffer.from(dataOut.subarray(0, r.dataSizeOut)), durationNs: r.duration };
}
