/**
 * The processes of the simulated node, run inside its netns by node.ts:
 *
 *   agent.js ztunnel --port 15001,15006,15008 [--proxy]
 *                                      transparent listeners (IPv4 and IPv6); report each
 *                                      connection's original destination (TPROXY and
 *                                      bpf_sk_assign keep it as the local address); answer
 *                                      `ztunnel` and close, or with --proxy relay the
 *                                      connection to its original destination (from
 *                                      ztunnel's netns, with ztunnel's own address)
 *   agent.js server --port 8080 [--reply TEXT]
 *                                      a server (the outside one, or a pod's); reports who
 *                                      connected, over IPv4 and IPv6
 *   agent.js connect --to IP:PORT --count N --timeout-ms T [--bind IP] [--local-port P]
 *                                      N sequential connections, from IP (and port) if
 *                                      given; one result line each
 *   agent.js udp-server --port P [--reply TEXT]
 *                                      a UDP server (IPv4 and IPv6): reports each datagram's
 *                                      source and answers TEXT
 *   agent.js udp-send --to IP:PORT --count N --timeout-ms T
 *                                      N sequential datagrams, each waiting for an answer;
 *                                      one result line each
 *
 * Each prints one JSON object per line on stdout. Bad arguments: one line on stderr, exit 2.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { parseArgs } from 'node:util';
import { relay } from './relay.js';

class UsageError extends Error {}

const USAGE =
  'usage: agent.js ztunnel --port P[,P...] [--proxy] | server --port P [--reply TEXT] | connect --to IP:PORT --count N --timeout-ms T [--bind IP] [--local-port P] | udp-server --port P [--reply TEXT] | udp-send --to IP:PORT --count N --timeout-ms T';

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

function portList(values: Record<string, unknown>): number[] {
  const raw = values.port;
  if (typeof raw !== 'string') throw new UsageError('--port is required');
  return raw.split(',').map((p) => intOption({ port: p }, 'port', 1, 65535));
}

function bindAddress(values: Record<string, unknown>): string | undefined {
  const raw = values.bind;
  if (raw === undefined) return undefined;
  if (typeof raw !== 'string' || net.isIP(raw) === 0) throw new UsageError(`--bind must be an IP address, got "${String(raw)}"`);
  return raw;
}

function target(values: Record<string, unknown>): { host: string; port: number } {
  const raw = values.to;
  if (typeof raw !== 'string') throw new UsageError('--to is required');
  // IPv6 as [addr]:port.
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(raw);
  const port = Number(m?.[2]);
  if (!m?.[1] || net.isIP(m[1]) === 0 || port < 1 || port > 65535) {
    throw new UsageError(`--to must be IP:PORT or [IPv6]:PORT, got "${raw}"`);
  }
  return { host: m[1], port };
}

function address(socket: net.Socket, side: 'remote' | 'local'): string {
  return side === 'remote' ? `${socket.remoteAddress}:${socket.remotePort}` : `${socket.localAddress}:${socket.localPort}`;
}

/** `ip:port`, with IPv6 addresses in brackets. */
function hostPort(ip: string | undefined, port: number | undefined): string {
  return ip?.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
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

/** Resolves once every server listens. */
function listenAll(servers: [net.Server, object][]): Promise<void> {
  return Promise.all(servers.map(([server, opts]) => new Promise<void>((resolve) => server.listen(opts, resolve)))).then(() => undefined);
}

/** Relays each connection to its original destination and back (./relay.ts), reporting it first. */
function relayAll(server: net.Server, describe: (s: net.Socket) => object): void {
  server.on('error', (err) => fail(err));
  server.on('connection', (down) => {
    emit({ event: 'accepted', ...describe(down) });
    relay(down);
  });
}

async function runZtunnel(ports: number[], proxy: boolean): Promise<void> {
  // Loaded only here: it loads koffi, which the other modes do not need.
  const { AF_INET, AF_INET6, transparentListener } = await import('./transparent.js');
  const servers: [net.Server, object][] = [];
  for (const port of ports) {
    for (const family of [AF_INET, AF_INET6] as const) {
      const server = net.createServer({ allowHalfOpen: proxy });
      const describe = (s: net.Socket) => ({ src: address(s, 'remote'), origDst: hostPort(s.localAddress, s.localPort), port });
      if (proxy) relayAll(server, describe);
      else serve(server, 'ztunnel', describe);
      servers.push([server, { fd: transparentListener(family, port) }]);
    }
  }
  await listenAll(servers);
  emit({ event: 'listening', ports });
}

async function runServer(port: number, reply: string): Promise<void> {
  const v4 = net.createServer();
  const v6 = net.createServer();
  for (const server of [v4, v6]) serve(server, reply, (s) => ({ src: address(s, 'remote') }));
  await listenAll([
    [v4, { port, host: '0.0.0.0' }],
    [v6, { port, host: '::', ipv6Only: true }],
  ]);
  emit({ event: 'listening', port });
}

async function runUdpServer(port: number, reply: string): Promise<void> {
  const sockets = [dgram.createSocket({ type: 'udp4' }), dgram.createSocket({ type: 'udp6', ipv6Only: true })];
  await Promise.all(
    sockets.map(
      (s, i) =>
        new Promise<void>((resolve, reject) => {
          s.once('error', reject);
          s.on('message', (_msg, rinfo) => {
            emit({ event: 'accepted', src: rinfo.family === 'IPv6' ? `[${rinfo.address}]:${rinfo.port}` : `${rinfo.address}:${rinfo.port}` });
            s.send(reply, rinfo.port, rinfo.address);
          });
          s.bind({ port, address: i === 0 ? '0.0.0.0' : '::' }, () => resolve());
        }),
    ),
  );
  emit({ event: 'listening', port });
}

/** One datagram and its answer; the timeout covers both. */
function udpAttempt(to: { host: string; port: number }, timeoutMs: number): Promise<Result> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(to.host) ? 'udp6' : 'udp4');
    const done = (r: Result) => {
      clearTimeout(timer);
      socket.close();
      resolve(r);
    };
    const timer = setTimeout(() => done({ ok: false, error: 'ETIMEDOUT' }), timeoutMs);
    socket.on('message', (msg) => done({ ok: true, reply: msg.toString('utf8').trim() }));
    socket.on('error', (err: NodeJS.ErrnoException) => done({ ok: false, error: err.code ?? err.message }));
    socket.send('ping', to.port, to.host);
  });
}

