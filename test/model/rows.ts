/**
 * The verdict spec as a table: one or more rows per spec row (docs/datapath.md), each a
 * frame built with the packet builder, the map state and context it runs in, and the
 * verdict the spec gives, written by hand. The model's unit test checks the model against
 * it; the kernel test checks the programs against it (and the model on the same rows).
 */
import * as b from '../../harness/packet/builder.js';
import type { StateSpec } from './harness.js';
import { Mark, type VerdictName } from './datapath.js';

export const POD_A = { v4: '198.18.0.10', v6: 'fd00:10:244::a', mac: '0a:58:c6:12:00:0a' };
export const POD_B = { v4: '198.18.0.11', v6: 'fd00:10:244::b', mac: '0a:58:c6:12:00:0b' };
/** On pod A's veth, not enrolled (being un-enrolled). */
export const POD_U = { v4: '198.18.0.20', v6: 'fd00:10:244::20' };
export const OUTSIDE = { v4: '203.0.113.5', v6: '2001:db8::5' };
/** Istio's probe SNAT address: no longer special to anyone. */
export const PROBE = { v4: '169.254.7.127', v6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' };
/** The node's own address (kubelet probes from it). */
export const NODE = { v4: '10.0.0.4', v6: 'fd00:10::4' };
/** Cluster DNS servers (dns_servers) and one that is not (a host anywhere). */
export const DNS = { v4: '10.96.0.10', v6: 'fd00:96::a', local: '169.254.20.10' };
export const NOT_DNS = { v4: '8.8.8.8', v6: '2001:4860:4860::8888' };
/** The ports of the node's recorded flow to pod A (host_flows in the base state). */
export const FLOW = { podPort: 8080, nodePort: 41234 };
export const ZT_HOST_IFINDEX = 7;
export const ZT_MAC = '0a:58:c6:12:00:02';
/** Some other device of the node a frame came in on. */
export const NODE_IFINDEX = 5;

/** Ifindexes of the run: the test's veths A and B (0 placeholders for the pure model test). */
export interface Veths {
  a: number;
  b: number;
}

export function stateOf(v: Veths, row: Pick<Row, 'state'>): StateSpec {
  return baseState(v, typeof row.state === 'function' ? row.state(v) : row.state);
}

export function baseState(v: Veths, over: Partial<StateSpec> = {}): StateSpec {
  return {
    pods: [
      { ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 },
      { ip: POD_A.v6, ifindex: v.a, mac: POD_A.mac, flags: 1 },
      { ip: POD_B.v4, ifindex: v.b, mac: POD_B.mac, flags: 1 },
      { ip: POD_B.v6, ifindex: v.b, mac: POD_B.mac, flags: 1 },
      { ip: POD_U.v4, ifindex: v.a, flags: 0 },
      { ip: POD_U.v6, ifindex: v.a, flags: 0 },
    ],
    ztunnel: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 1 },
    dnsServers: [DNS.v4, DNS.v6, DNS.local],
    hostFlows: [
      { flow: { pod: POD_A.v4, podPort: FLOW.podPort, peer: NODE.v4, peerPort: FLOW.nodePort, proto: 6 }, ifindex: v.a },
      { flow: { pod: POD_A.v6, podPort: FLOW.podPort, peer: NODE.v6, peerPort: FLOW.nodePort, proto: 17 }, ifindex: v.a },
      // Recorded for pod B's veth: pod A's frames never match it.
      { flow: { pod: POD_A.v4, podPort: 9090, peer: NODE.v4, peerPort: FLOW.nodePort, proto: 6 }, ifindex: v.b },
    ],
    ...over,
  };
}

export const ZT = {
  dns: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 3 },
  notPresent: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 0 },
  notPresentDns: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 2 },
  presentIfindex0: { ifindex: 0, peerIfindex: 2, mac: ZT_MAC, flags: 1 },
  /** --non-tcp drop (ZT_F_NON_TCP_DROP); the default, pass, is the flag clear. */
  nonTcpDrop: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 5 },
  dnsNonTcpDrop: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 7 },
  notPresentNonTcpDrop: { ifindex: ZT_HOST_IFINDEX, peerIfindex: 2, mac: ZT_MAC, flags: 4 },
};

/**
 * The map states the node programs' differential fuzzers run under (test/kernel/fuzz.test.ts
 * for TC, xdp-fuzz.test.ts for XDP): one list, so a state added for one is fuzzed on both.
 */
export function fuzzStates(v: Veths): { name: string; spec: StateSpec }[] {
  const base = baseState(v);
  const podA = (p: { ip: string }) => p.ip === POD_A.v4 || p.ip === POD_A.v6;
  return [
    { name: 'base', spec: base },
    { name: 'ztunnel missing', spec: { ...base, ztunnel: null } },
    { name: 'DNS capture on', spec: { ...base, ztunnel: ZT.dns } },
    { name: 'slot not PRESENT', spec: { ...base, ztunnel: ZT.notPresent } },
    { name: 'slot not PRESENT, DNS capture set', spec: { ...base, ztunnel: ZT.notPresentDns } },
    { name: 'PRESENT with ifindex 0', spec: { ...base, ztunnel: ZT.presentIfindex0 } },
    { name: 'pods map full', spec: { ...base, ztunnel: ZT.dns, fillPods: true } },
    { name: 'non-TCP drop', spec: { ...base, ztunnel: ZT.nonTcpDrop } },
    { name: 'non-TCP drop, DNS capture on', spec: { ...base, ztunnel: ZT.dnsNonTcpDrop } },
    { name: 'slot not PRESENT, non-TCP drop', spec: { ...base, ztunnel: ZT.notPresentNonTcpDrop } },
    {
      name: 'per-pod flags: pod A DNS capture on and inbound bypassed, pod B DNS capture off, node capture on',
      spec: {
        ...base,
        ztunnel: ZT.dns,
        pods: base.pods.map((p) => (podA(p) ? { ...p, flags: 1 | 2 | 8 } : p.flags === 1 ? { ...p, flags: 1 | 4 } : p)),
      },
    },
    { name: 'no DNS servers, no host flows', spec: { ...base, dnsServers: [], hostFlows: [] } },
    { name: 'stale ifindex (pod A on veth B)', spec: { ...base, pods: base.pods.map((p) => (podA(p) ? { ...p, ifindex: v.b } : p)) } },
  ];
}

export type Program = 'out' | 'in' | 'zt';

export interface Row {
  /** Spec row, e.g. 'O8'. */
  id: string;
  name: string;
  program: Program;
  frame: Buffer;
  /** Overrides of the base state (a function when it names the run's veths). */
  state?: Partial<StateSpec> | ((v: Veths) => Partial<StateSpec>);
  ingressIfindex?: number;
  /** Expected verdict; for zt rows 'deliver' carries `mark`. */
  verdict: VerdictName;
  mark?: number;
  /** Frames this kernel refuses to run (shorter than Ethernet + IPv4 header). */
  notRunnable?: boolean;
}

