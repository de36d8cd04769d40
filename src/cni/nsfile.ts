/**
 * The list of ambient namespaces the plugin reads when the agent cannot be asked (one
 * name per line), kept on the host so it survives agent restarts and reboots. Written
 * atomically (temporary file, fsync, rename): the plugin never sees half a list.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';

export const NAMESPACES_FILE = 'ambient-namespaces';

export function namespacesFile(stateDir: string): string {
  return join(stateDir, NAMESPACES_FILE);
}

export function formatNamespaceList(names: readonly string[]): string {
  return [...names].sort().map((n) => `${n}\n`).join('');
}

/** Replaces `file` with `data` atomically. */
export function writeAtomic(file: string, data: string | Buffer, mode = 0o644): void {
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

/** Writes the list when it differs from what the file holds. */
export class NamespaceListWriter {
  private last: string | null = null;

  constructor(readonly file: string) {}

  /** True when the file was (re)written. */
  update(names: readonly string[]): boolean {
    const text = formatNamespaceList(names);
    if (this.last === null) {
      try {
        this.last = readFileSync(this.file, 'utf8');
      } catch {
        // Missing: written below, even empty (a missing list makes the plugin fail closed).
      }
    }
    if (text === this.last) return false;
    writeAtomic(this.file, text);
    this.last = text;
    return true;
  }
}
