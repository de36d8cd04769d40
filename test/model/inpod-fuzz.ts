/**
 * The in-pod differential fuzzer's inputs (test/kernel/fuzz.test.ts on this kernel, and the
 * kernel matrix's in-pod replay in every kernel, test/slow/matrix.test.ts): frames near the
 * in-pod rows, lookups near the handoffs, the contexts each program gets, and the map
 * states with the sockets the fuzzer's netns holds in each (harness/inpod/sockets.ts steps).
 */
import { connecting, connection, type SocketStep } from '../../harness/inpod/sockets.js';
import * as b from '../../harness/packet/builder.js';
import { ipBytes, truncate } from '../../harness/packet/builder.js';
import { addrKeyHex } from './datapath.js';
import { type Gen, truncationSeeds } from './generate.js';
import { handoffKey, LOOP_MARK, Override, probeFlowKey, type InpodFrameProgram, type LookupCtx } from './inpod.js';
import { FLOW, NODE, NODE_IFINDEX, OUTSIDE, POD_A, PROBE } from './rows.js';

export const IP_POD = { v4: POD_A.v4, v6: POD_A.v6 };
export const IP_NODE = { v4: NODE.v4, v6: NODE.v6 };
/** The generator's flow ports (FLOW): its frames between pod A and the node meet these sockets. */
export const CONN = { podPort: FLOW.podPort, outPort: FLOW.nodePort };
/** Ports inpodFrame also picks: a TIME_WAIT at the node's end and the pod connecting on it. */
export const FAR = { podPort: 9090, peerPort: 50000 };

/** Frames near the in-pod rows: pod A with the node, the probe address and the outside, on the flow's ports. */
export function inpodFrame(gen: Gen): Buffer {
  const v6 = gen.chance(0.5);
  const pod = v6 ? IP_POD.v6 : IP_POD.v4;
  const peer = gen.pick(v6 ? [IP_NODE.v6, PROBE.v6, OUTSIDE.v6] : [IP_NODE.v4, PROBE.v4, OUTSIDE.v4]);
  const toPod = gen.chance(0.5);
  const podPort = gen.pick([CONN.podPort, CONN.podPort, 53, 15008, FAR.podPort]);
  const peerPort = gen.pick([CONN.outPort, CONN.outPort, 53, FAR.peerPort]);
  const [sport, dport] = toPod ? [peerPort, podPort] : [podPort, peerPort];
  const l4 = gen.chance(0.8) ? b.tcp({ sport, dport, flags: gen.pick([0x02, 0x12, 0x10, 0x18, 0x11, 0x04, gen.int(256)]) }) : b.udp({ sport, dport });
  const ip = { src: toPod ? peer : pod, dst: toPod ? pod : peer };
  if (v6) return b.v6Frame({ ...ip, ext: gen.chance(0.1) ? [{ type: 'fragment', offset: gen.pick([0, 5]), more: gen.chance(0.5) }] : [] }, l4);
  return b.v4Frame({ ...ip, moreFragments: gen.chance(0.05), fragOffset: gen.chance(0.05) ? 5 : 0 }, l4);
}

/**
 * Frames near inpod_lo_in's rows (PR5-PR9), mostly SYNs: from pod A to loopback (or just
 * beside it), from an address to itself, on the 4-tuple of the fuzz states' open
 * connection (PR8), and new connections to the node or outside (PR9, DNS among them). The
 * TIME_WAITs' tuples (PR10) are fuzzFrames' own, in a run of their own: a handoff is of
 * its generation, which the model does not know, so its copies come close together.
 */
