/**
 * The demo story's bookkeeping (harness/sim/story.ts): a connection is classified by what
 * the servers recorded, never by the client's word alone, and a step fails on any
 * connection that went another way than promised, and at once on an enrolled pod's direct
 * one.
 */
import { describe, expect, it } from 'vitest';
import { classify, isEnrolled, judge, type PodRow, renderRows } from '../../harness/sim/story.js';

const none = { captured: 0, stray: 0, direct: 0 };

describe('classify', () => {
  it('captured only when ztunnel recorded it with the expected destination', () => {
    expect(classify({ ...none, captured: 1 }, { ok: true, reply: 'ztunnel' })).toBe('ztunnel');
    // ztunnel accepted it but the client gave up: still not around the mesh.
    expect(classify({ ...none, captured: 1 }, { ok: false, error: 'ETIMEDOUT' })).toBe('ztunnel');
  });

  it('direct whenever the outside server recorded it, whatever else happened', () => {
    expect(classify({ ...none, direct: 1 }, { ok: true, reply: 'outside' })).toBe('direct');
    expect(classify({ captured: 1, stray: 0, direct: 1 }, { ok: true, reply: 'ztunnel' })).toBe('direct');
  });

  it('dropped only when it failed and nobody recorded it', () => {
    expect(classify(none, { ok: false, error: 'ECONNREFUSED' })).toBe('dropped');
  });

  it('unexplained: an answer nobody recorded, or a capture with the wrong port or destination', () => {
    expect(classify(none, { ok: true, reply: 'ztunnel' })).toBe('unexplained');
    expect(classify({ ...none, stray: 1 }, { ok: true, reply: 'ztunnel' })).toBe('unexplained');
    expect(classify({ captured: 1, stray: 1, direct: 0 }, { ok: true, reply: 'ztunnel' })).toBe('unexplained');
  });
});

describe('isEnrolled (Istio’s rule as the story expects it)', () => {
  const L = 'istio.io/dataplane-mode';
  it.each([
    [{}, {}, false],
    [{}, { [L]: 'ambient' }, true],
    [{ [L]: 'none' }, { [L]: 'ambient' }, false],
    [{ [L]: 'ambient' }, {}, true],
    [{ [L]: 'ambient' }, { [L]: 'none' }, true],
    [{ [L]: 'sidecar' }, {}, false],
  ])('pod %o in namespace %o: %s', (pod, ns, want) => {
    expect(isEnrolled(pod, ns)).toBe(want);
  });
});

describe('judge', () => {
  const row = (pod: string, enrolled: boolean, counts: Partial<PodRow['counts']>): PodRow => ({
    pod,
    namespace: 'shop',
    enrolled,
    counts: { ztunnel: 0, direct: 0, dropped: 0, unexplained: 0, ...counts },
  });

  it('passes when every connection went the promised way', () => {
    expect(
      judge({ a: 'ztunnel', b: 'direct', c: 'dropped' }, [row('a', true, { ztunnel: 3 }), row('b', false, { direct: 3 }), row('c', true, { dropped: 3 })]),
    ).toEqual([]);
  });

  it('names a bypass first, and any other connection that went another way', () => {
    expect(judge({ a: 'dropped' }, [row('a', true, { dropped: 2, direct: 1 })])).toEqual(['a is enrolled but 1 connection(s) went around ztunnel']);
    expect(judge({ a: 'ztunnel' }, [row('a', true, { ztunnel: 2, unexplained: 1 })])).toHaveLength(1);
    expect(judge({ b: 'direct' }, [row('b', false, { direct: 2, dropped: 1 })])).toHaveLength(1);
  });

  it('shows the unexplained column only when a connection was', () => {
    expect(renderRows([row('a', true, { ztunnel: 1 })])).not.toContain('unexplained');
    expect(renderRows([row('a', true, { unexplained: 1 })])).toContain('unexplained');
  });
});
