/**
 * The two ends of the live traffic benchmark, run by `traffic.ts` inside the simulated
 * node's netns (`ip netns exec`):
 *
 *   traffic-peer.js serve --port P     (outside) P: answer a small request and close
 *                                      (connections/s); P+1: echo (request/response);
 *                                      P+2: sink, answers the byte count when the sender
 *                                      closes its side (stream throughput)
 *   traffic-peer.js ztunnel --port R --terminate T [--listen 15001,15006,15008] [--standby]
 *                                      (ztunnel) the stand-in: captured connections to
 *                                      R..R+2 relayed, to T..T+2 answered here as the
 *                                      server would; T..T+2 also served directly. Stdin:
 *                                      "counts"; "release" / "listen" give up and take
 *                                      back the transparent listeners (--standby: start
 *                                      without them), so that the native stand-in
 *                                      (tools/trafficpeer) can hold the same ports
 *   traffic-peer.js crr|rr|stream --to IP --port P --seconds S --warmup S [--concurrency N] [--rr-connections N]
 *                                      (a pod) one workload; one JSON line on stdout
 *
 * Servers and clients keep JavaScript off the per-byte path: the echo is a pipe, the sink
 * only counts at the end, the sender writes one preallocated buffer. tools/trafficpeer is
 * the same peer in C (the same roles, wire behaviour and output): the benchmarks use it
 * wherever the capture's cost is measured, and this one for the relay (ztunnel's stand-in).
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { relay } from '../sim/relay.js';

export const REQUEST = Buffer.from('GET /\n');
export const RESPONSE = Buffer.from('200 ok\n');
/** The ping-pong message (bytes). */
export const MESSAGE_BYTES = 64;
const STREAM_CHUNK = Buffer.alloc(256 * 1024, 0x61);
const CONNECTION_TIMEOUT_MS = 5_000;

export interface PeerResult {
  workload: 'crr' | 'rr' | 'stream';
  /** Operations (connections, round trips) or bytes in the measured window. */
  count: number;
  seconds: number;
  /** count / seconds. */
  rate: number;
  /** Connections this client opened in all (warm-up included): the capture oracle. */
  connections: number;
  errors: number;
  /** SYNs this netns retransmitted meanwhile (a lost SYN costs a second): TcpExt TCPSynRetrans. */
  synRetrans: number;
  /** The native peer only (tools/trafficpeer): its own CPU time over the run, seconds. */
  cpuSeconds?: number;
}

/** TcpExt TCPSynRetrans of this process's netns. */
export function synRetransmits(netstat: string): number {
  const lines = netstat.split('\n').filter((l) => l.startsWith('TcpExt:'));
  const names = lines[0]?.split(/\s+/) ?? [];
  const values = lines[1]?.split(/\s+/) ?? [];
  const i = names.indexOf('TCPSynRetrans');
  return i > 0 ? Number(values[i]) : NaN;
}

const synRetransNow = () => synRetransmits(readFileSync('/proc/net/netstat', 'utf8'));

function emit(o: object): void {
  process.stdout.write(`${JSON.stringify(o)}\n`);
}

/** What each workload's server does with an accepted connection (the same in every role). */
const ANSWER: Record<PeerResult['workload'], (s: net.Socket) => void> = {
  crr: (s) => s.once('data', () => s.end(RESPONSE)),
  rr: (s) => s.pipe(s),
  stream: (s) => {
    s.on('end', () => s.end(`${s.bytesRead}\n`));
    s.resume();
  },
};
/** The workload served on port P + i. */
export const BY_OFFSET = ['crr', 'rr', 'stream'] as const;

/** Answers an accepted connection as the workload's server does (also the in-pod stand-in's, terminating). */
export function accept(s: net.Socket, workload: PeerResult['workload']): void {
  s.on('error', () => s.destroy());
  if (workload !== 'stream') s.setNoDelay(true);
  ANSWER[workload](s);
}

function listen(servers: [net.Server, object][]): Promise<void> {
  return Promise.all(
    servers.map(
      ([srv, opts]) =>
        new Promise<void>((resolve, reject) => {
          srv.once('error', reject);
          srv.listen(opts, resolve);
        }),
    ),
  ).then(() => undefined);
}

/** P: connections/s, P+1: request/response, P+2: stream, on 0.0.0.0; `onAccept` counts. */
function plainServers(port: number, onAccept: () => void = () => {}): [net.Server, object][] {
  return BY_OFFSET.map((w, i) => [
    net.createServer({ allowHalfOpen: w === 'stream' }, (s) => {
      onAccept();
      accept(s, w);
    }),
    { port: port + i, host: '0.0.0.0', backlog: 4096 },
  ]);
}

function serve(port: number): Promise<void> {
  return listen(plainServers(port)).then(() => emit({ event: 'listening', port }));
}

