/**
 * The layout's rules, read from the code's imports (README "Layout"): the agent (src/)
 * never imports the test harness (harness/), and the image's build neither copies nor
 * compiles the harness.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../..');

/** Every .ts file under a folder of the repository, as repository-relative paths. */
export function tsFiles(folder: string): string[] {
  return readdirSync(join(ROOT, folder), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => posix.join(folder, f.split('\\').join('/')))
    .sort();
}

/** The repository-relative files a module imports (static, re-exports, dynamic), relative specifiers only. */
export function importsOf(file: string): string[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"](\.{1,2}\/[^'"]+)['"]/g)) {
    const target = posix.normalize(posix.join(posix.dirname(file), m[1]!));
    out.push(target.replace(/\.js$/, '.ts'));
  }
  return out;
}

describe('src/ and the harness', () => {
  it('finds the imports it checks (the reader works)', () => {
    expect(importsOf('src/cli/main.ts')).toContain('src/cli/run.ts');
    expect(importsOf('harness/main.ts')).toContain('src/config.ts');
  });

  it('no module in src/ imports harness/ (nor anything outside src/)', () => {
    const bad = tsFiles('src').flatMap((f) => importsOf(f).filter((t) => !t.startsWith('src/')).map((t) => `${f} -> ${t}`));
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
