import { describe, expect, it } from 'vitest';
import { BpfError, checkInt, checkPtr, errnoName, isExists, isNotFound } from '../../src/bpf/errors.js';

describe('error mapping', () => {
  it('names errnos', () => {
    expect(errnoName(2)).toBe('ENOENT');
    expect(errnoName(-1)).toBe('EPERM');
    expect(errnoName(9999)).toBe('E9999');
  });

  it('turns a negative int result into an error naming op, target, errno and hint', () => {
    const err = (() => {
      try {
        checkInt('bpf_map_update_elem', 'pods', -7);
      } catch (e) {
        return e as BpfError;
      }
      throw new Error('no throw');
    })();
    expect(err).toBeInstanceOf(BpfError);
    expect(err.message).toBe('bpf_map_update_elem(pods): E2BIG (map is full (max_entries reached))');
    expect(err).toMatchObject({ op: 'bpf_map_update_elem', target: 'pods', errno: 7, code: 'E2BIG' });
  });

  it('passes non-negative results through', () => {
    expect(checkInt('bpf_prog_fd', 'x', 0)).toBe(0);
    expect(checkInt('bpf_prog_fd', 'x', 12)).toBe(12);
  });

  it('turns NULL into an error carrying errno, with the verifier log when given', () => {
    expect(() => checkPtr('bpf_object__open_file', 'a.o', null, () => 2)).toThrow('bpf_object__open_file(a.o): ENOENT');
    expect(() => checkInt('bpf_object__load', 'a.o', -13, () => 'R1 invalid mem access')).toThrow(/EACCES.*verifier[\s\S]*R1 invalid mem access/);
    expect(checkPtr('x', 'y', 5n, () => 0)).toBe(5n);
  });

  it('classifies not-found and exists for idempotent deletes and creates', () => {
    expect(isNotFound(new BpfError('bpf_map_delete_elem', 'pods', 2))).toBe(true);
    expect(isNotFound(new BpfError('bpf_map_delete_elem', 'pods', 1))).toBe(false);
    expect(isNotFound(new Error('ENOENT'))).toBe(false);
    expect(isExists(new BpfError('bpf_tc_hook_create', 'lo', 17))).toBe(true);
  });
});
