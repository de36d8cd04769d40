/**
 * The only module of src/ that spawns processes (the harness, not in the image, has its
 * own). Commands are argv arrays, never shell strings.
 * A CommandRunner is a port: tests of pure code inject a recording fake.
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export class CommandError extends Error {
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly stderr: string;
  constructor(argv: readonly string[], exitCode: number | null, stderr: string) {
    super(`${argv.join(' ')} exited with ${exitCode ?? 'a signal'}: ${stderr.trim() || '(no output)'}`);
    this.name = 'CommandError';
    this.argv = argv;
    this.exitCode = exitCode;
    this.stderr = stderr;
  }
}

export interface RunOptions {
  /** Input written to the command's stdin. */
  input?: string;
  /** Kill the command after this many milliseconds (default 30 s). */
  timeoutMs?: number;
}

export interface CommandRunner {
  /** Runs to completion; throws CommandError on a non-zero exit. Returns stdout. */
  run(argv: readonly string[], opts?: RunOptions): Promise<string>;
}

export const systemRunner: CommandRunner = {
  run(argv, opts = {}) {
    const [file, ...args] = argv;
    if (!file) return Promise.reject(new Error('empty command'));
    return new Promise((resolve, reject) => {
      const child = execFile(file, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (err) {
          const code = typeof err.code === 'number' ? err.code : null;
          reject(new CommandError(argv, code, stderr || err.message));
        } else resolve(stdout);
      });
      if (opts.input !== undefined) child.stdin?.end(opts.input);
      else child.stdin?.end();
    });
  },
};

/** Starts a long-running process (a server in a netns, the controller). */
export function startProcess(argv: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  const [file, ...args] = argv;
  if (!file) throw new Error('empty command');
  return spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}