const v4 = b.v4Frame;
const v6 = b.v6Frame;
const A4 = { src: POD_A.v4, dst: OUTSIDE.v4 };
const ACK = 0x10;
const SYN = 0x02;
/** Pod A answering the node's recorded flow (base state), and the node's side of it. */
const REPLY4 = { src: POD_A.v4, dst: NODE.v4 };
const REPLY6 = { src: POD_A.v6, dst: NODE.v6 };
const FROM_NODE4 = { src: NODE.v4, dst: POD_A.v4 };
const flowOut = (flags = ACK) => b.tcp({ sport: FLOW.podPort, dport: FLOW.nodePort, flags });
const flowIn = (flags = ACK) => b.tcp({ sport: FLOW.nodePort, dport: FLOW.podPort, flags });
const A6 = { src: POD_A.v6, dst: OUTSIDE.v6 };
const TO_A4 = { src: OUTSIDE.v4, dst: POD_A.v4 };
const TO_A6 = { src: OUTSIDE.v6, dst: POD_A.v6 };
const noZt = { ztunnel: null };
/** Pod A (v4 and v6) with bypass-inbound-capture (POD_F_BYPASS_INBOUND), or pod B instead. */
const bypassA = (v: Veths): Partial<StateSpec> => ({
  pods: [
    { ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 | 8 },
    { ip: POD_A.v6, ifindex: v.a, mac: POD_A.mac, flags: 1 | 8 },
  ],
});
const bypassB = (v: Veths): Partial<StateSpec> => ({
  pods: [
    { ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 },
    { ip: POD_B.v4, ifindex: v.b, mac: POD_B.mac, flags: 1 | 8 },
  ],
});
const dns = { ztunnel: ZT.dns };

/** Frames that fail before any address is looked at: O1–O6, I1–I6 (and Z1). */
function l2Rows(p: 'O' | 'I', program: Program, ip4: b.Ipv4Opts, ip6: b.Ipv6Opts): Row[] {
  const tcp = b.tcp({ dport: 443 });
  const okV4 = v4(ip4, tcp);
  return [
    { id: `${p}1`, name: 'frame of 13 bytes', program, frame: Buffer.alloc(13, 0xab), verdict: 'drop', notRunnable: true },
    { id: `${p}5`, name: 'Ethernet header only (IPv4 ethertype)', program, frame: b.truncate(okV4, 14), verdict: 'drop', notRunnable: true },
    { id: `${p}2`, name: 'ARP request', program, frame: b.arpFrame({ senderIp: POD_A.v4, targetIp: '198.18.0.1' }), verdict: 'pass' },
    { id: `${p}2`, name: 'ARP reply, any addresses', program, frame: b.arpFrame({ op: 2, senderIp: '10.9.9.9', targetIp: '10.9.9.8' }), verdict: 'pass' },
    {
      id: `${p}3`,
      name: '802.1Q tag over IPv4 TCP',
      program,
      frame: b.ether({ vlans: [{ tpid: 0x8100, tci: 5 }] }, 0x0800, b.ipv4(ip4, tcp)),
      verdict: 'drop',
    },
    {
      id: `${p}3`,
      name: '802.1ad tag over IPv6 TCP',
      program,
      frame: b.ether({ vlans: [{ tpid: 0x88a8, tci: 5 }] }, 0x86dd, b.ipv6(ip6, tcp)),
      verdict: 'drop',
    },
    { id: `${p}4`, name: 'LLDP ethertype', program, frame: b.ether({}, 0x88cc, Buffer.alloc(46)), verdict: 'drop' },
    { id: `${p}4`, name: 'IPv4 packet under ethertype 0x0801', program, frame: b.ether({}, 0x0801, b.ipv4(ip4, tcp)), verdict: 'drop' },
    { id: `${p}5`, name: 'IPv4 version 6 under 0x0800', program, frame: v4({ ...ip4, version: 6 }, tcp), verdict: 'drop' },
    { id: `${p}5`, name: 'IPv4 IHL 4', program, frame: v4({ ...ip4, ihl: 4 }, tcp), verdict: 'drop' },
    { id: `${p}5`, name: 'IPv4 IHL 15 beyond a 40-byte frame', program, frame: b.truncate(v4({ ...ip4, ihl: 15 }, tcp), 40), verdict: 'drop' },
    {
      id: `${p}5`,
      name: 'IPv4 options cut off by the frame end',
      program,
      frame: b.truncate(v4({ ...ip4, options: b.Ipv4Option.recordRoute(9) }, tcp), 14 + 30),
      verdict: 'drop',
    },
    { id: `${p}4`, name: 'Ethernet header only, unknown ethertype (14 bytes)', program, frame: b.ether({}, 0x1234, Buffer.alloc(0)), verdict: 'drop' },
    { id: `${p}6`, name: 'IPv6 header truncated (39 bytes)', program, frame: b.truncate(v6(ip6, tcp), 14 + 39), verdict: 'drop', notRunnable: true },
    { id: `${p}6`, name: 'IPv6 version 4 under 0x86dd', program, frame: v6({ ...ip6, version: 4 }, tcp), verdict: 'drop' },
  ];
}

