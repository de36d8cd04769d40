import { describe, expect, it } from 'vitest';
import * as b from '../../harness/packet/builder.js';

describe('packet builder', () => {
  it('builds an IPv4 TCP SYN byte for byte, with a valid header checksum', () => {
    const f = b.v4Frame({ src: '10.0.0.1', dst: '10.0.0.2', id: 1, ttl: 64 }, b.tcp({ sport: 1000, dport: 80, seq: 0, flags: b.TcpFlags.SYN }), {
      dst: '02:00:00:00:00:02',
      src: '02:00:00:00:00:01',
    });
    expect(f.toString('hex')).toBe(
      '020000000002' +
        '020000000001' +
        '0800' +
        '45000028' +
        '00010000' +
        '4006' +
        '66cd' +
        '0a000001' +
        '0a000002' +
        '03e80050' +
        '00000000' +
        '00000000' +
        '5002ffff' +
        '00000000',
    );
    // A header whose checksum is right sums to 0xffff (checksum of it is 0).
    expect(b.ipv4Checksum(f.subarray(14, 34))).toBe(0);
  });

  it('pads IPv4 options and sets IHL; fragments set offset and MF', () => {
    const ip = b.ipv4({ options: Buffer.from([0x94, 4, 0, 0, 1]), fragOffset: 185, moreFragments: true }, b.udp());
    expect(ip[0]).toBe(0x47); // 20 + 8 bytes of options: IHL 7
    expect(ip.readUInt16BE(6)).toBe(0x2000 | 185);
    expect(ip.readUInt16BE(2)).toBe(28 + 8);
    expect(b.ipv4({ ihl: 4, version: 5 }, b.udp())[0]).toBe(0x54);
  });

  it('chains IPv6 extension headers and sizes them as the RFCs say', () => {
    const ip = b.ipv6(
      { ext: [{ type: 'hop' }, { type: 'routing', len: 2 }, { type: 'dest', len: 1 }, { type: 'fragment', offset: 3, more: true }, { type: 'ah' }] },
      b.tcp(),
    );
    expect(ip[6]).toBe(b.IpProto.HOPOPTS);
    let off = 40;
    const seen: number[] = [];
    let nh = ip[6]!;
    while ([0, 43, 60, 44, 51].includes(nh)) {
      seen.push(nh);
      const len = nh === 44 ? 8 : nh === 51 ? (ip[off + 1]! + 2) * 4 : (ip[off + 1]! + 1) * 8;
      if (nh === 44) expect(ip.readUInt16BE(off + 2)).toBe((3 << 3) | 1);
      nh = ip[off]!;
      off += len;
    }
    expect(seen).toEqual([0, 43, 60, 44, 51]);
    expect(nh).toBe(b.IpProto.TCP);
    expect(off).toBe(40 + 8 + 24 + 16 + 8 + 24);
    expect(ip.readUInt16BE(4)).toBe(ip.length - 40);
  });

  it('builds ESP, no-next-header, ICMPv6 ND and VLAN-tagged frames', () => {
    expect(b.ipv6({}, b.esp())[6]).toBe(50);
    expect(b.ipv6({}, b.raw(b.IpProto.NONE)).length).toBe(40);
    const ns = b.v6Frame({ dst: 'ff02::1:ff00:1' }, b.icmp6({ type: b.Icmp6Type.NEIGHBOR_SOLICIT, rest: 0, body: b.ipBytes('fe80::1') }));
    expect(ns[14 + 40]).toBe(135);
    expect(ns.subarray(14 + 24, 14 + 40).toString('hex')).toBe('ff0200000000000000000001ff000001');
    const tagged = b.ether(
      {
        vlans: [
          { tpid: 0x88a8, tci: 10 },
          { tpid: 0x8100, tci: 20 },
        ],
      },
      0x0800,
      Buffer.alloc(0),
    );
    expect(tagged.toString('hex').slice(24)).toBe('88a8000a' + '81000014' + '0800');
  });

  it('parses addresses, IPv4-mapped too, and truncates anywhere', () => {
    expect(b.ipBytes('::ffff:1.2.3.4').toString('hex')).toBe('00000000000000000000ffff01020304');
    expect(b.ipBytes('fd16:9254:7127:1337:ffff:ffff:ffff:ffff').toString('hex')).toBe('fd1692547127133 7ffffffffffffffff'.replace(' ', ''));
    expect(b.truncate(Buffer.from([1, 2, 3]), 2)).toEqual(Buffer.from([1, 2]));
    expect(b.truncate(Buffer.from([1, 2, 3]), -1)).toHaveLength(0);
    expect(() => b.ipBytes('1.2.3')).toThrow();
  });
});
