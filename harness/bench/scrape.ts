/**
 * The metrics scrape at full maps (figures, not a test; root: loads BPF, pins in bpffs):
 *
 *   node dist/harness/bench/scrape.js [--entries 65536] [--scrapes 15] [--rounds 6] [--phase-seconds 4]
 *
 * Loads the capture object with its maps pinned in a bpffs folder of this run, fills the
 * pods and counters maps with `entries` entries, and times a whole /metrics body (the
 * agent's registry with the sources `run` wires: map usage and per-pod counters) read the
 * agent's way (each map once per scrape, in batches), then the way before (every metric
 * walking the maps key by key) three times. Then the loop question: a child process
 * sends one small request at a time over a Unix socket, answered by this process's event
 * loop as the CNI gate's are, in phases with and without a scrape every second
 * (interleaved rounds); a scrape that holds the loop shows up in the requests' p99.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as codec from '../../src/bpf/codec.js';
import { openPinnedMap, type PinnedMapName } from '../../src/bpf/maps.js';
import { BpfObject } from '../../src/bpf/object.js';
import { pinDir } from '../../src/bpf/pins.js';
import { AgentMetrics } from '../../src/metrics/registry.js';
import { mapUsage, pinnedMaps, podCounters, type PinnedMaps } from '../../src/metrics/pinned.js';
import { bootstrap, figure, figuresLine, median, quantile } from './stats.js';

/** The reader before this change: every call opens the pin and walks it key by key. */
function perKeyReader(root: string): PinnedMaps {
  return {
    entries(name: PinnedMapName) {
      const m = openPinnedMap(pinDir(root), name);
      try {
        const out: [Buffer, Buffer][] = [];
        for (const k of m.keys()) {
          const v = m.lookup(k);
          if (v) out.push([k, v]);
        }
        return out;
      } catch {
        return null;
      } finally {
        m.close();
      }
    },
  };
}

function agentMetrics(maps: PinnedMaps): AgentMetrics {
  return new AgentMetrics({ mapUsage: () => mapUsage(maps), podCounters: () => podCounters(maps), podName: () => null }, { defaultMetrics: true });
}

/** CPU time of this process per scrape (user + system), beside the wall-clock time: the machine may be shared. */
const cpuMs: number[] = [];

async function timeScrape(m: AgentMetrics, keepCpu = false): Promise<number> {
  const c = process.cpuUsage();
  const t = performance.now();
  const body = await m.metrics();
  const ms = performance.now() - t;
  const used = process.cpuUsage(c);
  if (keepCpu) cpuMs.push((used.user + used.system) / 1000);
  if (!body.includes('pod_packets_total')) throw new Error('scrape: no per-pod counters in the body');
  return ms;
}