function outboundRows(): Row[] {
  const o: Program = 'out';
  return [
    ...l2Rows('O', o, A4, A6),
    {
      id: 'O7',
      name: 'neighbour solicitation to ff02::1:ff00:1 from an unknown source',
      program: o,
      frame: v6({ src: 'fe80::99', dst: 'ff02::1:ff00:1' }, b.icmp6({ type: 135, rest: 0, body: b.ipBytes('fe80::1') })),
      verdict: 'pass',
    },
    {
      id: 'O7',
      name: 'MLD report to ff02::16 behind a hop-by-hop header',
      program: o,
      frame: v6({ src: '::', dst: 'ff02::16', ext: [{ type: 'hop' }] }, b.icmp6({ type: 143 })),
      verdict: 'pass',
    },
    {
      id: 'O7',
      name: 'router solicitation to ff02::2 from pod A',
      program: o,
      frame: v6({ src: POD_A.v6, dst: 'ff02::2' }, b.icmp6({ type: 133 })),
      verdict: 'pass',
    },
    { id: 'O7', name: 'MLDv1 query type 130 to fe80::1', program: o, frame: v6({ src: 'fe80::99', dst: 'fe80::1' }, b.icmp6({ type: 130 })), verdict: 'pass' },
    {
      id: 'O7',
      name: 'redirect message (137) to fe80::1',
      program: o,
      frame: v6({ src: 'fe80::99', dst: 'fe80::1' }, b.icmp6({ type: 137 })),
      verdict: 'pass',
    },
    { id: 'O7', name: 'TCP to fe80::1 from pod A is captured (O17)', program: o, frame: v6({ src: POD_A.v6, dst: 'fe80::1' }, b.tcp()), verdict: 'redirect' },
    {
      id: 'O7',
      name: "TCP to fe80::1 from the pod's own fe80 address: unknown source (O8)",
      program: o,
      frame: v6({ src: 'fe80::99', dst: 'fe80::1' }, b.tcp({ dport: 10250 })),
      verdict: 'drop',
    },
    {
      id: 'O7',
      name: 'UDP to ff02::1 from pod A is not O7: the non-TCP policy (drop) decides (O15b)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: 'ff02::1' }, b.udp({ dport: 5353 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'O7',
      name: 'ICMPv6 echo to fe80::1 from pod A is not O7: the non-TCP policy (drop) decides (O15b)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: 'fe80::1' }, b.icmp6({ type: 128 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'O7',
      name: 'ICMPv6 type 138 (router renumbering) to ff02::2 is not O7: the non-TCP policy (drop) decides (O15b)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: 'ff02::2' }, b.icmp6({ type: 138 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'O7',
      name: 'neighbour solicitation to a global address is not O7: the non-TCP policy (drop) decides (O15b)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: OUTSIDE.v6 }, b.icmp6({ type: 135 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'O7',
      name: 'neighbour solicitation of 4 bytes (truncated ICMPv6) from fe80 (O8)',
      program: o,
      frame: b.truncate(v6({ src: 'fe80::99', dst: 'ff02::1:ff00:1' }, b.icmp6({ type: 135 })), 14 + 40 + 4),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: "IPv4 TCP from pod B's IP on pod A's veth (spoofed)",
      program: o,
      frame: v4({ src: POD_B.v4, dst: OUTSIDE.v4 }, b.tcp()),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: "IPv6 TCP from pod B's IP on pod A's veth (spoofed)",
      program: o,
      frame: v6({ src: POD_B.v6, dst: OUTSIDE.v6 }, b.tcp()),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: 'IPv4 UDP to 53 from an unknown source',
      program: o,
      frame: v4({ src: '10.1.1.1', dst: OUTSIDE.v4 }, b.udp({ dport: 53 })),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: 'IPv6 to site-scope multicast ff05::2 from a link-local source',
      program: o,
      frame: v6({ src: 'fe80::99', dst: 'ff05::2' }, b.udp({ dport: 547 })),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: "stale ifindex: pod A's entry names veth B",
      program: o,
      frame: v4(A4, b.tcp()),
      state: (v) => ({ pods: [{ ip: POD_A.v4, ifindex: v.b, flags: 1 }] }),
      verdict: 'drop',
    },
    {
      id: 'O8',
      name: "stale ifindex: pod A's IPv6 entry names a gone veth",
      program: o,
      frame: v6(A6, b.tcp()),
      state: { pods: [{ ip: POD_A.v6, ifindex: 4242, flags: 1 }] },
      verdict: 'drop',
    },
    { id: 'O9', name: 'IPv4 TCP from an un-enrolled pod', program: o, frame: v4({ src: POD_U.v4, dst: OUTSIDE.v4 }, b.tcp()), verdict: 'pass' },
    { id: 'O9', name: 'IPv6 ESP from an un-enrolled pod', program: o, frame: v6({ src: POD_U.v6, dst: OUTSIDE.v6 }, b.esp()), verdict: 'pass' },
    { id: 'O10', name: "IPv4 SYN-ACK answering the node's recorded TCP flow", program: o, frame: v4(REPLY4, flowOut(SYN | ACK)), verdict: 'pass' },
    { id: 'O10', name: "IPv4 ACK with data on the node's recorded TCP flow", program: o, frame: v4(REPLY4, flowOut(ACK)), verdict: 'pass' },
    {
      id: 'O10',
      name: "IPv6 UDP answering the node's recorded UDP flow",
      program: o,
      frame: v6(REPLY6, b.udp({ sport: FLOW.podPort, dport: FLOW.nodePort })),
      verdict: 'pass',
    },
    {
      id: 'O10',
      name: 'a SYN on the 4-tuple of a recorded flow opens a new connection (O17)',
      program: o,
      frame: v4(REPLY4, flowOut(SYN)),
      verdict: 'redirect',
    },
    { id: 'O10', name: 'TCP on the IPv6 flow recorded for UDP (O17)', program: o, frame: v6(REPLY6, flowOut(ACK)), verdict: 'redirect' },
    {
      id: 'O10',
      name: 'another node port than the recorded one (O17)',
      program: o,
      frame: v4(REPLY4, b.tcp({ sport: FLOW.podPort, dport: FLOW.nodePort + 1, flags: ACK })),
      verdict: 'redirect',
    },
    {
      id: 'O10',
      name: 'flow recorded for veth B, sent on veth A (O17)',
      program: o,
      frame: v4(REPLY4, b.tcp({ sport: 9090, dport: FLOW.nodePort, flags: ACK })),
      verdict: 'redirect',
    },
    {
      id: 'O10',
      name: 'TCP to the old probe address 169.254.7.127 is captured (O17)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: PROBE.v4 }, b.tcp({ sport: 8080, dport: 40000, flags: SYN | ACK })),
      verdict: 'redirect',
    },
    {
      id: 'O10',
      name: 'IPv6 TCP to the old probe address is captured (O17)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: PROBE.v6 }, b.tcp({ sport: 8080, flags: SYN | ACK })),
      verdict: 'redirect',
    },
    { id: 'O10', name: 'reply with no flow recorded at all (O17)', program: o, frame: v4(REPLY4, flowOut(ACK)), state: { hostFlows: [] }, verdict: 'redirect' },
    {
      id: 'O11',
      name: 'five extension headers',
      program: o,
      frame: v6({ ...A6, ext: [{ type: 'hop' }, { type: 'dest' }, { type: 'routing' }, { type: 'dest' }, { type: 'dest' }] }, b.tcp()),
      verdict: 'drop',
    },
    { id: 'O11', name: 'ESP', program: o, frame: v6(A6, b.esp()), verdict: 'drop' },
    { id: 'O11', name: 'no next header', program: o, frame: v6(A6, b.raw(59)), verdict: 'drop' },
    {
      id: 'O11',
      name: 'hop-by-hop header longer than the frame',
      program: o,
      frame: b.truncate(v6({ ...A6, ext: [{ type: 'hop', len: 10 }] }, b.tcp()), 14 + 40 + 40),
      verdict: 'drop',
    },
    { id: 'O11', name: 'AH then ESP', program: o, frame: v6({ ...A6, ext: [{ type: 'ah' }] }, b.esp()), verdict: 'drop' },
    { id: 'O11', name: 'ICMP (v4 protocol 1) under IPv6', program: o, frame: v6(A6, b.icmp4()), verdict: 'drop' },
    {
      id: 'O11',
      name: 'four extension headers then TCP is fine (O17)',
      program: o,
      frame: v6({ ...A6, ext: [{ type: 'hop' }, { type: 'routing', len: 2 }, { type: 'fragment' }, { type: 'ah' }] }, b.tcp()),
      verdict: 'redirect',
    },
    {
      id: 'O12',
      name: 'IPv4 non-first fragment of UDP, pass policy: passes (no port to see)',
      program: o,
      frame: v4({ ...A4, fragOffset: 100 }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    {
      id: 'O12',
      name: 'IPv4 non-first fragment of UDP, drop policy: to ztunnel, which reassembles',
      program: o,
      frame: v4({ ...A4, fragOffset: 100 }, b.udp({ dport: 53 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'redirect',
    },
    {
      id: 'O12',
      name: 'IPv4 non-first fragment of ICMP, 2 bytes of payload, drop policy',
      program: o,
      frame: v4({ ...A4, fragOffset: 1 }, b.raw(1, Buffer.alloc(2))),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'redirect',
    },
    {
      id: 'O12',
      name: 'IPv4 non-first fragment of ICMP, pass policy: passes',
      program: o,
      frame: v4({ ...A4, fragOffset: 1 }, b.raw(1, Buffer.alloc(2))),
      verdict: 'pass',
    },
    {
      id: 'O12',
      name: 'IPv6 non-first fragment of TCP',
      program: o,
      frame: v6({ ...A6, ext: [{ type: 'fragment', offset: 1 }] }, b.raw(6, Buffer.alloc(3))),
      verdict: 'redirect',
    },
    {
      id: 'O12',
      name: 'IPv4 non-first fragment, no ztunnel',
      program: o,
      frame: v4({ ...A4, fragOffset: 100 }, b.raw(6, Buffer.alloc(4))),
      state: noZt,
      verdict: 'drop',
    },
    {
      id: 'O11',
      name: 'IPv6 non-first fragment of ESP',
      program: o,
      frame: v6({ ...A6, ext: [{ type: 'fragment', offset: 9 }] }, b.raw(50, Buffer.alloc(8))),
      verdict: 'drop',
    },
    {
      id: 'O12',
      name: 'IPv4 first fragment of UDP to 53 is a whole DNS query (O15)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4, moreFragments: true }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    { id: 'O13', name: 'IPv4 SCTP', program: o, frame: v4(A4, b.raw(132, Buffer.alloc(12))), verdict: 'drop' },
    { id: 'O13', name: 'IPv4 GRE', program: o, frame: v4(A4, b.raw(47, Buffer.alloc(8))), verdict: 'drop' },
    { id: 'O13', name: 'IPv4 non-first fragment of SCTP', program: o, frame: v4({ ...A4, fragOffset: 3 }, b.raw(132, Buffer.alloc(8))), verdict: 'drop' },
    { id: 'O13', name: 'ICMPv6 (58) under IPv4', program: o, frame: v4(A4, b.icmp6()), verdict: 'drop' },
    { id: 'O14', name: 'IPv4 TCP header of 19 bytes', program: o, frame: b.truncate(v4(A4, b.tcp()), 14 + 20 + 19), verdict: 'drop' },
    {
      id: 'O14',
      name: 'IPv4 with options, UDP header of 7 bytes',
      program: o,
      frame: b.truncate(v4({ ...A4, options: b.Ipv4Option.routerAlert() }, b.udp({ dport: 443 })), 14 + 24 + 7),
      verdict: 'drop',
    },
    {
      id: 'O14',
      name: 'IPv6 UDP header of 4 bytes after a dest-opts header',
      program: o,
      frame: b.truncate(v6({ ...A6, ext: [{ type: 'dest' }] }, b.udp({ dport: 443 })), 14 + 48 + 4),
      verdict: 'drop',
    },
    {
      id: 'O14',
      name: 'IPv4 first fragment with a truncated TCP header',
      program: o,
      frame: b.truncate(v4({ ...A4, moreFragments: true }, b.tcp()), 14 + 20 + 10),
      verdict: 'drop',
    },
    {
      id: 'O15',
      name: 'IPv4 UDP to the cluster DNS server, capture off',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'IPv4 UDP to node-local DNS, capture off',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.local }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'IPv6 UDP to the DNS server after hop-by-hop, capture off',
      program: o,
      frame: v6({ src: POD_A.v6, dst: DNS.v6, ext: [{ type: 'hop' }] }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'UDP to the DNS server with no ztunnel at all (capture flag clear)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: noZt,
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'IPv4 UDP to 53 of any other host, capture off: the non-TCP policy (pass) (O15b)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: NOT_DNS.v4 }, b.udp({ dport: 53 })),
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'IPv6 UDP to 53 of any other host, capture off: the non-TCP policy (drop) (O15b)',
      program: o,
      frame: v6({ src: POD_A.v6, dst: NOT_DNS.v6 }, b.udp({ dport: 53 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'O15',
      name: 'UDP to 53 of another host, no ztunnel: the non-TCP policy passes it (O15b)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: NOT_DNS.v4 }, b.udp({ dport: 53 })),
      state: noZt,
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'UDP to another port of the DNS server: the non-TCP policy (pass) (O15b)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 5353 })),
      verdict: 'pass',
    },
    {
      id: 'O15',
      name: 'UDP to the DNS server with an empty dns_servers, drop policy (O15b)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: { dnsServers: [], ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    { id: 'O16', name: 'IPv4 TCP, ztunnel slot empty', program: o, frame: v4(A4, b.tcp()), state: noZt, verdict: 'drop' },
    {
      id: 'O16',
      name: 'IPv6 UDP, slot without PRESENT: the non-TCP policy, not fail closed (O15b)',
      program: o,
      frame: v6(A6, b.udp({ dport: 443 })),
      state: { ztunnel: ZT.notPresent },
      verdict: 'pass',
    },
    {
      id: 'O16',
      name: 'UDP 53, DNS capture on but slot without PRESENT',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: { ztunnel: ZT.notPresentDns },
      verdict: 'drop',
    },
    {
      id: 'O16',
      name: 'ICMP echo, PRESENT with ifindex 0: the non-TCP policy (O15b)',
      program: o,
      frame: v4(A4, b.icmp4()),
      state: { ztunnel: ZT.presentIfindex0 },
      verdict: 'pass',
    },
    { id: 'O17', name: 'IPv4 TCP SYN', program: o, frame: v4(A4, b.tcp()), verdict: 'redirect' },
    { id: 'O17', name: 'IPv4 TCP to 53', program: o, frame: v4(A4, b.tcp({ dport: 53 })), verdict: 'redirect' },
    {
      id: 'O17',
      name: 'IPv4 UDP to the DNS server with DNS capture',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: dns,
      verdict: 'redirect',
    },
    { id: 'O15b', name: 'IPv4 UDP to 443', program: o, frame: v4(A4, b.udp({ dport: 443 })), verdict: 'pass' },
    { id: 'O15b', name: 'IPv4 UDP to 443, drop policy', program: o, frame: v4(A4, b.udp({ dport: 443 })), state: { ztunnel: ZT.nonTcpDrop }, verdict: 'drop' },
    { id: 'O15b', name: 'IPv4 UDP to 123 (NTP), no ztunnel, pass policy', program: o, frame: v4(A4, b.udp({ dport: 123 })), state: noZt, verdict: 'pass' },
    { id: 'O15b', name: 'IPv4 ICMP echo', program: o, frame: v4(A4, b.icmp4()), verdict: 'pass' },
    { id: 'O15b', name: 'IPv4 ICMP echo, drop policy', program: o, frame: v4(A4, b.icmp4()), state: { ztunnel: ZT.nonTcpDrop }, verdict: 'drop' },
    {
      id: 'O17',
      name: 'IPv4 ICMP port unreachable (an error: ztunnel’s socket), pass policy',
      program: o,
      frame: v4(A4, b.icmp4({ type: 3, code: 3 })),
      verdict: 'redirect',
    },
    {
      id: 'O17',
      name: 'IPv6 ICMPv6 packet too big, drop policy',
      program: o,
      frame: v6(A6, b.icmp6({ type: 2 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'redirect',
    },
    { id: 'O16', name: 'IPv4 ICMP time exceeded, no ztunnel', program: o, frame: v4(A4, b.icmp4({ type: 11 })), state: noZt, verdict: 'drop' },
    {
      id: 'O17',
      name: 'IPv6 UDP to 53 of any host with DNS capture, drop policy',
      program: o,
      frame: v6({ src: POD_A.v6, dst: NOT_DNS.v6 }, b.udp({ dport: 53 })),
      state: { ztunnel: ZT.dnsNonTcpDrop },
      verdict: 'redirect',
    },
    {
      id: 'O16',
      name: 'UDP 53 with the pod’s own DNS capture, no ztunnel',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: (v) => ({ ztunnel: null, pods: [{ ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 | 2 }] }),
      verdict: 'drop',
    },
    {
      id: 'O17',
      name: 'UDP 53 to the DNS server, capture off on the node but on for the pod (annotation)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: (v) => ({ pods: [{ ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 | 2 }] }),
      verdict: 'redirect',
    },
    {
      id: 'O15',
      name: 'UDP 53 to the DNS server, capture on for the node but off for the pod (annotation)',
      program: o,
      frame: v4({ src: POD_A.v4, dst: DNS.v4 }, b.udp({ dport: 53 })),
      state: (v) => ({ ztunnel: ZT.dns, pods: [{ ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 | 4 }] }),
      verdict: 'pass',
    },
    { id: 'O17', name: 'IPv4 with options, TCP', program: o, frame: v4({ ...A4, options: b.Ipv4Option.recordRoute(4) }, b.tcp()), verdict: 'redirect' },
    { id: 'O14', name: 'IPv4 ICMP echo, 4 bytes of ICMP: truncated', program: o, frame: b.truncate(v4(A4, b.icmp4()), 14 + 20 + 4), verdict: 'drop' },
    { id: 'O17', name: 'IPv6 TCP', program: o, frame: v6(A6, b.tcp()), verdict: 'redirect' },
    { id: 'O15b', name: 'IPv6 ICMPv6 echo', program: o, frame: v6(A6, b.icmp6()), verdict: 'pass' },
    {
      id: 'O17',
      name: 'IPv6 UDP behind routing + dest opts (O15b)',
      program: o,
      frame: v6({ ...A6, ext: [{ type: 'routing' }, { type: 'dest', len: 3 }] }, b.udp({ dport: 443 })),
      verdict: 'pass',
    },
    { id: 'O17', name: 'pod to pod B (same node)', program: o, frame: v4({ src: POD_A.v4, dst: POD_B.v4 }, b.tcp()), verdict: 'redirect' },
    {
      id: 'O17',
      name: 'a pod that bypasses inbound capture opening its own connection',
      program: o,
      frame: v4(A4, b.tcp()),
      state: bypassA,
      verdict: 'redirect',
    },
    {
      id: 'O17',
      name: 'a bypassing pod’s segment on a flow nobody recorded',
      program: o,
      frame: v4(A4, b.tcp({ sport: 8080, dport: 40000, flags: ACK })),
      state: bypassA,
      verdict: 'redirect',
    },
  ];
}

function inboundRows(): Row[] {
  const i: Program = 'in';
  return [
    ...l2Rows('I', i, TO_A4, TO_A6),
    { id: 'I7', name: 'IPv4 TCP delivered by ztunnel', program: i, frame: v4(TO_A4, b.tcp()), ingressIfindex: ZT_HOST_IFINDEX, verdict: 'pass' },
    {
      id: 'I7',
      name: 'IPv6 ESP to an unknown address from ztunnel',
      program: i,
      frame: v6({ src: OUTSIDE.v6, dst: '2001:db8::77' }, b.esp()),
      ingressIfindex: ZT_HOST_IFINDEX,
      verdict: 'pass',
    },
    {
      id: 'I7',
      name: "from ztunnel's veth but slot not PRESENT (I17)",
      program: i,
      frame: v4(TO_A4, b.tcp()),
      ingressIfindex: ZT_HOST_IFINDEX,
      state: { ztunnel: ZT.notPresent },
      verdict: 'drop',
    },
    {
      id: 'I8',
      name: 'neighbour solicitation from fe80::1',
      program: i,
      frame: v6({ src: 'fe80::1', dst: 'ff02::1:ff00:a' }, b.icmp6({ type: 135, rest: 0, body: b.ipBytes(POD_A.v6) })),
      verdict: 'pass',
    },
    {
      id: 'I8',
      name: 'router advertisement to all-nodes ff02::1 from a global source',
      program: i,
      frame: v6({ src: OUTSIDE.v6, dst: 'ff02::1' }, b.icmp6({ type: 134 })),
      verdict: 'pass',
    },
    {
      id: 'I8',
      name: 'neighbour advertisement from fe80::1 to pod A',
      program: i,
      frame: v6({ src: 'fe80::1', dst: POD_A.v6 }, b.icmp6({ type: 136 })),
      verdict: 'pass',
    },
    {
      id: 'I8',
      name: 'MLD query 130 to ff02::1 behind hop-by-hop',
      program: i,
      frame: v6({ src: 'fe80::1', dst: 'ff02::1', ext: [{ type: 'hop' }] }, b.icmp6({ type: 130 })),
      verdict: 'pass',
    },
    {
      id: 'I8',
      name: 'TCP from a link-local source is captured (I18)',
      program: i,
      frame: v6({ src: 'fe80::1', dst: POD_A.v6 }, b.tcp()),
      verdict: 'redirect',
    },
    {
      id: 'I8',
      name: 'UDP from fe80::1 to pod A is not I8: the non-TCP policy (drop) decides (I16b)',
      program: i,
      frame: v6({ src: 'fe80::1', dst: POD_A.v6 }, b.udp({ sport: 547, dport: 546 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'I8',
      name: 'TCP to a link-local destination: not a pod (I9)',
      program: i,
      frame: v6({ src: 'fe80::1', dst: 'fe80::99' }, b.tcp({ dport: 8080 })),
      verdict: 'drop',
    },
    {
      id: 'I8',
      name: 'ICMPv6 echo from fe80::1 is not I8: the non-TCP policy (drop) decides (I16b)',
      program: i,
      frame: v6({ src: 'fe80::1', dst: POD_A.v6 }, b.icmp6({ type: 128 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'I8',
      name: 'non-first fragment claiming ICMPv6 from fe80::1, drop policy (I13)',
      program: i,
      frame: v6({ src: 'fe80::1', dst: POD_A.v6, ext: [{ type: 'fragment', offset: 3 }] }, b.raw(58, Buffer.alloc(16, 135))),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'redirect',
    },
    { id: 'I9', name: "IPv4 TCP to pod B's IP on pod A's veth", program: i, frame: v4({ src: OUTSIDE.v4, dst: POD_B.v4 }, b.tcp()), verdict: 'drop' },
    { id: 'I9', name: 'IPv6 to an unknown address', program: i, frame: v6({ src: OUTSIDE.v6, dst: '2001:db8::77' }, b.tcp()), verdict: 'drop' },
    {
      id: 'I9',
      name: 'IPv4 from ztunnel-looking ingress 0 to an unknown address',
      program: i,
      frame: v4({ src: OUTSIDE.v4, dst: '10.9.9.9' }, b.udp()),
      ingressIfindex: 0,
      verdict: 'drop',
    },
    { id: 'I10', name: 'to an un-enrolled pod', program: i, frame: v4({ src: OUTSIDE.v4, dst: POD_U.v4 }, b.tcp()), verdict: 'pass' },
    {
      id: 'I10',
      name: 'IPv6 SCTP to an un-enrolled pod',
      program: i,
      frame: v6({ src: OUTSIDE.v6, dst: POD_U.v6 }, b.raw(132, Buffer.alloc(12))),
      verdict: 'pass',
    },
    {
      id: 'I11',
      name: "kubelet probe's SYN from the node itself (IPv4)",
      program: i,
      frame: v4({ src: NODE.v4, dst: POD_A.v4 }, b.tcp({ sport: 50000, dport: 8080, flags: SYN })),
      ingressIfindex: 0,
      verdict: 'pass',
    },
    {
      id: 'I11',
      name: "kubelet probe's SYN from the node itself (IPv6)",
      program: i,
      frame: v6({ src: NODE.v6, dst: POD_A.v6 }, b.tcp({ sport: 50000, dport: 8080, flags: SYN })),
      ingressIfindex: 0,
      verdict: 'pass',
    },
    {
      id: 'I11',
      name: 'UDP from the node itself',
      program: i,
      frame: v4({ src: NODE.v4, dst: POD_A.v4 }, b.udp({ sport: 50000, dport: 5000 })),
      ingressIfindex: 0,
      verdict: 'pass',
    },
    { id: 'I11', name: "the node's ACK on its recorded flow", program: i, frame: v4(FROM_NODE4, flowIn(ACK)), ingressIfindex: 0, verdict: 'pass' },
    {
      id: 'I11',
      name: 'the node sourcing from the old probe address is host-originated all the same',
      program: i,
      frame: v4({ src: PROBE.v4, dst: POD_A.v4 }, b.tcp({ dport: 8080, flags: SYN })),
      ingressIfindex: 0,
      verdict: 'pass',
    },
    {
      id: 'I11',
      name: "the node's SYN-ACK answers a connection it did not open (I18)",
      program: i,
      frame: v4(FROM_NODE4, b.tcp({ sport: 10250, dport: 45000, flags: SYN | ACK })),
      ingressIfindex: 0,
      verdict: 'redirect',
    },
    {
      id: 'I11',
      name: "the node's ACK on a flow recorded for veth B (I18)",
      program: i,
      frame: v4(FROM_NODE4, b.tcp({ sport: FLOW.nodePort, dport: 9090, flags: ACK })),
      ingressIfindex: 0,
      verdict: 'redirect',
    },
    {
      id: 'I11',
      name: 'the same probe SYN forwarded from another device (I18)',
      program: i,
      frame: v4({ src: NODE.v4, dst: POD_A.v4 }, b.tcp({ sport: 50000, dport: 8080, flags: SYN })),
      verdict: 'redirect',
    },
    {
      id: 'I11',
      name: 'a forged 169.254.7.127 probe from another device (I18)',
      program: i,
      frame: v4({ src: PROBE.v4, dst: POD_A.v4 }, b.tcp({ dport: 8080, flags: SYN })),
      verdict: 'redirect',
    },
    {
      id: 'I11',
      name: 'a forged IPv6 probe-address frame from another device (I18)',
      program: i,
      frame: v6({ src: PROBE.v6, dst: POD_A.v6 }, b.tcp({ dport: 8080, flags: SYN })),
      verdict: 'redirect',
    },
    { id: 'I11', name: "the recorded flow's ACK from another device (I18)", program: i, frame: v4(FROM_NODE4, flowIn(ACK)), verdict: 'redirect' },
    {
      id: 'I11',
      name: 'ICMP echo from the node itself: the non-TCP policy (pass) (I16b)',
      program: i,
      frame: v4({ src: NODE.v4, dst: POD_A.v4 }, b.icmp4()),
      ingressIfindex: 0,
      verdict: 'pass',
    },
    {
      id: 'I11',
      name: 'truncated TCP from the node itself (I15)',
      program: i,
      frame: b.truncate(v4({ src: NODE.v4, dst: POD_A.v4 }, b.tcp({ flags: SYN })), 14 + 20 + 12),
      ingressIfindex: 0,
      verdict: 'drop',
    },
    {
      id: 'I11',
      name: 'IPv6 non-first fragment from the node itself (I13)',
      program: i,
      frame: v6({ src: NODE.v6, dst: POD_A.v6, ext: [{ type: 'fragment', offset: 2 }] }, b.raw(6, Buffer.alloc(16))),
      ingressIfindex: 0,
      verdict: 'redirect',
    },
    { id: 'I12', name: 'ESP', program: i, frame: v6(TO_A6, b.esp()), verdict: 'drop' },
    {
      id: 'I12',
      name: 'five extension headers',
      program: i,
      frame: v6({ ...TO_A6, ext: [{ type: 'hop' }, { type: 'dest' }, { type: 'routing' }, { type: 'ah' }, { type: 'dest' }] }, b.udp()),
      verdict: 'drop',
    },
    { id: 'I13', name: 'IPv4 non-first fragment of TCP', program: i, frame: v4({ ...TO_A4, fragOffset: 7 }, b.raw(6, Buffer.alloc(16))), verdict: 'redirect' },
    {
      id: 'I13',
      name: 'IPv6 non-first fragment of UDP, no ztunnel, drop policy',
      program: i,
      frame: v6({ ...TO_A6, ext: [{ type: 'fragment', offset: 2 }] }, b.raw(17, Buffer.alloc(16))),
      state: { ztunnel: ZT.notPresentNonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'I13',
      name: 'IPv6 non-first fragment of UDP, no ztunnel, pass policy',
      program: i,
      frame: v6({ ...TO_A6, ext: [{ type: 'fragment', offset: 8 }] }, b.udp()),
      state: noZt,
      verdict: 'pass',
    },
    { id: 'I14', name: 'IPv4 SCTP', program: i, frame: v4(TO_A4, b.raw(132, Buffer.alloc(12))), verdict: 'drop' },
    { id: 'I14', name: 'IPv4 IGMP', program: i, frame: v4(TO_A4, b.raw(2, Buffer.alloc(8))), verdict: 'drop' },
    { id: 'I15', name: 'IPv4 TCP header of 12 bytes', program: i, frame: b.truncate(v4(TO_A4, b.tcp()), 14 + 20 + 12), verdict: 'drop' },
    { id: 'I15', name: 'IPv6 UDP header of 6 bytes', program: i, frame: b.truncate(v6(TO_A6, b.udp()), 14 + 40 + 6), verdict: 'drop' },
    {
      id: 'I16',
      name: 'IPv4 DNS answer from the cluster DNS server, capture off',
      program: i,
      frame: v4({ src: DNS.v4, dst: POD_A.v4 }, b.udp({ sport: 53, dport: 40000 })),
      verdict: 'pass',
    },
    {
      id: 'I16',
      name: 'IPv6 DNS answer from the cluster DNS server, capture off',
      program: i,
      frame: v6({ src: DNS.v6, dst: POD_A.v6 }, b.udp({ sport: 53, dport: 40000 })),
      verdict: 'pass',
    },
    {
      id: 'I16',
      name: 'answer from node-local DNS, capture off',
      program: i,
      frame: v4({ src: DNS.local, dst: POD_A.v4 }, b.udp({ sport: 53, dport: 40000 })),
      verdict: 'pass',
    },
    {
      id: 'I16',
      name: 'UDP from port 53 of any other host: the non-TCP policy (pass) (I16b)',
      program: i,
      frame: v4(TO_A4, b.udp({ sport: 53, dport: 40000 })),
      verdict: 'pass',
    },
    {
      id: 'I16',
      name: 'IPv6 UDP from port 53 of another host: the non-TCP policy (drop) (I16b)',
      program: i,
      frame: v6({ src: NOT_DNS.v6, dst: POD_A.v6 }, b.udp({ sport: 53, dport: 51820 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'I16',
      name: 'UDP from another port of the DNS server: the non-TCP policy (I16b)',
      program: i,
      frame: v4({ src: DNS.v4, dst: POD_A.v4 }, b.udp({ sport: 5353, dport: 40000 })),
      verdict: 'pass',
    },
    {
      id: 'I16',
      name: 'DNS answer with capture on: inbound DNS is never captured, the non-TCP policy (drop) (I16b)',
      program: i,
      frame: v4({ src: DNS.v4, dst: POD_A.v4 }, b.udp({ sport: 53, dport: 40000 })),
      state: { ztunnel: ZT.dnsNonTcpDrop },
      verdict: 'drop',
    },
    { id: 'I17', name: 'IPv4 TCP, ztunnel slot empty', program: i, frame: v4(TO_A4, b.tcp()), state: noZt, verdict: 'drop' },
    {
      id: 'I17',
      name: 'IPv6 ICMPv6 echo, slot without PRESENT: the non-TCP policy (I16b)',
      program: i,
      frame: v6(TO_A6, b.icmp6()),
      state: { ztunnel: ZT.notPresent },
      verdict: 'pass',
    },
    {
      id: 'I17',
      name: 'DNS answer, capture set but slot without PRESENT: the non-TCP policy (I16b)',
      program: i,
      frame: v4({ src: DNS.v4, dst: POD_A.v4 }, b.udp({ sport: 53, dport: 40000 })),
      state: { ztunnel: ZT.notPresentDns },
      verdict: 'pass',
    },
    {
      id: 'I17',
      name: 'UDP from port 53 of another host, no ztunnel: the non-TCP policy (I16b)',
      program: i,
      frame: v4(TO_A4, b.udp({ sport: 53, dport: 40000 })),
      state: noZt,
      verdict: 'pass',
    },
    { id: 'I17', name: 'TCP, PRESENT with ifindex 0 (as O16)', program: i, frame: v4(TO_A4, b.tcp()), state: { ztunnel: ZT.presentIfindex0 }, verdict: 'drop' },
    { id: 'I18', name: 'HBONE: TCP to 15008', program: i, frame: v4(TO_A4, b.tcp({ dport: 15008 })), verdict: 'redirect' },
    { id: 'I18', name: 'IPv4 TCP to 80 from pod B', program: i, frame: v4({ src: POD_B.v4, dst: POD_A.v4 }, b.tcp()), verdict: 'redirect' },
    { id: 'I16b', name: 'IPv4 UDP', program: i, frame: v4(TO_A4, b.udp({ sport: 443, dport: 5000 })), verdict: 'pass' },
    {
      id: 'I16b',
      name: 'IPv4 UDP, drop policy',
      program: i,
      frame: v4(TO_A4, b.udp({ sport: 443, dport: 5000 })),
      state: { ztunnel: ZT.nonTcpDrop },
      verdict: 'drop',
    },
    {
      id: 'I18',
      name: 'IPv4 ICMP fragmentation needed (an error), pass policy',
      program: i,
      frame: v4(TO_A4, b.icmp4({ type: 3, code: 4 })),
      verdict: 'redirect',
    },
    { id: 'I16b', name: 'IPv4 ICMP echo reply', program: i, frame: v4(TO_A4, b.icmp4({ type: 0 })), verdict: 'pass' },
    { id: 'I16b', name: 'IPv6 ICMPv6 echo request, drop policy', program: i, frame: v6(TO_A6, b.icmp6()), state: { ztunnel: ZT.nonTcpDrop }, verdict: 'drop' },
    {
      id: 'I11b',
      name: 'TCP SYN from outside to a pod that bypasses inbound capture',
      program: i,
      frame: v4(TO_A4, b.tcp({ dport: 8080 })),
      state: bypassA,
      verdict: 'pass',
    },
    {
      id: 'I11b',
      name: 'IPv6 TCP data segment to a bypassing pod',
      program: i,
      frame: v6(TO_A6, b.tcp({ dport: 8080, flags: ACK })),
      state: bypassA,
      verdict: 'pass',
    },
    {
      id: 'I11b',
      name: 'ICMP echo to a bypassing pod, drop policy: bypass wins',
      program: i,
      frame: v4(TO_A4, b.icmp4()),
      state: (v) => ({ ...bypassA(v), ztunnel: ZT.nonTcpDrop }),
      verdict: 'pass',
    },
    {
      id: 'I11b',
      name: 'TCP to a bypassing pod, no ztunnel',
      program: i,
      frame: v4(TO_A4, b.tcp({ dport: 8080 })),
      state: (v) => ({ ...bypassA(v), ztunnel: null }),
      verdict: 'pass',
    },
    {
      id: 'I18',
      name: 'TCP to pod A without the bypass flag (pod B has it)',
      program: i,
      frame: v4(TO_A4, b.tcp({ dport: 8080 })),
      state: bypassB,
      verdict: 'redirect',
    },
    {
      id: 'I18',
      name: 'IPv6 TCP behind a fragment header with offset 0',
      program: i,
      frame: v6({ ...TO_A6, ext: [{ type: 'fragment', more: true }] }, b.tcp()),
      verdict: 'redirect',
    },
    { id: 'I18', name: 'IPv6 ICMPv6 packet too big', program: i, frame: v6(TO_A6, b.icmp6({ type: 2 })), verdict: 'redirect' },
  ];
}

/** zt_* rows; sockets: which listeners/connections exist (zt_assign only). */
export interface ZtRow extends Row {
  /** zt_assign only: the listener or connection this row needs ('none' = Z11). */
  needs?: 'tcp-listener' | 'udp-listener' | 'established' | 'none';
  /** zt_assign only (Z11); zt_mark skips it. */
  assignOnly?: boolean;
}

export const EST = { podPort: 41000, outsidePort: 9443 };

function ztRows(): ZtRow[] {
  const z: Program = 'zt';
  const d = (mark: number) => ({ verdict: 'deliver' as const, mark });
  const rows: ZtRow[] = [
    { id: 'Z1', name: 'ARP', program: z, frame: b.arpFrame(), verdict: 'pass' },
    {
      id: 'Z1',
      name: 'VLAN-tagged IPv4 from pod A',
      program: z,
      frame: b.ether({ vlans: [{ tpid: 0x8100, tci: 1 }] }, 0x0800, b.ipv4(A4, b.tcp())),
      verdict: 'pass',
    },
    { id: 'Z1', name: 'IPv4 IHL 3 from pod A', program: z, frame: v4({ ...A4, ihl: 3 }, b.tcp()), verdict: 'pass' },
    { id: 'Z1', name: 'IPv6 header truncated', program: z, frame: b.truncate(v6(A6, b.tcp()), 14 + 30), verdict: 'pass', notRunnable: true },
    { id: 'Z1', name: 'Ethernet header only (14 bytes)', program: z, frame: b.ether({}, 0x0806, Buffer.alloc(0)), verdict: 'pass' },
    { id: 'Z1', name: 'unknown ethertype', program: z, frame: b.ether({}, 0x9000, Buffer.alloc(40)), verdict: 'pass' },
    {
      id: 'Z2',
      name: "ztunnel's own upstream TCP (outside to outside)",
      program: z,
      frame: v4({ src: OUTSIDE.v4, dst: '198.18.0.2' }, b.tcp({ sport: 443, dport: 40000 })),
      verdict: 'pass',
    },
    { id: 'Z2', name: 'IPv6 ESP between non-pods', program: z, frame: v6({ src: OUTSIDE.v6, dst: '2001:db8::2' }, b.esp()), verdict: 'pass' },
    { id: 'Z2', name: 'from an un-enrolled pod', program: z, frame: v4({ src: POD_U.v4, dst: OUTSIDE.v4 }, b.tcp()), verdict: 'pass' },
    { id: 'Z3', name: 'IPv6 ESP from pod A', program: z, frame: v6(A6, b.esp()), verdict: 'drop' },
    {
      id: 'Z3',
      name: 'IPv6 five extension headers to pod A',
      program: z,
      frame: v6({ ...TO_A6, ext: [{ type: 'hop' }, { type: 'dest' }, { type: 'routing' }, { type: 'ah' }, { type: 'dest' }] }, b.tcp()),
      verdict: 'drop',
    },
    { id: 'Z4', name: 'IPv4 TCP SYN from pod A', program: z, frame: v4(A4, b.tcp({ dport: 443 })), ...d(Mark.OUTBOUND), needs: 'tcp-listener' },
    {
      id: 'Z4',
      name: 'IPv6 TCP from pod A to pod B',
      program: z,
      frame: v6({ src: POD_A.v6, dst: POD_B.v6 }, b.tcp({ dport: 8080 })),
      ...d(Mark.OUTBOUND),
      needs: 'tcp-listener',
    },
    {
      id: 'Z5',
      name: 'IPv4 TCP to 53 from pod A with DNS capture (DNS over TCP) to 15053',
      program: z,
      frame: v4(A4, b.tcp({ dport: 53 })),
      state: dns,
      ...d(Mark.DNS),
      needs: 'tcp-listener',
    },
    {
      id: 'Z5',
      name: 'IPv6 TCP to 53 from a pod whose annotation turns capture on, the node’s off',
      program: z,
      frame: v6(A6, b.tcp({ dport: 53 })),
      state: (v) => ({ pods: [{ ip: POD_A.v6, ifindex: v.a, mac: POD_A.mac, flags: 1 | 2 }] }),
      ...d(Mark.DNS),
      needs: 'tcp-listener',
    },
    {
      id: 'Z4',
      name: 'IPv4 TCP to 53 without DNS capture: 15001',
      program: z,
      frame: v4(A4, b.tcp({ dport: 53 })),
      ...d(Mark.OUTBOUND),
      needs: 'tcp-listener',
    },
    {
      id: 'Z4',
      name: 'IPv4 TCP to 53 from a pod whose annotation turns capture off: 15001',
      program: z,
      frame: v4(A4, b.tcp({ dport: 53 })),
      state: (v) => ({ ztunnel: ZT.dns, pods: [{ ip: POD_A.v4, ifindex: v.a, mac: POD_A.mac, flags: 1 | 4 }] }),
      ...d(Mark.OUTBOUND),
      needs: 'tcp-listener',
    },
    {
      id: 'Z4',
      name: "pod A's reply on an established connection of ztunnel's",
      program: z,
      frame: v4(A4, b.tcp({ sport: EST.podPort, dport: EST.outsidePort, flags: 0x10 })),
      ...d(Mark.OUTBOUND),
      needs: 'established',
    },
    {
      id: 'Z5',
      name: 'IPv4 DNS query from pod A, capture on',
      program: z,
      frame: v4(A4, b.udp({ dport: 53 })),
      state: dns,
      ...d(Mark.DNS),
      needs: 'udp-listener',
    },
    {
      id: 'Z5',
      name: 'IPv6 DNS query from pod A, capture on',
      program: z,
      frame: v6(A6, b.udp({ dport: 53 })),
      state: dns,
      ...d(Mark.DNS),
      needs: 'udp-listener',
    },
    { id: 'Z5', name: 'DNS query, capture off (Z10)', program: z, frame: v4(A4, b.udp({ dport: 53 })), verdict: 'drop' },
    { id: 'Z6', name: 'IPv4 HBONE to pod A', program: z, frame: v4(TO_A4, b.tcp({ dport: 15008 })), ...d(Mark.HBONE), needs: 'tcp-listener' },
    { id: 'Z6', name: 'IPv6 HBONE to pod A', program: z, frame: v6(TO_A6, b.tcp({ dport: 15008 })), ...d(Mark.HBONE), needs: 'tcp-listener' },
    { id: 'Z7', name: 'IPv4 TCP to pod A:8080', program: z, frame: v4(TO_A4, b.tcp({ dport: 8080 })), ...d(Mark.INBOUND), needs: 'tcp-listener' },
    { id: 'Z7', name: 'IPv6 TCP to pod A:80', program: z, frame: v6(TO_A6, b.tcp({ dport: 80 })), ...d(Mark.INBOUND), needs: 'tcp-listener' },
    {
      id: 'Z8',
      name: 'ICMP destination unreachable to pod A',
      program: z,
      frame: v4(TO_A4, b.icmp4({ type: 3, code: 4, body: Buffer.alloc(28) })),
      ...d(Mark.LOCAL),
    },
    { id: 'Z8', name: 'ICMP time exceeded from pod A', program: z, frame: v4(A4, b.icmp4({ type: 11 })), ...d(Mark.LOCAL) },
    { id: 'Z8', name: 'ICMP parameter problem to pod A', program: z, frame: v4(TO_A4, b.icmp4({ type: 12 })), ...d(Mark.LOCAL) },
    { id: 'Z8', name: 'ICMPv6 packet too big to pod A', program: z, frame: v6(TO_A6, b.icmp6({ type: 2, rest: 1280 })), ...d(Mark.LOCAL) },
    { id: 'Z8', name: 'ICMPv6 destination unreachable from pod A', program: z, frame: v6(A6, b.icmp6({ type: 1 })), ...d(Mark.LOCAL) },
    { id: 'Z8', name: 'ICMPv6 parameter problem to pod A', program: z, frame: v6(TO_A6, b.icmp6({ type: 4 })), ...d(Mark.LOCAL) },
    {
      id: 'Z9',
      name: 'IPv4 non-first fragment of UDP from pod A',
      program: z,
      frame: v4({ ...A4, fragOffset: 50 }, b.raw(17, Buffer.alloc(20))),
      ...d(Mark.OUTBOUND),
    },
    {
      id: 'Z9',
      name: 'IPv6 non-first fragment of TCP to pod A',
      program: z,
      frame: v6({ ...TO_A6, ext: [{ type: 'fragment', offset: 50 }] }, b.raw(6, Buffer.alloc(20))),
      ...d(Mark.INBOUND),
    },
    {
      id: 'Z9',
      name: 'IPv4 non-first fragment of ICMP to pod A (Z10)',
      program: z,
      frame: v4({ ...TO_A4, fragOffset: 50 }, b.raw(1, Buffer.alloc(20))),
      verdict: 'drop',
    },
    { id: 'Z10', name: 'UDP 443 from pod A', program: z, frame: v4(A4, b.udp({ dport: 443 })), verdict: 'drop' },
    { id: 'Z10', name: 'UDP to pod A', program: z, frame: v4(TO_A4, b.udp({ dport: 5000 })), verdict: 'drop' },
    { id: 'Z10', name: 'ICMP echo from pod A', program: z, frame: v4(A4, b.icmp4()), verdict: 'drop' },
    { id: 'Z10', name: 'ICMPv6 echo to pod A', program: z, frame: v6(TO_A6, b.icmp6()), verdict: 'drop' },
    { id: 'Z10', name: 'ICMP timestamp from pod A', program: z, frame: v4(A4, b.icmp4({ type: 13 })), verdict: 'drop' },
    { id: 'Z10', name: 'SCTP from pod A', program: z, frame: v4(A4, b.raw(132, Buffer.alloc(12))), verdict: 'drop' },
    { id: 'Z10', name: 'truncated TCP header from pod A', program: z, frame: b.truncate(v4(A4, b.tcp()), 14 + 20 + 10), verdict: 'drop' },
  ];
  const noSock = (r: ZtRow, name: string): ZtRow => ({
    ...r,
    id: 'Z11',
    name: `${r.name}: ${name}`,
    verdict: 'drop',
    mark: undefined,
    needs: 'none',
    assignOnly: true,
  });
  const byName = (n: string) => rows.find((r) => r.name === n)!;
  rows.push(
    noSock(byName('IPv4 TCP SYN from pod A'), 'no 15001 listener'),
    noSock(byName('IPv6 TCP from pod A to pod B'), 'no 15001 listener'),
    noSock(byName('IPv4 DNS query from pod A, capture on'), 'no 15053 socket'),
    noSock(byName('IPv4 HBONE to pod A'), 'no 15008 listener'),
    noSock(byName('IPv6 TCP to pod A:80'), 'no 15006 listener'),
  );
  return rows;
}

export const ROWS = { outbound: outboundRows(), inbound: inboundRows(), ztunnel: ztRows() };
