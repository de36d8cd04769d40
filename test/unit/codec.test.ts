import { describe, expect, it } from 'vitest';
import { isIP } from 'node:net';
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
    const buf = codec.encodePodInfo({ ifindex: 0x01020304, mac: '0a:58:c6:12:00:0a', flags: codec.PodFlags.ENROLLED, slot: 0x0a0b0c0d });
    expect(buf).toHaveLength(layouts.pod_info.size);
    expect(buf.readUInt32LE(layouts.pod_info.fields.ifindex.offset)).toBe(0x01020304);
    expect(buf.subarray(layouts.pod_info.fields.mac.offset, layouts.pod_info.fields.mac.offset + 6).toString('hex')).toBe('0a58c612000a');
    expect(buf.readUInt16LE(layouts.pod_info.fields.flags.offset)).toBe(1);
    expect(buf.readUInt32LE(layouts.pod_info.fields.slot.offset)).toBe(0x0a0b0c0d);
    expect(codec.decodePodInfo(buf)).toEqual({ ifindex: 0x01020304, mac: '0a:58:c6:12:00:0a', flags: 1, slot: 0x0a0b0c0d });
    expect(codec.decodePodSlot(buf)).toEqual({ ifindex: 0x01020304, slot: 0x0a0b0c0d });
    // No slot given: 0 (counted in slot 0).
    expect(codec.decodePodInfo(codec.encodePodInfo({ ifindex: 1, mac: '00:00:00:00:00:00', flags: 0 })).slot).toBe(0);
  });

  it('writes every byte of pod_info (no field is left to chance)', () => {
    const covered = new Set<number>();
    for (const fl of Object.values(layouts.pod_info.fields)) for (let i = 0; i < fl.size; i++) covered.add(fl.offset + i);
    expect(covered.size).toBe(layouts.pod_info.size);
  });

  it('lays out veth_slot as the generated layout says', () => {
    const buf = codec.encodeVethSlot(0x01020304);
    expect(buf).toHaveLength(layouts.veth_slot.size);
    expect(buf.readUInt32LE(layouts.veth_slot.fields.slot.offset)).toBe(0x01020304);
    expect(codec.decodeVethSlot(buf)).toBe(0x01020304);
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
    [{ ifindex: 1, mac: '00:00:00:00:00:00', flags: 0, slot: 2 ** 32 }, /slot/],
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

describe('packing a batch of pods', () => {
  const a = { ifindex: 7, mac: '0a:58:C6:12:00:0A', flags: codec.PodFlags.ENROLLED, slot: 1 };
  const b = { ifindex: 9, mac: 'aa:bb:cc:dd:ee:ff', flags: 0, slot: 0 };

  it('lays out each key and value exactly as the single-entry encoders do, back to back', () => {
    const ips = ['198.18.0.10', '2001:db8::ff00:42:8329', '::ffff:10.1.2.3', '::', 'fe80:1:2:3:4:5:6:7', '1::'];
    const p = codec.packPods(ips.map((ip, i) => [ip, i % 2 ? b : a] as const));
    expect(p.count).toBe(ips.length);
    ips.forEach((ip, i) => {
      expect(p.keys.subarray(i * codec.ADDR_KEY_SIZE, (i + 1) * codec.ADDR_KEY_SIZE)).toEqual(codec.encodeAddrKey(ip));
      expect(codec.decodePodInfo(p.values.subarray(i * codec.POD_INFO_SIZE, (i + 1) * codec.POD_INFO_SIZE))).toEqual({
        ...(i % 2 ? b : a),
        mac: (i % 2 ? b : a).mac.toLowerCase(),
      });
    });
    expect(codec.decodeAddrKey(p.keys.subarray(codec.ADDR_KEY_SIZE, 2 * codec.ADDR_KEY_SIZE))).toBe('2001:db8::ff00:42:8329');
    expect(codec.decodeAddr(codec.encodeAddr('::ffff:10.1.2.3'))).toBe('10.1.2.3');
  });

  it('packs a Map (walked with forEach) exactly as the same entries in an array, the widest fields included', () => {
    const wide = { ifindex: 0xffff_ffff, mac: 'ff:ff:ff:ff:ff:ff', flags: 0xffff, slot: 0xffff_ffff };
    const odd = { ifindex: 0x0102_0304, mac: '01:02:03:04:05:06', flags: 0x0a0b, slot: 0x0506_0708 };
    const entries = [
      ['10.9.8.7', wide],
      ['fd00:1:2:3:4:5:6:7', odd],
      ['::ffff:1.2.3.4', a],
      ['0.0.0.0', b],
    ] as const;
    const fromMap = codec.packPods(new Map(entries));
    const fromArray = codec.packPods(entries);
    expect(fromMap).toEqual(fromArray);
    entries.forEach(([ip, v], i) => {
      expect(fromMap.keys.subarray(i * codec.ADDR_KEY_SIZE, (i + 1) * codec.ADDR_KEY_SIZE)).toEqual(codec.encodeAddrKey(ip));
      expect(fromMap.values.subarray(i * codec.POD_INFO_SIZE, (i + 1) * codec.POD_INFO_SIZE)).toEqual(codec.encodePodInfo(v));
    });
    expect(() => codec.packPods(new Map([['10.0.0.1', { ...a, flags: 0x1_0000 }]]))).toThrow(/flags out of range/);
    expect(() => codec.packPods(new Map([['10.0.0.1', { ...a, slot: 2 ** 32 }]]))).toThrow(/slot out of range/);
  });

  it('zeroes padding even in a reused, dirty buffer', () => {
    const dirty = Buffer.alloc(codec.ADDR_KEY_SIZE + codec.POD_INFO_SIZE, 0xee);
    codec.writeAddrKey('10.0.0.1', dirty, 0);
    codec.writePodInfo(a, dirty, codec.ADDR_KEY_SIZE);
    expect(dirty.subarray(0, codec.ADDR_KEY_SIZE)).toEqual(codec.encodeAddrKey('10.0.0.1'));
    const clean = Buffer.alloc(codec.POD_INFO_SIZE);
    codec.writePodInfo(a, clean, 0);
    expect(dirty.subarray(codec.ADDR_KEY_SIZE)).toEqual(clean);
  });

  it('bad input is a CodecError naming it, not a corrupt entry', () => {
    expect(() => codec.packPods([['10.0.0.256', a]])).toThrow(/not an IP address: "10.0.0.256"/);
    expect(() => codec.packPods([['10.0.0.1', { ...a, mac: '0a:58:c6:12:00' }]])).toThrow(/not a MAC address/);
    expect(() => codec.packPods([['10.0.0.1', { ...a, mac: '0a-58-c6-12-00-0a' }]])).toThrow(/not a MAC address/);
    expect(() => codec.packPods([['10.0.0.1', { ...a, mac: '0a:58:c6:12:00:0g' }]])).toThrow(/not a MAC address/);
    expect(() => codec.packPods([['10.0.0.1', { ...a, ifindex: -1 }]])).toThrow(/ifindex out of range/);
    expect(codec.packPods(new Map()).count).toBe(0);
  });
});

describe('the address parser against node:net isIP and a plain split parser', () => {
  /** The straightforward parser (split on "::", pad with zero groups), after isIP said yes. */
  function reference(ip: string): Buffer | null {
    const family = isIP(ip);
    if (family === 4) return Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...ip.split('.').map(Number)]);
    if (family !== 6) return null;
    let text = ip.replace(/%.*$/, '');
    const quad = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
    if (quad) {
      const [a, b, c, d] = quad.slice(1).map(Number) as [number, number, number, number];
      text = `${text.slice(0, -quad[0].length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
    }
    const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
    const hg = head ? head.split(':') : [];
    const tg = tail ? tail.split(':') : [];
    const groups = tail === undefined ? hg : [...hg, ...Array<string>(8 - hg.length - tg.length).fill('0'), ...tg];
    const out = Buffer.alloc(16);
    groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
    return out;
  }

  it('agree on spelled-out edge cases and on 20,000 random spellings, typos included', () => {
    let seed = 7;
    const rnd = (k: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % k;
    };
    const cases = ['::', '1::', '::1', '::ffff:1.2.3.4', '1:2:3:4:5:6:7:8', '1::2::3', ':1::', '1:::2', '1:2:3:4:5:6:7:8:9', 'fe80::1%eth0', '::1.2.3.4'];
    cases.push(
      '1:2:3:4:5:6:1.2.3.4',
      '1:2:3:4:5:6:7:1.2.3.4',
      '1.2.3',
      '01.2.3.4',
      '256.1.1.1',
      '',
      'ABCD::EF',
      '1:2:3:4:5:6:7::',
      '1:2:3:4:5:6:7:',
      'g::1',
      '12345::1',
    );
    cases.push('0.0.0.0', '255.255.255.255', '::ffff:256.1.1.1', '1::1.2.3.4:5', ' 1.2.3.4', '1.2.3.4 ', '10.0.0.01');
    for (let t = 0; t < 20_000; t++) {
      const parts = Array.from({ length: 8 }, () => rnd(0x10000).toString(16));
      const a = rnd(9);
      const b = Math.min(8, a + rnd(9));
      let ip = rnd(3) === 0 ? parts.join(':') : `${parts.slice(0, a).join(':')}::${parts.slice(b).join(':')}`;
      if (rnd(5) === 0) ip = ip.replace(/(:[0-9a-f]+){2}$/, `:${rnd(256)}.${rnd(256)}.${rnd(256)}.${rnd(256)}`);
      if (rnd(4) === 0) {
        const k = rnd(ip.length + 1);
        ip = ip.slice(0, k) + ':.0g'[rnd(4)]! + ip.slice(k);
      }
      if (rnd(6) === 0) ip = `${rnd(300)}.${rnd(300)}.${rnd(256)}.${rnd(256)}`;
      cases.push(ip);
    }
    const mismatches = cases.filter((ip) => {
      const want = reference(ip);
      let got: Buffer | null = null;
      try {
        got = codec.encodeAddr(ip);
      } catch (err) {
        expect(err).toBeInstanceOf(codec.CodecError);
      }
      return want === null ? got !== null : !got?.equals(want);
    });
    expect(mismatches).toEqual([]);
  });
});

describe('per-CPU counters', () => {
  it('sums every CPU exactly, carries across 32 bits included', () => {
    const stride = Math.ceil(codec.POD_COUNTERS_SIZE / 8) * 8;
    const cpus = [
      { ...codec.zeroCounters(), redirectedPackets: 0xffffffffn, droppedBytes: 2n ** 40n + 5n, passedBytes: 3n },
      { ...codec.zeroCounters(), redirectedPackets: 1n, droppedBytes: 2n ** 40n, passedPackets: 7n },
      { ...codec.zeroCounters(), redirectedPackets: 0xffffffffn, redirectedBytes: 2n ** 52n },
    ];
    const buf = Buffer.alloc(stride * cpus.length);
    cpus.forEach((c, i) => codec.encodePodCounters(c).copy(buf, i * stride));
    expect(codec.decodePodCountersPerCpu(buf)).toEqual({
      redirectedPackets: 0x1ffffffffn,
      redirectedBytes: 2n ** 52n,
      droppedPackets: 0n,
      droppedBytes: 2n ** 41n + 5n,
      passedPackets: 7n,
      passedBytes: 3n,
    });
    expect(() => codec.decodePodCountersPerCpu(buf.subarray(1))).toThrow(/not a multiple/);
  });
});

describe('host flows', () => {
  const v4 = { pod: '198.18.0.10', podPort: 8080, peer: '10.0.0.4', peerPort: 41234, proto: 6 };
  const v6 = { pod: 'fd00:10:244::a', podPort: 8080, peer: 'fd00:10::4', peerPort: 41234, proto: 17 };

  it('keeps a flow between IPv4 (or IPv4-mapped) addresses in host_flows4, any other in host_flows', () => {
    expect(codec.hostFlowMapOf(v4)).toBe('host_flows4');
    expect(codec.hostFlowMapOf({ pod: '::ffff:198.18.0.10', peer: '::ffff:10.0.0.4' })).toBe('host_flows4');
    expect(codec.hostFlowMapOf(v6)).toBe('host_flows');
    expect(codec.hostFlowMapOf({ pod: '::ffff:198.18.0.10', peer: 'fd00:10::4' })).toBe('host_flows');
  });

  it('encodes host_flows4 keys as the programs build them: addresses and ports in network order, protocol, zero pad', () => {
    const key = codec.encodeHostFlow4Key(v4);
    expect(key.length).toBe(layouts.host_flow4_key.size);
    expect(key.toString('hex')).toBe('c612000a0a000004' + '1f90a112' + '06000000');
    expect(codec.decodeHostFlow4Key(key)).toEqual(v4);
    expect(codec.encodeHostFlow(v4)).toEqual({ map: 'host_flows4', key });
    expect(() => codec.encodeHostFlow4Key(v6)).toThrow(/IPv4 flows only/);
  });

  it('round-trips host_flows keys', () => {
    const { map, key } = codec.encodeHostFlow(v6);
    expect(map).toBe('host_flows');
    expect(codec.decodeHostFlowKey(key)).toEqual(v6);
  });
});
