/**
 * The one place a capture mode is chosen and built. `run` and `uninstall` go through
 * here; nothing else switches on the mode.
 */
import type { CommandRunner } from '../host/runner.js';
import type { Logger } from '../log.js';
import { EbpfRedirect, uninstallEbpf, type Variant } from './ebpf.js';
import type { RedirectMode } from './mode.js';

export type ModeName = RedirectMode['name'];
export type RequestedMode = ModeName | 'auto';

export interface ModeOptions {
  objectPath: string;
  pinRoot: string;
  variant?: Variant;
  runner: CommandRunner;
  log: Logger;
}

/** The mode to use for a request. `auto` becomes a kernel probe once the fallback exists. */
export function resolveMode(requested: RequestedMode): ModeName {
  if (requested === 'iptables') throw new Error('the iptables fallback is not built yet; use --mode ebpf or auto');
  return 'ebpf';
}

export function createRedirectMode(mode: ModeName, opts: ModeOptions): RedirectMode {
  switch (mode) {
    case 'ebpf':
      return new EbpfRedirect({ objectPath: opts.objectPath, pinRoot: opts.pinRoot, log: opts.log, ...(opts.variant && { variant: opts.variant }) });
    case 'iptables':
      throw new Error('the iptables fallback is not built yet');
  }
}

/** Removes what every mode may have left on this node; each part is idempotent. */
export async function uninstallAll(opts: { pinRoot: string; runner: CommandRunner }): Promise<string[]> {
  const r = await uninstallEbpf(opts.pinRoot, opts.runner);
  return [
    ...r.detached.map((d) => `detached ${d.direction} filter from ${d.name}`),
    ...r.qdiscsRemoved.map((q) => `removed clsact qdisc from ${q}`),
    ...r.pinsRemoved.map((p) => `unpinned ${p}`),
  ];
}
