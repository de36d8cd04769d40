/**
 * Pure codec for the in-pod capture's maps (bpf/include/inpod.h). Offsets and sizes come
 * from the generated layouts; byte orders are the header's, field by field.
 */
import { CodecError, decodeAddrKey, encodeAddrKey } from './codec.js';
import { constants, layouts } from './inpod-layout.generated.js';

export const INPOD_CONFIG_SIZE = layouts.inpod_config.size;
export const PROBE_FLOW_KEY_SIZE = layouts.probe_flow_key.size;
export const PROBE_FLOW_INFO_SIZE = layouts.probe_flow_info.size;
export const INPOD_POD_SIZE = layouts.inpod_pod.size;
export const INPOD_POD_KEY_SIZE = 8;
export const HANDOFF_KEY_SIZE = layouts.inpod_handoff_key.size;
export const LISTENER_KEY_SIZE = layouts.inpod_listener_key.size;
export const INPOD_OVERRIDE_SIZE = layouts.inpod_override.size;

/** A pod's annotations as inpod_overrides holds them (by the pod's address). */
export const InpodOverrideFlags = {
  DNS_CAPTURE: constants.INPOD_O_DNS_CAPTURE,
  NO_DNS_CAPTURE: constants.INPOD_O_NO_DNS_CAPTURE,
  BYPASS_INBOUND: constants.INPOD_O_BYPASS_INBOUND,
} as const;

/** The flags of a pod's overrides (0: none, the entry is not written). */
export function overrideFlags(o: { bypassInbound: boolean; dnsCapture: boolean | null }): number {
  return (
    (o.bypassInbound ? InpodOverrideFlags.BYPASS_INBOUND : 0) |
    (o.dnsCapture === true ? InpodOverrideFlags.DNS_CAPTURE : o.dnsCapture === false ? InpodOverrideFlags.NO_DNS_CAPTURE : 0)
  );
}

export function encodeInpodOverride(flags: number): Buffer {
  const b = Buffer.alloc(INPOD_OVERRIDE_SIZE);
  b.writeUInt32LE(flags >>> 0, layouts.inpod_override.fields.flags.offset);
  return b;
}

export function decodeInpodOverride(b: Buffer): number {
  if (b.length !== INPOD_OVERRIDE_SIZE) throw new CodecError(`inpod_override is ${INPOD_OVERRIDE_SIZE} bytes, got ${b.length}`);
  return b.readUInt32LE(layouts.inpod_override.fields.flags.offset);
}

export const InpodFlags = { DNS_CAPTURE: constants.INPOD_F_DNS_CAPTURE } as const;
export const InpodPodFlags = {
  QDISC_POD: constants.INPOD_POD_QDISC_POD,
  QDISC_HOST: constants.INPOD_POD_QDISC_HOST,
  ACCEPT_LOCAL: constants.INPOD_POD_ACCEPT_LOCAL,
  QDISC_VM: constants.INPOD_POD_QDISC_VM,
  QDISC_LO: constants.INPOD_POD_QDISC_LO,
  RP_FILTER_SET: constants.INPOD_POD_RP_FILTER_SET,
  RP_FILTER_WAS_1: constants.INPOD_POD_RP_FILTER_WAS_1,
} as const;

export function encodeConfigSlot(): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(constants.INPOD_CONFIG_SLOT);
  return b;
}

export function encodeInpodConfig(flags: number): Buffer {
  const b = Buffer.alloc(INPOD_CONFIG_SIZE);
  b.writeUInt32LE(flags >>> 0, layouts.inpod_config.fields.flags.offset);
  return b;
}

export function decodeInpodConfig(b: Buffer): { flags: number } {
  if (b.length !== INPOD_CONFIG_SIZE) throw new CodecError(`inpod_config is ${INPOD_CONFIG_SIZE} bytes, got ${b.length}`);
  return { flags: b.readUInt32LE(layouts.inpod_config.fields.flags.offset) };
}

/** A TCP flow of the node to an in-pod pod whose source was rewritten to the probe address. */
export interface ProbeFlow {
  pod: string;
  podPort: number;
  nodePort: number;
  family: 4 | 6;
}

export function encodeProbeFlowKey(k: ProbeFlow): Buffer {
  const f = layouts.probe_flow_key.fields;
  const b = Buffer.alloc(PROBE_FLOW_KEY_SIZE);
  encodeAddrKey(k.pod).copy(b, f.pod.offset);
  b.writeUInt16BE(k.podPort, f.pod_port.offset);
  b.writeUInt16BE(k.nodePort, f.node_port.offset);
  b.writeUInt8(k.family, f.family.offset);
  return b;
}

export function decodeProbeFlowKey(b: Buffer): ProbeFlow {
  if (b.length !== PROBE_FLOW_KEY_SIZE) throw new CodecError(`probe_flow_key is ${PROBE_FLOW_KEY_SIZE} bytes, got ${b.length}`);
  const f = layouts.probe_flow_key.fields;
  const family = b.readUInt8(f.family.offset);
  if (family !== 4 && family !== 6) throw new CodecError(`probe_flow_key family is 4 or 6, got ${family}`);
  return {
    pod: decodeAddrKey(b.subarray(f.pod.offset, f.pod.offset + f.pod.size)),
    podPort: b.readUInt16BE(f.pod_port.offset),
    nodePort: b.readUInt16BE(f.node_port.offset),
    family,
  };
}