export function loFrame(gen: Gen): Buffer {
  const flags = gen.pick([0x02, 0x02, 0x02, 0x12, 0x10, gen.int(256)]);
  const v6 = gen.chance(0.5);
  const pod = v6 ? IP_POD.v6 : IP_POD.v4;
  let src = pod;
  let dst: string;
  let ports: readonly [number, number] = [40000, gen.pick([80, 53, 8080])];
  switch (gen.pick([0, 0, 1, 2, 2, 3])) {
    case 0:
      dst = v6
        ? gen.pick(['::1', '::1', '::2', '::ffff:127.0.0.1'])
        : gen.pick(['127.0.0.1', '127.0.0.1', `127.${gen.int(256)}.${gen.int(256)}.${gen.int(256)}`, '128.0.0.1']);
      if (gen.chance(0.3)) src = dst;
      break;
    case 1:
      src = dst = gen.pick(v6 ? [IP_POD.v6, IP_NODE.v6] : [IP_POD.v4, IP_NODE.v4]);
      break;
    case 2:
      // The open connection is IPv4's; IPv6's tuple holds a TIME_WAIT at the pod's end.
      dst = v6 ? IP_NODE.v6 : IP_NODE.v4;
      ports = [CONN.podPort, CONN.outPort];
      break;
    default:
      dst = gen.pick(v6 ? [IP_NODE.v6, OUTSIDE.v6] : [IP_NODE.v4, OUTSIDE.v4]);
  }
  const l4 = b.tcp({ sport: ports[0], dport: ports[1], flags });
  return v6 ? b.v6Frame({ src, dst }, l4) : b.v4Frame({ src, dst, moreFragments: gen.chance(0.03) }, l4);
}

/** A listener lookup near the generator's flows: its family, protocol, ends and ports. */
export function lookupCtx(gen: Gen): LookupCtx {
  const v6 = gen.chance(0.5);
  const addrs = v6 ? [IP_POD.v6, IP_NODE.v6, OUTSIDE.v6] : [IP_POD.v4, IP_NODE.v4, OUTSIDE.v4];
  const ports = [CONN.podPort, CONN.outPort, FAR.podPort, FAR.peerPort, 53, 15006, 8080];
  return {
    family: v6 ? 6 : 4,
    protocol: gen.pick([6, 6, 6, 17, 132]),
    remoteHex: addrKeyHex(ipBytes(gen.pick(addrs))),
    remotePort: gen.pick(ports),
    localHex: addrKeyHex(ipBytes(gen.pick(addrs))),
    localPort: gen.pick(ports),
  };
}

export const lookupKey = (c: LookupCtx) => handoffKey(c.family, c.remoteHex, c.remotePort, c.localHex, c.localPort);

/** The lookup of a handed-over tuple, sometimes as UDP. */
export function ctxOfKey(key: string, gen: Gen): LookupCtx {
  const [family, remoteHex, rport, localHex, lport] = key.split('|');
  return {
    family: Number(family) as 4 | 6,
    protocol: gen.pick([6, 6, 6, 17]),
    remoteHex: remoteHex!,
    remotePort: Number(rport),
    localHex: localHex!,
    localPort: Number(lport),
  };
}

const h4 = (ip: string) => addrKeyHex(ipBytes(ip));

/** The probe flows every state starts with: pod A's flow port with the node, both families. */
export function fuzzProbeFlows(): Map<string, string> {
  return new Map([
    [probeFlowKey(h4(IP_POD.v4), CONN.podPort, CONN.outPort, 4), h4(IP_NODE.v4)],
    [probeFlowKey(h4(IP_POD.v6), CONN.podPort, CONN.outPort, 6), h4(IP_NODE.v6)],
  ]);
}

/** A fuzz state: the node's DNS capture, pod annotations, and the sockets set up before it (added to the previous states'). */
export interface InpodFuzzState {
  name: string;
  dns: boolean;
  overrides: [string, number][];
  steps: SocketStep[];
}

