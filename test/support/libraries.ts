/** The shared libraries mapped into this process (/proc/self/maps), for tests of what an import loads. */
import { readFileSync } from 'node:fs';

/** The distinct file paths of this process's file-backed mappings that look like shared libraries. */
export function mappedLibraries(): string[] {
  const paths = new Set<string>();
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    // address perms offset dev inode [pathname]
    const path = line.trim().split(/\s+/).slice(5).join(' ');
    if (/\.so(\.|$)/.test(path)) paths.add(path);
  }
  return [...paths].sort();
}

/** The mapped libraries whose file name is `name` and a version or suffix (e.g. "libbpf": libbpf.so.1.1.2). */
export function mapped(name: string): string[] {
  return mappedLibraries().filter((p) => new RegExp(`^${name}[.-]`).test(p.slice(p.lastIndexOf('/') + 1)));
}
