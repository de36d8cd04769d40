/**
 * The metrics scrape at full maps, and CNI ADDs on the loop while it runs (figures, not a
 * test; root: loads BPF, pins in bpffs):
 *
 *   node dist/harness/bench/scrape.js [--entries 65536] [--scrapes 15] [--rounds 6] [--phase-seconds 4]
 *
 * Loads the capture object with its maps pinned in a bpffs folder of this run, fills the
 * pods map with `entries` entries (one veth and counters slot each) and their slots of the
 * counters array, and times a whole /metrics body (the
 * agent's registry with the source `run` wires: readScrape, each map walked once in
 * batches, a turn of the loop between batches), its CPU time, and the longest the loop
 * went without a turn meanwhile; beside it, three scrapes with the whole-entry reader
 * `status` uses (pinnedMaps and podCounters: every entry as Buffers, every pod's counters
 * as BigInts, in one turn). Then the loop question, side by side: a child process plays
 * the CNI plugin, one ADD at a time about every 10 ms (a pod outside the mesh and an
 * enrolled pod in turn), answered by this process's loop with the agent's CNI server and
 * handler (harness/bench/cni-loop.ts), in phases with and without a scrape every second
 * (interleaved rounds, the order alternating); a scrape that holds the loop shows up in
 * the ADDs' p99.
 */
import { fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as codec from '../../src/bpf/codec.js';
import { BpfObject } from '../../src/bpf/object.js';
import { pinDir } from '../../src/bpf/pins.js';
import type { CniServer } from '../../src/cni/server.js';
import { AgentMetrics } from '../../src/metrics/registry.js';
import { mapUsage, pinnedMaps, podCounters, readScrape } from '../../src/metrics/pinned.js';
import { addRequest, cniAdd, serveAdds } from './cni-loop.js';
import { bootstrap, figure, figuresLine, median, quantile } from './stats.js';

/** CPU time of this process per scrape (user + system), beside the wall-clock time: the machine may be shared. */
const cpuMs: number[] = [];
/** Per scrape, the longest the loop went without a turn. */
const holdMs: number[] = [];

async function timeScrape(m: AgentMetrics, keep = false): Promise<number> {
  // A turn-counter beside the scrape: the gaps between its turns are what a CNI ADD arriving meanwhile waits.
  let last = performance.now();
  let hold = 0;
  let ticking = true;
  const tick = () => {
    const now = performance.now();
    hold = Math.max(hold, now - last);
    last = now;
    if (ticking) setImmediate(tick);
  };
  setImmediate(tick);
  const c = process.cpuUsage();
  const t = performance.now();
  // What the HTTP server writes (src/metrics/server.ts): the text's pieces, never joined.
  const body = await m.exposition();
  const ms = performance.now() - t;
  const used = process.cpuUsage(c);
  ticking = false;
  hold = Math.max(hold, performance.now() - last);
  if (keep) {
    cpuMs.push((used.user + used.system) / 1000);
    holdMs.push(hold);
  }
  if (!body.some((p) => p.includes('pod_packets_total{'))) throw new Error('scrape: no per-pod counters in the body');
  return ms;
}

/** One phase of the child's ADDs: their times, or the child's failure (an error it sent, or its exit). */
function phaseOf(child: ReturnType<typeof fork>, ms: number): Promise<number[]> {
  return new Promise<number[]>((resolve, reject) => {
    const onExit = (code: number | null, signal: string | null) => reject(new Error(`the CNI client exited (${signal ?? code}) during a phase`));
    child.once('exit', onExit);
    child.once('message', (m) => {
      child.off('exit', onExit);
      if (Array.isArray(m)) resolve(m as number[]);
      else reject(new Error(`the CNI client: ${(m as { error?: string }).error ?? JSON.stringify(m)}`));
    });
    child.send({ ms });
  });
}

/** The child: one ADD at a time for `ms`, as the plugin sends it; times back over IPC. */
async function client(socket: string): Promise<void> {
  const requests = [addRequest('plain'), addRequest('shop')];
  process.on('message', async (m: { ms: number }) => {
    const rtts: number[] = [];
    const until = performance.now() + m.ms;
    for (let i = 0; performance.now() < until; i++) {
      const t = performance.now();
      const reply = await cniAdd(socket, requests[i % 2]!);
      rtts.push(performance.now() - t);
      // A failure goes back to the parent, which stops and cleans up; a throw here would only
      // end this child and leave the parent waiting.
      if (reply.code !== 0) return void process.send!({ error: `ADD failed: ${String(reply.stdout)}` });
      // ADDs spread over the phase, as pods arrive (about 100/s).
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
  let server: CniServer | undefined;
  try {
    mkdirSync(pinDir(root), { recursive: true, mode: 0o700 });
    obj = BpfObject.openAndLoad('build/redirect.bpf.o', { pinRoot: pinDir(root), programs: ['out_redirect'] });
    const info = { ifindex: 0, mac: '0a:58:c6:12:00:0a', flags: codec.PodFlags.ENROLLED };
    const pods = new Map<string, codec.PodInfo>();
    // One veth per pod, each with its counters slot (as src/core/slots.ts hands them out: 1 on).
    for (let i = 0; i < entries; i++) pods.set(`fd99::${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}`, { ...info, ifindex: 1000 + i, slot: 1 + i });
    const p = codec.packPods(pods);
    obj.map('pods').updateBatch(p.keys, p.values, p.count);
    const counters = obj.map('counters');
    const ckeys = Buffer.alloc(entries * 4);
    const cvals = Buffer.alloc(entries * counters.bufferSize, 0);
    for (let i = 0; i < entries; i++) {
      ckeys.writeUInt32LE(1 + i, i * 4);
      cvals.writeBigUInt64LE(BigInt(i), i * counters.bufferSize);
    }
    counters.updateBatch(ckeys, cvals, entries);

    // Whole scrapes, the agent's reader (as `run` wires it); each reads the maps afresh.
    const now = new AgentMetrics({ kernel: (o) => readScrape(root, o), podName: () => null }, { defaultMetrics: true });
    const t = { now: [] as number[], whole: [] as number[], read: [] as number[] };
    await timeScrape(now); // warm-up: the JIT, the first allocations
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < scrapes; i++) {
      t.now.push(await timeScrape(now, true));
      await new Promise((r) => setTimeout(r, 20));
      const r0 = performance.now();
      await readScrape(root, { maxSeries: 1024 });
      t.read.push(performance.now() - r0);
      await new Promise((r) => setTimeout(r, 20));
    }
    // The whole-entry reader last: the garbage it leaves would otherwise land on the scrapes above.
    const maps = pinnedMaps(root);
    const whole = new AgentMetrics({ mapUsage: () => mapUsage(maps), podCounters: () => podCounters(maps), podName: () => null }, { defaultMetrics: true });
    for (let i = 0; i < Math.min(scrapes, 3); i++) {
      t.whole.push(await timeScrape(whole));
      await new Promise((r) => setTimeout(r, 20));
    }
    process.stderr.write(`scrape bench: ${scrapes} scrapes at ${entries} entries\n`);

    // The loop: CNI ADDs answered here, with and without a scrape every second.
    const socket = join(dir, 'cni.sock');
    server = await serveAdds(socket);
    child = fork(fileURLToPath(import.meta.url), ['--role', 'client', '--socket', socket], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    await new Promise((r) => child!.once('message', r));
    const p99 = { quiet: [] as number[], scraping: [] as number[] };
    const all = { quiet: [] as number[], scraping: [] as number[] };
    for (let round = 0; round < rounds; round++) {
      for (const phase of round % 2 ? (['scraping', 'quiet'] as const) : (['quiet', 'scraping'] as const)) {
        let timer: NodeJS.Timeout | undefined;
        if (phase === 'scraping') {
          void now.exposition();
          timer = setInterval(() => void now.exposition(), 1000);
        }
        const rtts = await phaseOf(child!, phaseMs).finally(() => clearInterval(timer));
        p99[phase].push(quantile(rtts, 0.99));
        all[phase].push(...rtts);
      }
      process.stderr.write(
        `scrape bench: round ${round + 1}/${rounds}: CNI ADD p99 quiet ${p99.quiet.at(-1)!.toFixed(2)} ms, scraping ${p99.scraping.at(-1)!.toFixed(2)} ms\n`,
      );
    }
    const f = (xs: number[]) => median(xs).toFixed(1);
    const list = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(', ');
    const out = [
      `metrics scrape at ${entries.toLocaleString('en-US')} pods and counters entries (whole /metrics body, ${scrapes} scrapes): median ${f(t.now)} ms (${t.now.map((x) => x.toFixed(0)).join(', ')}), CPU time ${f(cpuMs)} ms, longest the loop went without a turn ${f(holdMs)} ms (max ${Math.max(...holdMs).toFixed(1)}); of which reading the maps (readScrape alone) ${f(t.read)} ms`,
      `the same scrape with the whole-entry reader \`status\` uses (every entry and counter decoded, one turn): median ${f(t.whole)} ms over ${t.whole.length}`,
      `CNI ADD answered on this loop (agent's CNI server and handler), one at a time about every 10 ms from another process, p99 per ${phaseMs / 1000} s phase: quiet ${list(p99.quiet)} ms; with a scrape every second ${list(p99.scraping)} ms; max ${Math.max(...all.quiet).toFixed(1)} / ${Math.max(...all.scraping).toFixed(1)} ms`,
      figuresLine([
        figure(`one metrics scrape at ${entries.toLocaleString('en-US')} entries`, 'ms', { kind: 'atMost', value: 50 }, bootstrap(t.now, median, 21)),
        figure(`CPU time of one metrics scrape at ${entries.toLocaleString('en-US')} entries`, 'ms', { kind: 'none' }, bootstrap(cpuMs, median, 23)),
        figure('CNI ADD p99 on the agent’s loop, no scrapes', 'ms', { kind: 'none' }, bootstrap(p99.quiet, median, 24)),
        figure('CNI ADD p99 on the agent’s loop, a scrape every second', 'ms', { kind: 'none' }, bootstrap(p99.scraping, median, 25)),
        figure(
          'CNI ADD on the agent’s loop: p99 added by a scrape every second',
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
    await server?.close();
    obj?.close();
    rmSync(root, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`scrape bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
