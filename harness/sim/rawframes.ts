/**
 * Raw frames on the simulated node, for the bypass hunt: send crafted Ethernet frames out
 * of an interface of a netns, and sniff what interfaces receive and what a netns delivers
 * to itself. Both go through `build/rawframe` (tools/rawframe/rawframe.c) run with
 * `ip netns exec`; frames come from harness/packet/builder.ts, whose L4 checksums are zero,
 * so `withChecksums` fills them in (a receiver that checks would drop the frame, and
 * a frame the far side drops is one the hunt could not see get through).
 */
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { startProcess, systemRunner, type CommandRunner } from '../../src/host/runner.js';
import { IpProto } from '../packet/builder.js';
import { repoPath } from '../../src/lib/repo-path.js';

export function rawframeBin(): string {
  const path = repoPath('build/rawframe', import.meta.url);
  if (!existsSync(path)) throw new Error(`${path} is not built: run make build`);
  return path;
}

/** Writes each frame as is on `ifname` in `ns`. */
export async function sendFrames(ns: string, ifname: string, frames: readonly Buffer[], runner: CommandRunner = systemRunner): Promise<void> {
  if (frames.length === 0) return;
  await runner.run(['ip', 'netns', 'exec', ns, rawframeBin(), 'send', ifname, ...frames.map((f) => f.toString('hex'))]);
}

export interface Sniffed {
  /** `if/<name>` for a frame an interface received, `local4/<proto>`, `local6/<proto>` for local delivery. */
  where: string;
  bytes: Buffer;
}

export interface Sniffer {
  /** Resolves once every socket is open. */
  ready: Promise<void>;
  /** Resolves with everything seen when the duration is over. */
  done: Promise<Sniffed[]>;
}

/** Sniffs in `ns` for `ms`: the frames `ifaces` receive and, with `local`, local delivery. */
export function startSniffer(ns: string, ms: number, opts: { ifaces?: readonly string[]; local?: boolean }): Sniffer {
  const argv = ['ip', 'netns', 'exec', ns, rawframeBin(), 'sniff', String(ms), ...(opts.local ? ['--local'] : []), ...(opts.ifaces ?? [])];
  const child = startProcess(argv);
  const seen: Sniffed[] = [];
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-2048);
  });
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    onReady = resolve;
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    if (line === 'ready') onReady();
    const m = /^(\S+) ([0-9a-f]+)$/.exec(line);
    if (m) seen.push({ where: m[1]!, bytes: Buffer.from(m[2]!, 'hex') });
  });
  const done = new Promise<Sniffed[]>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve(seen) : reject(new Error(`${argv.join(' ')} exited with ${code}: ${stderr.trim()}`))));
  });
  return { ready: Promise.race([ready, done.then(() => undefined)]), done };
}

// --- checksums -------------------------------------------------------------------------

function sum16(buf: Buffer, start = 0): number {
  let s = start;
  for (let i = 0; i + 1 < buf.length; i += 2) s += buf.readUInt16BE(i);
  if (buf.length % 2) s += buf[buf.length - 1]! << 8;
  return s;
}

function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

/** Where an L4 protocol keeps its checksum, for those that have one over a pseudo-header (or not, ICMPv4). */
const CSUM_OFFSET: Record<number, number> = { [IpProto.TCP]: 16, [IpProto.UDP]: 6, [IpProto.ICMP]: 2, [IpProto.ICMPV6]: 2 };

/**
 * A copy of an Ethernet frame (no VLAN tag) with its TCP, UDP, ICMP or ICMPv6 checksum
 * computed, when the L4 segment is whole: IPv4 unfragmented, IPv6 without extension
 * headers. Anything else is returned unchanged (fragments, other protocols, bad headers).
 */
export function withChecksums(frame: Buffer): Buffer {
  const out = Buffer.from(frame);
  const etherType = out.length >= 14 ? out.readUInt16BE(12) : 0;
  if (etherType === 0x0800 && out.length >= 34) {
    const ihl = (out[14]! & 0xf) * 4;
    const frag = out.readUInt16BE(20) & 0x3fff;
    const proto = out[23]!;
    const off = CSUM_OFFSET[proto];
    if (out[14]! >> 4 !== 4 || ihl < 20 || frag !== 0 || off === undefined || 14 + ihl + off + 2 > out.length) return out;
    const l4 = out.subarray(14 + ihl);
    l4.writeUInt16BE(0, off);
    const pseudo = proto === IpProto.ICMP ? 0 : sum16(out.subarray(26, 34)) + proto + l4.length;
    let c = fold(sum16(l4, pseudo));
    if (proto === IpProto.UDP && c === 0) c = 0xffff;
    l4.writeUInt16BE(c, off);
  } else if (etherType === 0x86dd && out.length >= 54) {
    const proto = out[20]!;
    const off = CSUM_OFFSET[proto];
    if (off === undefined || proto === IpProto.ICMP || 54 + off + 2 > out.length) return out;
    const l4 = out.subarray(54);
    l4.writeUInt16BE(0, off);
    let c = fold(sum16(l4, sum16(out.subarray(22, 54)) + proto + (l4.length >>> 16) + (l4.length & 0xffff)));
    if (proto === IpProto.UDP && c === 0) c = 0xffff;
    l4.writeUInt16BE(c, off);
  }
  return out;
}
