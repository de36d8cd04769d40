/**
 * What a network namespace holds that a capture may touch, for "as before" checks: taken
 * before install and compared after remove or uninstall. Counters, timers and secrets
 * that change by themselves are left out.
 */
import { closeSync, openSync } from 'node:fs';
import { BPF_SK_LOOKUP, netnsQuery } from '../../src/bpf/ffi.js';
import { systemRunner } from '../../src/host/runner.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** iptables-save text without its comment lines and counters. */
function save(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .map((l) => l.replace(/\[\d+:\d+\]/g, ''))
    .join('\n');
}

/** The named netns `ns`; `devs`: devices whose clsact filters to include. */
export async function netnsSnapshot(ns: string, devs: readonly string[] = []): Promise<Record<string, string>> {
  const exec = (argv: string[]) => run(['ip', 'netns', 'exec', ns, ...argv]).catch((err: Error) => `failed: ${err.message}`);
  const snap: Record<string, string> = {
    links: await run(['ip', '-n', ns, '-d', 'link', 'show']),
    addrs: await run(['ip', '-n', ns, 'addr', 'show']),
    routes4: await run(['ip', '-n', ns, '-4', 'route', 'show', 'table', 'all']),
    routes6: await run(['ip', '-n', ns, '-6', 'route', 'show', 'table', 'all']),
    rules4: await run(['ip', '-n', ns, '-4', 'rule', 'show']),
    rules6: await run(['ip', '-n', ns, '-6', 'rule', 'show']),
    qdiscs: await run(['tc', '-n', ns, 'qdisc', 'show']),
    'iptables-nft': save(await exec(['iptables-nft-save'])),
    'ip6tables-nft': save(await exec(['ip6tables-nft-save'])),
    'iptables-legacy': save(await exec(['iptables-legacy-save'])),
    'ip6tables-legacy': save(await exec(['ip6tables-legacy-save'])),
    nft: await exec(['nft', 'list', 'ruleset']),
    ipsets: await exec(['ipset', 'list']),
  };
  for (const d of devs) for (const dir of ['ingress', 'egress']) snap[`filters ${d} ${dir}`] = await run(['tc', '-n', ns, 'filter', 'show', 'dev', d, dir]);
  // Every net.* sysctl of the netns, minus the ones that count or randomise by themselves.
  snap.sysctls = (await run(['ip', 'netns', 'exec', ns, 'sysctl', '-a', '--pattern', '^net\\.']).catch((e: { stdout?: string }) => e.stdout ?? ''))
    .split('\n')
    .filter((l) => !/stable_secret|\.nf_conntrack_count|hash_?secret|base_reachable_time|fib_sync_mem|flowlabel/.test(l))
    .join('\n');
  // The netns's socket lookup programs (the eBPF in-pod capture's link).
  const fd = openSync(`/var/run/netns/${ns}`, 'r');
  try {
    snap.skLookup = `sk_lookup programs: ${netnsQuery(fd, BPF_SK_LOOKUP, ns).length}`;
  } finally {
    closeSync(fd);
  }
  for (const k of Object.keys(snap)) snap[k] = snap[k]!.replace(/\s+used \d+|\s+\d+sec/g, '');
  return snap;
}
