/**
 * API event → programmed latency. On every membership change the enrolled set is read;
 * a pod that joins it (or leaves it) starts a clock, and the clock stops at the first pass
 * whose programmed set agrees (the pod is in it, or gone from it). Several events for the
 * same pod before it is programmed keep the earliest start: the latency a user waits.
 */
import type { Membership } from '../controller/controller.js';

export class ProgrammingLatency {
  private programmedSet: ReadonlySet<string> = new Set();
  /** pod IP → when it started waiting, and for what. */
  private readonly pending = new Map<string, { since: number; want: 'in' | 'out' }>();

  /** After a change: the enrolled IPs as the membership sees them now. */
  changed(enrolled: Iterable<string>, now: number): void {
    const want = new Set(enrolled);
    for (const ip of want) {
      if (!this.programmedSet.has(ip)) this.start(ip, 'in', now);
      else if (this.pending.get(ip)?.want === 'out') this.pending.delete(ip); // back before removal
    }
    for (const ip of this.programmedSet) {
      if (!want.has(ip)) this.start(ip, 'out', now);
    }
    for (const [ip, p] of this.pending) {
      // Enrolled then gone again before any pass: nothing to wait for.
      if (p.want === 'in' && !want.has(ip)) this.pending.delete(ip);
    }
  }

  private start(ip: string, want: 'in' | 'out', now: number): void {
    const p = this.pending.get(ip);
    if (p && p.want === want) return;
    this.pending.set(ip, { since: now, want });
  }

  /** After a pass: the IPs now programmed. Returns the latencies (ms) that ended. */
  programmed(ips: ReadonlySet<string>, now: number): number[] {
    this.programmedSet = new Set(ips);
    const done: number[] = [];
    for (const [ip, p] of this.pending) {
      if ((p.want === 'in') === ips.has(ip)) {
        done.push(Math.max(0, now - p.since));
        this.pending.delete(ip);
      }
    }
    return done;
  }

  /** Pods still waiting (for tests and debugging). */
  waiting(): number {
    return this.pending.size;
  }
}

/**
 * Wraps a Membership so that its change notifications and the controller's programmed()
 * calls feed a ProgrammingLatency; `observe` receives each latency in seconds.
 */
export function instrumentMembership(inner: Membership, observe: (seconds: number) => void, clock: () => number = Date.now): Membership {
  const latency = new ProgrammingLatency();
  latency.changed(inner.view().enrolled, clock());
  return {
    view: () => inner.view(),
    confirm: () => inner.confirm(),
    programmed(ips) {
      inner.programmed(ips);
      for (const ms of latency.programmed(ips, clock())) observe(ms / 1000);
    },
    onChange(cb) {
      inner.onChange(() => {
        latency.changed(inner.view().enrolled, clock());
        cb();
      });
    },
  };
}
