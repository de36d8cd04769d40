/**
 * Servers that hold every connection they accept open and keep what they receive, in a
 * netns given by fd (listenInNetns's listeners: marked as ztunnel's unless `mark` says
 * otherwise, 0 for an app's). For the tests of what an in-pod capture does to connections
 * that were open before it.
 */
import type net from 'node:net';
import { listenInNetns } from '../../harness/sim/ztunnel-inpod.js';

export interface Holder {
  /** The connections accepted, in order. */
  readonly held: net.Socket[];
  /** Everything received on them, in arrival order. */
  received(): string;
  /** Ends every held connection and closes the listeners. */
  close(): Promise<void>;
}

export function holdConnections(netnsFd: number, what: string, ports: readonly number[], opts: { mark?: number } = {}): Holder {
  const held: net.Socket[] = [];
  let got = '';
  const servers = listenInNetns(
    netnsFd,
    what,
    ports,
    (_port, c) => {
      held.push(c);
      c.on('data', (d: Buffer) => (got += d.toString()));
      c.on('error', () => undefined);
      return true;
    },
    opts,
  );
  return {
    held,
    received: () => got,
    async close() {
      for (const c of held) c.destroy();
      await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
    },
  };
}
