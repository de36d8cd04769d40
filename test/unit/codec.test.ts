import { describe, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import { layouts } from '../../src/bpf/layout.generated.js';

describe('addresses', () => {
  it('maps IPv4 into the v6 space, network order', () => {
    expect([...codec.encodeAddr('198.18.0.10')]).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 10]);
  });

  it.each(['198.18.0.10', '0.0.0.0', '255.255.255.255', '2001:db8::1', '::1', '::', 'fd00:1:2:3:4:5:6:7', '2001:db8:0:0:1::1', 'fe80::1:0:0:0'])(
    'round-trips %s',
    (ip) => {
      const back = codec.decodeAddr(codec.encodeAddr(ip));
      expect(codec.encodeAddr(back)).toEqual(codec.encodeAddr(ip));
    },
  );

  it('writes IPv6 groups in network order and compresses the longest zero run', () => {
    const buf = codec.encodeAddr('2001:db8::ff00:42:8329');
    expect(buf.toString('hex')).toBe('20010db8000000000000ff0000428329');
    expect(codec.decodeAddr(buf)).toBe('2001:db8::ff00:42:8329');
    expect(codec.decodeAddr(codec.encodeAddr('::ffff:10.1.2.3'))).toBe('10.1.2.3');
  });

  it.each(['', '1.2.3', '1.2.3.256', 'pod', '::g', '1.2.3.4/32', ' 1.2.3.4'])('rejects %j', (bad) => {
    expect(() => codec.encodeAddr(bad)).toThrow(codec.CodecError);
  });
});

describe('pods map', () => {
  it('lays out pod_info as the generated layout says', () => {
    const buf = codec.encodePodInfo({ ifindex: 0x01020304, mac: '0a:58:c6:12:00:0a', flags: codec.PodFlags.ENROLLED });
    expect(buf).toHaveLength(layouts.pod_info.size);
    expect(buf.readUInt32LE(layouts.pod_info.fields.ifindex.offset)).toBe(0x01020304);
    expect(buf.subarray(layouts.pod_info.fields.mac.offset, layouts.pod_info.fields.mac.offset + 6).toString('hex')).toBe('0a58c612000a');
    expect(buf.readUInt16LE(layouts.pod_info.fields.flags.offset)).toBe(1);
    expect(codec.decodePodInfo(buf)).toEqual({ ifindex: 0x01020304, mac: '0a:58:c6:12:00:0a', flags: 1 });
  });

  it('keys by address', () => {
    expect(codec.encodeAddrKey('198.18.0.10')).toHaveLength(layouts.addr_key.size);
    expect(codec.decodeAddrKey(codec.encodeAddrKey('2001:db8::7'))).toBe('2001:db8::7');
  });

  it.each([
    [{ ifindex: -1, mac: '00:00:00:00:00:00', flags: 0 }, /ifindex/],
    [{ ifindex: 2 ** 32, mac: '00:00:00:00:00:00', flags: 0 }, /ifindex/],
    [{ ifindex: 1.5, mac: '00:00:00:00:00:00', flags: 0 }, /ifindex/],
    [{ ifindex: 1, mac: '00:00:00:00:00', flags: 0 }, /MAC/],
    [{ ifindex: 1, mac: 'zz:00:00:00:00:00', flags: 0 }, /MAC/],
    [{ ifindex: 1, mac: '00:00:00:00:00:00', flags: 0x10000 }, /flags/],
  ])('rejects out-of-range values %#', (value, msg) => {
    expect(() => codec.encodePodInfo(value)).toThrow(msg);
  });
});

describe('ztunnel slot', () => {
  it('round-trips and places every field where the layout says', () => {
    const zt = {
      ifindex: 7,
      peerIfindex: 2,
      mac: '0a:58:c6:12:00:02',
      flags: codec.ZtunnelFlags.PRESENT | codec.ZtunnelFlags.DNS_CAPTURE,
      netnsCookie: 0x1122334455667788n,
    };
    const buf = codec.encodeZtunnelInfo(zt);
    const f = layouts.ztunnel_info.fields;
    expect(buf).toHaveLength(layouts.ztunnel_info.size);
    expect(buf.readUInt32LE(f.peer_ifindex.offset)).toBe(2);
    expect(buf.readBigUInt64LE(f.netns_cookie.offset)).toBe(0x1122334455667788n);
    expect(codec.decodeZtunnelInfo(buf)).toEqual(zt);
  });

  it('writes every byte of the struct (no field is left to chance)', () => {
    const covered = new Set<number>();
    for (const fl of Object.values(layouts.ztunnel_info.fields)) for (let i = 0; i < fl.size; i++) covered.add(fl.offset + i);
    expect(covered.size).toBe(layouts.ztunnel_info.size);
  });
});
