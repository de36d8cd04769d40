/**
 * The sockets an in-pod run's netns holds, as a list of steps (harness/inpod/harness.ts
 * carries them out with Node's net/dgram inside the netns), and the table the kernel's
 * lookups then see, as the reference model (test/model/inpod.ts) keys it. Pure: the
 * kernel matrix's host judges a VM's in-pod runs against the table of the steps the VM's
 * runner carried out, without holding the sockets itself.
 */
import { ipBytes } from '../packet/builder.js';

/** 'syn_sent': a connecting socket (the pod's own, its SYN not yet answered). */
export type ConnState = 'open' | 'time_wait' | 'syn_sent';
export type SocketKind = 'tcp4' | 'tcp6' | 'udp4' | 'udp6';
export interface Endpoint {
  ip: string;
  port: number;
}

/**
 * One step: a wildcard listener (TCP) or bound socket (UDP) opened or closed again (a TCP
 * one on IPv6 is IPv6-only); a connection client → server over lo (`timeWait`: both ends
 * closed, the client first, so that its end stays in TIME_WAIT); a socket connecting
 * client → server and staying so (SYN_SENT: the server's end must be a TIME_WAIT).
 */
export type SocketStep =
  | { listen: SocketKind; port: number }
  | { close: SocketKind; port: number }
  | { connection: [client: Endpoint, server: Endpoint]; timeWait?: boolean }
  | { connecting: [client: Endpoint, server: Endpoint] };

const endpoint = ([ip, port]: [string, number]): Endpoint => ({ ip, port });
/** A connection step: client → server, each as [address, port]. */
export function connection(client: [string, number], server: [string, number], timeWait = false): SocketStep {
  return { connection: [endpoint(client), endpoint(server)], ...(timeWait ? { timeWait } : {}) };
}
/** A connecting step: client → server, each as [address, port]. */
export function connecting(client: [string, number], server: [string, number]): SocketStep {
  return { connecting: [endpoint(client), endpoint(server)] };
}

/** The netns's sockets, as the kernel's lookups see them (test/model/inpod.ts InpodSockets). */
export interface SocketTable {
  /** Wildcard-bound listeners and UDP sockets: 'tcp4:15001', 'udp6:15053', 'tcp4:8080'. */
  listeners: Set<string>;
  /** Connection sockets by connKey (local end first). */
  conns: Map<string, ConnState>;
}

export function connKey(family: 4 | 6, localHex: string, lport: number, remoteHex: string, rport: number): string {
  return `${family}|${localHex}|${lport}|${remoteHex}|${rport}`;
}

/** A handoff's key: the SYN's source and destination, as the receiving stack sees them. */
export function handoffKey(family: 4 | 6, remoteHex: string, rport: number, localHex: string, lport: number): string {
  return `${family}|${remoteHex}|${rport}|${localHex}|${lport}`;
}

/** An address as the maps key it: 16 bytes, IPv4 mapped (test/model/datapath.ts addrKeyHex). */
function keyHex(ip: string): string {
  const b = ipBytes(ip);
  return b.length === 4 ? `00000000000000000000ffff${b.toString('hex')}` : b.toString('hex');
}

/** The table after `steps`, added to `table` (a fresh one by default). */
export function socketTable(steps: readonly SocketStep[], table: SocketTable = { listeners: new Set(), conns: new Map() }): SocketTable {
  const key = (local: Endpoint, remote: Endpoint) => connKey(local.ip.includes(':') ? 6 : 4, keyHex(local.ip), local.port, keyHex(remote.ip), remote.port);
  for (const s of steps) {
    if ('listen' in s) table.listeners.add(`${s.listen}:${s.port}`);
    else if ('close' in s) table.listeners.delete(`${s.close}:${s.port}`);
    else if ('connecting' in s) table.conns.set(key(...s.connecting), 'syn_sent');
    else {
      const [client, server] = s.connection;
      table.conns.set(key(client, server), s.timeWait ? 'time_wait' : 'open');
      if (!s.timeWait) table.conns.set(key(server, client), 'open');
    }
  }
  return table;
}
