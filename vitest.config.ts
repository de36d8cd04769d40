import { defineConfig } from 'vitest/config';

// Four projects, runnable apart (`make test-unit|test-build|test-kernel|test-slow`) and all
// together (`make test`): unit (no root, no build outputs), build (no root: the built CLI, the
// C plugin, the capture object and the system libbpf), kernel (root: real programs, veths,
// packets), slow (root: the kernel matrix, the demo, long API outages).
export default defineConfig({
  test: {
    // Kernel tests build whole simulated nodes: one file at a time on a 2-core machine.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      { extends: true, test: { name: 'build', include: ['test/build/**/*.test.ts'] } },
      { extends: true, test: { name: 'kernel', include: ['test/kernel/**/*.test.ts'] } },
      { extends: true, test: { name: 'slow', include: ['test/slow/**/*.test.ts'] } },
    ],
  },
});
