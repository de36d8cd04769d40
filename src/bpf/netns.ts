/**
 * Running libbpf calls inside another network namespace (ztunnel's), the way Go agents
 * use netns.Do: setns(2) moves only the calling thread, so the work must be synchronous
 * and on this thread, and the thread is moved back before anything else runs.
 */
import { closeSync, openSync } from 'node:fs';
import { setNetns } from './ffi.js';

/** Runs fn with this thread in the netns at `path` (e.g. /var/run/netns/<name>). */
export function withNetns<T>(path: string, fn: () => T extends Promise<unknown> ? never : T): T {
  const own = openSync('/proc/thread-self/ns/net', 'r');
  try {
    const target = openSync(path, 'r');
    try {
      setNetns(target, path);
      try {
        return fn();
      } finally {
        setNetns(own, 'own netns');
      }
    } finally {
      closeSync(target);
    }
  } finally {
    closeSync(own);
  }
}

export function netnsPath(name: string): string {
  return `/var/run/netns/${name}`;
}
