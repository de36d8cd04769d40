/**
 * src/bpf/ffi.ts opens the system libbpf on the first call of a binding, not at import (the
 * unit project must not load it: test/unit/no-libbpf.test.ts). Here, where libbpf is
 * required, the same check of this process's mappings sees the load happen.
 */
import { describe, expect, it } from 'vitest';
import * as ffi from '../../src/bpf/ffi.js';
import { mapped } from '../support/libraries.js';

describe('libbpf through src/bpf/ffi.ts', () => {
  it('is loaded by the first call of a binding, not by the import', () => {
    expect(mapped('libbpf')).toEqual([]);
    expect(ffi.libbpfVersion()).toMatch(/^1\.\d+$/);
    expect(mapped('libbpf')).toEqual([expect.stringMatching(/\/libbpf\.so\.1[.\d]*$/)]);
    // Later calls reuse the open library and their own bindings.
    expect(ffi.libbpfVersion()).toBe(ffi.libbpfVersion());
    expect(ffi.numPossibleCpus()).toBeGreaterThan(0);
    expect(mapped('libbpf')).toHaveLength(1);
  });
});
