/**
 * Kernel tests need root. Outside CI a non-root run skips with the reason printed; under
 * CI (CI=true) a skip is a failure, so the suite fails instead. bpffs is mounted at
 * /sys/fs/bpf when missing (a fresh machine has none).
 */
import { execFileSync } from 'node:child_process';
import { describe, it } from 'vitest';
import { isBpffs } from '../../src/bpf/pins.js';

export const isRoot = process.getuid?.() === 0;

export function kernelDescribe(name: string, reason: string, suite: () => void): void {
  if (isRoot) {
    if (!isBpffs('/sys/fs/bpf')) execFileSync('mount', ['-t', 'bpf', 'bpf', '/sys/fs/bpf']);
    describe(name, suite);
  } else if (process.env.CI === 'true') {
    describe(name, () => {
      it('runs as root (CI=true forbids skipping)', () => {
        throw new Error(`${reason}: run as root`);
      });
    });
  } else {
    console.warn(`skipping "${name}": ${reason}; run as root`);
    describe.skip(`${name} (${reason})`, () => {
      it('needs root', () => {});
    });
  }
}
