/** The in-pod maps' codec (src/bpf/inpod-codec.ts) against the generated layouts. */
import { describe, expect, it } from 'vitest';
import * as codec from '../../src/bpf/inpod-codec.js';
import { CodecError } from '../../src/bpf/codec.js';
import { layouts } from '../../src/bpf/inpod-layout.generated.js';
import { PINNED_MAPS } from '../../src/bpf/maps.js';

describe('in-pod codec', () => {
  it('lays out a probe flow key as the layout says, ports in network order', () => {
    const k = codec.encodeProbeFlowKey({ pod: '198.18.0.10', podPort: 8080, nodePort: 41234, family: 4 });
    const f = layouts.probe_flow_key.fields;
    expect(k).toHaveLength(layouts.probe_flow_key.size);
    expect(k.subarray(f.pod.offset, f.pod.offset + 16).toString('hex')).toBe('00000000000000000000ffffc612000a');
    expect(k.readUInt16BE(f.pod_port.offset)).toBe(8080);
    expect(k.readUInt16BE(f.node_port.offset)).toBe(41234);
    expect(k[f.family.offset]).toBe(4);
    expect(k.subarray(f.pad.offset, f.pad.offset + 3).toString('hex')).toBe('000000');
    expect(codec.decodeProbeFlowKey(k)).toEqual({ pod: '198.18.0.10', podPort: 8080, nodePort: 41234, family: 4 });
    const k6 = codec.encodeProbeFlowKey({ pod: 'fd00:10:244::a', podPort: 1, nodePort: 65535, family: 6 });
    expect(codec.decodeProbeFlowKey(k6)).toEqual({ pod: 'fd00:10:244::a', podPort: 1, nodePort: 65535, family: 6 });
  });

  it('round-trips the pod record and the config, host order', () => {
    const v = codec.encodeInpodPod({ ethIfindex: 2, hostIfindex: 14, flags: codec.InpodPodFlags.QDISC_POD | codec.InpodPodFlags.ACCEPT_LOCAL });
    expect(v).toHaveLength(layouts.inpod_pod.size);
    expect(v.readUInt32LE(layouts.inpod_pod.fields.host_ifindex.offset)).toBe(14);
    expect(codec.decodeInpodPod(v)).toEqual({ ethIfindex: 2, hostIfindex: 14, flags: 5 });
    expect(codec.decodeInpodConfig(codec.encodeInpodConfig(codec.InpodFlags.DNS_CAPTURE))).toEqual({ flags: 1 });
    expect(codec.encodeNetnsKey(4026532890n).readBigUInt64LE(0)).toBe(4026532890n);
  });

  it('lays out a handoff key as the layout says: source then destination, ports in network order', () => {
    const h = { remote: '198.18.0.10', remotePort: 41234, local: '198.19.0.2', localPort: 8080, family: 4 as const, gen: 3 };
    const k = codec.encodeHandoffKey(h);
    const f = layouts.inpod_handoff_key.fields;
    expect(k).toHaveLength(40);
    expect(k.subarray(f.remote.offset, f.remote.offset + 16).toString('hex')).toBe('00000000000000000000ffffc612000a');
    expect(k.subarray(f.local.offset, f.local.offset + 16).toString('hex')).toBe('00000000000000000000ffffc6130002');
    expect(k.readUInt16BE(f.remote_port.offset)).toBe(41234);
    expect(k.readUInt16BE(f.local_port.offset)).toBe(8080);
    expect(k[f.family.offset]).toBe(4);
    expect(k[f.gen.offset]).toBe(3);
    expect(k.subarray(f.gen.offset + 1).equals(Buffer.alloc(2))).toBe(true);
    expect(codec.decodeHandoffKey(k)).toEqual(h);
    const h6 = { remote: '2001:db8::5', remotePort: 1, local: 'fd00:10:244::a', localPort: 65535, family: 6 as const, gen: 0 };
    expect(codec.decodeHandoffKey(codec.encodeHandoffKey(h6))).toEqual(h6);
    expect(() => codec.decodeHandoffKey(Buffer.alloc(39))).toThrow(/40 bytes, got 39/);
    expect(() => codec.encodeHandoffKey({ ...h, gen: 4 })).toThrow(/gen is 0 to 3, got 4/);
    k[f.gen.offset] = 4;
    expect(() => codec.decodeHandoffKey(k)).toThrow(/gen is 0 to 3, got 4/);
    k[f.family.offset] = 0;
    expect(() => codec.decodeHandoffKey(k)).toThrow(/family is 4 or 6, got 0/);
    expect(PINNED_MAPS.inpod_handoff).toMatchObject({ type: 18, keySize: 40, valueSize: 8, maxEntries: 4096 });
  });

  it('lays out a kept listener’s key: the pod’s address, the port in network order, the family', () => {
    const l = { pod: '198.18.0.10', port: 15001, family: 4 as const };
    const k = codec.encodeListenerKey(l);
    const f = layouts.inpod_listener_key.fields;
    expect(k).toHaveLength(20);
    expect(k.subarray(f.pod.offset, f.pod.offset + 16).toString('hex')).toBe('00000000000000000000ffffc612000a');
    expect(k.readUInt16BE(f.port.offset)).toBe(15001);
    expect(k[f.family.offset]).toBe(4);
    expect(codec.decodeListenerKey(k)).toEqual(l);
    const l6 = { pod: 'fd00:10:244::a', port: 15006, family: 6 as const };
    expect(codec.decodeListenerKey(codec.encodeListenerKey(l6))).toEqual(l6);
    expect(() => codec.decodeListenerKey(Buffer.alloc(19))).toThrow(/20 bytes, got 19/);
    k[f.family.offset] = 5;
    expect(() => codec.decodeListenerKey(k)).toThrow(/family is 4 or 6, got 5/);
    expect(PINNED_MAPS.inpod_listeners).toMatchObject({ type: 18, keySize: 20, valueSize: 8, maxEntries: 16384 });
  });

  it('a pod’s annotations as override flags: none is 0 (no entry), each annotation its bit', () => {
    expect(codec.overrideFlags({ bypassInbound: false, dnsCapture: null })).toBe(0);
    expect(codec.overrideFlags({ bypassInbound: true, dnsCapture: null })).toBe(codec.InpodOverrideFlags.BYPASS_INBOUND);
    expect(codec.overrideFlags({ bypassInbound: false, dnsCapture: true })).toBe(codec.InpodOverrideFlags.DNS_CAPTURE);
    expect(codec.overrideFlags({ bypassInbound: true, dnsCapture: false })).toBe(
      codec.InpodOverrideFlags.BYPASS_INBOUND | codec.InpodOverrideFlags.NO_DNS_CAPTURE,
    );
    expect(codec.decodeInpodOverride(codec.encodeInpodOverride(5))).toBe(5);
    expect(() => codec.decodeInpodOverride(Buffer.alloc(8))).toThrow(CodecError);
    expect(PINNED_MAPS.inpod_overrides).toMatchObject({ keySize: 16, valueSize: 4 });
  });

  it('refuses buffers of the wrong size and a bad family with a clear error', () => {
    expect(() => codec.decodeProbeFlowKey(Buffer.alloc(3))).toThrow(CodecError);
    const k = codec.encodeProbeFlowKey({ pod: '198.18.0.10', podPort: 1, nodePort: 2, family: 4 });
    k[layouts.probe_flow_key.fields.family.offset] = 5;
    expect(() => codec.decodeProbeFlowKey(k)).toThrow(/family is 4 or 6, got 5/);
    expect(() => codec.decodeInpodPod(Buffer.alloc(15))).toThrow(CodecError);
    expect(() => codec.decodeInpodConfig(Buffer.alloc(8))).toThrow(CodecError);
  });

  it('registers the in-pod maps in the catalogue with their layouts', () => {
    expect(PINNED_MAPS.probe_flows).toMatchObject({ keySize: layouts.probe_flow_key.size, valueSize: layouts.probe_flow_info.size, maxEntries: 16384 });
    expect(PINNED_MAPS.inpod_pods).toMatchObject({ keySize: 8, valueSize: layouts.inpod_pod.size });
    expect(PINNED_MAPS.inpod_config).toMatchObject({ keySize: 4, valueSize: layouts.inpod_config.size, maxEntries: 1 });
  });
});
