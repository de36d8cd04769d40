/**
 * Compiled entry points the sim starts as processes. From dist/harness/sim/ they sit beside
 * this module; under vitest this module runs from harness/sim/, so the repo's dist copy is used.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export function distEntry(relFromSim: string): string {
  const candidates = [new URL(relFromSim, import.meta.url), new URL(`../../dist/harness/sim/${relFromSim}`, import.meta.url)].map((u) => fileURLToPath(u));
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`not built (looked for ${candidates.join(', ')}): run make build`);
  return found;
}
