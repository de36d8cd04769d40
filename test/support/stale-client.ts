/**
 * A captured connection whose ztunnel end is gone while the pod's own end is still open
 * (docs/datapath.md, PO7). ztunnel's end closes first and the pod's netns lets its orphan go
 * after a second (`tcp_fin_timeout` 1, put back after); then the pod's end, left in
 * CLOSE_WAIT, writes. What the outside netns received then is the verdict: any segment went
 * around the mesh to the address ztunnel stood in for.
 *
 * - `segmentsAfterZtunnelGone`: the pod's outbound connection (the stand-in answers and
 *   closes its end).
 * - `segmentsAfterInboundLegGone`: ztunnel's inbound leg to the app (a socket marked 0x539,
 *   sent with the client's own address), closed by ztunnel while the app's end stays open.
 */
import { withNetns } from '../../src/bpf/netns.js';
import { acceptConn, AF_INET, AF_INET6, markedListener } from '../../src/host/libc.js';
import { systemRunner } from '../../src/host/runner.js';
import { tcpCounter } from '../../harness/bench/hooks.js';
import { closeSocket, markedConnect, sendOn, transparentMarkedConnect } from '../../harness/sim/transparent.js';
import { ZTUNNEL_MARK } from '../../harness/sim/ztunnel-inpod.js';
import { sleep, until } from './wait.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** The TCP segments a netns has received (its /proc/net/snmp `Tcp: InSegs`). */
export async function tcpInSegs(ns: string): Promise<number> {
  return tcpCounter(await run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/snmp']), 'InSegs');
}

export interface StaleClientRun {
  podNs: string;
  /** An fd of the pod's netns (the sockets are opened in it). */
  podFd: number;
  outsideNs: string;
  /** The original destinations the pod's clients connect to (one per family), all on `port`. */
  targets: readonly string[];
  port: number;
  /** Turns on (and off again) the stand-in's answer-and-close for the connections it accepts. */
  closeAfterAnswer: (on: boolean) => void;
}

const ss = async (ns: string, ...filter: string[]) => (await run(['ip', 'netns', 'exec', ns, 'ss', '-tanH', ...filter])).split('\n').filter((l) => l.trim());

/**
 * With a 1 s FIN_WAIT2 in the pod's netns: `open` makes the connections and returns the pod's
 * ends (`mine`, an ss filter, finds them); once they are all in CLOSE_WAIT (ztunnel's ends closed) and no socket has them as its
 * peer any more (ztunnel's ends gone), each writes. Returns the segments the outside received.
 */
async function writeAfterPeersGone(podNs: string, outsideNs: string, mine: string, open: () => Promise<number[]>): Promise<number> {
  const finTimeout = (await run(['ip', 'netns', 'exec', podNs, 'sysctl', '-n', 'net.ipv4.tcp_fin_timeout'])).trim();
  let fds: number[] = [];
  try {
    await run(['ip', 'netns', 'exec', podNs, 'sysctl', '-qw', 'net.ipv4.tcp_fin_timeout=1']);
    fds = await open();
    const waiting = () => ss(podNs, 'state', 'close-wait', mine);
    await until('the pod’s ends in CLOSE_WAIT', async () => (await waiting()).length === fds.length, 3_000);
    // ztunnel's ends: the sockets whose peer is one of the pod's ends (local address, 4th field).
    const lines = await waiting();
    const ports = lines.map((l) => l.trim().split(/\s+/)[2]?.split(':').pop());
    if (ports.some((p) => !p)) throw new Error(`unexpected ss lines: ${JSON.stringify(lines)}`);
    const ends = ports.map((p) => `( dport = :${p} )`).join(' or ');
    await until('ztunnel’s ends gone', async () => (await ss(podNs, 'state', 'connected', ends)).length === 0, 5_000);
    const before = await tcpInSegs(outsideNs);
    for (const fd of fds) {
      const e = sendOn(fd, Buffer.from('after ztunnel is gone'));
      if (e !== 0) throw new Error(`send on the pod's end failed: errno ${e}`);
    }
    await sleep(200);
    return (await tcpInSegs(outsideNs)) - before;
  } finally {
    fds.forEach(closeSocket);
    await run(['ip', 'netns', 'exec', podNs, 'sysctl', '-qw', `net.ipv4.tcp_fin_timeout=${finTimeout}`]);
  }
}

/** Segments the outside netns received from the pod's clients writing after ztunnel's end went. */
export async function segmentsAfterZtunnelGone(o: StaleClientRun): Promise<number> {
  o.closeAfterAnswer(true);
  try {
    // Mark 0: the app's own sockets, captured.
    return await writeAfterPeersGone(o.podNs, o.outsideNs, `( dport = :${o.port} )`, async () =>
      o.targets.map((ip) => withNetns(`/proc/self/fd/${o.podFd}`, () => markedConnect(ip, o.port, 0))),
    );
  } finally {
    o.closeAfterAnswer(false);
  }
}

export interface StaleLegRun {
  podNs: string;
  podFd: number;
  outsideNs: string;
  /** The clients ztunnel's legs come from (outside addresses, one per family) and the pod's addresses they go to, in the same order. */
  clients: readonly string[];
  pod: readonly string[];
  /** A port of the pod nothing listens on: the app's listener here. */
  appPort: number;
}

/** Segments the outside netns received from the app writing after ztunnel's inbound legs went. */
export async function segmentsAfterInboundLegGone(o: StaleLegRun): Promise<number> {
  const listeners: number[] = [];
  try {
    return await writeAfterPeersGone(o.podNs, o.outsideNs, `( sport = :${o.appPort} )`, async () => {
      const apps: number[] = [];
      for (const [i, client] of o.clients.entries()) {
        const podIp = o.pod[i]!;
        const family = podIp.includes(':') ? AF_INET6 : AF_INET;
        const [listener, leg] = withNetns(`/proc/self/fd/${o.podFd}`, () => {
          const l = markedListener(family, o.appPort, 0);
          return [l, transparentMarkedConnect(client, podIp, o.appPort, ZTUNNEL_MARK)];
        });
        listeners.push(listener!);
        const app = acceptConn(listener!);
        if (app === null) throw new Error(`the app's listener on ${podIp}:${o.appPort} has no connection from ${client}`);
        apps.push(app);
        // ztunnel closes its leg before the app sent anything: the app's first segment of its
        // own is its ACK of that FIN (unread data in the leg would make its close a reset).
        closeSocket(leg!);
      }
      return apps;
    });
  } finally {
    listeners.forEach(closeSocket);
  }
}
