/**
 * Ending a pod's connections that its capture would otherwise leave behind (stranded.ts
 * chooses which; this runs the choice in the netns the calling thread is in, over
 * sock_diag, as `ss -K` does). Best effort for both in-pod captures: what it cannot end
 * is logged, never thrown, since the capture itself does not depend on it.
 */
import { statSync } from 'node:fs';
import { AF_INET, AF_INET6, destroyTcpSocket, dumpTcpSockets, NetlinkError, type NlTcpSocket } from '../../host/netlink.js';
import type { Logger } from '../../log.js';
import { strandedSockets } from './stranded.js';

const EOPNOTSUPP = 95;

/** A netns's identity (device and inode of its nsfs file), from a path to it. */
const netnsId = (path: string): string => {
  const st = statSync(path);
  return `${st.dev}:${st.ino}`;
};
/** The netns this process started in (the host's, for the agent): never one to end connections in. */
const AGENT_NETNS = netnsId('/proc/self/ns/net');

/** What endConnections does to the netns (the kernel's, by default; a unit test's fake). */
export interface SocketOps {
  /** The calling thread is in the agent's own netns. */
  inAgentNetns(): boolean;
  sockets(): NlTcpSocket[];
  /** False when the socket was gone already. */
  destroy(s: NlTcpSocket): boolean;
}

const KERNEL: SocketOps = {
  inAgentNetns: () => netnsId('/proc/thread-self/ns/net') === AGENT_NETNS,
  sockets: () => [AF_INET, AF_INET6].flatMap((f) => dumpTcpSockets(f as typeof AF_INET | typeof AF_INET6)),
  destroy: destroyTcpSocket,
};

/** Ends what `pick` takes among the netns's stranded-state TCP sockets (strandedSockets); how many went. */
export function endConnections(
  log: Logger,
  who: Record<string, unknown>,
  pick: (s: NlTcpSocket & { mark: number }, all: readonly NlTcpSocket[]) => boolean,
  ops: SocketOps = KERNEL,
): number {
  if (ops.inAgentNetns()) {
    log.warn('in-pod capture: not ending connections in the agent’s own netns', who);
    return 0;
  }
  try {
    const sockets = ops.sockets();
    let ended = 0;
    for (const s of strandedSockets(sockets, (x) => pick(x, sockets))) if (ops.destroy(s)) ended++;
    if (ended) log.info('in-pod capture: ended the connections from before it', { ...who, connections: ended });
    return ended;
  } catch (err) {
    const unsupported = err instanceof NetlinkError && err.errno === EOPNOTSUPP;
    log.warn('in-pod capture: the connections from before it are left to time out', {
      ...who,
      reason: unsupported ? 'this kernel cannot end a socket (no CONFIG_INET_DIAG_DESTROY)' : String(err),
    });
    return 0;
  }
}
