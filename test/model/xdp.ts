/**
 * The reference model of the XDP hook of the pod-side outbound capture (docs/datapath.md,
 * "XDP (pod-side outbound)"): rows O1–O17 decide as they do at TC (test/model/datapath.ts's
 * `outbound`, unchanged), and the hook only changes how a verdict is carried out:
 * pass → XDP_PASS (frame untouched), drop → XDP_DROP, redirect → XDP_REDIRECT with the
 * destination MAC rewritten to ztunnel's eth0 and an offloaded TCP/UDP checksum completed
 * (`completeChecksum`). `I` is the device the frame arrived on (xdp_md->ingress_ifindex).
 */
import { type ModelCtx, type ModelState, outbound, parse, type Verdict } from './datapath.js';

export type XdpActionName = 'XDP_PASS' | 'XDP_DROP' | 'XDP_REDIRECT';

export interface XdpVerdict {
  action: XdpActionName;
  /** The spec row that decided, e.g. 'O8'. */
  row: string;
  /** XDP_REDIRECT: the destination MAC written into the frame (ztunnel's eth0). */
  rewrittenDstMac?: string;
  /** XDP_REDIRECT: the device the frame is handed to (ztunnel's host veth). */
  redirectIfindex?: number;
  /** The frame as the program leaves it. */
  frameOut: Buffer;
}

/** The action that carries out a TC verdict at XDP. */
export function xdpAction(v: Verdict): XdpActionName {
  switch (v.verdict) {
    case 'pass':
      return 'XDP_PASS';
    case 'drop':
      return 'XDP_DROP';
    case 'redirect':
      return 'XDP_REDIRECT';
    default:
      throw new Error(`row ${v.row}: no XDP action for ${v.verdict}`);
  }
}

/** xdp_out on a frame that arrived on `ctx.ifindex` (an enrolled pod's host veth). */
export function xdpOutbound(frame: Buffer, state: ModelState, ctx: Pick<ModelCtx, 'ifindex'>): XdpVerdict {
  const v = outbound(frame, state, { ifindex: ctx.ifindex });
  const action = xdpAction(v);
  if (action !== 'XDP_REDIRECT') return { action, row: v.row, frameOut: Buffer.from(frame) };
  const out = completeChecksum(frame);
  Buffer.from(v.rewrittenDstMac!.split(':').map((x) => parseInt(x, 16))).copy(out, 0);
  return { action, row: v.row, rewrittenDstMac: v.rewrittenDstMac!, redirectIfindex: state.ztunnel.ifindex, frameOut: out };
}

/** The one's complement sum of bytes (an odd last byte padded with a zero), unfolded. */
export function onesSum(b: Buffer, sum = 0): number {
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2) sum += b[b.length - 1]! << 8;
  return sum;
}

export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** The pseudo-header of an L4 segment of `len` bytes (RFC 768, RFC 8200 8.1). */
export function pseudoHeader(family: 4 | 6, src: Buffer, dst: Buffer, proto: number, len: number): Buffer {
  if (family === 4) return Buffer.concat([src, dst, Buffer.from([0, proto, len >> 8, len & 0xff])]);
  const tail = Buffer.alloc(8);
  tail.writeUInt32BE(len, 0);
  tail[7] = proto;
  return Buffer.concat([src, dst, tail]);
}

/**
 * docs/datapath.md, "XDP (pod-side outbound)": before a redirect, a TCP or UDP frame that is
 * no fragment (IPv4: MF clear and offset 0; IPv6: no extension header), whose L4 length
 * (from the IP header; for UDP also its own length field) is in the frame, and whose
 * checksum does not verify, has it completed as an offloading device would:
 * field := ~fold(sum of the L4 bytes as they are); a UDP result of 0 is sent as 0xffff. An
 * IPv4 UDP checksum of 0 (none) is left alone.
 */
export function completeChecksum(frame: Buffer): Buffer {
  const out = Buffer.from(frame);
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return out;
  const ip = l2.ip;
  if (ip.badChain || ip.laterFragment || (ip.proto !== 6 && ip.proto !== 17)) return out;
  let end: number;
  if (ip.family === 4) {
    if ((frame.readUInt16BE(14 + 6) & 0x3fff) !== 0) return out;
    end = 14 + frame.readUInt16BE(14 + 2);
  } else {
    if (ip.l4Off !== 14 + 40) return out;
    end = 14 + 40 + frame.readUInt16BE(14 + 4);
  }
  if (end > frame.length || end < ip.l4Off) return out;
  const len = end - ip.l4Off;
  const tcp = ip.proto === 6;
  if (len < (tcp ? 20 : 8) || ip.l4Off + (tcp ? 20 : 8) > frame.length) return out;
  const at = ip.l4Off + (tcp ? 16 : 6);
  if (!tcp) {
    if (frame.readUInt16BE(ip.l4Off + 4) !== len) return out;
    if (ip.family === 4 && frame.readUInt16BE(at) === 0) return out;
  }
  const seg = frame.subarray(ip.l4Off, end);
  const l4 = onesSum(seg);
  if (fold(onesSum(pseudoHeader(ip.family, ip.srcRaw, ip.dstRaw, ip.proto, len), l4)) === 0xffff) return out;
  let done = ~fold(l4) & 0xffff;
  if (!tcp && done === 0) done = 0xffff;
  out.writeUInt16BE(done, at);
  return out;
}

/** Whether the TCP/UDP checksum of an unfragmented frame verifies (for the tests' own check). */
export function l4ChecksumVerifies(frame: Buffer): boolean {
  const l2 = parse(frame);
  if (l2.kind !== 'ip') return false;
  const ip = l2.ip;
  const end = ip.family === 4 ? 14 + frame.readUInt16BE(16) : 14 + 40 + frame.readUInt16BE(18);
  const len = end - ip.l4Off;
  return fold(onesSum(pseudoHeader(ip.family, ip.srcRaw, ip.dstRaw, ip.proto, len), onesSum(frame.subarray(ip.l4Off, end)))) === 0xffff;
}

/** BPF_PROG_RUN refuses XDP frames shorter than an Ethernet header (EINVAL). */
export function xdpRunnable(frame: Buffer): boolean {
  return frame.length >= 14;
}
