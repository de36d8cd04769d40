/** The pin folder: `<bpffs root>/ambient-redirect/v1/`, mode 0700, on a real bpffs. */
import { chmodSync, existsSync, mkdirSync, readdirSync, rmdirSync, statSync, statfsSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';

const BPF_FS_MAGIC = 0xcafe4a11;
export const PIN_SUBDIR = join('ambient-redirect', 'v1');

export class PinRootError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PinRootError';
  }
}

export function isBpffs(path: string): boolean {
  try {
    return statfsSync(path).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

export function pinDir(root: string): string {
  return join(root, PIN_SUBDIR);
}

/** Checks the root is a bpffs and creates the pin folder (0700). */
export function ensurePinDir(root: string): string {
  if (!existsSync(root)) throw new PinRootError(`pin root ${root} does not exist: mount the host's bpffs there (mount -t bpf bpf ${root})`);
  if (!isBpffs(root)) throw new PinRootError(`pin root ${root} is not a bpffs mount: mount the host's bpffs there (mount -t bpf bpf ${root})`);
  const dir = pinDir(root);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(join(root, 'ambient-redirect'), 0o700);
  chmodSync(dir, 0o700);
  return dir;
}

/** Removes every pin in our folder and the folders themselves; returns what it removed. */
export function removePins(root: string): string[] {
  const dir = pinDir(root);
  if (!existsSync(dir)) return [];
  const removed: string[] = [];
  const removeAll = (folder: string) => {
    for (const name of readdirSync(folder)) {
      const path = join(folder, name);
      if (statSync(path).isDirectory()) {
        removeAll(path);
        rmdirSync(path);
      } else unlinkSync(path);
      removed.push(path);
    }
  };
  removeAll(dir);
  rmdirSync(dir);
  const parent = join(root, 'ambient-redirect');
  if (readdirSync(parent).length === 0) rmdirSync(parent);
  return removed;
}
