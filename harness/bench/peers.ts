/**
 * The two implementations of the benchmarks' traffic peer, behind one way to run them:
 * `native` is tools/trafficpeer (build/trafficpeer, C: threads and epoll), `js` is
 * traffic-peer.ts under Node.js. Both take the same roles and flags and print the same
 * JSON lines (the clients' PeerResult, the stand-in's counts), so traffic.ts and inpod.ts
 * pick one per scenario and read both alike.
 */
import type { StdioOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { repoPath } from '../../src/lib/repo-path.js';
import type { PeerResult, StandInCounts } from './traffic-peer.js';

export type PeerKind = 'native' | 'js';
export const PEER_KINDS: readonly PeerKind[] = ['native', 'js'];

/** traffic-peer.js beside this module once compiled; under vitest (harness/bench/), the dist copy. */
function jsPeer(): string {
  const candidates = [new URL('./traffic-peer.js', import.meta.url), new URL('../../dist/harness/bench/traffic-peer.js', import.meta.url)].map((u) =>
    fileURLToPath(u),
  );
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`not built (looked for ${candidates.join(', ')}): run make build`);
  return found;
}

export function nativePeerBin(): string {
  const path = repoPath('build/trafficpeer', import.meta.url);
  if (!existsSync(path)) throw new Error(`${path} is not built: run make build (or make trafficpeer)`);
  return path;
}

/** The command line of a peer of `kind` (before its role and flags). */
export function peerCommand(kind: PeerKind): string[] {
  return kind === 'native' ? [nativePeerBin()] : [process.execPath, jsPeer()];
}

export interface PeerProcess {
  child: ReturnType<typeof startProcess>;
  /** Sends one command line on stdin and resolves with the first line holding `"event":"<reply>"`. */
  ask(command: string, reply: string): Promise<string>;
  stop(): void;
  /** Resolves when the process has exited (its sockets closed). */
  exited: Promise<void>;
}

/** Starts a peer (a server or a stand-in) in `ns`; resolves once it says it listens. */
export async function startPeer(ns: string, kind: PeerKind, args: string[], opts: { stdio?: StdioOptions; cpu?: number } = {}): Promise<PeerProcess> {
  const argv = [...pinned(opts.cpu), ...(ns ? ['ip', 'netns', 'exec', ns] : []), ...peerCommand(kind), ...args];
  const child = startProcess(argv, { stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2048)));
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const what = `${kind} ${args[0]}`;
  const until = async (event: string): Promise<string> => {
    for (;;) {
      const r = await lines.next();
      if (r.done) throw new Error(`${what} exited: ${stderr.trim()}`);
      if (r.value.includes(`"event":"${event}"`)) return r.value;
    }
  };
  let closed = false;
  const exited = new Promise<void>((resolve) =>
    child.once('close', () => {
      closed = true;
      resolve();
    }),
  );
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: not listening after 10 s`)), 10_000);
    child.once('close', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}): ${stderr.trim()}`));
    });
    until('listening').then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (err: unknown) => reject(err),
    );
  });
  return {
    child,
    async ask(command, reply) {
      if (closed) throw new Error(`${what} exited: ${stderr.trim()}`);
      child.stdin!.write(`${command}\n`);
      return until(reply);
    },
    stop: () => {
      if (!closed) child.kill('SIGKILL');
    },
    exited,
  };
}

/** A stand-in's counters. */
export async function standInCounts(p: PeerProcess): Promise<StandInCounts> {
  return JSON.parse(await p.ask('counts', 'counts')) as StandInCounts;
}

export interface ClientRun {
  seconds: number;
  warmupSeconds: number;
  concurrency: number;
  /** rr: this many connections at once, each its own ping-pong (default 1). */
  rrConnections?: number;
  /** Run the client on this CPU only (taskset), as the other ends of a one-CPU run. */
  cpu?: number;
}

/** `taskset -c N` ahead of a command when it is to run on CPU N only (its children too). */
export function pinned(cpu: number | undefined): string[] {
  return cpu === undefined ? [] : ['taskset', '-c', String(cpu)];
}

/** Runs one workload's client of `kind` in `ns` against `to`:`port` (the workload's base port). */
export async function runClient(ns: string, kind: PeerKind, workload: PeerResult['workload'], to: string, port: number, o: ClientRun): Promise<PeerResult> {
  const argv = [...pinned(o.cpu), 'ip', 'netns', 'exec', ns, ...peerCommand(kind), workload, '--to', to, '--port', String(port)];
  argv.push('--seconds', String(o.seconds), '--warmup', String(o.warmupSeconds), '--concurrency', String(o.concurrency));
  if (workload === 'rr' && o.rrConnections !== undefined) argv.push('--rr-connections', String(o.rrConnections));
  const out = await systemRunner.run(argv, { timeoutMs: (o.seconds + o.warmupSeconds) * 1000 + 30_000 });
  return parseResult(out, `${kind} ${workload} in ${ns}`);
}

/** A peer's JSON line of `event` among its output, parsed; `what` names the run in the error. */
export function eventLine(out: string, event: string, what: string): { line: string; r: Record<string, unknown> } {
  const line = out.split('\n').find((l) => l.includes(`"event":"${event}"`));
  if (!line) throw new Error(`${what}: no result (${out.trim().slice(0, 500)})`);
  return { line, r: JSON.parse(line) as Record<string, unknown> };
}

/** The client's PeerResult line, checked field by field (a broken peer fails here, not in the report). */
export function parseResult(out: string, what: string): PeerResult {
  const { line, r } = eventLine(out, 'result', what);
  for (const k of ['count', 'seconds', 'rate', 'connections', 'errors', 'synRetrans'] as const) {
    if (typeof r[k] !== 'number' || !Number.isFinite(r[k]) || (r[k] as number) < 0) throw new Error(`${what}: result field ${k} is ${String(r[k])}: ${line}`);
  }
  if (!['crr', 'rr', 'stream'].includes(r.workload as string)) throw new Error(`${what}: result workload is ${String(r.workload)}: ${line}`);
  return r as unknown as PeerResult;
}

/** What one system call costs here, ns (trafficpeer syscall-cost: the median of 7 timings of getppid). */
export async function syscallCostNs(): Promise<number> {
  const out = await systemRunner.run([nativePeerBin(), 'syscall-cost'], { timeoutMs: 60_000 });
  return parseSyscallCost(out);
}

/** The syscall-cost line's nsPerCall, checked. */
export function parseSyscallCost(out: string): number {
  const { line, r } = eventLine(out, 'syscall-cost', 'trafficpeer syscall-cost');
  const ns = r.nsPerCall;
  if (typeof ns !== 'number' || !Number.isFinite(ns) || ns <= 0) throw new Error(`trafficpeer syscall-cost: nsPerCall is ${String(ns)}: ${line}`);
  return ns;
}

/** `--endpoints`: a comma-separated list of kinds; native always (the goals are measured on it). */
export function parseEndpoints(raw: string | undefined): PeerKind[] {
  if (raw === undefined) return ['native'];
  const kinds = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const k of kinds) if (!(PEER_KINDS as readonly string[]).includes(k)) throw new Error(`--endpoints: "${k}" is not one of ${PEER_KINDS.join(', ')}`);
  if (!kinds.includes('native')) throw new Error('--endpoints: native is always measured (the goals are on it); add js to compare');
  return [...new Set(kinds as PeerKind[])];
}
