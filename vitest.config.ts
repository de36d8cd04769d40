import { defineConfig } from 'vitest/config';

// Three projects, runnable apart (`make test-unit`, `make test-kernel`, `make test-slow`) and
// all together (`make test`): unit (no root), kernel (root: real programs, veths, packets),
// slow (root: the kernel matrix, the demo, long API outages).
export default defineConfig({
  test: {
    // Kernel tests build whole simulated nodes: one file at a time on a 2-core machine.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { extends: true, test: { name: 'kernel', include: ['test/kernel/**/*.test.ts'] } },
      { extends: true, test: { name: 'slow', include: ['test/slow/**/*.test.ts'] } },
    ],
  },
});
