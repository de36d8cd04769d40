/**
 * The churn property test (test/unit/churn.ts: 100 seeds x 1000 random API events through
 * the real parse, cache, enrollment and controller) with the controller writing the real
 * `pods` map of our object, pinned in a per-run bpffs folder; after quiescence the pinned
 * map, read back through its pin, must hold exactly the desired IPs, and no pass may have
 * deleted a live pod's entry.
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import { BpfMap, BpfObject } from '../../src/bpf/object.js';
import { diffPods, type Desired } from '../../src/core/desired.js';
import type { ActualState, ApplyResult } from '../../src/capture/mode.js';
import { newPrefix } from '../../harness/sim/names.js';
import { EVENTS, SEEDS, describeFailure, runSeed, type ChurnMode } from '../unit/churn.js';
import { kernelDescribe } from '../support/gate.js';

/** ebpf mode's map side, on the real pods map: entries in the kernel, hooks and slot in memory. */
class PinnedPodsMode implements ChurnMode {
  readonly name = 'ebpf' as const;
  onDelete: (ip: string) => void = () => {};
  private ztunnel: ActualState['ztunnel'] = null;
  private hooks = new Set<number>();
  constructor(private readonly pods: BpfMap) {}
  async init(): Promise<void> {}
  async actual(): Promise<ActualState> {
    const pods = new Map(this.pods.entries().map(([k, v]) => [codec.decodeAddrKey(k), codec.decodePodInfo(v)]));
    return { pods, ztunnel: this.ztunnel, hooks: new Set(this.hooks) };
  }
  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const d = diffPods(desired.pods, actual.pods);
    for (const [ip, v] of d.upserts) this.pods.update(codec.encodeAddrKey(ip), codec.encodePodInfo(v));
    for (const ip of d.deletes) {
      this.onDelete(ip);
      this.pods.delete(codec.encodeAddrKey(ip));
    }
    this.ztunnel = desired.ztunnel;
    const attached = [...desired.hooks].filter((h) => !this.hooks.has(h)).length;
    this.hooks = new Set(desired.hooks);
    return { upserted: d.upserts.size, deleted: d.deletes.length, attached, detached: 0 };
  }
  ips(): string[] {
    return this.pods.keys().map(codec.decodeAddrKey);
  }
  close(): void {}
}

kernelDescribe('churn against the pinned pods map', 'creates BPF maps', () => {
  const pinRoot = join('/sys/fs/bpf', newPrefix());
  let obj: BpfObject;
  let pinned: BpfMap;

  beforeAll(() => {
    mkdirSync(pinRoot, { mode: 0o700 });
    obj = BpfObject.openAndLoad('build/redirect.bpf.o', { pinRoot, programs: [] });
    pinned = BpfMap.openPinned(join(pinRoot, 'pods'), 'pods', { keySize: codec.ADDR_KEY_SIZE, valueSize: codec.POD_INFO_SIZE, maxEntries: 0 });
  });

  afterAll(() => {
    pinned?.close();
    obj?.close();
    rmSync(pinRoot, { recursive: true, force: true });
  });

  it(`keeps the pinned map equal to the desired state (${SEEDS.length} seeds x ${EVENTS} events)`, async () => {
    const failures: string[] = [];
    for (const seed of SEEDS) {
      for (const k of pinned.keys()) pinned.delete(k);
      const mode = new PinnedPodsMode(pinned);
      const r = await runSeed(seed, mode);
      if (!r.ok) failures.push(describeFailure(seed, r, 'test/kernel/churn-maps.test.ts'));
    }
    process.stdout.write(`churn (pinned maps): ${SEEDS.length} seeds x ${EVENTS} events, ${failures.length} failures\n`);
    expect(failures, failures.join('\n')).toEqual([]);
  }, 300_000);
});
