/**
 * The record of a cleanup (uninstall, or removing the other capture mode's state): every
 * step runs even when an earlier one failed, and what each step did, skipped or could not
 * do is kept, so the caller can say exactly what was left.
 */
import { CommandError } from '../host/runner.js';

export interface CleanupReport {
  /** What was removed, one line each (`detached ingress filter from veth1`). */
  removed: string[];
  /** Steps left out on purpose, with why: only steps whose omission leaves no data path. */
  skipped: { step: string; reason: string }[];
  /** Steps that failed: what they were to remove may still be there. */
  failed: { step: string; error: string }[];
}

export class Cleanup implements CleanupReport {
  readonly removed: string[] = [];
  readonly skipped: { step: string; reason: string }[] = [];
  readonly failed: { step: string; error: string }[] = [];

  /** Runs one step; its error is recorded, not thrown. Resolves to the step's value or undefined. */
  async step<T>(name: string, fn: () => Promise<T> | T): Promise<T | undefined> {
    try {
      return await fn();
    } catch (err) {
      this.failed.push({ step: name, error: err instanceof Error ? err.message : String(err) });
      return undefined;
    }
  }

  /** Records a step left out on purpose; the same step skipped again (another netns) is said once. */
  skip(step: string, reason: string): void {
    if (!this.skipped.some((s) => s.step === step && s.reason === reason)) this.skipped.push({ step, reason });
  }

  /** Throws one error naming every failed step, once all of them ran (teardowns). */
  throwIfFailed(what: string): void {
    if (this.failed.length === 0) return;
    throw new Error(`${what}: ${this.failed.length} step(s) failed: ${this.failed.map((f) => `${f.step}: ${f.error}`).join('; ')}`);
  }

  /** Takes in another cleanup's record (a part run by its own module). */
  merge(other: CleanupReport): void {
    this.removed.push(...other.removed);
    this.skipped.push(...other.skipped);
    this.failed.push(...other.failed);
  }
}

/**
 * The spawned tool itself is not installed, as opposed to it failing: execFile's ENOENT,
 * or, through `ip netns exec`, its "exec of ... failed: No such file or directory".
 */
export function isMissingTool(err: unknown): boolean {
  if (!(err instanceof CommandError)) return false;
  return (err.exitCode === null && /ENOENT/.test(err.stderr)) || /exec of "[^"]*" failed: No such file or directory/.test(err.stderr);
}