async function runUdpSend(to: { host: string; port: number }, count: number, timeoutMs: number): Promise<void> {
  for (let i = 0; i < count; i++) emit({ event: 'result', ...(await udpAttempt(to, timeoutMs)) });
}

interface Result {
  ok: boolean;
  reply?: string;
  error?: string;
}

/** One connection: reads until the server closes; the timeout covers connect and reply. */
function attempt(to: { host: string; port: number }, timeoutMs: number, bind?: string, localPort?: number): Promise<Result> {
  return new Promise((resolve) => {
    const socket = net.connect({ ...to, ...(bind && { localAddress: bind }), ...(localPort && { localPort }) });
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

async function runConnect(to: { host: string; port: number }, count: number, timeoutMs: number, bind?: string, localPort?: number): Promise<void> {
  for (let i = 0; i < count; i++) emit({ event: 'result', ...(await attempt(to, timeoutMs, bind, localPort)) });
}

async function main(argv: string[]): Promise<void> {
  const [mode, ...rest] = argv;
  let values: Record<string, unknown>;
  try {
    values = parseArgs({
      args: rest,
      options: {
        proxy: { type: 'boolean' },
        port: { type: 'string' },
        to: { type: 'string' },
        count: { type: 'string' },
        'timeout-ms': { type: 'string' },
        bind: { type: 'string' },
        'local-port': { type: 'string' },
        reply: { type: 'string' },
      },
      strict: true,
    }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  switch (mode) {
    case 'ztunnel':
      return runZtunnel(portList(values), values.proxy === true);
    case 'server':
      return runServer(intOption(values, 'port', 1, 65535), typeof values.reply === 'string' ? values.reply : 'server');
    case 'udp-server':
      return runUdpServer(intOption(values, 'port', 1, 65535), typeof values.reply === 'string' ? values.reply : 'server');
    case 'udp-send':
      return runUdpSend(target(values), intOption(values, 'count', 1, 100_000), intOption(values, 'timeout-ms', 1, 600_000));
    case 'connect':
      return runConnect(
        target(values),
        intOption(values, 'count', 1, 100_000),
        intOption(values, 'timeout-ms', 1, 600_000),
        bindAddress(values),
        values['local-port'] === undefined ? undefined : intOption(values, 'local-port', 1, 65535),
      );
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