export const FUZZ_STATES: InpodFuzzState[] = [
  { name: 'no sockets, DNS capture off (pod A IPv4: dns-capture "true")', dns: false, overrides: [[IP_POD.v4, Override.DNS_CAPTURE]], steps: [] },
  { name: 'no sockets, DNS capture on (pod A IPv6: dns-capture "false")', dns: true, overrides: [[IP_POD.v6, Override.NO_DNS_CAPTURE]], steps: [] },
  {
    name: "ztunnel's sockets, an app listener, a connection and a TIME_WAIT, DNS capture on (pod A IPv4: bypass-inbound-capture)",
    dns: true,
    overrides: [[IP_POD.v4, Override.BYPASS_INBOUND]],
    steps: [
      ...(
        [
          ['tcp4', 15001],
          ['tcp6', 15001],
          ['tcp4', 15006],
          ['tcp6', 15006],
          ['tcp4', 15053],
          ['udp4', 15053],
          ['udp6', 15053],
          ['tcp6', 443],
        ] as const
      ).map(([kind, port]): SocketStep => ({ listen: kind, port })),
      connection([IP_POD.v4, CONN.podPort], [IP_NODE.v4, CONN.outPort]),
      connection([IP_POD.v6, CONN.podPort], [IP_NODE.v6, CONN.outPort], true),
      connection([IP_NODE.v6, CONN.outPort + 1], [IP_POD.v6, CONN.podPort + 1], true),
      // A TIME_WAIT at the far end on the generator's ports, with the pod connecting again
      // on the same 4-tuple: looped SYNs there are handed over (PL5).
      connection([IP_NODE.v6, FAR.peerPort], [IP_POD.v6, FAR.podPort], true),
      connecting([IP_POD.v6, FAR.podPort], [IP_NODE.v6, FAR.peerPort]),
    ],
  },
];

/** The addresses on lo of the fuzzer's netns. */
export const FUZZ_ADDRESSES = [IP_POD.v4, IP_POD.v6, IP_NODE.v4, IP_NODE.v6];

/**
 * A state's frames: every truncation of the seeds, SYNs on the tuples the TIME_WAITs hold
 * (PL5, PI8, PR10: rare in the random mix), then the generator's, inpodFrame's and
 * loFrame's up to `count`.
 */
export function fuzzFrames(gen: Gen, count: number): Buffer[] {
  const frames: Buffer[] = [];
  for (const f of truncationSeeds()) for (let n = 0; n <= f.length; n++) frames.push(truncate(f, n));
  for (let i = 0; i < 150; i++) {
    const flags = gen.pick([0x02, 0x02, 0x12, 0x10]);
    const which = gen.int(6);
    frames.push(
      which < 3
        ? b.v6Frame({ src: IP_POD.v6, dst: IP_NODE.v6 }, b.tcp({ sport: FAR.podPort, dport: FAR.peerPort, flags }))
        : which < 5
          ? b.v6Frame({ src: IP_NODE.v6, dst: IP_POD.v6 }, b.tcp({ sport: CONN.outPort, dport: CONN.podPort, flags }))
          : // The pod's SYN on a TIME_WAIT it holds no connecting socket for (PR10, PL3: dropped).
            b.v6Frame({ src: IP_POD.v6, dst: IP_NODE.v6 }, b.tcp({ sport: CONN.podPort + 1, dport: CONN.outPort + 1, flags })),
    );
  }
  while (frames.length < count) {
    const r = gen.int(20);
    frames.push(r < 8 ? inpodFrame(gen) : r < 13 ? loFrame(gen) : gen.next());
  }
  return frames;
}

/** The context a program gets for a frame: marks near ztunnel's and the loop's, a forwarded frame's ingress now and then. */
export function fuzzContext(gen: Gen, program: InpodFrameProgram): { mark: number; ingressIfindex: number } {
  // inpod_lo_in judges ztunnel's mark only (0x539 under 0xfff): mostly none, often ztunnel's.
  const mark =
    program === 'inpod_out'
      ? gen.pick([0, 0, 0x539, 0x1539, 0x538, LOOP_MARK])
      : program === 'inpod_lo_in'
        ? gen.pick([0, 0, 0, 0, 0x539, 0x1539, 0x538, LOOP_MARK])
        : gen.pick([0, 0, LOOP_MARK, LOOP_MARK, LOOP_MARK | 1, 0x539]);
  return { mark, ingressIfindex: gen.pick([0, 0, NODE_IFINDEX]) };
}
