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

/** The folder of src/ a file belongs to (a file at the top of src/ is a node of its own). */
const folderOf = (file: string): string => file.split('/').slice(1, -1)[0] ?? file.split('/')[1]!;

/** src/'s folder-level import graph: folder -> the other folders it imports. */
export function folderGraph(files: string[], importsOfFile: (f: string) => string[]): Map<string, Set<string>> {
  const graph = new Map<string, Set<string>>();
  for (const f of files) {
    for (const t of importsOfFile(f)) {
      if (!t.startsWith('src/')) continue;
      const [a, b] = [folderOf(f), folderOf(t)];
      if (a === b) continue;
      if (!graph.has(a)) graph.set(a, new Set());
      graph.get(a)!.add(b);
    }
  }
  return graph;
}

/** Every elementary cycle of the graph, each once (it starts at its smallest folder). */
export function cycles(graph: Map<string, Set<string>>): string[] {
  const out: string[] = [];
  for (const start of [...graph.keys()].sort()) {
    const path = [start];
    const visit = (v: string): void => {
      for (const w of [...(graph.get(v) ?? [])].sort()) {
        if (w === start) out.push([...path, start].join(' -> '));
        else if (w > start && !path.includes(w)) {
          path.push(w);
          visit(w);
          path.pop();
        }
      }
    };
    visit(start);
  }
  return out;
}
