/** A log line that may repeat fast (one per malformed object) is written at most once per interval, with a count of the ones held back. */
import type { Logger } from '../log.js';

export class ThrottledLog {
  private last = 0;
  private suppressed = 0;
  constructor(
    private readonly log: Logger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  warn(msg: string, fields: Record<string, unknown>): void {
    const t = this.now();
    if (this.last !== 0 && t - this.last < this.intervalMs) {
      this.suppressed++;
      return;
    }
    this.log.warn(msg, { ...fields, ...(this.suppressed > 0 && { suppressed: this.suppressed }) });
    this.last = t;
    this.suppressed = 0;
  }
}
