/**
 * The bypass hunt's checksum helper (harness/sim/rawframes.ts): known answers computed
 * independently (a plain one's-complement sum over the pseudo-header and segment), and
 * the frames it must leave alone.
 */
import { describe, expect, it } from 'vitest';
import * as b from '../../harness/packet/builder.js';
import { withChecksums } from '../../harness/sim/rawframes.js';

const l4csum = (frame: Buffer, l4Start: number, off: number) => frame.readUInt16BE(l4Start + off);

describe('withChecksums', () => {
  it('fills in IPv4 TCP and ICMP checksums', () => {
    const syn = withChecksums(b.v4Frame({ src: '10.0.0.1', dst: '10.0.0.2' }, b.tcp({ sport: 1000, dport: 80, seq: 0, flags: b.TcpFlags.SYN })));
    expect(l4csum(syn, 34, 16)).toBe(0x97a8);
    const echo = withChecksums(b.v4Frame({ src: '10.0.0.1', dst: '10.0.0.2' }, b.icmp4({ body: Buffer.from('hi') })));
    expect(l4csum(echo, 34, 2)).toBe(0x8f94);
  });

  it('fills in IPv6 UDP and ICMPv6 checksums (pseudo-header with the 32-bit length)', () => {
    const u = withChecksums(b.v6Frame({ src: 'fd00::1', dst: 'fd00::2' }, b.udp({ sport: 40000, dport: 53, payload: Buffer.from('abc') })));
    expect(l4csum(u, 54, 6)).toBe(0xa4fb);
    const e = withChecksums(b.v6Frame({ src: 'fe80::1', dst: 'ff02::1' }, b.icmp6({ body: Buffer.from('hi') })));
    expect(l4csum(e, 54, 2)).toBe(0x19ca);
  });

  it('leaves fragments, extension headers, other protocols and short frames as they are', () => {
    const frag = b.v4Frame({ moreFragments: true }, b.udp({ payload: Buffer.from('x') }));
    const ext = b.v6Frame({ ext: [{ type: 'hop' }] }, b.udp({ payload: Buffer.from('x') }));
    const gre = b.v4Frame({}, b.raw(47, Buffer.alloc(8)));
    const short = b.truncate(b.v4Frame({}, b.tcp()), 40);
    for (const f of [frag, ext, gre, short]) expect(withChecksums(f)).toEqual(f);
  });

  it('returns a copy: the frame given is not changed', () => {
    const f = b.v4Frame({}, b.udp({ payload: Buffer.from('x') }));
    const before = Buffer.from(f);
    withChecksums(f);
    expect(f).toEqual(before);
  });
});
