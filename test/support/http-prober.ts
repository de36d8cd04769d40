/**
 * GETs from inside a netns (where the agent's health address listens) through one
 * long-lived process there: a process per request takes seconds on a busy machine, longer
 * than a resync pass, which would blur "within one pass".
 */
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { startProcess } from '../../src/host/runner.js';

export interface HttpProber {
  /** GET http://<address><path>; status 0 with the error as body when the request fails. */
  get(path: string): Promise<{ status: number; body: string }>;
  /** Ends the process (idempotent); the next get() starts another. */
  close(): Promise<void>;
}

export function httpProber(netns: string, address: string): HttpProber {
  let child: ChildProcess | null = null;
  const waiting: ((line: string) => void)[] = [];
  const script = `require('node:readline').createInterface({ input: process.stdin }).on('line', (p) => fetch('http://${address}' + p).then(
    async (r) => ({ status: r.status, body: await r.text() }), (e) => ({ status: 0, body: String(e) })).then((r) => process.stdout.write(JSON.stringify(r) + '\\n')));`;
  return {
    get(path) {
      if (!child) {
        child = startProcess(['ip', 'netns', 'exec', netns, process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
        createInterface({ input: child.stdout! }).on('line', (line) => waiting.shift()?.(line));
      }
      const c = child;
      return new Promise((resolve) => {
        waiting.push((line) => resolve(JSON.parse(line) as { status: number; body: string }));
        c.stdin!.write(`${path}\n`);
      });
    },
    async close() {
      const c = child;
      child = null;
      if (!c) return;
      await new Promise<void>((resolve) => {
        c.once('close', () => resolve());
        c.stdin!.end();
        c.kill('SIGTERM');
      });
    },
  };
}
