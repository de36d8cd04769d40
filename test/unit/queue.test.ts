import { describe, expect, it } from 'vitest';
import { Backoff, WorkQueue } from '../../src/controller/queue.js';

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));

describe('work queue', () => {
  it('coalesces a key added while queued, and runs a key added while running once more', async () => {
    const runs: string[] = [];
    let release: () => void = () => {};
    const q = new WorkQueue(
      async (k) => {
        runs.push(k);
        if (runs.length === 1) await new Promise<void>((r) => (release = r));
      },
      { backoff: { initialMs: 1, maxMs: 1 } },
    );
    q.add('a');
    await tick();
    // 'a' is running: three adds make exactly one more run; 'b' queued twice runs once.
    q.add('a');
    q.add('a');
    q.add('b');
    q.add('b');
    q.add('a');
    release();
    await q.idle();
    await tick(5);
    expect(runs.sort()).toEqual(['a', 'a', 'b']);
    await q.stop();
  });

  it('never runs a key twice at once', async () => {
    let active = 0;
    let maxActive = 0;
    const q = new WorkQueue(
      async () => {
        active++;
        maxActive = Math.max(maxActive, active);
        await tick(2);
        active--;
      },
      { backoff: { initialMs: 1, maxMs: 1 } },
    );
    for (let i = 0; i < 20; i++) {
      q.add('k');
      await tick(1);
    }
    await q.idle();
    expect(maxActive).toBe(1);
    await q.stop();
  });

  it('retries a failing key with growing backoff until it succeeds', async () => {
    const at: number[] = [];
    const delays: number[] = [];
    const q = new WorkQueue(
      async () => {
        at.push(Date.now());
        if (at.length < 4) throw new Error('not yet');
      },
      { backoff: { initialMs: 10, maxMs: 1000, jitter: 0 }, onError: (_k, _e, ms) => delays.push(ms) },
    );
    q.add('k');
    while (at.length < 4) await tick(5);
    expect(delays).toEqual([10, 20, 40]);
    await q.stop();
  });
});

describe('backoff', () => {
  it('doubles from the initial delay to the cap, jitter never above the cap', () => {
    const b = new Backoff({ initialMs: 800, maxMs: 30_000, jitter: 0, random: () => 0.5 });
    expect(Array.from({ length: 8 }, () => b.next())).toEqual([800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
    const j = new Backoff({ initialMs: 800, maxMs: 30_000, jitter: 0.2, random: () => 1 });
    for (let i = 0; i < 10; i++) expect(j.next()).toBeLessThanOrEqual(30_000);
    j.reset();
    expect(j.next()).toBeCloseTo(960);
  });
});
