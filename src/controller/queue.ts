/**
 * A coalescing work queue in the manner of client-go's: adding a key that is already
 * queued is a no-op; a key never runs twice at once (added while running, it runs once
 * more afterwards); a failing key is retried forever with capped, jittered exponential
 * backoff, reset by its next success.
 */

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Spread of each delay: a delay d becomes d * (1 +- jitter). */
  jitter?: number;
  random?: () => number;
}

/** client-go's reflector backoff: 0.8 s doubling to 30 s, jittered. */
export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 800, maxMs: 30_000, jitter: 0.2 };

export class Backoff {
  private attempt = 0;
  constructor(private readonly opts: BackoffOptions) {}

  /** The delay before the next attempt; each call doubles the base, up to the cap. */
  next(): number {
    const base = Math.min(this.opts.maxMs, this.opts.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    const j = this.opts.jitter ?? 0.2;
    const r = (this.opts.random ?? Math.random)();
    // Jitter stays under the cap so that the cap bounds the retry rate.
    return Math.min(this.opts.maxMs, base * (1 - j + 2 * j * r));
  }

  reset(): void {
    this.attempt = 0;
  }

  get failures(): number {
    return this.attempt;
  }
}

export interface QueueOptions {
  backoff: BackoffOptions;
  onError?: (key: string, err: unknown, retryInMs: number) => void;
}

export class WorkQueue {
  private readonly queued = new Set<string>();
  private readonly order: string[] = [];
  private readonly running = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly delayed = new Map<string, NodeJS.Timeout>();
  private readonly backoffs = new Map<string, Backoff>();
  private draining: Promise<void> | null = null;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly handler: (key: string) => Promise<void>,
    private readonly opts: QueueOptions,
  ) {}

  /** Queues the key now (cancelling a pending delayed add of it). */
  add(key: string): void {
    if (this.stopped) return;
    const t = this.delayed.get(key);
    if (t) {
      clearTimeout(t);
      this.delayed.delete(key);
    }
    if (this.running.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.order.push(key);
    this.kick();
  }

  /** Queues the key after ms, unless it is queued sooner; an earlier pending add wins. */
  addAfter(key: string, ms: number): void {
    if (this.stopped || this.delayed.has(key)) return;
    this.delayed.set(
      key,
      setTimeout(() => {
        this.delayed.delete(key);
        this.add(key);
      }, ms),
    );
  }

  get length(): number {
    return this.order.length;
  }

  /** Resolves when nothing is queued or running (delayed retries do not count). */
  idle(): Promise<void> {
    if (!this.draining && this.order.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.delayed.values()) clearTimeout(t);
    this.delayed.clear();
    this.order.length = 0;
    this.queued.clear();
    await this.draining;
  }

  private kick(): void {
    this.draining ??= this.drain().finally(() => {
      this.draining = null;
      if (this.order.length > 0 && !this.stopped) this.kick();
      else this.idleWaiters.splice(0).forEach((w) => w());
    });
  }

  /** One worker: keys run one at a time, in the order they were first queued. */
  private async drain(): Promise<void> {
    while (this.order.length > 0 && !this.stopped) {
      const key = this.order.shift()!;
      this.queued.delete(key);
      this.running.add(key);
      try {
        await this.handler(key);
        this.backoffs.get(key)?.reset();
      } catch (err) {
        let b = this.backoffs.get(key);
        if (!b) this.backoffs.set(key, (b = new Backoff(this.opts.backoff)));
        const ms = b.next();
        this.opts.onError?.(key, err, ms);
        this.running.delete(key);
        this.dirty.delete(key);
        this.addAfter(key, ms);
        continue;
      }
      this.running.delete(key);
      if (this.dirty.delete(key)) this.add(key);
    }
  }

  /** Forgets the retry state of a key (e.g. a pod that is gone). */
  forget(key: string): void {
    this.backoffs.delete(key);
    const t = this.delayed.get(key);
    if (t) clearTimeout(t);
    this.delayed.delete(key);
  }
}
