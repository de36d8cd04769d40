/**
 * The controller as a real process on the simulated node: `ambient-redirect` run with
 * nsenter in the node netns. Only the network namespace changes (not `ip netns exec`,
 * which remounts /sys and would hide the host's bpffs), just as a hostNetwork DaemonSet
 * pod sees the node's network and the host's bpffs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startProcess, systemRunner, type CommandRunner } from '../../src/host/runner.js';
import { distEntry } from './dist.js';

export interface LogEvent {
  level: string;
  msg: string;
  [field: string]: unknown;
}

export interface ControllerProcess {
  readonly pid: number;
  readonly events: LogEvent[];
  /** Resolves with the first event (past or future) whose msg is `msg`. */
  waitFor(msg: string, timeoutMs?: number): Promise<LogEvent>;
  /** Resolves with the first event logged after the first `after` ones whose msg matches. */
  waitForAfter(after: number, msg: string | RegExp, timeoutMs?: number): Promise<LogEvent>;
  /** Sends the signal and resolves with the exit code once the process is gone. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Resolves with the exit code when the process ends by itself. */
  exited(): Promise<number | null>;
}

function inNode(nodeNs: string, args: readonly string[], entry = distEntry('../../src/cli/main.js')): string[] {
  return ['nsenter', `--net=/var/run/netns/${nodeNs}`, process.execPath, entry, ...args];
}

/**
 * Starts `ambient-redirect run` with `args`. The simulated node's topology is the
 * node-level ztunnel's (its own netns, host veths), so the agent is started with
 * `--ztunnel-mode node` unless the caller names a mode itself (the in-pod tests pass
 * `--ztunnel-mode inpod`). `entry`: another build's CLI (the upgrade test's previous build).
 */
export function startController(nodeNs: string, args: readonly string[], opts: { entry?: string } = {}): ControllerProcess {
  const mode = args.includes('--ztunnel-mode') ? [] : ['--ztunnel-mode', 'node'];
  const child = startProcess(inNode(nodeNs, ['run', ...mode, ...args], opts.entry));
  const events: LogEvent[] = [];
  const listeners = new Set<(e: LogEvent) => void>();
  let exited = false;
  let exitCode: number | null = null;
  const done = new Promise<void>((resolve) =>
    child.once('close', (code) => {
      exited = true;
      exitCode = code;
      resolve();
    }),
  );
  let stderrTail = '';
  createInterface({ input: child.stderr! }).on('line', (line) => {
    try {
      const e = JSON.parse(line) as LogEvent;
      events.push(e);
      listeners.forEach((l) => l(e));
    } catch {
      stderrTail = (stderrTail + line + '\n').slice(-4096);
    }
  });
  child.stdout?.resume();
  return {
    pid: child.pid!,
    events,
    waitFor(msg, timeoutMs = 20_000) {
      return this.waitForAfter(0, msg, timeoutMs);
    },
    waitForAfter(after, msg, timeoutMs = 20_000) {
      const matches = (e: LogEvent) => (typeof msg === 'string' ? e.msg === msg : msg.test(e.msg));
      const seen = events.slice(after).find(matches);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => finish(new Error(`controller: no "${msg}" within ${timeoutMs} ms; log: ${JSON.stringify(events.slice(-5))} ${stderrTail}`)),
          timeoutMs,
        );
        const onEvent = (e: LogEvent) => matches(e) && finish(null, e);
        const finish = (err: Error | null, e?: LogEvent) => {
          clearTimeout(timer);
          listeners.delete(onEvent);
          if (err) reject(err);
          else resolve(e!);
        };
        listeners.add(onEvent);
        void done.then(() => finish(new Error(`controller exited (${exitCode}) before "${msg}": ${JSON.stringify(events.slice(-5))} ${stderrTail}`)));
      });
    },
    async exited() {
      await done;
      return exitCode;
    },
    async stop(signal = 'SIGTERM') {
      if (!exited) child.kill(signal);
      await done;
      return exitCode;
    },
  };
}

/**
 * Runs a one-shot command (uninstall, status) in the node netns; returns its stdout.
 * `status` and `run` get `--ztunnel-mode node` unless the caller names a mode (see
 * startController).
 *
 * `uninstall` without `--host-proc` gets an empty one: the simulated node's pods are known
 * only through the /proc its caller gives (inpod-node.ts). Left to the default, /proc, it
 * would look at every process of this shared machine and take the in-pod iptables capture
 * out of every other run's pods (seen: the demo's enrolled pods went direct while another
 * run's node-topology test uninstalled).
 */
export async function runInNode(nodeNs: string, args: readonly string[], runner: CommandRunner = systemRunner): Promise<string> {
  const [command, ...rest] = args;
  if (command === 'uninstall' && !rest.some((a) => a === '--host-proc' || a.startsWith('--host-proc='))) {
    const none = mkdtempSync(join(tmpdir(), `ar-noproc-${nodeNs}-`));
    try {
      return await runner.run(inNode(nodeNs, [...args, '--host-proc', none]));
    } finally {
      rmSync(none, { recursive: true, force: true });
    }
  }
  const withMode = (command === 'status' || command === 'run') && !rest.includes('--ztunnel-mode') ? [command, '--ztunnel-mode', 'node', ...rest] : args;
  return runner.run(inNode(nodeNs, withMode));
}
