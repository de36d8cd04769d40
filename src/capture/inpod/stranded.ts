/**
 * Which of a pod's connections its in-pod capture ends when it comes (pure: from the
 * netns's TCP sockets, as sock_diag shows them, and a test of each one). Two kinds:
 *
 * - stranded by the eBPF capture's local route (docs/datapath.md, "What the local route
 *   does to connections the pod had open before its capture"): every TCP segment the pod
 *   sends with mark 0 goes to lo, where a connection ztunnel did not accept has no socket;
 *   IPv6 ends are reset on their next segment, IPv4 ones would wait unacknowledged until
 *   TCP gives up (about 15 minutes);
 * - passing around ztunnel (`bypassesRules`): under the iptables capture any connection
 *   open before its rules, under the eBPF capture's loop any open before its programs
 *   (docs/inpod.md, "Connections the pod had open before the rules came are ended").
 *
 * src/capture/inpod/end-connections.ts ends what these choose.
 */
import { decodeAddr, encodeAddr } from '../../bpf/codec.js';
import { constants } from '../../bpf/inpod-layout.generated.js';
import type { NlTcpSocket } from '../../host/netlink.js';

/** The kernel's TCP states (include/net/tcp_states.h), as sock_diag reports them. */
export const TcpState = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
} as const;

/** A socket as sock_diag shows it: its state, ends and mark (the rest of NlTcpSocket is the kernel's handle). */
export type SocketEnds = Omit<NlTcpSocket, 'family' | 'id'>;

/**
 * States in which an end still has something to send that cannot get out: data or a FIN
 * of its own, or its app can still write. Not SYN_SENT (a SYN the local route brings to lo
 * is captured, or dropped when ztunnel is not there), not FIN_WAIT2 or TIME_WAIT (only ACKs
 * left), not LISTEN.
 */
export const STRANDED_STATES: ReadonlySet<number> = new Set([
  TcpState.ESTABLISHED,
  TcpState.FIN_WAIT1,
  TcpState.CLOSE_WAIT,
  TcpState.LAST_ACK,
  TcpState.CLOSING,
]);

/**
 * An address as its packets carry it: an IPv4-mapped IPv6 address (an IPv6 socket on an
 * IPv4 connection), dotted or in hex groups as netlink.ts formats it, is its IPv4 one
 * (the codec's round trip, which gives mapped addresses back dotted).
 */
export function wireAddr(ip: string): string {
  return decodeAddr(encodeAddr(ip));
}

const endKey = (a: string, ap: number, b: string, bp: number) => `${wireAddr(a)}|${ap}|${wireAddr(b)}|${bp}`;

/**
 * The sockets to end: in a stranded state, with a mark known (the route depends on it),
 * that `pick` takes (the local route's, or one passing around ztunnel), and whose other
 * end is not a socket of the same netns. That other end is what a captured connection has
 * (ztunnel's socket in the pod, or its TIME_WAIT): a pod that had the loop through its
 * interface before the local route came keeps its captured connections.
 */
export function strandedSockets<T extends SocketEnds>(sockets: readonly T[], pick: (s: T & { mark: number }) => boolean): T[] {
  const ends = new Set(sockets.filter((s) => s.state !== TcpState.LISTEN).map((s) => endKey(s.src, s.sport, s.dst, s.dport)));
  return sockets.filter(
    (s): s is T & { mark: number } =>
      STRANDED_STATES.has(s.state) && s.mark !== undefined && !ends.has(endKey(s.dst, s.dport, s.src, s.sport)) && pick(s as T & { mark: number }),
  );
}

/**
 * A socket whose connection a capture first installed for `families` will never take, so
 * it would go on around ztunnel: under the iptables capture, any open before its rules
 * (REDIRECT takes a connection's first packet only); under the eBPF capture's loop (a pod
 * without the local route), any open before its programs (PO9 passes what a socket of the
 * pod sends on a connection ztunnel did not accept). Not ztunnel's own (its mark), not one
 * to the pod itself (loopback or an address of the netns, `local`), not the app's end of a
 * kubelet probe (`probe`: the source the host SNATs probes to).
 */
export function bypassesRules(
  s: SocketEnds & { mark: number },
  o: {
    families: ReadonlySet<4 | 6>;
    local: ReadonlySet<string>;
    probe: Readonly<Record<4 | 6, string>>;
    /** Ports with a listener in the netns, and leave the app's ends of connections to them (a pod whose inbound capture is bypassed). */
    keepInbound?: ReadonlySet<number>;
  },
): boolean {
  const peer = wireAddr(s.dst);
  const family = peer.includes(':') ? 6 : 4;
  if (!o.families.has(family) || (s.mark & constants.INPOD_ZTUNNEL_MARK_MASK) === constants.INPOD_ZTUNNEL_MARK) return false;
  if (o.keepInbound?.has(s.sport)) return false;
  if (family === 4 ? peer.startsWith('127.') : peer === '::1') return false;
  return !o.local.has(peer) && peer !== o.probe[family];
}

/** The ports a listener of the netns holds (the app's ends of inbound connections are on them). */
export function listeningPorts(sockets: readonly SocketEnds[]): Set<number> {
  return new Set(sockets.filter((s) => s.state === TcpState.LISTEN).map((s) => s.sport));
}
