/**
 * A list-then-watch loop that does not give up (the client library's informer stops on
 * any error but 410). List, then watch from the list's resourceVersion with bookmarks;
 * on 410 Gone relist once; on any other error, or a watch silent past the stall timeout,
 * start again after a jittered exponential backoff (0.8 s -> 30 s by default).
 */
import type { Logger } from '../log.js';
import { Backoff, type BackoffOptions } from '../controller/queue.js';
import { KubeError, type KubeTransport, type WatchHandle } from './http.js';

export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED';

export interface ReflectorHandler {
  /** A full list: what the API holds now (raw objects). */
  replace(items: unknown[]): void;
  event(type: WatchEventType, obj: unknown): void;
}

export interface ReflectorOptions {
  name: string;
  path: string;
  /** fieldSelector / labelSelector, sent on both list and watch. */
  query: Record<string, string>;
  backoff: BackoffOptions;
  /** A watch with no event and no bookmark for this long is restarted. */
  stallTimeoutMs: number;
  /** Asked of the server: it ends each watch after this long (client-go: 5-10 min). */
  watchTimeoutSeconds: number;
  log: Logger;
}

export interface ReflectorStats {
  lists: number;
  watches: number;
  restarts: number;
  relists410: number;
  stalls: number;
}

const sleep = (ms: number, signal: { stopped: boolean; wake?: () => void }) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.wake = () => {
      clearTimeout(t);
      resolve();
    };
  });

export class Reflector {
  private rv = '';
  private synced = false;
  private readonly stopper: { stopped: boolean; wake?: () => void } = { stopped: true };
  private watch: WatchHandle | null = null;
  private loop: Promise<void> | null = null;
  private readonly backoff: Backoff;
  private forceList = false;
  private open = false;
  /** Called each time a watch is established (the API answers again). */
  onOpen: () => void = () => {};
  readonly stats: ReflectorStats = { lists: 0, watches: 0, restarts: 0, relists410: 0, stalls: 0 };

  constructor(
    private readonly transport: KubeTransport,
    private readonly handler: ReflectorHandler,
    private readonly opts: ReflectorOptions,
  ) {
    this.backoff = new Backoff(opts.backoff);
  }

  /** True while a watch is established: the API is answering. */
  get connected(): boolean {
    return this.open;
  }

  /** True once a full list has been delivered. */
  hasSynced(): boolean {
    return this.synced;
  }

  start(): void {
    if (!this.stopper.stopped) return;
    this.stopper.stopped = false;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.stopper.stopped = true;
    this.stopper.wake?.();
    this.watch?.abort();
    await this.loop;
  }

  /** A fresh list now (the circuit breaker's confirming list), outside the watch loop. */
  async relist(): Promise<void> {
    await this.list();
  }

  private async list(): Promise<void> {
    this.stats.lists++;
    const body = (await this.transport.request('GET', this.opts.path, this.opts.query)) as { items?: unknown; metadata?: { resourceVersion?: unknown } };
    const rv = body?.metadata?.resourceVersion;
    if (!Array.isArray(body?.items) || typeof rv !== 'string' || rv === '') throw new KubeError(`list ${this.opts.path}: not a list`, 0);
    // Synced before the handler runs: it may start a pass at once, which must see it.
    this.rv = rv;
    this.synced = true;
    this.handler.replace(body.items);
  }

  private async run(): Promise<void> {
    const { log, name } = this.opts;
    let needList = true;
    while (!this.stopper.stopped) {
      try {
        if (needList || this.forceList) {
          this.forceList = false;
          await this.list();
          needList = false;
          this.backoff.reset();
        }
        // stop() may have come while the list was in flight: start no watch after it.
        if (this.stopper.stopped) break;
        const outcome = await this.watchOnce();
        if (this.stopper.stopped) break;
        if (outcome === 'gone') {
          // One relist per 410, at once: the resourceVersion we hold is too old.
          this.stats.relists410++;
          log.info('watch expired (410); relisting', { watch: name });
          needList = true;
          continue;
        }
        if (outcome === 'ended') continue; // the server's timeout: watch again from rv
        throw outcome;
      } catch (err) {
        if (this.stopper.stopped) break;
        this.stats.restarts++;
        const ms = this.backoff.next();
        log.warn('watch failed; restarting after backoff', {
          watch: name,
          error: err instanceof Error ? err.message : String(err),
          retryInMs: Math.round(ms),
          failures: this.backoff.failures,
        });
        await sleep(ms, this.stopper);
      }
    }
  }

  /** Resolves 'ended' (clean end), 'gone' (410) or an Error. */
  private watchOnce(): Promise<'ended' | 'gone' | Error> {
    const { path, query, stallTimeoutMs, watchTimeoutSeconds } = this.opts;
    this.stats.watches++;
    const started = Date.now();
    let delivered = 0;
    return new Promise((resolve) => {
      let settled = false;
      let stall: NodeJS.Timeout | undefined;
      const finish = (r: 'ended' | 'gone' | Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(stall);
        this.open = false;
        this.watch?.abort();
        this.watch = null;
        resolve(r);
      };
      const armStall = () => {
        clearTimeout(stall);
        stall = setTimeout(() => {
          this.stats.stalls++;
          finish(new Error(`watch silent for ${stallTimeoutMs} ms (no event, no bookmark)`));
        }, stallTimeoutMs);
      };
      armStall();
      this.watch = this.transport.stream(
        path,
        { ...query, resourceVersion: this.rv, allowWatchBookmarks: 'true', timeoutSeconds: String(watchTimeoutSeconds) },
        (line) => {
          if (settled) return;
          if (this.stopper.stopped) {
            finish('ended');
            return;
          }
          armStall();
          delivered++;
          const ev = line as { type?: unknown; object?: { metadata?: { resourceVersion?: unknown }; code?: unknown; message?: unknown } };
          const rv = ev?.object?.metadata?.resourceVersion;
          switch (ev?.type) {
            case 'ADDED':
            case 'MODIFIED':
            case 'DELETED':
              this.handler.event(ev.type, ev.object);
              if (typeof rv === 'string' && rv !== '') this.rv = rv;
              this.backoff.reset();
              return;
            case 'BOOKMARK':
              if (typeof rv === 'string' && rv !== '') this.rv = rv;
              this.backoff.reset();
              return;
            case 'ERROR':
              if (ev.object?.code === 410) finish('gone');
              else finish(new KubeError(`watch error event: ${String(ev.object?.message ?? ev.object?.code)}`, Number(ev.object?.code) || 0));
              return;
            default:
              finish(new Error(`watch: unknown event type ${JSON.stringify(ev?.type)}`));
          }
        },
        (err) => {
          if (err?.status === 410) finish('gone');
          else if (err) finish(err);
          // A server that ends every watch at once must not make us spin.
          else if (delivered === 0 && Date.now() - started < 1_000) finish(new Error('watch ended at once, with nothing'));
          else finish('ended');
        },
        () => {
          if (settled) return;
          this.open = true;
          this.onOpen();
        },
      );
    });
  }
}
