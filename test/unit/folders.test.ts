/**
 * The layout's rules, read from the code's imports (README "Layout"): the agent (src/)
 * never imports the test harness (harness/), the image's build neither copies nor
 * compiles the harness, no two folders of src/ import each other (directly or round a
 * longer loop), and src/core/ imports nothing of ours.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cycles, folderGraph, importsOf, ROOT, tsFiles } from './source-files.js';

describe('folder-level import cycles', () => {
  it('are found, each once, on a graph that has them', () => {
    const g = new Map([
      ['a', new Set(['b'])],
      ['b', new Set(['a', 'c'])],
      ['c', new Set(['a'])],
      ['d', new Set(['a'])],
    ]);
    expect(cycles(g)).toEqual(['a -> b -> a', 'a -> b -> c -> a']);
    expect(
      folderGraph(['src/x/1.ts', 'src/y/2.ts', 'src/z.ts'], (f) => (f === 'src/x/1.ts' ? ['src/y/2.ts', 'src/z.ts', 'src/x/3.ts'] : ['src/x/1.ts'])),
    ).toEqual(
      new Map([
        ['x', new Set(['y', 'z.ts'])],
        ['y', new Set(['x'])],
        ['z.ts', new Set(['x'])],
      ]),
    );
  });

  it('there are none in src/', () => {
    expect(cycles(folderGraph(tsFiles('src'), importsOf))).toEqual([]);
  });

  it('src/core/ imports nothing of ours outside itself', () => {
    const bad = tsFiles('src/core').flatMap((f) =>
      importsOf(f)
        .filter((t) => !t.startsWith('src/core/'))
        .map((t) => `${f} -> ${t}`),
    );
    expect(bad).toEqual([]);
  });
});

describe('src/ and the harness', () => {
  it('finds the imports it checks (the reader works)', () => {
    expect(importsOf('src/cli/main.ts')).toContain('src/cli/run.ts');
    expect(importsOf('harness/main.ts')).toContain('src/cli/dispatch.ts');
  });

  it('no module in src/ imports harness/ (nor anything outside src/)', () => {
    const bad = tsFiles('src').flatMap((f) =>
      importsOf(f)
        .filter((t) => !t.startsWith('src/'))
        .map((t) => `${f} -> ${t}`),
    );
    expect(bad).toEqual([]);
  });

  it("the image's build stage compiles and copies src/ only", () => {
    const docker = readFileSync(join(ROOT, 'deploy/Dockerfile'), 'utf8');
    const ignore = readFileSync(join(ROOT, 'deploy/Dockerfile.dockerignore'), 'utf8');
    expect(docker.split('\n').filter((l) => /^\s*COPY\b/.test(l) && /harness|\btest\b/.test(l))).toEqual([]);
    expect(docker).toMatch(/make --no-print-directory product\b/);
    expect(ignore.split('\n').filter((l) => l.startsWith('!') && /harness|test/.test(l))).toEqual([]);
    const product = JSON.parse(readFileSync(join(ROOT, 'tsconfig.product.json'), 'utf8')) as { include: string[] };
    expect(product.include).toEqual(['src/**/*.ts']);
  });
});
