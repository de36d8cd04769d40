/**
 * Finding a pod's netns through the host's processes (src/host/pod-netns.ts): the /proc parsers
 * on fixtures shaped as the kernel writes them, and the matching rules (one namespace
 * holding every IP of the pod, never a guess).
 */
import { closeSync, linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  canonicalIpv6,
  matchNetns,
  netnsIdAt,
  openNetns,
  ownNetnsId,
  parseFibTrieLocal,
  parseIfInet6,
  scanHostNetns,
  type NetnsCandidate,
} from '../../src/host/pod-netns.js';

// A pod netns's /proc/<pid>/net/fib_trie: lo, eth0 with 10.244.1.7/32, a default route.
const FIB_TRIE = `Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 10.244.1.7
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.244.1.0/24 2 0 2
        |-- 10.244.1.0
           /24 link UNICAST
        |-- 10.244.1.7
           /32 host LOCAL
        |-- 10.244.1.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
`;

const IF_INET6 = `fe8000000000000000fc00fffe000001 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000a07 02 80 00 80     eth0
20010db8000000010000000000000000 02 40 00 80     eth0
`;

describe('the /proc readers', () => {
  it('fib_trie: the LOCAL host addresses, without loopback, broadcast or networks', () => {
    expect(parseFibTrieLocal(FIB_TRIE)).toEqual(['10.244.1.7']);
    expect(parseFibTrieLocal('')).toEqual([]);
  });

  it('if_inet6: global addresses, canonical, without loopback and link-local', () => {
    expect(parseIfInet6(IF_INET6)).toEqual(['2001:db8:0:1::', 'fd00::a07']);
    expect(parseIfInet6('garbage\n')).toEqual([]);
  });

  it('IPv6 in the shortest form (the longest run of zeros, only runs of two or more)', () => {
    expect(canonicalIpv6('fd00:0:0:0:0:0:0:a07')).toBe('fd00::a07');
    expect(canonicalIpv6('2001:db8:0:1:0:0:0:1')).toBe('2001:db8:0:1::1');
    expect(canonicalIpv6('2001:db8:1:1:1:1:0:1')).toBe('2001:db8:1:1:1:1:0:1');
    expect(canonicalIpv6('0:0:0:0:0:0:0:0')).toBe('::');
  });
});

describe('matching a pod to a netns', () => {
  const ns = (id: string, pid: number, ...addrs: string[]): NetnsCandidate => ({ id, pid, addrs });
  const host = ns('4:1', 1, '192.0.2.2');
  const podA = ns('4:100', 200, '10.244.1.7', 'fd00::a07');
  const podB = ns('4:101', 300, '10.244.1.8');

  it('the one netns holding every IP of the pod', () => {
    expect(matchNetns(['10.244.1.7', 'fd00::a07'], [host, podA, podB])).toEqual({ kind: 'found', candidate: podA });
    expect(matchNetns(['10.244.1.8'], [host, podA, podB])).toEqual({ kind: 'found', candidate: podB });
  });

  it('none: no netns holds the IP, or the pod has no IP', () => {
    expect(matchNetns(['10.244.1.9'], [host, podA, podB]).kind).toBe('none');
    expect(matchNetns([], [host, podA]).kind).toBe('none');
  });

  it('never a guess: two netns with the IP, or the IPs split, is ambiguous', () => {
    const reused = ns('4:102', 400, '10.244.1.7');
    expect(matchNetns(['10.244.1.7'], [podA, reused])).toMatchObject({ kind: 'ambiguous', reason: expect.stringMatching(/2 network namespaces/) });
    expect(matchNetns(['10.244.1.8', 'fd00::b'], [podB])).toMatchObject({ kind: 'ambiguous', reason: expect.stringMatching(/lacks fd00::b/) });
  });

  it('the agent’s own netns is never a pod’s, even holding the IP', () => {
    const hostWithIt = ns('4:1', 1, '10.244.1.7');
    expect(matchNetns(['10.244.1.7'], [hostWithIt, podA], new Set(['4:1']))).toEqual({ kind: 'found', candidate: podA });
    expect(matchNetns(['10.244.1.7'], [hostWithIt], new Set(['4:1'])).kind).toBe('none');
  });
});

describe('the /proc adapter', () => {
  it('scans a proc folder: one candidate per namespace (two processes in one netns are one), its addresses, processes that vanish skipped', () => {
    const proc = mkdtempSync(join(tmpdir(), 'zds-proc-'));
    try {
      const pidDir = (pid: number, fib: string, inet6: string | null) => {
        mkdirSync(join(proc, String(pid), 'ns'), { recursive: true });
        mkdirSync(join(proc, String(pid), 'net'));
        writeFileSync(join(proc, String(pid), 'net', 'fib_trie'), fib);
        if (inet6 !== null) writeFileSync(join(proc, String(pid), 'net', 'if_inet6'), inet6);
      };
      pidDir(200, FIB_TRIE, IF_INET6);
      writeFileSync(join(proc, '200', 'ns', 'net'), '');
      // pid 201 shares 200's namespace (the same inode, as a second container of a pod does).
      pidDir(201, FIB_TRIE, IF_INET6);
      linkSync(join(proc, '200', 'ns', 'net'), join(proc, '201', 'ns', 'net'));
      // pid 300: another netns, IPv4 only (no if_inet6 file at all).
      pidDir(300, FIB_TRIE.replaceAll('10.244.1.7', '10.244.1.8'), null);
      writeFileSync(join(proc, '300', 'ns', 'net'), '');
      // pid 400 ended between readdir and stat: no ns/net.
      mkdirSync(join(proc, '400'));
      mkdirSync(join(proc, 'self'));
      const found = scanHostNetns(proc).sort((a, b) => a.pid - b.pid);
      expect(found.map((c) => ({ pid: c.pid, addrs: c.addrs }))).toEqual([
        { pid: 200, addrs: ['10.244.1.7', '2001:db8:0:1::', 'fd00::a07'] },
        { pid: 300, addrs: ['10.244.1.8'] },
      ]);
      expect(found[0]!.id).toBe(netnsIdAt(join(proc, '201', 'ns', 'net')));
      expect(matchNetns(['10.244.1.7', 'fd00::a07'], found)).toMatchObject({ kind: 'found', candidate: { pid: 200 } });
    } finally {
      rmSync(proc, { recursive: true, force: true });
    }
  });

  it('a proc folder that cannot be listed is a clear error', () => {
    expect(() => scanHostNetns('/nonexistent-proc')).toThrow(/cannot list \/nonexistent-proc: .*hostPID, or --host-proc/);
  });

  it('opens only a network namespace, and only the one the scan saw', () => {
    const own = openNetns('/proc/self/ns/net');
    try {
      expect(own.id).toBe(ownNetnsId());
    } finally {
      closeSync(own.fd);
    }
    expect(() => openNetns('/dev/null')).toThrow(/\/dev\/null is not a network namespace/);
    expect(() => openNetns('/proc/self/ns/net', '4:1')).toThrow(/another network namespace than the one scanned/);
    expect(netnsIdAt('/nonexistent')).toBeNull();
  });
});
