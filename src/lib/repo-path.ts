/**
 * Files `make` builds (build/…) sit at the top of the checkout or image, beside
 * package.json. A module finds them from wherever it runs, src/ under vitest or
 * dist/src/ and dist/harness/ once compiled, by walking up to that package.json.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export function repoPath(rel: string, moduleUrl: string): string {
  const start = dirname(fileURLToPath(moduleUrl));
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, rel);
    if (dirname(dir) === dir) throw new Error(`no package.json above ${start}: cannot find ${rel}`);
  }
}

/** The node topology's capture object `make` builds. */
export const DEFAULT_OBJECT = repoPath('build/redirect.bpf.o', import.meta.url);
/** The in-pod capture's object (inpod mode, docs/inpod.md). */
export const DEFAULT_INPOD_OBJECT = repoPath('build/inpod.bpf.o', import.meta.url);
/** The XDP hook of the node topology's outbound capture (--hook xdp, docs/datapath.md). */
export const DEFAULT_XDP_OBJECT = repoPath('build/xdp.bpf.o', import.meta.url);
