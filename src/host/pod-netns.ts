/**
 * Finding an enrolled pod's network namespace (docs/zds.md, "Pod network namespaces").
 *
 * A pod created while the agent runs brings its netns with the CNI ADD (CNI_NETNS). A pod
 * that existed before the agent started is found as a node agent must: through the host's
 * processes, `<host-proc>/<pid>/ns/net`, deduplicated by the namespace's inode, each
 * namespace's addresses read without entering it (`net/fib_trie`'s LOCAL entries for
 * IPv4, `net/if_inet6` for IPv6), and matched by the pod's IPs.
 *
 * Pure core (parsers, matching) first; the adapter that reads /proc and opens the fds
 * after it. The matching never guesses: a pod whose addresses sit in two namespaces (a
 * sandbox being replaced, an address reused) or whose addresses are split across
 * namespaces is not found, and is retried.
 */
import { closeSync, fstatSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';

// --- pure core -------------------------------------------------------------------------

/** The IPv4 addresses a netns holds as its own: the LOCAL host entries of `net/fib_trie`. */
export function parseFibTrieLocal(text: string): string[] {
  const out = new Set<string>();
  let current: string | null = null;
  for (const line of text.split('\n')) {
    const leaf = /\|--\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
    if (leaf) {
      current = leaf[1]!;
      continue;
    }
    if (/\+--/.test(line)) {
      current = null;
      continue;
    }
    if (current && /\/32 host LOCAL/.test(line)) out.add(current);
  }
  return [...out].filter((ip) => isIP(ip) === 4 && !ip.startsWith('127.')).sort();
}

/** The IPv6 addresses of `net/if_inet6` (32 hex digits a line), canonical, without loopback and link-local. */
export function parseIfInet6(text: string): string[] {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    const hex = /^([0-9a-f]{32})\s/i.exec(line.trim())?.[1];
    if (!hex) continue;
    const groups = hex.match(/.{4}/g)!.map((g) => Number.parseInt(g, 16).toString(16));
    const ip = canonicalIpv6(groups.join(':'));
    if (ip === '::1' || /^fe[89ab]/.test(ip)) continue;
    out.add(ip);
  }
  return [...out].sort();
}

/** The shortest form (RFC 5952) of an IPv6 address given as eight groups. */
export function canonicalIpv6(full: string): string {
  const groups = full.split(':').map((g) => Number.parseInt(g, 16).toString(16));
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < groups.length; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** One network namespace of the host, as the scan saw it. */
export interface NetnsCandidate {
  /** The namespace's identity: `dev:inode` of its nsfs file. */
  id: string;
  /** A process inside it, by which it is opened. */
  pid: number;
  /** The addresses it holds (IPv4 and IPv6, canonical). */
  addrs: readonly string[];
}

export type NetnsMatch = { kind: 'found'; candidate: NetnsCandidate } | { kind: 'none' } | { kind: 'ambiguous'; reason: string };

/**
 * The namespace holding all of a pod's IPs, when exactly one does. `exclude` are ids that
 * are never a pod's (the agent's own, the host's).
 */
export function matchNetns(ips: readonly string[], candidates: readonly NetnsCandidate[], exclude: ReadonlySet<string> = new Set()): NetnsMatch {
  if (ips.length === 0) return { kind: 'none' };
  const holding = candidates.filter((c) => !exclude.has(c.id) && ips.some((ip) => c.addrs.includes(ip)));
  if (holding.length === 0) return { kind: 'none' };
  if (holding.length > 1) return { kind: 'ambiguous', reason: `${ips.join(', ')} found in ${holding.length} network namespaces` };
  const only = holding[0]!;
  const missing = ips.filter((ip) => !only.addrs.includes(ip));
  if (missing.length)
    return { kind: 'ambiguous', reason: `the netns holding ${ips.filter((ip) => !missing.includes(ip)).join(', ')} lacks ${missing.join(', ')}` };
  return { kind: 'found', candidate: only };
}

// --- adapter: the host's /proc ---------------------------------------------------------

const idOf = (st: { dev: number; ino: number }) => `${st.dev}:${st.ino}`;

/**
 * Every network namespace some process of the host is in, once each, with its addresses.
 * A process that ends during the scan, or that we may not inspect, is skipped.
 */
export function scanHostNetns(hostProc: string): NetnsCandidate[] {
  const seen = new Map<string, NetnsCandidate>();
  let entries: string[];
  try {
    entries = readdirSync(hostProc);
  } catch (err) {
    throw new Error(`cannot list ${hostProc}: ${(err as Error).message} (inpod mode needs the host's /proc: hostPID, or --host-proc)`);
  }
  for (const name of entries) {
    if (!/^\d+$/.test(name)) continue;
    const dir = join(hostProc, name);
    let id: string;
    try {
      id = idOf(statSync(join(dir, 'ns', 'net')));
    } catch {
      continue; // gone, or not ours to inspect
    }
    if (seen.has(id)) continue;
    let addrs: string[];
    try {
      addrs = [...parseFibTrieLocal(readFileSync(join(dir, 'net', 'fib_trie'), 'utf8')), ...parseIfInet6(readIfInet6(join(dir, 'net', 'if_inet6')))];
    } catch {
      continue;
    }
    seen.set(id, { id, pid: Number(name), addrs });
  }
  return [...seen.values()];
}

/** A netns without IPv6 has no if_inet6 file. */
function readIfInet6(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return '';
    throw err;
  }
}

/** The agent's own netns (the host's, with hostNetwork): never a pod's. */
export function ownNetnsId(): string {
  return idOf(statSync('/proc/self/ns/net'));
}

/** An open fd of a network namespace and its identity. */
export interface OpenNetns {
  fd: number;
  id: string;
}

/**
 * Opens a network namespace file (CNI_NETNS, or `<proc>/<pid>/ns/net`) and checks that it
 * is one: an fd of anything else must never reach ztunnel. `expectId`: the namespace the
 * scan saw there (a pid reused in between is refused).
 */
export function openNetns(path: string, expectId?: string): OpenNetns {
  const nsfs = statSync('/proc/self/ns/net');
  const fd = openSync(path, 'r');
  try {
    const st = fstatSync(fd);
    if (st.dev !== nsfs.dev) throw new Error(`${path} is not a network namespace`);
    const id = idOf(st);
    if (expectId !== undefined && id !== expectId) throw new Error(`${path} is another network namespace than the one scanned (${id}, not ${expectId})`);
    return { fd, id };
  } catch (err) {
    closeSync(fd);
    throw err;
  }
}

/** The identity of a netns path as it is now, or null when the path is gone. */
export function netnsIdAt(path: string): string | null {
  try {
    return idOf(statSync(path));
  } catch {
    return null;
  }
}
