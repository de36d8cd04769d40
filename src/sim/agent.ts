/**
 * The processes of the simulated node, run inside its netns by node.ts:
 *
 *   agent.js ztunnel --port 15001      transparent listener; reports each connection's
 *                                      original destination (TPROXY keeps it as local addr)
 *   agent.js server --port 8080        the outside server; reports who connected
 *   agent.js connect --to IP:PORT --count N --timeout-ms T
 *                                      N sequential connections; one result line each
 *
 * Each prints one JSON object per line on stdout. Bad arguments: one line on stderr, exit 2.
 */
import net from 'node:net';
import { parseArgs } from 'node:util';

class UsageError extends Error {}

const USAGE =
  'usage: agent.js ztunnel --port P | server --port P | connect --to IP:PORT --count N --timeout-ms T';

function emit(event: object): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function intOption(values: Record<string, unknown>, name: string, min: number, max: number): number {
  const raw = values[name];
  if (typeof raw !== 'string') throw new UsageError(`--${name} is required`);
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n < min || n > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}, got "${raw}"`);
  return n;
}

function target(values: Record<string, unknown>): { host: string; port: number } {
  const raw = values.to;
  if (typeof raw !== 'string') throw new UsageError('--to is required');
  const m = /^(.+):(\d+)$/.exec(raw);
  const port = Number(m?.[2]);
  if (!m?.[1] || net.isIP(m[1]) === 0 || port < 1 || port > 65535) {
    throw new UsageError(`--to must be IP:PORT, got "${raw}"`);
  }
  return { host: m[1], port };
}

function address(socket: net.Socket, side: 'remote' | 'local'): string {
  return side === 'remote'
    ? `${socket.remoteAddress}:${socket.remotePort}`
    : `${socket.localAddress}:${socket.localPort}`;
}

/** Accepts, reports and answers each connection with `reply` and closes it. */
function serve(server: net.Server, reply: string, describe: (s: net.Socket) => object): void {
  server.on('error', (err) => fail(err));
  server.on('connection', (socket) => {
    emit({ event: 'accepted', ...describe(socket) });
    socket.on('error', () => socket.destroy()); // a peer reset is the peer's business
    socket.end(`${reply}\n`);
  });
}

async function runZtunnel(port: number): Promise<void> {
  // Loaded only here: it loads libbpf, which the other modes do not need.
  const { AF_INET, transparentListener } = await import('../bpf/ffi.js');
  const server = net.createServer();
  serve(server, 'ztunnel', (s) => ({ src: address(s, 'remote'), origDst: address(s, 'local') }));
  server.listen({ fd: transparentListener(AF_INET, port) }, () => emit({ event: 'listening', port }));
}

function runServer(port: number): void {
  const server = net.createServer();
  serve(server, 'outside', (s) => ({ src: address(s, 'remote') }));
  server.listen({ port, host: '0.0.0.0' }, () => emit({ event: 'listening', port }));
}

interface Result {
  ok: boolean;
  reply?: string;
  error?: string;
}

/** One connection: reads until the server closes; the timeout covers connect and reply. */
function attempt(to: { host: string; port: number }, timeoutMs: number): Promise<Result> {
  return new Promise((resolve) => {
    const socket = net.connect(to);
    const chunks: Buffer[] = [];
    const done = (r: Result) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, error: 'ETIMEDOUT' }), timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => done({ ok: true, reply: Buffer.concat(chunks).toString('utf8').trim() }));
    socket.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, error: err.code ?? err.message }));
  });
}

async function runConnect(to: { host: string; port: number }, count: number, timeoutMs: number): Promise<void> {
  for (let i = 0; i < count; i++) emit({ event: 'result', ...(await attempt(to, timeoutMs)) });
}

async function main(argv: string[]): Promise<void> {
  const [mode, ...rest] = argv;
  let values: Record<string, unknown>;
  try {
    values = parseArgs({
      args: rest,
      options: { port: { type: 'string' }, to: { type: 'string' }, count: { type: 'string' }, 'timeout-ms': { type: 'string' } },
      strict: true,
    }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  switch (mode) {
    case 'ztunnel':
      return runZtunnel(intOption(values, 'port', 1, 65535));
    case 'server':
      return runServer(intOption(values, 'port', 1, 65535));
    case 'connect':
      return runConnect(target(values), intOption(values, 'count', 1, 100_000), intOption(values, 'timeout-ms', 1, 600_000));
    default:
      throw new UsageError(mode ? `unknown mode "${mode}"` : 'missing mode');
  }
}

/** Ends the process with one line on stderr: exit 2 for bad arguments, 1 otherwise. */
function fail(err: unknown): never {
  if (err instanceof UsageError) {
    process.stderr.write(`agent: ${err.message} (${USAGE})\n`);
    process.exit(2);
  }
  process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}

main(process.argv.slice(2)).catch(fail);
