/**
 * A netns of the simulated node made strict, as a node whose distribution defaults to
 * `rp_filter=1` (docs/operations.md "Sysctls"): `all`, `default` (links made later) and
 * every link at 1. Run before the capture is installed.
 */
import { systemRunner } from '../../src/host/runner.js';

const run = (argv: string[]) => systemRunner.run(argv);

export async function strictRpFilter(ns: string): Promise<void> {
  await run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.conf.all.rp_filter=1', 'net.ipv4.conf.default.rp_filter=1']);
  const links = JSON.parse(await run(['ip', '-n', ns, '-j', 'link', 'show'])) as { ifname: string }[];
  for (const l of links) await run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv4.conf.${l.ifname}.rp_filter=1`]);
}

/** Every rp_filter (and every `all`/`default`) in a netns, as name=value lines. */
export async function rpFilters(ns: string): Promise<string[]> {
  const out = await run(['ip', 'netns', 'exec', ns, 'sysctl', '-a', '--pattern', '\\.rp_filter$']);
  return out
    .split('\n')
    .map((l) => l.replace(/\s/g, ''))
    .filter(Boolean)
    .sort();
}
