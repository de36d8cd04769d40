/**
 * A captured connection whose ztunnel end is gone while the pod's client still holds its
 * own (docs/datapath.md, PO7): the stand-in answers and closes its end, the pod's netns lets
 * the orphan go after a second (`tcp_fin_timeout` 1, put back after), and the pod's clients,
 * left in CLOSE_WAIT, write. What the outside netns received then is the verdict: any
 * segment went around the mesh to the original destination.
 */
import { withNetns } from '../../src/bpf/netns.js';
import { systemRunner } from '../../src/host/runner.js';
import { closeSocket, markedConnect, sendOn } from '../../harness/sim/transparent.js';
import { sleep, until } from './wait.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** The TCP segments a netns has received (its /proc/net/snmp `Tcp: InSegs`). */
export async function tcpInSegs(ns: string): Promise<number> {
  const rows = (await run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/snmp'])).split('\n').filter((l) => l.startsWith('Tcp:'));
  const i = rows[0]!.split(/\s+/).indexOf('InSegs');
  return Number(rows[1]!.split(/\s+/)[i]);
}

export interface StaleClientRun {
  podNs: string;
  /** An fd of the pod's netns (its clients are opened in it). */
  podFd: number;
  outsideNs: string;
  /** The original destinations the pod's clients connect to (one per family), all on `port`. */
  targets: readonly string[];
  port: number;
  /** Turns on (and off again) the stand-in's answer-and-close for the connections it accepts. */
  closeAfterAnswer: (on: boolean) => void;
}

/** Segments the outside netns received from the pod's clients writing after ztunnel's end went. */
export async function segmentsAfterZtunnelGone(o: StaleClientRun): Promise<number> {
  const finTimeout = (await run(['ip', 'netns', 'exec', o.podNs, 'sysctl', '-n', 'net.ipv4.tcp_fin_timeout'])).trim();
  const ss = async (...filter: string[]) =>
    (await run(['ip', 'netns', 'exec', o.podNs, 'ss', '-tanH', ...filter])).split('\n').filter((l) => l.trim());
  const fds: number[] = [];
  o.closeAfterAnswer(true);
  try {
    await run(['ip', 'netns', 'exec', o.podNs, 'sysctl', '-qw', 'net.ipv4.tcp_fin_timeout=1']);
    // Mark 0: the app's own sockets, captured.
    for (const ip of o.targets) fds.push(withNetns(`/proc/self/fd/${o.podFd}`, () => markedConnect(ip, o.port, 0)));
    const waiting = () => ss('state', 'close-wait', `( dport = :${o.port} )`);
    await until('the pod’s clients in CLOSE_WAIT', async () => (await waiting()).length === fds.length, 3_000);
    // ztunnel's ends: the sockets whose peer is a client's port (their own port is the
    // original destination's with eBPF, 15001 with iptables' REDIRECT).
    const ports = (await waiting()).map((l) => l.trim().split(/\s+/)[2]!.split(':').pop()!);
    const ends = ports.map((p) => `( dport = :${p} )`).join(' or ');
    await until('the stand-in’s ends gone', async () => (await ss('state', 'connected', ends)).length === 0, 5_000);
    const before = await tcpInSegs(o.outsideNs);
    for (const fd of fds) {
      const e = sendOn(fd, Buffer.from('after ztunnel is gone'));
      if (e !== 0) throw new Error(`send on the pod's client failed: errno ${e}`);
    }
    await sleep(200);
    return (await tcpInSegs(o.outsideNs)) - before;
  } finally {
    o.closeAfterAnswer(false);
    fds.forEach(closeSocket);
    await run(['ip', 'netns', 'exec', o.podNs, 'sysctl', '-qw', `net.ipv4.tcp_fin_timeout=${finTimeout}`]);
  }
}
