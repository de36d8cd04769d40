/**
 * C and TypeScript agree on every shared struct: the committed layout module must be
 * exactly what the compiled object's BTF generates (`make layout` regenerates it).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { constants } from '../../src/bpf/layout.generated.js';
import { PodFlags, ZtunnelFlags } from '../../src/core/values.js';
import { declaredStructs, generateLayoutModule, layoutsFromBtf } from '../../tools/layout-gen.js';

const HEADER = 'bpf/include/ambient_redirect.h';

describe('generated layouts', () => {
  it('match the compiled object (run `make layout` after changing the shared header)', async () => {
    const generated = await generateLayoutModule('build/redirect.bpf.o', HEADER, 'build/redirect.bpf.o');
    expect(readFileSync('src/bpf/layout.generated.ts', 'utf8')).toBe(generated);
  });

  it('match the in-pod object too (bpf/include/inpod.h -> src/bpf/inpod-layout.generated.ts)', async () => {
    const generated = await generateLayoutModule('build/inpod.bpf.o', 'bpf/include/inpod.h');
    expect(readFileSync('src/bpf/inpod-layout.generated.ts', 'utf8')).toBe(generated);
    expect(declaredStructs(readFileSync('bpf/include/inpod.h', 'utf8')).sort()).toEqual([
      'inpod_config',
      'inpod_handoff_key',
      'inpod_listener_key',
      'inpod_override',
      'inpod_pod',
      'probe_flow_info',
      'probe_flow_key',
    ]);
  });

  it("give the core's flags (src/core/values.ts) the header's values", () => {
    expect(PodFlags).toEqual({
      ENROLLED: constants.POD_F_ENROLLED,
      DNS_CAPTURE: constants.POD_F_DNS_CAPTURE,
      NO_DNS_CAPTURE: constants.POD_F_NO_DNS_CAPTURE,
      BYPASS_INBOUND: constants.POD_F_BYPASS_INBOUND,
    });
    expect(ZtunnelFlags).toEqual({ PRESENT: constants.ZT_F_PRESENT, DNS_CAPTURE: constants.ZT_F_DNS_CAPTURE, NON_TCP_DROP: constants.ZT_F_NON_TCP_DROP });
    const flagNames = Object.keys(constants).filter((k) => /^(POD|ZT)_F_/.test(k));
    expect(flagNames.sort()).toEqual([
      'POD_F_BYPASS_INBOUND',
      'POD_F_DNS_CAPTURE',
      'POD_F_ENROLLED',
      'POD_F_NO_DNS_CAPTURE',
      'ZT_F_DNS_CAPTURE',
      'ZT_F_NON_TCP_DROP',
      'ZT_F_PRESENT',
    ]);
  });

  it('cover every struct the shared header declares', () => {
    expect(declaredStructs(readFileSync(HEADER, 'utf8')).sort()).toEqual([
      'addr_key',
      'dns_info',
      'host_flow4_key',
      'host_flow_info',
      'host_flow_key',
      'pod_counters',
      'pod_info',
      'qdisc_info',
      'qdisc_key',
      'veth_slot',
      'ztunnel_info',
    ]);
  });

  it('refuse a declared struct missing from BTF, and bitfields', () => {
    const btf = {
      types: [
        { id: 1, kind: 'INT', name: 'u32', size: 4 },
        { id: 2, kind: 'STRUCT', name: 'a', size: 4, members: [{ name: 'x', type_id: 1, bits_offset: 0, bitfield_size: 3 }] },
      ],
    };
    expect(() => layoutsFromBtf(btf, ['b'])).toThrow(/struct b .*absent/);
    expect(() => layoutsFromBtf(btf, ['a'])).toThrow(/bitfields/);
  });

  it('resolve typedefs and arrays to their sizes', () => {
    const btf = {
      types: [
        { id: 1, kind: 'INT', name: 'unsigned char', size: 1 },
        { id: 2, kind: 'TYPEDEF', name: '__u8', type_id: 1 },
        { id: 3, kind: 'ARRAY', type_id: 2, nr_elems: 6 },
        { id: 4, kind: 'STRUCT', name: 's', size: 8, members: [{ name: 'mac', type_id: 3, bits_offset: 16 }] },
      ],
    };
    expect(layoutsFromBtf(btf, ['s'])).toEqual({ s: { size: 8, fields: { mac: { offset: 2, size: 6 } } } });
  });
});
