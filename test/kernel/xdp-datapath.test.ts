/**
 * Rows O1–O17 of docs/datapath.md through the XDP hook (build/xdp.bpf.o's xdp_out) with
 * BPF_PROG_RUN of type XDP: the same hand-written rows as the TC programs
 * (test/model/rows.ts), each checking the XDP action the verdict maps to
 * (docs/datapath.md, "XDP (pod-side outbound)"), that only the destination MAC changed and
 * only on XDP_REDIRECT, and the counters entry of the veth the frame arrived on. The XDP
 * model (test/model/xdp.ts) is held to the same rows.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as m from '../model/datapath.js';
import { modelStateOf } from '../model/harness.js';
import { OUTSIDE, POD_A, ROWS, stateOf, ZT, ZT_HOST_IFINDEX, ZT_MAC, type Row } from '../model/rows.js';
import { fold, l4ChecksumVerifies, onesSum, pseudoHeader, xdpAction, xdpOutbound, xdpRunnable } from '../model/xdp.js';
import { macBytes, type XdpOutcome, XdpHarness } from '../model/xdp-harness.js';
import * as b from '../../harness/packet/builder.js';
import { hex } from '../../harness/packet/builder.js';
import { kernelDescribe } from '../support/gate.js';

kernelDescribe('XDP data path verdicts (BPF_PROG_RUN of xdp_out, one row per spec row)', 'loads BPF programs', () => {
  let h: XdpHarness;

  beforeAll(async () => {
    h = await XdpHarness.create();
  });

  afterAll(async () => {
    await h?.close();
  });

  const veths = () => ({ a: h.vethA, b: h.vethB });

  function why(r: Pick<Row, 'id' | 'name' | 'frame'>, k: XdpOutcome | null): string {
    return `${r.id} ${r.name}\nframe ${hex(r.frame)}\nkernel ${k ? k.action : 'not runnable'}`;
  }

  function counterDelta(before: ReturnType<XdpHarness['counters']>, after: ReturnType<XdpHarness['counters']>) {
    const b0 = before ?? { redirectedPackets: 0n, redirectedBytes: 0n, droppedPackets: 0n, droppedBytes: 0n, passedPackets: 0n, passedBytes: 0n };
    return {
      redirected: [after!.redirectedPackets - b0.redirectedPackets, after!.redirectedBytes - b0.redirectedBytes],
      dropped: [after!.droppedPackets - b0.droppedPackets, after!.droppedBytes - b0.droppedBytes],
      passed: [after!.passedPackets - b0.passedPackets, after!.passedBytes - b0.passedBytes],
    };
  }

  describe('xdp_out', () => {
    it.each(ROWS.outbound.map((r) => [`${r.id} ${r.name}`, r] as const))('%s', (_, r) => {
      const state = stateOf(veths(), r);
      h.applyState(state);
      const mv = xdpOutbound(r.frame, modelStateOf(state, h.maxPods), { ifindex: h.vethA });
      expect(mv.action, 'the XDP model disagrees with the table').toBe(xdpAction({ verdict: r.verdict, row: r.id }));
      const before = h.counters(h.vethA);
      const k = h.run('xdp_out', r.frame, h.vethA);
      // XDP runs every frame of an Ethernet header or more: the rows TC cannot run
      // (an IPv4/IPv6 ethertype without a whole IP header) are runnable drops here.
      if (!xdpRunnable(r.frame)) {
        expect(k, why(r, k)).toBeNull();
        return;
      }
      expect(k, why(r, k)).not.toBeNull();
      expect(k!.action, why(r, k)).toBe(mv.action);
      expect(hex(k!.dataOut), why(r, k)).toBe(hex(mv.frameOut));
      // Independently of the model: only the destination MAC and, for TCP/UDP, the
      // checksum may change, and only on XDP_REDIRECT (the builder's L4 checksums are 0, not
      // offloaded ones, so what they become need not verify: see the test below).
      const expected = Buffer.from(r.frame);
      if (r.verdict === 'redirect') macBytes(ZT_MAC).copy(expected, 0);
      const changed = [...expected.keys()].filter((i) => expected[i] !== k!.dataOut[i]);
      if (changed.length > 0) {
        expect(r.verdict, why(r, k)).toBe('redirect');
        const l2 = m.parse(r.frame);
        const at = l2.kind === 'ip' ? l2.ip.l4Off + (l2.ip.proto === 6 ? 16 : 6) : -1;
        expect(
          changed.every((i) => i === at || i === at + 1),
          `${why(r, k)}\nbytes changed at ${changed}`,
        ).toBe(true);
      }
      const after = h.counters(h.vethA);
      expect(after, `${why(r, k)}\nno counters entry for veth A`).not.toBeNull();
      const field = m.counterOf({ verdict: r.verdict, row: r.id });
      const want = { redirected: [0n, 0n], dropped: [0n, 0n], passed: [0n, 0n], [field]: [1n, BigInt(r.frame.length)] };
      expect(counterDelta(before, after), why(r, k)).toEqual(want);
    });
  });

  it('runs the frames TC refuses to run (IPv4/IPv6 ethertype, IP header cut) and drops them (O5, O6)', () => {
    h.applyState(stateOf(veths(), {}));
    const cut = ROWS.outbound.filter((r) => r.notRunnable && xdpRunnable(r.frame));
    expect(cut.map((r) => r.id).sort()).toEqual(['O5', 'O6']);
    for (const r of cut) expect(h.run('xdp_out', r.frame, h.vethA)?.action, why(r, null)).toBe('XDP_DROP');
    // Every length from the Ethernet header to a whole IPv4 header, pod A to the outside.
    const syn = b.v4Frame({ src: POD_A.v4, dst: OUTSIDE.v4 }, b.tcp({ flags: 0x02 }));
    for (let n = 14; n < 14 + 20; n++) expect(h.run('xdp_out', b.truncate(syn, n), h.vethA)?.action, `${n} bytes`).toBe('XDP_DROP');
    expect(h.run('xdp_out', syn, h.vethA)?.action).toBe('XDP_REDIRECT');
  });

  it('completes an offloaded TCP/UDP checksum so that it verifies, at every length; leaves a verifying one alone', () => {
    h.applyState(stateOf(veths(), { state: { ztunnel: ZT.dns } }));
    /** The frame as the pod's stack hands it over with checksum offload: the field holds the pseudo-header sum. */
    const offloaded = (f: Buffer): Buffer => {
      const l2 = m.parse(f);
      if (l2.kind !== 'ip') throw new Error('not IP');
      const ip = l2.ip;
      const len = f.length - ip.l4Off;
      const out = Buffer.from(f);
      out.writeUInt16BE(fold(onesSum(pseudoHeader(ip.family, ip.srcRaw, ip.dstRaw, ip.proto, len))), ip.l4Off + (ip.proto === 6 ? 16 : 6));
      return out;
    };
    let n = 0;
    for (const len of [0, 1, 2, 3, 4, 5, 7, 8, 31, 64, 255, 256, 511, 512, 513, 1000, 1023, 1024, 1400, 1432, 1460]) {
      const payload = Buffer.from(Array.from({ length: len }, (_, i) => (i * 37 + len) & 0xff));
      for (const f of [
        b.v4Frame({ src: POD_A.v4, dst: OUTSIDE.v4 }, b.tcp({ dport: 443, flags: 0x18, payload })),
        b.v6Frame({ src: POD_A.v6, dst: OUTSIDE.v6 }, b.tcp({ dport: 443, flags: 0x18, payload })),
        b.v4Frame({ src: POD_A.v4, dst: OUTSIDE.v4 }, b.udp({ dport: 53, payload })),
        b.v6Frame({ src: POD_A.v6, dst: OUTSIDE.v6 }, b.udp({ dport: 53, payload })),
      ]) {
        const sent = offloaded(f);
        expect(l4ChecksumVerifies(sent), `${len} bytes`).toBe(false);
        const k = h.run('xdp_out', sent, h.vethA)!;
        expect(k.action, `${len} bytes`).toBe('XDP_REDIRECT');
        expect(l4ChecksumVerifies(k.dataOut), `${len} bytes: ${hex(k.dataOut)}`).toBe(true);
        // Sent again as it now is (its checksum verifies): only the MAC, already ztunnel's, is written.
        const again = h.run('xdp_out', k.dataOut, h.vethA)!;
        expect(hex(again.dataOut), `${len} bytes`).toBe(hex(k.dataOut));
        n++;
      }
    }
    expect(n).toBe(84);
  });

  it('counts per veth: pod A’s frame arriving on veth B is dropped there (O8) and counted on B alone', () => {
    const r = ROWS.outbound.find((x) => x.id === 'O17')!;
    h.applyState(stateOf(veths(), r));
    const a0 = h.counters(h.vethA);
    const b0 = h.counters(h.vethB);
    expect(h.run('xdp_out', r.frame, h.vethB)?.action).toBe('XDP_DROP');
    expect(h.counters(h.vethA)).toEqual(a0);
    expect(h.counters(h.vethB)!.droppedPackets).toBe((b0?.droppedPackets ?? 0n) + 1n);
  });

  it('fails closed and follows the slot as TC does: no ztunnel, not PRESENT, ifindex 0 all drop what would be redirected', () => {
    const syn = b.v6Frame({ src: POD_A.v6, dst: OUTSIDE.v6 }, b.tcp({ dport: 443, flags: 0x02 }));
    for (const [name, zt, action] of [
      ['present', ZT.dns, 'XDP_REDIRECT'],
      ['missing', null, 'XDP_DROP'],
      ['not PRESENT', ZT.notPresent, 'XDP_DROP'],
      ['PRESENT with ifindex 0', ZT.presentIfindex0, 'XDP_DROP'],
    ] as const) {
      const state = stateOf(veths(), { state: { ztunnel: zt } });
      h.applyState(state);
      const mv = xdpOutbound(syn, modelStateOf(state, h.maxPods), { ifindex: h.vethA });
      expect([mv.action, mv.redirectIfindex], name).toEqual(action === 'XDP_REDIRECT' ? [action, ZT_HOST_IFINDEX] : [action, undefined]);
      const k = h.run('xdp_out', syn, h.vethA);
      expect(k?.action, name).toBe(action);
      // A dropped frame is left as it was: the MAC is rewritten only on the way to ztunnel.
      expect(hex(k!.dataOut), name).toBe(hex(mv.frameOut));
      if (action !== 'XDP_REDIRECT') expect(hex(k!.dataOut), name).toBe(hex(syn));
    }
  });

  it('xdp_pass passes every frame untouched', () => {
    for (const r of ROWS.outbound.filter((x) => xdpRunnable(x.frame))) {
      const k = h.run('xdp_pass', r.frame, h.vethB);
      expect([k?.action, hex(k!.dataOut)], why(r, k)).toEqual(['XDP_PASS', hex(r.frame)]);
    }
  });
});
