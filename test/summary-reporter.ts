/**
 * Prints the closing line CI reads, `N passed, N failed, N skipped`, from the real
 * results. Besides failed tests, these count as failures, each named on a line of its own
 * above the closing line: a file that fails to load, an error in a suite's or a file's
 * hook (`beforeAll` failing leaves the suite's tests "skipped", `afterAll` failing leaves
 * them "passed": neither may read clean), and an error outside any test.
 */
import type { Reporter, SerializedError, TestModule, TestSuite } from 'vitest/node';

export interface Summary {
  passed: number;
  failed: number;
  skipped: number;
  /** What failed outside a test: `<file> > <suite>: <first line of the error>`. */
  outside: string[];
}

function firstLine(e: SerializedError): string {
  return (e.message ?? String(e)).split('\n')[0] ?? '';
}

export function summarize(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): Summary {
  const s: Summary = { passed: 0, failed: 0, skipped: 0, outside: [] };
  for (const m of modules) {
    for (const t of m.children.allTests()) {
      const state = t.result().state;
      if (state === 'passed') s.passed++;
      else if (state === 'failed') s.failed++;
      else s.skipped++;
    }
    const holders: (TestModule | TestSuite)[] = [m, ...m.children.allSuites()];
    for (const h of holders) {
      const errors = h.errors();
      if (errors.length === 0) continue;
      const where = h.type === 'module' ? h.relativeModuleId : `${h.module.relativeModuleId} > ${h.fullName}`;
      s.failed++;
      s.outside.push(`${where}: ${firstLine(errors[0]!)}${errors.length > 1 ? ` (+${errors.length - 1} more)` : ''}`);
    }
  }
  for (const e of unhandledErrors) {
    s.failed++;
    s.outside.push(`unhandled: ${firstLine(e)}`);
  }
  return s;
}

export default class SummaryReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>, unhandledErrors: ReadonlyArray<SerializedError>): void {
    const s = summarize(modules, unhandledErrors);
    const named = s.outside.map((l) => `failed outside a test: ${l}\n`).join('');
    process.stdout.write(`\n${named}${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped\n`);
  }
}
