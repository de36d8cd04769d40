/** The system libbpf through koffi, and the built capture object (no root needed). */
import { describe, expect, it } from 'vitest';
import * as ffi from '../../src/bpf/ffi.js';
import { BpfObject } from '../../src/bpf/object.js';

describe('libbpf through koffi (no root needed)', () => {
  it('reports a missing object file as ENOENT, naming the path', () => {
    expect(() => BpfObject.open('/nonexistent/x.bpf.o')).toThrow('bpf_object__open_file(/nonexistent/x.bpf.o): ENOENT');
  });

  it('reports a missing pin as ENOENT', () => {
    expect(() => ffi.objGet('/sys/fs/bpf/does-not-exist-ambient-redirect')).toThrow(/bpf_obj_get\(.*\): ENOENT/);
  });

  it('reports an unknown program name with the ones the object has', () => {
    expect(() => BpfObject.open('build/redirect.bpf.o', { programs: ['nope'] })).toThrow(/nope.*has: out_redirect, out_redir_peer/s);
  });

  it('speaks to libbpf >= 1.0', () => {
    expect(Number(ffi.libbpfVersion().split('.')[0])).toBeGreaterThanOrEqual(1);
  });
});
