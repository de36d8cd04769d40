/**
 * `run --hook xdp` loads build/xdp.bpf.o as a companion of build/redirect.bpf.o: its
 * programs reuse the TC object's pinned maps, so the two must declare them alike, and the
 * loader refuses a pair that does not (src/bpf/install.ts) before it loads or pins anything.
 */
import { existsSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { loadOrAdopt, objectHash } from '../../src/bpf/install.js';
import { BpfObject } from '../../src/bpf/object.js';

const TC = 'build/redirect.bpf.o';
const XDP = 'build/xdp.bpf.o';
/** redirect.bpf.o with a smaller pods map (1,024 entries): not of one build with xdp.bpf.o. */
const SMALL = 'build/test/redirect-small.bpf.o';

describe('the XDP object beside the TC object', () => {
  it('declares every map it uses exactly as the TC object does', () => {
    const defs = (p: string) => {
      const o = BpfObject.open(p, { programs: [] });
      try {
        return o.mapDefs();
      } finally {
        o.close();
      }
    };
    const tc = defs(TC);
    const xdp = defs(XDP);
    expect(xdp.size).toBeGreaterThan(0);
    for (const [name, def] of xdp) expect(tc.get(name), name).toEqual(def);
  });

  it('a pair that is not of one build is refused with a clear error, before anything is loaded or pinned', () => {
    const dir = '/nonexistent/ambient-redirect-test-pins';
    expect(() => loadOrAdopt(SMALL, dir, ['out_redirect'], [{ objectPath: XDP, programs: ['xdp_out'] }])).toThrow(
      `${XDP} defines map pods differently from ${SMALL}: the two objects are not of one build`,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('one object: the program folder is named as before there were two; two: by both', () => {
    expect(objectHash(TC)).toMatch(/^[0-9a-f]{16}$/);
    expect(objectHash(TC, XDP)).not.toBe(objectHash(TC));
    expect(objectHash(TC, XDP)).toBe(objectHash(TC, XDP));
  });
});
