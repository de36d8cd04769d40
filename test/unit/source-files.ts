/** The repository's TypeScript files and their relative imports, for the layout tests. */
import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';

export const ROOT = join(import.meta.dirname, '../..');

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