/** The child: one request at a time for `ms`, each answered by the parent's loop; RTTs back over IPC. */
async function client(socket: string): Promise<void> {
  const s = net.connect(socket);
  await new Promise((r) => s.once('connect', r));
  s.setNoDelay(true);
  process.on('message', async (m: { ms: number }) => {
    const rtts: number[] = [];
    const until = performance.now() + m.ms;
    while (performance.now() < until) {
      const t = performance.now();
      await new Promise<void>((resolve) => {
        s.once('data', () => resolve());
        s.write('ADD\n');
      });
      rtts.push(performance.now() - t);
      // Requests spread over the phase, as pods arrive (about 100/s).
      await new Promise((r) => setTimeout(r, 10));
    }
    process.send!(rtts);
  });
  process.send!('ready');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string' },
      socket: { type: 'string' },
      entries: { type: 'string', default: '65536' },
      scrapes: { type: 'string', default: '15' },
      rounds: { type: 'string', default: '6' },
      'phase-seconds': { type: 'string', default: '4' },
    },
  });
  if (values.role === 'client') return client(values.socket!);
  const entries = Number(values.entries);
  const scrapes = Number(values.scrapes);
  const rounds = Number(values.rounds);
  const phaseMs = Number(values['phase-seconds']) * 1000;
  if (!Number.isInteger(entries) || entries < 1 || entries > 65536) throw new Error('--entries: an integer in 1..65536');
  if (!Number.isInteger(scrapes) || scrapes < 1 || !Number.isInteger(rounds) || rounds < 1 || !(phaseMs >= 500))
    throw new Error('--scrapes, --rounds: >= 1; --phase-seconds >= 0.5');

  const root = `/sys/fs/bpf/ar-scrape-${randomBytes(4).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'ar-scrape-'));
  let obj: BpfObject | undefined;
  let child: ReturnType<typeof fork> | undefined;
  let server: net.Server | undefined;
  try {
    mkdirSync(pinDir(root), { recursive: true, mode: 0o700 });
    obj = BpfObject.openAndLoad('build/redirect.bpf.o', { pinRoot: pinDir(root), programs: ['out_redirect'] });
    const info = { ifindex: 0, mac: '0a:58:c6:12:00:0a', flags: codec.PodFlags.ENROLLED };
    const pods = new Map<string, codec.PodInfo>();
    for (let i = 0; i < entries; i++) pods.set(`fd99::${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}`, { ...info, ifindex: 1000 + i });
    const p = codec.packPods(pods);
    obj.map('pods').updateBatch(p.keys, p.values, p.count);
    const counters = obj.map('counters');
    const ckeys = Buffer.alloc(entries * 4);
    const cvals = Buffer.alloc(entries * counters.bufferSize, 0);
    for (let i = 0; i < entries; i++) {
      ckeys.writeUInt32LE(1000 + i, i * 4);
      cvals.writeBigUInt64LE(BigInt(i), i * counters.bufferSize);
    }
    counters.updateBatch(ckeys, cvals, entries);

    // Whole scrapes, the agent's reader; each after a turn of the loop (its cache gone).
    const now = agentMetrics(pinnedMaps(root));
    const before = agentMetrics(perKeyReader(root));
    const t = { now: [] as number[], before: [] as number[], read: [] as number[], decode: [] as number[] };
    await timeScrape(now); // warm-up: the JIT, the first allocations
    await new Promise((r) => setTimeout(r, 20)); // past the turn: the next scrape reads the maps afresh
    for (let i = 0; i < scrapes; i++) {
      t.now.push(await timeScrape(now, true));
      await new Promise((r) => setTimeout(r, 20)); // the reader's per-scrape cache ends with the turn
      const r0 = performance.now();
      const maps = pinnedMaps(root);
      maps.entries('pods');
      maps.entries('counters');
      const r1 = performance.now();
      podCounters(maps);
      t.read.push(r1 - r0);
      t.decode.push(performance.now() - r1);
      await new Promise((r) => setTimeout(r, 20));
    }
    // The old reader last: its 393,216 label sets a scrape leave the heap a garbage
    // collection the agent's scrapes above would otherwise pay for.
    for (let i = 0; i < Math.min(scrapes, 3); i++) t.before.push(await timeScrape(before));
    process.stderr.write(`scrape bench: ${scrapes} scrapes at ${entries} entries\n`);

    // The loop: a request answered here, with and without a scrape every second.
    const socket = join(dir, 'gate.sock');
    server = net.createServer((s) => {
      s.setNoDelay(true);
      s.on('data', () => s.write('OK\n'));
      s.on('error', () => s.destroy());
    });
    await new Promise<void>((r) => server!.listen(socket, r));
    child = fork(fileURLToPath(import.meta.url), ['--role', 'client', '--socket', socket], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise((r) => child!.once('message', r));
    const p99 = { quiet: [] as number[], scraping: [] as number[] };
    const all = { quiet: [] as number[], scraping: [] as number[] };
    for (let round = 0; round < rounds; round++) {
      for (const phase of round % 2 ? (['scraping', 'quiet'] as const) : (['quiet', 'scraping'] as const)) {
        let timer: NodeJS.Timeout | undefined;
        if (phase === 'scraping') {
          void now.metrics();
          timer = setInterval(() => void now.metrics(), 1000);
        }
        const rtts = await new Promise<number[]>((resolve) => {
          child!.once('message', (m) => resolve(m as number[]));
          child!.send({ ms: phaseMs });
        });
        clearInterval(timer);
        p99[phase].push(quantile(rtts, 0.99));
        all[phase].push(...rtts);
      }
      process.stderr.write(
        `scrape bench: round ${round + 1}/${rounds}: request p99 quiet ${p99.quiet.at(-1)!.toFixed(2)} ms, scraping ${p99.scraping.at(-1)!.toFixed(2)} ms\n`,
      );
    }
    const f = (xs: number[]) => median(xs).toFixed(1);
    const out = [
      `metrics scrape at ${entries.toLocaleString('en-US')} pods and counters entries (whole /metrics body, ${scrapes} scrapes): median ${f(t.now)} ms (${t.now.map((x) => x.toFixed(0)).join(', ')}), CPU time ${f(cpuMs)} ms; of which reading both maps in batches ${f(t.read)} ms and decoding every pod's counters ${f(t.decode)} ms (apart, same maps)`,
      `the same scrape with the reader before (each metric walking the maps key by key): median ${f(t.before)} ms over ${t.before.length}`,
      `a request answered on this loop, one at a time about every 10 ms from another process: p99 per ${phaseMs / 1000} s phase, quiet ${p99.quiet.map((x) => x.toFixed(1)).join(', ')} ms; with a scrape every second ${p99.scraping.map((x) => x.toFixed(1)).join(', ')} ms; max ${Math.max(...all.quiet).toFixed(1)} / ${Math.max(...all.scraping).toFixed(1)} ms`,
      figuresLine([
        figure(`one metrics scrape at ${entries.toLocaleString('en-US')} entries`, 'ms', { kind: 'atMost', value: 50 }, bootstrap(t.now, median, 21)),
        figure(
          "request on the CNI gate's loop: p99 added by a scrape every second",
          'ms',
          { kind: 'atMost', value: 1 },
          bootstrap(
            p99.scraping.map((x, i) => x - (p99.quiet[i] ?? NaN)),
            median,
            22,
          ),
        ),
      ]),
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    child?.kill('SIGKILL');
    server?.close();
    obj?.close();
    rmSync(root, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`scrape bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
