/**
 * The unit project runs where the system libbpf may be missing: importing what the unit tests
 * import must not load it. src/bpf/ffi.ts loads libbpf on the first call of a binding, not
 * at import; this imports every module a unit test file imports (and ffi.ts itself), then
 * reads this process's mappings. (Vitest runs each test file in a process of its own.)
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { mapped } from '../support/libraries.js';
import { importsOf, ROOT, tsFiles } from './source-files.js';

/** What the unit test files import, but other test files (each one imported runs its tests). */
const imported = [...new Set(tsFiles('test/unit').flatMap(importsOf))].filter((f) => !f.endsWith('.test.ts')).sort();

describe('unit imports', () => {
  it('do not load the system libbpf', async () => {
    expect(imported).toContain('src/bpf/codec.ts');
    for (const f of [...imported, 'src/bpf/ffi.ts', 'src/host/kernel.ts']) await import(join(ROOT, f));
    // The check sees a library that is loaded: libc, by Node itself.
    expect(mapped('libc').length).toBeGreaterThan(0);
    expect(mapped('libbpf')).toEqual([]);
  });
});
