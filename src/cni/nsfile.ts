/**
 * The list of ambient namespaces the plugin reads when the agent cannot be asked (one
 * name per line), kept on the host so it survives agent restarts and reboots. Written
 * atomically (temporary file, fsync, rename): the plugin never sees half a list.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const NAMESPACES_FILE = 'ambient-namespaces';

export function namespacesFile(stateDir: string): string {
  return join(stateDir, NAMESPACES_FILE);
}

export function formatNamespaceList(names: readonly string[]): string {
  return [...names]
    .sort()
    .map((n) => `${n}\n`)
    .join('');
}

/**
 * Replaces `file` with `data` atomically: a temporary file of an unpredictable name,
 * created exclusively (O_EXCL, never through a planted file or link), written and fsynced,
 * then renamed over `file`, and the folder fsynced so that the rename survives a crash.
 */
export function writeAtomic(file: string, data: string | Buffer, mode = 0o644): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${randomBytes(12).toString('hex')}`;
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    try {
      const buf = typeof data === 'string' ? Buffer.from(data) : data;
      for (let off = 0; off < buf.length; ) off += writeSync(fd, buf, off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  const dir = openSync(dirname(file), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

/**
 * Writes the list when it differs from what the file holds. The file is read back each
 * time (it is small), so a list deleted or edited by someone else is rewritten on the
 * next check, not only when a namespace changes.
 */
export class NamespaceListWriter {
  constructor(readonly file: string) {}

  /** True when the file was (re)written. */
  update(names: readonly string[]): boolean {
    const text = formatNamespaceList(names);
    let cur: string | null = null;
    try {
      cur = readFileSync(this.file, 'utf8');
    } catch {
      // Missing: written below, even empty (the plugin fails closed on a missing list when
      // it cannot ask the agent either).
    }
    if (text === cur) return false;
    writeAtomic(this.file, text);
    return true;
  }
}