/**
 * The ztunnel stand-in of the benchmark, in ztunnel's netns. On the transparent listeners
 * (`listenPorts`), a captured connection whose original destination port is R..R+2 is
 * relayed there (as ztunnel would); one to T..T+2 is terminated here, answered as the
 * server would (so the capture path is measured without a relay); anything else is reset.
 * On T..T+2 of ztunnel's own address it also serves directly (the "direct" scenario: the
 * same server, the same distance, no capture). Counts each kind; a line "counts" on stdin
 * is answered with them (no per-connection output on the measured path).
 */
async function standIn(relayPort: number, terminatePort: number, listenPorts: number[], standby: boolean): Promise<void> {
  const { AF_INET, AF_INET6, transparentListener } = await import('../sim/transparent.js');
  const counts = { relayed: 0, terminated: 0, direct: 0, refused: 0 };
  const onCaptured = (s: net.Socket) => {
    const dport = s.localPort ?? 0;
    if (dport >= relayPort && dport < relayPort + 3) {
      counts.relayed++;
      return relay(s);
    }
    if (dport >= terminatePort && dport < terminatePort + 3) {
      counts.terminated++;
      return accept(s, BY_OFFSET[dport - terminatePort]!);
    }
    counts.refused++;
    s.resetAndDestroy();
  };
  // The transparent listeners: held, or given up so that another stand-in (the native one,
  // tools/trafficpeer) can take the same ports ("release", "listen" on stdin).
  let held: net.Server[] = [];
  const hold = async () => {
    if (held.length) return;
    const servers: [net.Server, object][] = [];
    for (const port of listenPorts)
      for (const family of [AF_INET, AF_INET6] as const)
        servers.push([net.createServer({ allowHalfOpen: true }, onCaptured), { fd: transparentListener(family, port) }]);
    await listen(servers);
    held = servers.map(([srv]) => srv);
  };
  await listen(plainServers(terminatePort, () => counts.direct++));
  if (!standby) await hold();
  process.stdin.setEncoding('utf8');
  let buf = '';
  let queue = Promise.resolve();
  const command = async (line: string) => {
    if (line === 'counts') emit({ event: 'counts', ...counts });
    else if (line === 'release') {
      // server.close() closes the listening socket at once (its connections go on).
      for (const srv of held) srv.close();
      held = [];
      emit({ event: 'released' });
    } else if (line === 'listen') {
      await hold();
      emit({ event: 'listening', ports: listenPorts });
    } else if (line) process.stderr.write(`traffic-peer: unknown command "${line}" (counts, release, listen)\n`);
  };
  process.stdin.on('data', (d: string) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i).trim();
      queue = queue
        .then(() => command(line))
        .catch((err: unknown) => {
          process.stderr.write(`traffic-peer: ${line}: ${err instanceof Error ? err.message : String(err)}\n`);
          process.exit(1);
        });
      buf = buf.slice(i + 1);
    }
  });
  process.stdin.on('end', () => process.exit(0));
  emit({ event: 'listening', ports: standby ? [] : listenPorts });
}

export interface StandInCounts {
  relayed: number;
  terminated: number;
  direct: number;
  refused: number;
}

interface Window {
  start: number;
  from: number;
  until: number;
}

function window(seconds: number, warmup: number): Window {
  const start = performance.now();
  return { start, from: start + warmup * 1000, until: start + (warmup + seconds) * 1000 };
}

/** Short connections: connect, request, response, close; `concurrency` loops at once. */
async function crr(host: string, port: number, w: Window, concurrency: number): Promise<Omit<PeerResult, 'synRetrans'>> {
  let count = 0;
  let connections = 0;
  let errors = 0;
  const one = () =>
    new Promise<void>((resolve) => {
      connections++;
      const s = net.connect({ host, port, noDelay: true });
      // A connection that stalls (a lost SYN waits 1 s, then 3 s...) counts, up to a bound.
      s.setTimeout(CONNECTION_TIMEOUT_MS, () => s.destroy(new Error('timeout')));
      s.on('connect', () => s.write(REQUEST));
      s.on('error', () => {
        errors++;
        resolve();
      });
      s.on('close', (hadError) => {
        if (!hadError) {
          const t = performance.now();
          if (t >= w.from && t < w.until) count++;
        }
        resolve();
      });
      s.resume();
    });
  const loop = async () => {
    while (performance.now() < w.until) await one();
  };
  await Promise.all(Array.from({ length: concurrency }, loop));
  const seconds = (w.until - w.from) / 1000;
  return { workload: 'crr', count, seconds, rate: count / seconds, connections, errors };
}

