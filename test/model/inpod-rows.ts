/**
 * Every in-pod row of docs/datapath.md ("In-pod capture": PO, PL, PI, PR, PV, PH, PK) as a frame
 * (or a lookup) with its context, map state and the verdict the spec gives (written here by
 * hand), and the sockets the rows' netns holds (as harness/inpod/sockets.ts steps): run on
 * this kernel by test/kernel/inpod-datapath.test.ts, and in every kernel of the kernel
 * matrix (test/slow/matrix.test.ts).
 */
import * as b from '../../harness/packet/builder.js';
import { connecting, connection, type SocketStep } from '../../harness/inpod/sockets.js';
import { addrKeyHex } from './datapath.js';
import { handoffKey, LOOP_MARK, Override, type InpodFrameProgram, type InpodVerdictName, type LookupCtx } from './inpod.js';

export const POD = { v4: '198.18.0.10', v6: 'fd00:10:244::a' };
export const OUT = { v4: '203.0.113.5', v6: '2001:db8::5' };
export const NODE = { v4: '10.0.0.4', v6: 'fd00:10::4' };
/** A VM behind the pod (reroute-virtual-interfaces): its own address. */
export const VM = { v4: '10.250.0.2', v6: 'fd00:250::2' };
export const PROBE = { v4: '169.254.7.127', v6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' };
/** Loopback: where the netns's own SYNs on lo go that are not the local route's (PR7). */
export const LOOPBACK = { v4: '127.0.0.1', v6: '::1' };
/** A connection of the pod's (its app's, captured or not), and one left in TIME_WAIT. */
export const CONN = { podPort: 41000, outPort: 9443 };
export const TW = { podPort: 41001, outPort: 9444 };
/**
 * TIME_WAIT at the far end's address (what a looped frame of the pod meets: ztunnel's end),
 * with the pod's own socket connecting again on the same 4-tuple (PL5).
 */
export const TW_FAR = { podPort: 41002, outPort: 9445 };
/** The same, with no socket of the pod's connecting on it (a forged SYN: PL3). */
export const TW_FORGED = { podPort: 41003, outPort: 9446 };
export const APP_PORT = 8080;
export const ZT_LISTENERS = [
  ['tcp4', 15001],
  ['tcp6', 15001],
  ['tcp4', 15006],
  ['tcp6', 15006],
  ['tcp4', 15053],
  ['tcp6', 15053],
  ['udp4', 15053],
  ['udp6', 15053],
] as const;

export const h4 = (ip: string) => addrKeyHex(b.ipBytes(ip));
/** A listener lookup of the pod's netns, as inpod_lookup receives it (TCP). */
export const lookup = (family: 4 | 6, remote: string, remotePort: number, local: string, localPort: number): LookupCtx => ({
  family,
  protocol: 6,
  remoteHex: h4(remote),
  remotePort,
  localHex: h4(local),
  localPort,
});
export const key = (c: LookupCtx) => handoffKey(c.family, c.remoteHex, c.remotePort, c.localHex, c.localPort);

export interface Row {
  id: string;
  name: string;
  program: InpodFrameProgram;
  frame: Buffer;
  verdict: InpodVerdictName;
  mark?: number;
  ingressIfindex?: number;
  dns?: boolean;
  /** inpod_overrides for the row: a pod address -> its annotation flags. */
  overrides?: [string, number][];
  /** Needs ztunnel's sockets absent (run after they are closed). */
  noZtunnel?: boolean;
  /** inpod_handoff entries there before the row ([handoffKey, the listener by name]), in now's generation. */
  handoffs?: [string, string][];
}

const v4 = (src: string, dst: string, l4: b.L4, ip: Partial<b.Ipv4Opts> = {}) => b.v4Frame({ src, dst, ...ip }, l4);
const v6 = (src: string, dst: string, l4: b.L4, ip: Partial<b.Ipv6Opts> = {}) => b.v6Frame({ src, dst, ...ip }, l4);
const syn = (sport: number, dport: number) => b.tcp({ sport, dport, flags: 0x02 });
const ack = (sport: number, dport: number) => b.tcp({ sport, dport, flags: 0x10 });

export const ROWS: Row[] = [
  // inpod_out
  { id: 'PO1', name: 'ARP passes', program: 'inpod_out', frame: b.arpFrame({ senderIp: POD.v4, targetIp: '169.254.1.1' }), verdict: 'pass' },
  {
    id: 'PO1',
    name: '802.1Q tag drops',
    program: 'inpod_out',
    frame: b.ether({ vlans: [{ tpid: 0x8100, tci: 5 }] }, 0x0800, b.ipv4({ src: POD.v4, dst: OUT.v4 }, syn(40000, 80))),
    verdict: 'drop',
  },
  { id: 'PO1', name: 'IPv4 IHL 4 drops', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, syn(40000, 80), { ihl: 4 }), verdict: 'drop' },
  { id: 'PO2', name: "ztunnel's mark 0x539: a SYN passes", program: 'inpod_out', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), mark: 0x539, verdict: 'pass' },
  {
    id: 'PO2',
    name: 'mark 0x1539 (0x539 under the mask 0xfff) passes, IPv6',
    program: 'inpod_out',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80)),
    mark: 0x1539,
    verdict: 'pass',
  },
  { id: 'PO3', name: 'IPv6 chain ending in ESP drops', program: 'inpod_out', frame: v6(POD.v6, OUT.v6, b.esp()), verdict: 'drop' },
  { id: 'PO4', name: 'ICMP echo passes', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, b.icmp4({ type: 8 })), verdict: 'pass' },
  { id: 'PO5', name: 'UDP to 443 passes', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, b.udp({ dport: 443 })), verdict: 'pass' },
  { id: 'PO5', name: 'UDP to 53 with DNS capture off passes', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 })), verdict: 'pass' },
  {
    id: 'PO6',
    name: 'TCP first fragment (MF) drops',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80), { moreFragments: true }),
    verdict: 'drop',
  },
  {
    id: 'PO6',
    name: 'IPv6 TCP with a fragment header (offset 0) drops',
    program: 'inpod_out',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80), { ext: [{ type: 'fragment', more: true }] }),
    verdict: 'drop',
  },
  {
    id: 'PO6',
    name: 'TCP header cut to 12 bytes drops',
    program: 'inpod_out',
    frame: b.truncate(v4(POD.v4, OUT.v4, syn(40000, 80)), 14 + 20 + 12),
    verdict: 'drop',
  },
  {
    id: 'PO6',
    name: 'DNS UDP first fragment drops (capture on)',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 }), { moreFragments: true }),
    dns: true,
    verdict: 'drop',
  },
  {
    id: 'PO7',
    name: "a segment of the pod's connection (ztunnel's end is here) loops",
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, ack(CONN.podPort, CONN.outPort)),
    verdict: 'loop',
  },
  {
    id: 'PO7',
    name: 'a segment meeting TIME_WAIT loops (inpod_in judges it)',
    program: 'inpod_out',
    frame: v6(POD.v6, OUT.v6, ack(TW_FAR.podPort, TW_FAR.outPort)),
    verdict: 'loop',
  },
  { id: 'PO8', name: 'SYN with 15001 there loops, IPv4', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), verdict: 'loop' },
  { id: 'PO8', name: 'SYN with 15001 there loops, IPv6', program: 'inpod_out', frame: v6(POD.v6, OUT.v6, syn(40000, 80)), verdict: 'loop' },
  {
    id: 'PO8',
    name: 'TCP SYN to 53, DNS capture on, 15053 there: loops',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, syn(40000, 53)),
    dns: true,
    verdict: 'loop',
  },
  {
    id: 'PO8',
    name: 'UDP to 53, DNS capture on, 15053 there: loops',
    program: 'inpod_out',
    frame: v6(POD.v6, OUT.v6, b.udp({ dport: 53 })),
    dns: true,
    verdict: 'loop',
  },
  {
    id: 'PO8',
    name: 'SYN without 15001: loops all the same (inpod_in drops it: PL4)',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80)),
    noZtunnel: true,
    verdict: 'loop',
  },
  {
    id: 'PO8',
    name: 'UDP to 53, capture on, no 15053: drops',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 })),
    dns: true,
    noZtunnel: true,
    verdict: 'drop',
  },
  {
    id: 'PO9',
    name: "the app's SYN-ACK from its listening port passes (a probe's answer)",
    program: 'inpod_out',
    frame: v4(POD.v4, PROBE.v4, b.tcp({ sport: APP_PORT, dport: 50000, flags: 0x12 })),
    verdict: 'pass',
  },
  { id: 'PO10', name: 'an ACK no socket sends drops', program: 'inpod_out', frame: v4(POD.v4, OUT.v4, ack(40000, 80)), verdict: 'drop' },
  // inpod_in, the pod's own frames looped back
  { id: 'PL1', name: 'looped ICMP drops', program: 'inpod_in', frame: v4(POD.v4, OUT.v4, b.icmp4({ type: 8 })), mark: LOOP_MARK, verdict: 'drop' },
  {
    id: 'PL1',
    name: 'looped UDP not DNS drops',
    program: 'inpod_in',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 443 })),
    mark: LOOP_MARK,
    dns: true,
    verdict: 'drop',
  },
  {
    id: 'PL2',
    name: "looped segment of the pod's connection passes (mark kept)",
    program: 'inpod_in',
    frame: v4(POD.v4, OUT.v4, ack(CONN.podPort, CONN.outPort)),
    mark: LOOP_MARK,
    verdict: 'pass',
  },
  {
    id: 'PL2',
    name: 'looped ACK meeting TIME_WAIT passes',
    program: 'inpod_in',
    frame: v6(POD.v6, OUT.v6, ack(TW_FAR.podPort, TW_FAR.outPort)),
    mark: LOOP_MARK,
    verdict: 'pass',
  },
  {
    id: 'PL5',
    name: "looped SYN of the pod's connecting socket meeting TIME_WAIT is handed over to 15001",
    program: 'inpod_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
    mark: LOOP_MARK,
    verdict: 'pass',
  },
  {
    id: 'PL5',
    name: 'the same without 15001 drops',
    program: 'inpod_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
    mark: LOOP_MARK,
    noZtunnel: true,
    verdict: 'drop',
  },
  {
    id: 'PL3',
    name: 'looped SYN meeting TIME_WAIT with no connecting socket of the pod drops (forged source)',
    program: 'inpod_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FORGED.podPort, TW_FORGED.outPort)),
    mark: LOOP_MARK,
    verdict: 'drop',
  },
  {
    id: 'PL2',
    name: 'looped ACK of no connection passes (inpod_out looped it for one; the stack answers what closed since)',
    program: 'inpod_in',
    frame: v4(POD.v4, OUT.v4, ack(40000, 80)),
    mark: LOOP_MARK,
    verdict: 'pass',
  },
  { id: 'PL4', name: 'looped SYN goes to 15001', program: 'inpod_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), mark: LOOP_MARK, verdict: 'deliver' },
  {
    id: 'PL4',
    name: 'looped DNS UDP goes to 15053',
    program: 'inpod_in',
    frame: v6(POD.v6, OUT.v6, b.udp({ dport: 53 })),
    mark: LOOP_MARK,
    dns: true,
    verdict: 'deliver',
  },
  {
    id: 'PL4',
    name: 'looped SYN without 15001 drops',
    program: 'inpod_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80)),
    mark: LOOP_MARK,
    noZtunnel: true,
    verdict: 'drop',
  },
  // inpod_in, frames from outside
  { id: 'PI1', name: 'ARP passes', program: 'inpod_in', frame: b.arpFrame({ senderIp: '169.254.1.1', targetIp: POD.v4 }), verdict: 'pass' },
  { id: 'PI1', name: 'LLDP drops', program: 'inpod_in', frame: b.ether({}, 0x88cc, Buffer.alloc(46)), verdict: 'drop' },
  { id: 'PI2', name: 'IPv6 chain ending in ESP drops', program: 'inpod_in', frame: v6(OUT.v6, POD.v6, b.esp()), verdict: 'drop' },
  { id: 'PI3', name: 'UDP passes', program: 'inpod_in', frame: v4(OUT.v4, POD.v4, b.udp({ sport: 53, dport: 40000 })), verdict: 'pass' },
  { id: 'PI3', name: 'ICMPv6 neighbour solicitation passes', program: 'inpod_in', frame: v6('fe80::1', POD.v6, b.icmp6({ type: 135 })), verdict: 'pass' },
  { id: 'PI4', name: 'TCP later fragment drops', program: 'inpod_in', frame: v4(OUT.v4, POD.v4, syn(40000, APP_PORT), { fragOffset: 3 }), verdict: 'drop' },
  {
    id: 'PI4',
    name: 'TCP header truncated drops',
    program: 'inpod_in',
    frame: b.truncate(v6(OUT.v6, POD.v6, syn(40000, APP_PORT)), 14 + 40 + 10),
    verdict: 'drop',
  },
  {
    id: 'PI5',
    name: 'a SYN from the probe address passes to the app',
    program: 'inpod_in',
    frame: v4(PROBE.v4, POD.v4, syn(50000, APP_PORT)),
    verdict: 'pass',
  },
  { id: 'PI5', name: 'IPv6: a SYN from the probe address passes', program: 'inpod_in', frame: v6(PROBE.v6, POD.v6, syn(50000, APP_PORT)), verdict: 'pass' },
  {
    id: 'PI7',
    name: "the answer to the pod's connection passes",
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, ack(CONN.outPort, CONN.podPort)),
    verdict: 'pass',
  },
  {
    id: 'PI7',
    name: 'a SYN on a connection’s 4-tuple goes to that connection’s socket, not on to the listener lookup',
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, syn(CONN.outPort, CONN.podPort)),
    verdict: 'deliver',
  },
  {
    id: 'PI7',
    name: 'the same without ztunnel’s listeners (the connection is not theirs)',
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, syn(CONN.outPort, CONN.podPort)),
    noZtunnel: true,
    verdict: 'deliver',
  },
  {
    id: 'PI8',
    name: 'a SYN meeting TIME_WAIT is handed over to 15006',
    program: 'inpod_in',
    frame: v6(OUT.v6, POD.v6, syn(TW.outPort, TW.podPort)),
    verdict: 'pass',
  },
  {
    id: 'PI8',
    name: 'the same without 15006 drops',
    program: 'inpod_in',
    frame: v6(OUT.v6, POD.v6, syn(TW.outPort, TW.podPort)),
    noZtunnel: true,
    verdict: 'drop',
  },
  { id: 'PI6', name: 'a SYN to 15008 passes (HBONE)', program: 'inpod_in', frame: v4(OUT.v4, POD.v4, syn(40000, 15008)), verdict: 'pass' },
  { id: 'PI9', name: 'a SYN to the app goes to 15006', program: 'inpod_in', frame: v4(OUT.v4, POD.v4, syn(40000, APP_PORT)), verdict: 'deliver' },
  { id: 'PI9', name: 'an ACK of no connection goes to 15006 too', program: 'inpod_in', frame: v6(OUT.v6, POD.v6, ack(40000, APP_PORT)), verdict: 'deliver' },
  {
    id: 'PI9',
    name: 'a SYN to the app without 15006 drops',
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, syn(40000, APP_PORT)),
    noZtunnel: true,
    verdict: 'drop',
  },
  // inpod_vm_in: a VM interface the pod's reroute-virtual-interfaces lists
  { id: 'PV1', name: 'ARP passes', program: 'inpod_vm_in', frame: b.arpFrame({ senderIp: VM.v4, targetIp: '10.250.0.1' }), verdict: 'pass' },
  { id: 'PV1', name: 'LLDP drops', program: 'inpod_vm_in', frame: b.ether({}, 0x88cc, Buffer.alloc(46)), verdict: 'drop' },
  { id: 'PV1', name: 'IPv4 IHL 4 drops', program: 'inpod_vm_in', frame: v4(VM.v4, OUT.v4, syn(40000, 80), { ihl: 4 }), verdict: 'drop' },
  { id: 'PV1', name: 'UDP passes, unmarked (routed as before)', program: 'inpod_vm_in', frame: v4(VM.v4, OUT.v4, b.udp({ dport: 53 })), verdict: 'pass' },
  {
    id: 'PV1',
    name: 'ICMPv6 neighbour solicitation passes',
    program: 'inpod_vm_in',
    frame: v6('fe80::2', 'ff02::1:ff00:1', b.icmp6({ type: 135 })),
    verdict: 'pass',
  },
  { id: 'PV2', name: 'IPv6 chain ending in ESP drops', program: 'inpod_vm_in', frame: v6(VM.v6, OUT.v6, b.esp()), verdict: 'drop' },
  {
    id: 'PV2',
    name: 'TCP first fragment (MF) drops',
    program: 'inpod_vm_in',
    frame: v4(VM.v4, OUT.v4, syn(40000, 80), { moreFragments: true }),
    verdict: 'drop',
  },
  {
    id: 'PV2',
    name: 'TCP header cut to 12 bytes drops',
    program: 'inpod_vm_in',
    frame: b.truncate(v4(VM.v4, OUT.v4, syn(40000, 80)), 14 + 20 + 12),
    verdict: 'drop',
  },
  {
    id: 'PV3',
    name: 'a segment of a connection a socket of the netns holds passes with the loop mark',
    program: 'inpod_vm_in',
    frame: v4(POD.v4, OUT.v4, ack(CONN.podPort, CONN.outPort)),
    verdict: 'pass',
  },
  {
    id: 'PV3',
    name: 'a non-SYN meeting a TIME_WAIT passes with the loop mark (the kernel answers it)',
    program: 'inpod_vm_in',
    frame: v6(OUT.v6, POD.v6, ack(TW.outPort, TW.podPort)),
    verdict: 'pass',
  },
  { id: 'PV4', name: 'an ACK of no connection drops', program: 'inpod_vm_in', frame: v4(VM.v4, OUT.v4, ack(40000, 80)), verdict: 'drop' },
  { id: 'PV5', name: 'a SYN goes to 15001 (any source: the VM’s own)', program: 'inpod_vm_in', frame: v4(VM.v4, OUT.v4, syn(40000, 80)), verdict: 'deliver' },
  { id: 'PV5', name: 'IPv6: a SYN goes to 15001', program: 'inpod_vm_in', frame: v6(VM.v6, OUT.v6, syn(40000, 80)), verdict: 'deliver' },
  {
    id: 'PV5',
    name: 'a SYN to the pod’s own app goes to 15001 too (as Istio’s REDIRECT)',
    program: 'inpod_vm_in',
    frame: v4(VM.v4, POD.v4, syn(40000, APP_PORT)),
    verdict: 'deliver',
  },
  {
    id: 'PV5',
    name: 'a SYN meeting a TIME_WAIT is handed over to 15001',
    program: 'inpod_vm_in',
    frame: v6(OUT.v6, POD.v6, syn(TW.outPort, TW.podPort)),
    verdict: 'pass',
  },
  { id: 'PV5', name: 'a SYN without 15001 drops', program: 'inpod_vm_in', frame: v4(VM.v4, OUT.v4, syn(40000, 80)), noZtunnel: true, verdict: 'drop' },
  // inpod_lo_in: lo of the pod's netns (the local route sends the pod's own TCP here)
  { id: 'PR1', name: 'ARP passes', program: 'inpod_lo_in', frame: b.arpFrame({ senderIp: POD.v4, targetIp: OUT.v4 }), verdict: 'pass' },
  { id: 'PR1', name: 'LLDP drops', program: 'inpod_lo_in', frame: b.ether({}, 0x88cc, Buffer.alloc(46)), verdict: 'drop' },
  { id: 'PR1', name: 'IPv4 IHL 4 drops', program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80), { ihl: 4 }), verdict: 'drop' },
  { id: 'PR2', name: 'IPv6 chain ending in ESP drops', program: 'inpod_lo_in', frame: v6(POD.v6, OUT.v6, b.esp()), verdict: 'drop' },
  {
    id: 'PR3',
    name: 'UDP to 53 passes, DNS capture on (not this program’s)',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 })),
    dns: true,
    verdict: 'pass',
  },
  { id: 'PR3', name: 'ICMPv6 echo passes', program: 'inpod_lo_in', frame: v6(POD.v6, OUT.v6, b.icmp6({ type: 128 })), verdict: 'pass' },
  {
    id: 'PR4',
    name: 'TCP first fragment (MF) drops',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80), { moreFragments: true }),
    verdict: 'drop',
  },
  { id: 'PR4', name: 'TCP later fragment drops', program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80), { fragOffset: 3 }), verdict: 'drop' },
  {
    id: 'PR4',
    name: 'IPv6 TCP with a fragment header (offset 0) drops',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80), { ext: [{ type: 'fragment', more: true }] }),
    verdict: 'drop',
  },
  {
    id: 'PR4',
    name: 'TCP header cut to 12 bytes drops',
    program: 'inpod_lo_in',
    frame: b.truncate(v6(POD.v6, OUT.v6, syn(40000, 80)), 14 + 40 + 12),
    verdict: 'drop',
  },
  {
    id: 'PR4',
    name: 'a fragment drops under ztunnel’s mark too (judged before it)',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80), { moreFragments: true }),
    mark: 0x539,
    verdict: 'drop',
  },
  { id: 'PR5', name: "ztunnel's mark 0x539: its SYN passes", program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), mark: 0x539, verdict: 'pass' },
  {
    id: 'PR5',
    name: 'mark 0x1539 (0x539 under the mask 0xfff) passes, IPv6',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80)),
    mark: 0x1539,
    verdict: 'pass',
  },
  {
    id: 'PR5',
    name: 'ztunnel’s mark without its sockets: its SYN passes all the same',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80)),
    mark: 0x539,
    noZtunnel: true,
    verdict: 'pass',
  },
  { id: 'PR6', name: 'an ACK of no connection passes', program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, ack(40000, 80)), verdict: 'pass' },
  {
    id: 'PR6',
    name: 'a SYN-ACK passes, IPv6',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, b.tcp({ sport: APP_PORT, dport: 40000, flags: 0x12 })),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'a SYN from the pod’s address to 127.0.0.1 passes',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, LOOPBACK.v4, syn(40000, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'a SYN from the pod’s address to 127.255.255.254 passes (all of 127.0.0.0/8)',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, '127.255.255.254', syn(40000, 80)),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'a SYN from the pod’s address to ::1 passes',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, LOOPBACK.v6, syn(40000, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'a SYN from the pod’s address to itself passes',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, POD.v4, syn(40000, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'IPv6: a SYN from an address to itself passes (any of the netns’s)',
    program: 'inpod_lo_in',
    frame: v6(OUT.v6, OUT.v6, syn(40000, 443)),
    verdict: 'pass',
  },
  {
    id: 'PR7',
    name: 'a SYN from 127.0.0.1 to itself passes without ztunnel’s sockets',
    program: 'inpod_lo_in',
    frame: v4(LOOPBACK.v4, LOOPBACK.v4, syn(40000, APP_PORT)),
    noZtunnel: true,
    verdict: 'pass',
  },
  {
    id: 'PR8',
    name: 'a SYN on the 4-tuple of an open connection passes',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(CONN.podPort, CONN.outPort)),
    verdict: 'pass',
  },
  {
    id: 'PR8',
    name: 'the same without ztunnel’s sockets',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(CONN.podPort, CONN.outPort)),
    noZtunnel: true,
    verdict: 'pass',
  },
  { id: 'PR9', name: 'a SYN of no connection goes to 15001, IPv4', program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), verdict: 'deliver' },
  { id: 'PR9', name: 'a SYN of no connection goes to 15001, IPv6', program: 'inpod_lo_in', frame: v6(POD.v6, OUT.v6, syn(40000, 80)), verdict: 'deliver' },
  {
    id: 'PR9',
    name: 'a SYN to 128.0.0.1 goes to 15001 (not loopback)',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, '128.0.0.1', syn(40000, 80)),
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'IPv6: a SYN to ::ffff:127.0.0.1 goes to 15001 (not ::1)',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, '::ffff:127.0.0.1', syn(40000, 80)),
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'a SYN under a mark that is not ztunnel’s (0x538) goes to 15001',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80)),
    mark: 0x538,
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'a SYN under the loop mark goes to 15001',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80)),
    mark: LOOP_MARK,
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'TCP SYN to 53, DNS capture on: goes to 15053',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 53)),
    dns: true,
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'IPv6: TCP SYN to 53, DNS capture off: goes to 15001',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 53)),
    verdict: 'deliver',
  },
  { id: 'PR9', name: 'a SYN without 15001 drops', program: 'inpod_lo_in', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), noZtunnel: true, verdict: 'drop' },
  {
    id: 'PR9',
    name: 'IPv6: a SYN without 15001 drops',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 80)),
    noZtunnel: true,
    verdict: 'drop',
  },
  {
    id: 'PR9',
    name: 'TCP SYN to 53, DNS capture on, without 15053: drops',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 53)),
    dns: true,
    noZtunnel: true,
    verdict: 'drop',
  },
  {
    id: 'PR10',
    name: "the pod's connecting socket's SYN meeting a TIME_WAIT is handed over to 15001",
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
    verdict: 'pass',
  },
  {
    id: 'PR10',
    name: 'the same with a handoff entry for its key already there drops (another copy on its way)',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
    handoffs: [[key(lookup(6, POD.v6, TW_FAR.podPort, OUT.v6, TW_FAR.outPort)), 'tcp6:15001']],
    verdict: 'drop',
  },
  {
    id: 'PR10',
    name: 'a SYN meeting a TIME_WAIT with no connecting socket of the pod drops (forged source)',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FORGED.podPort, TW_FORGED.outPort)),
    verdict: 'drop',
  },
  {
    id: 'PR10',
    name: 'the connecting socket’s SYN meeting a TIME_WAIT without 15001 drops',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(TW_FAR.podPort, TW_FAR.outPort)),
    noZtunnel: true,
    verdict: 'drop',
  },
  // a pod's annotations (inpod_overrides, by its address)
  {
    id: 'PO8',
    name: 'dns-capture "true" on the pod, node setting off: its DNS UDP loops',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 })),
    overrides: [[POD.v4, Override.DNS_CAPTURE]],
    verdict: 'loop',
  },
  {
    id: 'PO5',
    name: 'dns-capture "false" on the pod, node setting on: its DNS UDP passes',
    program: 'inpod_out',
    frame: v6(POD.v6, OUT.v6, b.udp({ dport: 53 })),
    dns: true,
    overrides: [[POD.v6, Override.NO_DNS_CAPTURE]],
    verdict: 'pass',
  },
  {
    id: 'PO5',
    name: 'another pod\'s dns-capture "true" changes nothing for this one',
    program: 'inpod_out',
    frame: v4(POD.v4, OUT.v4, b.udp({ dport: 53 })),
    overrides: [['198.18.0.11', Override.DNS_CAPTURE]],
    verdict: 'pass',
  },
  {
    id: 'PL4',
    name: 'dns-capture "true": the looped DNS TCP SYN goes to 15053',
    program: 'inpod_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 53)),
    mark: LOOP_MARK,
    overrides: [[POD.v4, Override.DNS_CAPTURE]],
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'dns-capture "true" on the pod, node setting off: its TCP SYN to 53 on lo goes to 15053',
    program: 'inpod_lo_in',
    frame: v6(POD.v6, OUT.v6, syn(40000, 53)),
    overrides: [[POD.v6, Override.DNS_CAPTURE]],
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'dns-capture "false" on the pod, node setting on: its TCP SYN to 53 on lo goes to 15001',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 53)),
    dns: true,
    overrides: [[POD.v4, Override.NO_DNS_CAPTURE]],
    verdict: 'deliver',
  },
  {
    id: 'PR9',
    name: 'bypass-inbound-capture changes nothing for the pod’s own SYN on lo: to 15001',
    program: 'inpod_lo_in',
    frame: v4(POD.v4, OUT.v4, syn(40000, 80)),
    overrides: [[POD.v4, Override.BYPASS_INBOUND]],
    verdict: 'deliver',
  },
  {
    id: 'PI7b',
    name: 'bypass-inbound-capture: a SYN to the app passes to it',
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, syn(40000, APP_PORT)),
    overrides: [[POD.v4, Override.BYPASS_INBOUND]],
    verdict: 'pass',
  },
  {
    id: 'PI7b',
    name: 'bypass-inbound-capture: a SYN meeting a TIME_WAIT passes too (no handoff: the kernel’s own)',
    program: 'inpod_in',
    frame: v6(OUT.v6, POD.v6, syn(TW.outPort, TW.podPort)),
    overrides: [[POD.v6, Override.BYPASS_INBOUND | Override.NO_DNS_CAPTURE]],
    verdict: 'pass',
  },
  {
    id: 'PI9',
    name: "another pod's bypass changes nothing for this one: to 15006",
    program: 'inpod_in',
    frame: v4(OUT.v4, POD.v4, syn(40000, APP_PORT)),
    overrides: [['198.18.0.11', Override.BYPASS_INBOUND]],
    verdict: 'deliver',
  },
  // the host veth
  { id: 'PH1', name: 'ARP passes', program: 'inpod_host_in', frame: b.arpFrame({}), verdict: 'pass' },
  {
    id: 'PH2',
    name: 'a forwarded SYN from the probe address drops',
    program: 'inpod_host_in',
    frame: v4(PROBE.v4, POD.v4, syn(50000, APP_PORT)),
    ingressIfindex: 5,
    verdict: 'drop',
  },
  {
    id: 'PH2',
    name: 'the node itself sending from the probe address drops too',
    program: 'inpod_host_in',
    frame: v6(PROBE.v6, POD.v6, syn(50000, APP_PORT)),
    ingressIfindex: 0,
    verdict: 'drop',
  },
  {
    id: 'PH3',
    name: 'a forwarded SYN from the node’s address passes untouched',
    program: 'inpod_host_in',
    frame: v4(NODE.v4, POD.v4, syn(50000, APP_PORT)),
    ingressIfindex: 5,
    verdict: 'pass',
  },
  { id: 'PH3', name: 'UDP from the node passes untouched', program: 'inpod_host_in', frame: v4(NODE.v4, POD.v4, b.udp({ dport: 53 })), verdict: 'pass' },
  {
    id: 'PH4',
    name: "the node's SYN gets the probe source, IPv4",
    program: 'inpod_host_in',
    frame: v4(NODE.v4, POD.v4, syn(50000, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PH4',
    name: "the node's SYN gets the probe source, IPv6",
    program: 'inpod_host_in',
    frame: v6(NODE.v6, POD.v6, syn(50001, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PH5',
    name: "the node's ACK on its recorded flow gets the probe source",
    program: 'inpod_host_in',
    frame: v4(NODE.v4, POD.v4, ack(50000, APP_PORT)),
    verdict: 'pass',
  },
  {
    id: 'PH6',
    name: 'an ACK from another node address on that flow passes untouched',
    program: 'inpod_host_in',
    frame: v4('10.0.0.5', POD.v4, ack(50000, APP_PORT)),
    verdict: 'pass',
  },
  { id: 'PH7', name: 'the pod to anyone else passes', program: 'inpod_host_out', frame: v4(POD.v4, OUT.v4, syn(40000, 80)), verdict: 'pass' },
  {
    id: 'PH8',
    name: 'the app’s SYN-ACK to the probe address goes back to the node, IPv4',
    program: 'inpod_host_out',
    frame: v4(POD.v4, PROBE.v4, b.tcp({ sport: APP_PORT, dport: 50000, flags: 0x12 })),
    verdict: 'pass',
  },
  {
    id: 'PH8',
    name: 'IPv6 likewise',
    program: 'inpod_host_out',
    frame: v6(POD.v6, PROBE.v6, b.tcp({ sport: APP_PORT, dport: 50001, flags: 0x12 })),
    verdict: 'pass',
  },
  {
    id: 'PH9',
    name: 'to the probe address on no recorded flow drops',
    program: 'inpod_host_out',
    frame: v4(POD.v4, PROBE.v4, ack(APP_PORT, 50999)),
    verdict: 'drop',
  },
  {
    id: 'PH9',
    name: 'UDP to the probe address drops',
    program: 'inpod_host_out',
    frame: v4(POD.v4, PROBE.v4, b.udp({ sport: 53, dport: 50000 })),
    verdict: 'drop',
  },
];

/** inpod_lookup's rows: the handoffs seeded from here, the lookup, and how many entries stay. */
export const LOOKUP_ROWS: { id: string; name: string; seed: [string, string][]; ctx: LookupCtx; left: number }[] = [
  {
    id: 'PK1',
    name: 'an IPv4 lookup with a handoff gets its listener, and the entry goes',
    seed: [[key(lookup(4, OUT.v4, 40000, POD.v4, APP_PORT)), 'tcp4:15006']],
    ctx: lookup(4, OUT.v4, 40000, POD.v4, APP_PORT),
    left: 0,
  },
  {
    id: 'PK1',
    name: 'IPv6 likewise (a looped SYN to 15001)',
    seed: [[key(lookup(6, POD.v6, 40001, OUT.v6, 443)), 'tcp6:15001']],
    ctx: lookup(6, POD.v6, 40001, OUT.v6, 443),
    left: 0,
  },
  {
    id: 'PK2',
    name: 'a handoff whose listener refuses the lookup (IPv6-only, an IPv4 lookup) drops, and the entry goes',
    seed: [[key(lookup(4, OUT.v4, 40002, POD.v4, APP_PORT)), 'tcp6:15006']],
    ctx: lookup(4, OUT.v4, 40002, POD.v4, APP_PORT),
    left: 0,
  },
  { id: 'PK3', name: 'a TCP lookup with no handoff: the kernel’s own', seed: [], ctx: lookup(4, OUT.v4, 40003, POD.v4, APP_PORT), left: 0 },
  {
    id: 'PK3',
    name: 'a lookup for another port of a handed-over tuple: the kernel’s own, the entry stays',
    seed: [[key(lookup(4, OUT.v4, 40004, POD.v4, APP_PORT)), 'tcp4:15006']],
    ctx: lookup(4, OUT.v4, 40004, POD.v4, APP_PORT + 1),
    left: 1,
  },
  {
    id: 'PK3',
    name: 'a UDP lookup of a handed-over tuple: the kernel’s own, the entry stays',
    seed: [[key(lookup(4, OUT.v4, 40005, POD.v4, 53)), 'tcp4:15006']],
    ctx: { ...lookup(4, OUT.v4, 40005, POD.v4, 53), protocol: 17 },
    left: 1,
  },
];

/** The rows' sockets: ztunnel's (ZT_LISTENERS), the app's listener, and the rows' connections. */
export const ROW_SOCKETS: SocketStep[] = [
  ...ZT_LISTENERS.map(([kind, port]): SocketStep => ({ listen: kind, port })),
  { listen: 'tcp4', port: APP_PORT },
  connection([POD.v4, CONN.podPort], [OUT.v4, CONN.outPort]),
  connection([POD.v6, TW.podPort], [OUT.v6, TW.outPort], true),
  connection([OUT.v6, TW_FAR.outPort], [POD.v6, TW_FAR.podPort], true),
  connecting([POD.v6, TW_FAR.podPort], [OUT.v6, TW_FAR.outPort]),
  connection([OUT.v6, TW_FORGED.outPort], [POD.v6, TW_FORGED.podPort], true),
];
/** ztunnel's sockets closed: the noZtunnel rows (fail closed). */
export const ZT_CLOSED: SocketStep[] = ZT_LISTENERS.map(([kind, port]): SocketStep => ({ close: kind, port }));
/** The addresses on lo of the rows' netns (their connections are between them). */
export const ROW_ADDRESSES = [POD.v4, POD.v6, OUT.v4, OUT.v6];
