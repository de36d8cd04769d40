/**
 * The two ends of the live traffic benchmark, run by `traffic.ts` inside the simulated
 * node's netns (`ip netns exec`):
 *
 *   traffic-peer.js serve --port P     (outside) P: answer a small request and close
 *                                      (connections/s); P+1: echo (request/response);
 *                                      P+2: sink, answers the byte count when the sender
 *                                      closes its side (stream throughput)
 *   traffic-peer.js crr|rr|stream --to IP --port P --seconds S --warmup S [--concurrency N]
 *                                      (a pod) one workload; one JSON line on stdout
 *
 * Servers and clients keep JavaScript off the per-byte path: the echo is a pipe, the sink
 * only counts at the end, the sender writes one preallocated buffer.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

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

function serve(port: number): Promise<void> {
  const crr = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => s.destroy());
    s.once('data', () => s.end(RESPONSE));
  });
  const rr = net.createServer({ noDelay: true }, (s) => {
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  const sink = net.createServer({ allowHalfOpen: true }, (s) => {
    s.on('error', () => s.destroy());
    s.on('end', () => s.end(`${s.bytesRead}\n`));
    s.resume();
  });
  const servers: [net.Server, number][] = [
    [crr, port],
    [rr, port + 1],
    [sink, port + 2],
  ];
  return Promise.all(
    servers.map(
      ([srv, p]) =>
        new Promise<void>((resolve, reject) => {
          srv.once('error', reject);
          srv.listen({ port: p, host: '0.0.0.0', backlog: 4096 }, resolve);
        }),
    ),
  ).then(() => emit({ event: 'listening', port }));
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

/** One connection, one small message at a time: send, wait for all of it back, repeat. */
function rr(host: string, port: number, w: Window): Promise<Omit<PeerResult, 'synRetrans'>> {
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
        const seconds = (w.until - w.from) / 1000;
        resolve({ workload: 'rr', count, seconds, rate: count / seconds, connections: 1, errors: 0 });
        return;
      }
      pending = MESSAGE_BYTES;
      s.write(msg);
    });
  });
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
    options: { port: { type: 'string' }, to: { type: 'string' }, seconds: { type: 'string' }, warmup: { type: 'string' }, concurrency: { type: 'string' } },
    strict: true,
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 1 || port > 65533) throw new Error(`--port must be in 1..65533, got "${values.port}"`);
  if (role === 'serve') return serve(port);
  const host = values.to ?? '';
  if (net.isIP(host) === 0) throw new Error(`--to must be an IP address, got "${host}"`);
  const seconds = Number(values.seconds ?? 2);
  const warmup = Number(values.warmup ?? 0.3);
  const concurrency = Number(values.concurrency ?? 4);
  if (!(seconds > 0 && seconds <= 60) || !(warmup >= 0 && warmup <= 10) || !Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) {
    throw new Error('--seconds in (0, 60], --warmup in [0, 10], --concurrency in 1..256');
  }
  const syn0 = synRetransNow();
  const w = window(seconds, warmup);
  let result: Omit<PeerResult, 'synRetrans'>;
  if (role === 'crr') result = await crr(host, port, w, concurrency);
  else if (role === 'rr') result = await rr(host, port + 1, w);
  else if (role === 'stream') result = await stream(host, port + 2, w);
  else throw new Error(`unknown role "${role}" (serve, crr, rr, stream)`);
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