/** One connection, one small message at a time: send, wait for all of it back, repeat; the round trips it counted. */
function rrLoop(host: string, port: number, w: Window): Promise<number> {
  return new Promise((resolve, reject) => {
    const msg = Buffer.alloc(MESSAGE_BYTES, 0x62);
    let count = 0;
    let pending = MESSAGE_BYTES;
    const s = net.connect({ host, port, noDelay: true });
    s.on('error', reject);
    s.on('connect', () => s.write(msg));
    s.on('data', (chunk: Buffer) => {
      pending -= chunk.length;
      if (pending > 0) return;
      const t = performance.now();
      if (t >= w.from) count++;
      if (t >= w.until) {
        s.destroy();
        resolve(count);
        return;
      }
      pending = MESSAGE_BYTES;
      s.write(msg);
    });
  });
}

/** Request/response on `connections` connections at once, each its own ping-pong. */
async function rr(host: string, port: number, w: Window, connections: number): Promise<Omit<PeerResult, 'synRetrans'>> {
  const counts = await Promise.all(Array.from({ length: connections }, () => rrLoop(host, port, w)));
  const count = counts.reduce((a, b) => a + b, 0);
  const seconds = (w.until - w.from) / 1000;
  return { workload: 'rr', count, seconds, rate: count / seconds, connections, errors: 0 };
}

/**
 * Bulk bytes from here to the sink for warm-up + `seconds`; the rate is what the sink
 * received after the warm-up over the time until it answered its count, so buffers on
 * the way (the proxy's, the kernel's) are not counted as delivered.
 */
function stream(host: string, port: number, w: Window): Promise<Omit<PeerResult, 'synRetrans'>> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port, allowHalfOpen: true });
    let written = 0;
    let atWarm: number | undefined;
    let reply = '';
    s.on('error', reject);
    const pump = () => {
      for (;;) {
        const t = performance.now();
        if (atWarm === undefined && t >= w.from) atWarm = written;
        if (t >= w.until) {
          s.end();
          return;
        }
        written += STREAM_CHUNK.length;
        if (!s.write(STREAM_CHUNK)) {
          s.once('drain', pump);
          return;
        }
      }
    };
    s.on('connect', pump);
    s.setEncoding('utf8').on('data', (d: string) => (reply += d));
    s.on('end', () => {
      const received = Number(reply.trim());
      const t = performance.now();
      if (!Number.isFinite(received)) return reject(new Error(`sink answered "${reply}"`));
      // Bytes the sink got beyond what was written before the window opened.
      const count = received - (atWarm ?? 0);
      const seconds = (t - w.from) / 1000;
      s.destroy();
      resolve({ workload: 'stream', count, seconds, rate: count / seconds, connections: 1, errors: 0 });
    });
  });
}

async function main(argv: string[]): Promise<void> {
  const [role, ...rest] = argv;
  const { values } = parseArgs({
    args: rest,
    options: {
      port: { type: 'string' },
      terminate: { type: 'string' },
      listen: { type: 'string' },
      standby: { type: 'boolean' },
      to: { type: 'string' },
      seconds: { type: 'string' },
      warmup: { type: 'string' },
      concurrency: { type: 'string' },
      'rr-connections': { type: 'string' },
    },
    strict: true,
  });
  const portOf = (name: string, v: string | undefined) => {
    const p = Number(v);
    if (!Number.isInteger(p) || p < 1 || p > 65533) throw new Error(`--${name} must be in 1..65533, got "${v}"`);
    return p;
  };
  const port = portOf('port', values.port);
  if (role === 'serve') return serve(port);
  if (role === 'ztunnel')
    return standIn(
      port,
      portOf('terminate', values.terminate),
      (values.listen ?? '15001').split(',').map((p) => portOf('listen', p)),
      values.standby === true,
    );
  const host = values.to ?? '';
  if (net.isIP(host) === 0) throw new Error(`--to must be an IP address, got "${host}"`);
  const seconds = Number(values.seconds ?? 2);
  const warmup = Number(values.warmup ?? 0.3);
  const concurrency = Number(values.concurrency ?? 4);
  const rrConnections = Number(values['rr-connections'] ?? 1);
  const count = (n: number) => Number.isInteger(n) && n >= 1 && n <= 256;
  if (!(seconds > 0 && seconds <= 60) || !(warmup >= 0 && warmup <= 10) || !count(concurrency) || !count(rrConnections)) {
    throw new Error('--seconds in (0, 60], --warmup in [0, 10], --concurrency and --rr-connections in 1..256');
  }
  const syn0 = synRetransNow();
  const w = window(seconds, warmup);
  let result: Omit<PeerResult, 'synRetrans'>;
  if (role === 'crr') result = await crr(host, port, w, concurrency);
  else if (role === 'rr') result = await rr(host, port + 1, w, rrConnections);
  else if (role === 'stream') result = await stream(host, port + 2, w);
  else throw new Error(`unknown role "${role}" (serve, ztunnel, crr, rr, stream)`);
  emit({ event: 'result', ...result, synRetrans: synRetransNow() - syn0 });
  process.exit(0);
}

// Run as a program only (the unit tests import the parser).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((err: unknown) => {
    process.stderr.write(`traffic-peer: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
