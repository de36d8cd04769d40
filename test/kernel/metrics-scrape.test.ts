/**
 * The scrape's reader (readScrape, src/metrics/pinned.ts) against the whole-entry reader
 * `status` uses, on real pinned maps: the same map usage, the same per-pod series in the
 * same order, the same "other" sums (per-CPU halves past 2^32, dual-stack pods sharing a
 * veth's slot, pods with zero counters or no slot, slots no pod names, slot 0's counts
 * that are no pod's), and so the same /metrics text;
 * and at 65,536 entries, a CNI ADD sent while a scrape reads the maps is answered by the
 * agent's CNI server on the same loop before the read ends. Pins live in a bpffs folder of
 * this run, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { addRequest, cniAdd, serveAdds } from '../../harness/bench/cni-loop.js';
import * as codec from '../../src/bpf/codec.js';
import { BpfObject } from '../../src/bpf/object.js';
import { pinDir } from '../../src/bpf/pins.js';
import { mapUsage, pinnedMaps, podCounters, podSeriesOf, readScrape } from '../../src/metrics/pinned.js';
import { AgentMetrics, MAX_POD_SERIES } from '../../src/metrics/registry.js';
import { kernelDescribe } from '../support/gate.js';

kernelDescribe('the metrics scrape reader', 'it loads BPF and pins maps', () => {
  const root = `/sys/fs/bpf/ar-scrape-test-${randomBytes(4).toString('hex')}`;
  let obj: BpfObject;

  beforeAll(() => {
    mkdirSync(pinDir(root), { recursive: true, mode: 0o700 });
    obj = BpfObject.openAndLoad('build/redirect.bpf.o', { pinRoot: pinDir(root), programs: ['out_redirect'] });
  });

  afterAll(() => {
    obj?.close();
    rmSync(root, { recursive: true, force: true });
  });

  /**
   * 3,000 pods (every third dual-stack on one veth, so one slot), one veth in 11 without a
   * slot; counters for most slots, for a few no pod names, and for slot 0.
   */
  function populate(): void {
    const pods = new Map<string, codec.PodInfo>();
    const info = (i: number) => ({ ifindex: 2000 + i, mac: '0a:58:0a:00:00:01', flags: codec.PodFlags.ENROLLED, slot: i % 11 === 5 ? 0 : 1 + i });
    for (let i = 0; i < 2250; i++) {
      pods.set(`10.3.${i >> 8}.${i & 255}`, info(i));
      if (i % 3 === 0) pods.set(`fd03::${i.toString(16)}`, info(i));
    }
    const p = codec.packPods(pods);
    obj.map('pods').updateBatch(p.keys, p.values, p.count);

    const counters = obj.map('counters');
    const cpus = counters.bufferSize / codec.POD_COUNTERS_STRIDE;
    const slots = [...Array(2250).keys()].filter((i) => i % 7 !== 0).map((i) => 1 + i);
    slots.push(0, 60_001, 65_536); // slot 0, slots no pod entry names
    const keys = Buffer.alloc(slots.length * 4);
    const values = Buffer.alloc(slots.length * counters.bufferSize);
    slots.forEach((slot, e) => {
      keys.writeUInt32LE(slot, e * 4);
      for (let cpu = 0; cpu < cpus; cpu++) {
        const c = {
          redirectedPackets: BigInt((2000 + slot) * (cpu + 1)),
          // Halves that carry when summed over CPUs, and totals past 2^53.
          redirectedBytes: 0xffff_ffffn + BigInt(slot),
          droppedPackets: BigInt(cpu),
          droppedBytes: 2n ** 60n + BigInt(slot) * 0x1_0000_0001n,
          passedPackets: BigInt(e % 3),
          passedBytes: 2n ** 63n - 1n - BigInt(cpu),
        };
        codec.encodePodCounters(c).copy(values, e * counters.bufferSize + cpu * codec.POD_COUNTERS_STRIDE);
      }
    });
    counters.updateBatch(keys, values, slots.length);
    for (const dns of ['10.96.0.10', 'fd00::a']) obj.map('dns_servers').update(codec.encodeAddrKey(dns), codec.encodeDnsInfo());
  }

  it('reads what the whole-entry reader reads: usage, series in map order, exact sums of the rest', async () => {
    populate();
    const whole = pinnedMaps(root);
    const samples = podCounters(whole);
    expect(samples.length).toBe(3000);
    // Slot 0's counts are no pod's: a pod without a slot reads zero.
    expect(samples.find((x) => x.slot === 0)?.counters).toEqual(codec.zeroCounters());
    expect(mapUsage(whole).find((u) => u.map === 'counters')).toEqual({ map: 'counters', entries: 2250 - 205, capacity: 65_536 });
    for (const maxSeries of [MAX_POD_SERIES, 10, 5000]) {
      for (const batch of [1024, 7]) {
        const s = await readScrape(root, { maxSeries, batch });
        expect(s.usage).toEqual(mapUsage(whole));
        expect(s.pods).toEqual(podSeriesOf(samples, maxSeries));
      }
    }
  });

  it('gives the same /metrics text as the whole-entry reader', async () => {
    const whole = pinnedMaps(root);
    const podName = (ip: string) => (ip.startsWith('10.3.0.') ? { namespace: 'shop', pod: `web-${ip}` } : null);
    const before = await new AgentMetrics({ mapUsage: () => mapUsage(whole), podCounters: () => podCounters(whole), podName }).metrics();
    const now = await new AgentMetrics({ kernel: (o) => readScrape(root, o), podName }).metrics();
    expect(now.split('\n').length).toBeGreaterThan((MAX_POD_SERIES + 1) * 6);
    expect(now).toBe(before);
  });

  it('at 65,536 entries, answers a CNI ADD on the same loop before the scrape has read the maps', async () => {
    const pods = new Map<string, codec.PodInfo>();
    for (let i = 0; pods.size < 65_536; i++)
      pods.set(`fd99::${(i >> 16).toString(16)}:${(i & 0xffff).toString(16)}`, { ifindex: 5000 + i, mac: '0a:58:0a:00:00:02', flags: 1, slot: 1 + i });
    const m = obj.map('pods');
    for (const k of m.keys()) m.delete(k);
    const p = codec.packPods(pods);
    m.updateBatch(p.keys, p.values, p.count);

    const dir = mkdtempSync(join(tmpdir(), 'ar-scrape-cni-'));
    const socket = join(dir, 'cni.sock');
    const server = await serveAdds(socket);
    try {
      const events: string[] = [];
      let turns = 0;
      const scrape = readScrape(root, { maxSeries: MAX_POD_SERIES }).then((s) => {
        events.push('scrape read');
        return s;
      });
      // Count the turns the read takes, so a failure says whether it ran in one.
      const count = () => {
        turns++;
        if (!events.includes('scrape read')) setImmediate(count);
      };
      setImmediate(count);
      const add = cniAdd(socket, addRequest('plain')).then((r) => {
        events.push('ADD answered');
        return r;
      });
      const [reply, sample] = await Promise.all([add, scrape]);
      expect(reply.code).toBe(0);
      expect(sample.usage.find((u) => u.map === 'pods')?.entries).toBe(65_536);
      expect(turns).toBeGreaterThanOrEqual(32); // 65,536 pods in batches of 1,024
      expect(events).toEqual(['ADD answered', 'scrape read']);
    } finally {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
