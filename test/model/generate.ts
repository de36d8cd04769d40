/**
 * Seeded frame generators for the differential fuzzer: random bytes, valid frames of every
 * class with random fields, mutations of them, truncation at every offset, odd header
 * lengths and IPv6 extension-header chains. Pure: the same seed gives the same frames.
 */
import * as b from '../../harness/packet/builder.js';
import { DNS, FLOW, NODE, NOT_DNS, OUTSIDE, POD_A, POD_B, POD_U, PROBE } from './rows.js';
import { rng } from '../../harness/lib/rng.js';

export class Gen {
  readonly r: () => number;
  constructor(seed: number) {
    this.r = rng(seed);
  }
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  chance(p: number): boolean {
    return this.r() < p;
  }
  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }

  v4Addr(): string {
    return this.pick([
      POD_A.v4,
      POD_A.v4,
      POD_B.v4,
      POD_U.v4,
      OUTSIDE.v4,
      PROBE.v4,
      NODE.v4,
      NODE.v4,
      DNS.v4,
      DNS.local,
      NOT_DNS.v4,
      '10.1.2.3',
      '198.18.0.2',
      '0.0.0.0',
      '255.255.255.255',
    ]);
  }
  v6Addr(): string {
    return this.pick([
      POD_A.v6,
      POD_A.v6,
      POD_B.v6,
      POD_U.v6,
      OUTSIDE.v6,
      PROBE.v6,
      NODE.v6,
      NODE.v6,
      DNS.v6,
      NOT_DNS.v6,
      'fe80::1',
      'febf::1',
      'fec0::1',
      'ff02::1',
      'ff02::1:ff00:a',
      'ff05::2',
      '::',
      '::ffff:198.18.0.10',
      'fd99::1',
    ]);
  }
  port(): number {
    return this.pick([53, 53, 15001, 15006, 15008, 15053, 80, 443, 0, 65535, FLOW.podPort, FLOW.nodePort, this.int(65536)]);
  }

  l4(family: 4 | 6): b.L4 {
    switch (this.int(7)) {
      case 0:
      case 1:
        return b.tcp({
          sport: this.port(),
          dport: this.port(),
          flags: this.int(256),
          doff: this.chance(0.1) ? this.int(16) : undefined,
          payload: this.bytes(this.int(20)),
        });
      case 2:
      case 3:
        return b.udp({ sport: this.port(), dport: this.port(), payload: this.bytes(this.int(20)) });
      case 4: {
        const types =
          family === 4 ? [0, 3, 8, 11, 12, 13, 5, this.int(256)] : [1, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 143, this.int(256)];
        const o = { type: this.pick(types), code: this.int(4), body: this.bytes(this.int(32)) };
        return this.chance(0.15) ? (family === 4 ? b.icmp6(o) : b.icmp4(o)) : family === 4 ? b.icmp4(o) : b.icmp6(o);
      }
      case 5:
        return b.raw(this.pick([0, 2, 41, 47, 50, 51, 59, 89, 132, 255, this.int(256)]), this.bytes(this.int(24)));
      default:
        return this.chance(0.5) ? b.esp() : b.raw(59);
    }
  }

  ext(): b.Ipv6Ext {
    switch (this.int(5)) {
      case 0:
        return { type: 'hop', len: this.chance(0.8) ? 0 : this.int(4) };
      case 1:
        return { type: 'dest', len: this.chance(0.8) ? 0 : this.int(4) };
      case 2:
        return { type: 'routing', len: this.int(3) };
      case 3:
        return { type: 'fragment', offset: this.chance(0.6) ? 0 : 1 + this.int(8000), more: this.chance(0.5) };
      default:
        return { type: 'ah', len: this.pick([0, 1, 4, this.int(8)]) };
    }
  }

  validFrame(): Buffer {
    const eth: b.EtherOpts = this.chance(0.05) ? { vlans: [{ tpid: this.pick([0x8100, 0x88a8]), tci: this.int(4096) }] } : {};
    const kind = this.int(20);
    if (kind === 0) return b.arpFrame({ op: 1 + this.int(2), senderIp: this.v4Addr(), targetIp: this.v4Addr() }, eth);
    if (kind === 1) return b.ether(eth, this.pick([0x88cc, 0x8847, 0x0801, 0x9000, this.int(65536)]), this.bytes(this.int(60)));
    if (kind === 2 || kind === 3) return this.exemptionFrame(eth);
    if (kind < 11) {
      const ip: b.Ipv4Opts = {
        src: this.v4Addr(),
        dst: this.v4Addr(),
        options: this.chance(0.2) ? this.pick([b.Ipv4Option.routerAlert(), b.Ipv4Option.recordRoute(1 + this.int(9)), b.Ipv4Option.nop()]) : undefined,
        fragOffset: this.chance(0.2) ? this.int(8192) : 0,
        moreFragments: this.chance(0.2),
        ihl: this.chance(0.08) ? this.int(16) : undefined,
        version: this.chance(0.04) ? this.int(16) : undefined,
      };
      return b.v4Frame(ip, this.l4(4), eth);
    }
    const exts: b.Ipv6Ext[] = [];
    const n = this.chance(0.5) ? 0 : this.int(7);
    for (let i = 0; i < n; i++) exts.push(this.ext());
    const ip: b.Ipv6Opts = { src: this.v6Addr(), dst: this.v6Addr(), ext: exts, version: this.chance(0.04) ? this.int(16) : undefined };
    return b.v6Frame(ip, this.l4(6), eth);
  }

  /**
   * Frames near the exemptions: pod A with the node (the recorded host flows and new ones,
   * either way, any TCP flags) and with DNS servers and other hosts on port 53.
   */
  exemptionFrame(eth: b.EtherOpts): Buffer {
    const v6 = this.chance(0.4);
    const pod = v6 ? POD_A.v6 : POD_A.v4;
    const toPod = this.chance(0.5);
    let peer: string;
    let podPort: number;
    let peerPort: number;
    let tcp: boolean;
    if (this.chance(0.5)) {
      // The node's flows: the recorded ones (TCP over IPv4, UDP over IPv6) and their near misses.
      peer = v6 ? NODE.v6 : NODE.v4;
      podPort = this.pick([FLOW.podPort, FLOW.podPort, FLOW.podPort, 9090]);
      peerPort = this.pick([FLOW.nodePort, FLOW.nodePort, FLOW.nodePort, 50000]);
      tcp = this.chance(0.85) ? !v6 : v6;
    } else {
      // Port 53 with DNS servers and other hosts.
      peer = this.pick(v6 ? [DNS.v6, DNS.v6, NOT_DNS.v6] : [DNS.v4, DNS.local, NOT_DNS.v4]);
      podPort = this.pick([40000, 53, 5353]);
      peerPort = this.pick([53, 53, 53, 5353]);
      tcp = this.chance(0.2);
    }
    const [sport, dport] = toPod ? [peerPort, podPort] : [podPort, peerPort];
    const l4 = tcp
      ? b.tcp({ sport, dport, flags: this.pick([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, this.int(256)]) })
      : b.udp({ sport, dport, payload: this.bytes(this.int(12)) });
    const ip = { src: toPod ? peer : pod, dst: toPod ? pod : peer };
    return v6 ? b.v6Frame(ip, l4, eth) : b.v4Frame(ip, l4, eth);
  }

  /** Flips, overwrites or truncates a few bytes of a frame. */
  mutate(f: Buffer): Buffer {
    const out = Buffer.from(f);
    const n = 1 + this.int(3);
    for (let i = 0; i < n && out.length > 0; i++) {
      const at = this.chance(0.7) ? 14 + this.int(Math.max(1, out.length - 14)) : this.int(out.length);
      if (at < out.length) out[at] = this.chance(0.5) ? out[at]! ^ (1 << this.int(8)) : this.int(256);
    }
    return this.chance(0.3) ? b.truncate(out, this.int(out.length + 1)) : out;
  }

  randomFrame(): Buffer {
    const f = this.bytes(this.int(160));
    if (f.length >= 14 && this.chance(0.7)) f.writeUInt16BE(this.pick([0x0800, 0x86dd, 0x0806, 0x8100]), 12);
    if (f.length >= 15 && this.chance(0.5)) f[14] = f.readUInt16BE(12) === 0x86dd ? 0x60 | (f[14]! & 0xf) : 0x45;
    return f;
  }

  /** One frame of the mix: 20% random bytes, 40% valid, 40% mutated valid. */
  next(): Buffer {
    const k = this.r();
    if (k < 0.2) return this.randomFrame();
    if (k < 0.6) return this.validFrame();
    return this.mutate(this.validFrame());
  }
}

/** A few valid frames to cut at every offset. */
export function truncationSeeds(): Buffer[] {
  return [
    b.v4Frame({ src: POD_A.v4, dst: OUTSIDE.v4, options: b.Ipv4Option.recordRoute(3) }, b.tcp({ dport: 443 })),
    b.v4Frame({ src: OUTSIDE.v4, dst: POD_A.v4 }, b.udp({ sport: 53, dport: 40000 })),
    b.v6Frame(
      { src: POD_A.v6, dst: OUTSIDE.v6, ext: [{ type: 'hop' }, { type: 'routing', len: 2 }, { type: 'fragment' }, { type: 'ah' }] },
      b.udp({ dport: 53 }),
    ),
    b.v6Frame({ src: OUTSIDE.v6, dst: POD_A.v6, ext: [{ type: 'dest', len: 1 }] }, b.tcp({ dport: 15008 })),
    b.v6Frame({ src: OUTSIDE.v6, dst: POD_A.v6 }, b.icmp6({ type: 2, body: Buffer.alloc(48) })),
  ];
}
