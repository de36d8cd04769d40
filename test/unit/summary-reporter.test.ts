/**
 * The closing line CI reads must not read clean while vitest's own exit status is not:
 * a failed beforeAll, a failed afterAll and a file that does not load each count as a
 * failure, and are named. Runs vitest on fixtures with the real reporter.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const vitestBin = 'node_modules/vitest/vitest.mjs';

function runFixtures(...files: string[]) {
  const r = spawnSync(
    process.execPath,
    [vitestBin, 'run', '--config', 'test/fixtures/reporter/vitest.config.ts', '--reporter=./test/summary-reporter.ts', ...files],
    { encoding: 'utf8', env: { ...process.env, CI: 'true' }, timeout: 60_000 },
  );
  const lines = r.stdout.trim().split('\n');
  return { status: r.status, last: lines.at(-1), named: lines.filter((l) => l.startsWith('failed outside a test: ')) };
}

describe('summary reporter', () => {
  it('counts failed hooks and unloadable files as failures, and names them', () => {
    const r = runFixtures();
    expect(r.status).not.toBe(0);
    expect(r.last).toBe('3 passed, 3 failed, 2 skipped');
    expect(r.named).toEqual([
      'failed outside a test: test/fixtures/reporter/hooks.fixture.ts > a suite whose beforeAll throws: beforeAll broke',
      'failed outside a test: test/fixtures/reporter/hooks.fixture.ts > a suite whose afterAll throws: afterAll broke',
      'failed outside a test: test/fixtures/reporter/load.fixture.ts: this file does not load',
    ]);
  });

  it('reads clean when everything passed', () => {
    const r = runFixtures('clean.fixture.ts');
    expect(r.status).toBe(0);
    expect(r.last).toBe('1 passed, 0 failed, 0 skipped');
    expect(r.named).toEqual([]);
  });
});