export function decodeProbeFlowInfo(b: Buffer): { node: string } {
  if (b.length !== PROBE_FLOW_INFO_SIZE) throw new CodecError(`probe_flow_info is ${PROBE_FLOW_INFO_SIZE} bytes, got ${b.length}`);
  const f = layouts.probe_flow_info.fields;
  return { node: decodeAddrKey(b.subarray(f.node.offset, f.node.offset + f.node.size)) };
}

/** The agent's record of a pod's netns (value of inpod_pods). */
export interface InpodPod {
  ethIfindex: number;
  hostIfindex: number;
  flags: number;
}

/** inpod_pods is keyed by the netns's inode number. */
export function encodeNetnsKey(inode: number | bigint): Buffer {
  const b = Buffer.alloc(INPOD_POD_KEY_SIZE);
  b.writeBigUInt64LE(BigInt(inode));
  return b;
}

export function encodeInpodPod(p: InpodPod): Buffer {
  const f = layouts.inpod_pod.fields;
  const b = Buffer.alloc(INPOD_POD_SIZE);
  b.writeUInt32LE(p.ethIfindex >>> 0, f.eth_ifindex.offset);
  b.writeUInt32LE(p.hostIfindex >>> 0, f.host_ifindex.offset);
  b.writeUInt32LE(p.flags >>> 0, f.flags.offset);
  return b;
}

export function decodeInpodPod(b: Buffer): InpodPod {
  if (b.length !== INPOD_POD_SIZE) throw new CodecError(`inpod_pod is ${INPOD_POD_SIZE} bytes, got ${b.length}`);
  const f = layouts.inpod_pod.fields;
  return { ethIfindex: b.readUInt32LE(f.eth_ifindex.offset), hostIfindex: b.readUInt32LE(f.host_ifindex.offset), flags: b.readUInt32LE(f.flags.offset) };
}

/** A SYN handed over to ztunnel's listener on the TIME_WAIT path (key of inpod_handoff). */
export interface Handoff {
  remote: string;
  remotePort: number;
  local: string;
  localPort: number;
  family: 4 | 6;
  /** The generation it was written in (src/capture/inpod/handoffs.ts), 0 to INPOD_HANDOFF_GENS - 1. */
  gen: number;
}

export function encodeHandoffKey(k: Handoff): Buffer {
  const f = layouts.inpod_handoff_key.fields;
  const b = Buffer.alloc(HANDOFF_KEY_SIZE);
  encodeAddrKey(k.remote).copy(b, f.remote.offset);
  encodeAddrKey(k.local).copy(b, f.local.offset);
  b.writeUInt16BE(k.remotePort, f.remote_port.offset);
  b.writeUInt16BE(k.localPort, f.local_port.offset);
  b.writeUInt8(k.family, f.family.offset);
  if (!Number.isInteger(k.gen) || k.gen < 0 || k.gen >= constants.INPOD_HANDOFF_GENS) {
    throw new CodecError(`inpod_handoff_key gen is 0 to ${constants.INPOD_HANDOFF_GENS - 1}, got ${k.gen}`);
  }
  b.writeUInt8(k.gen, f.gen.offset);
  return b;
}

export function decodeHandoffKey(b: Buffer): Handoff {
  if (b.length !== HANDOFF_KEY_SIZE) throw new CodecError(`inpod_handoff_key is ${HANDOFF_KEY_SIZE} bytes, got ${b.length}`);
  const f = layouts.inpod_handoff_key.fields;
  const family = b.readUInt8(f.family.offset);
  if (family !== 4 && family !== 6) throw new CodecError(`inpod_handoff_key family is 4 or 6, got ${family}`);
  const gen = b.readUInt8(f.gen.offset);
  if (gen >= constants.INPOD_HANDOFF_GENS) throw new CodecError(`inpod_handoff_key gen is 0 to ${constants.INPOD_HANDOFF_GENS - 1}, got ${gen}`);
  return {
    remote: decodeAddrKey(b.subarray(f.remote.offset, f.remote.offset + f.remote.size)),
    remotePort: b.readUInt16BE(f.remote_port.offset),
    local: decodeAddrKey(b.subarray(f.local.offset, f.local.offset + f.local.size)),
    localPort: b.readUInt16BE(f.local_port.offset),
    family,
    gen,
  };
}

/** ztunnel's listener kept in inpod_listeners: the pod's address, the port and the family of the SYN that put it there. */
export interface KeptListener {
  pod: string;
  port: number;
  family: 4 | 6;
}

export function encodeListenerKey(k: KeptListener): Buffer {
  const f = layouts.inpod_listener_key.fields;
  const b = Buffer.alloc(LISTENER_KEY_SIZE);
  encodeAddrKey(k.pod).copy(b, f.pod.offset);
  b.writeUInt16BE(k.port, f.port.offset);
  b.writeUInt8(k.family, f.family.offset);
  return b;
}

export function decodeListenerKey(b: Buffer): KeptListener {
  if (b.length !== LISTENER_KEY_SIZE) throw new CodecError(`inpod_listener_key is ${LISTENER_KEY_SIZE} bytes, got ${b.length}`);
  const f = layouts.inpod_listener_key.fields;
  const family = b.readUInt8(f.family.offset);
  if (family !== 4 && family !== 6) throw new CodecError(`inpod_listener_key family is 4 or 6, got ${family}`);
  return { pod: decodeAddrKey(b.subarray(f.pod.offset, f.pod.offset + f.pod.size)), port: b.readUInt16BE(f.port.offset), family };
}
