/**
 * Uninstalling the iptables mode: everything it created on this node and in the ztunnel
 * netns its tunnels point at, and nothing else. Also used by the mode for a ztunnel netns it
 * left behind (removeZtunnelSide).
 */
import type { CommandRunner } from '../../host/runner.js';
import { Cleanup, type CleanupReport, isMissingTool } from '../cleanup.js';
import { backendsPresent, type BackendKind, restoreCmd, saveCmd } from './backend.js';
import { chainRemovalInput, emptyTables } from './restore.js';
import {
  ALIAS_PREFIX,
  FAMILIES,
  IFSET,
  IPSET,
  OUR_CHAINS,
  ROUTE_PROTO,
  ZTUNNEL_CHAINS,
  parseRoutes,
  parseRules,
  parseSave,
  routeDelArgs,
  ruleOpArgs,
  type Family,
} from './rules.js';
import { readRpFilterRecords, writeRpFilterRecords } from './rpfilter-record.js';
import { restoreRpFilterRecords } from '../../host/rpfilter.js';
import { deleteLinks, inNs, ipBatch, ipCmd, isOurNodeLink, isOurZtunnelLink, type LinkState, listNetns, type Ns, readLinks, readSetNames } from './side.js';

const where = (ns: Ns) => (ns ? ` in ${ns}` : '');

async function removeChains(
  runner: CommandRunner,
  c: Cleanup,
  ns: Ns,
  backends: BackendKind[],
  chains: readonly { table: string; chain: string; base: string }[],
): Promise<void> {
  for (const b of backends) {
    for (const f of FAMILIES) {
      const cmd = f === 4 ? 'iptables' : 'ip6tables';
      const input = await c.step(`remove our ${cmd} (${b}) chains${where(ns)}`, async () => {
        let save: string;
        try {
          save = await runner.run(inNs(ns, saveCmd(b, f)));
        } catch {
          return undefined; // this backend has no tables for this family here: nothing of ours
        }
        const input = chainRemovalInput(chains, parseSave(save));
        if (!input) return undefined;
        await runner.run(inNs(ns, restoreCmd(b, f)), { input });
        c.removed.push(
          `removed ${cmd} (${b}) chains ${[
            ...new Set(
              input
                .split('\n')
                .filter((l) => l.startsWith('-X'))
                .map((l) => l.slice(3)),
            ),
          ].join(', ')}${where(ns)}`,
        );
        return input;
      });
      if (input && b === 'nft') await dropEmptyTables(runner, c, ns, f, input);
    }
  }
}

/**
 * Cosmetic: the tables are empty, so they filter nothing. Without the `nft` command the
 * step is skipped (and said so), never failed: the data path is gone either way.
 */
async function dropEmptyTables(runner: CommandRunner, c: Cleanup, ns: Ns, f: Family, input: string): Promise<void> {
  const family = f === 4 ? 'ip' : 'ip6';
  const step = `delete the empty nft ${family} tables we created${where(ns)}`;
  const touched = input
    .split('\n')
    .filter((l) => l.startsWith('*'))
    .map((l) => l.slice(1));
  await c.step(step, async () => {
    const empty = emptyTables(await runner.run(inNs(ns, saveCmd('nft', f))), touched);
    for (const t of empty) {
      try {
        await runner.run(inNs(ns, ['nft', 'delete', 'table', family, t]));
      } catch (err) {
        if (!isMissingTool(err)) throw err;
        c.skip('delete the empty nft tables we created', 'nft is not installed; the empty tables filter nothing and are left');
        return;
      }
      c.removed.push(`deleted the empty ${family} ${t} table${where(ns)}`);
    }
  });
}

async function removeRoutesAndRules(runner: CommandRunner, c: Cleanup, ns: Ns): Promise<void> {
  for (const f of FAMILIES) {
    await c.step(`remove our IPv${f} ip rules and routes${where(ns)}`, async () => {
      const routes = parseRoutes(f, await runner.run(ipCmd(ns, `-${f}`, '-j', 'route', 'show', 'table', 'all', 'proto', ROUTE_PROTO)));
      const rules = parseRules(f, await runner.run(ipCmd(ns, `-${f}`, '-j', 'rule', 'show')));
      await ipBatch(runner, ns, f, [...rules.map((r) => ruleOpArgs('del', r)), ...routes.map((r) => routeDelArgs(r))]);
      if (rules.length) c.removed.push(`removed ${rules.length} IPv${f} ip rules${where(ns)}`);
      if (routes.length) c.removed.push(`removed ${routes.length} IPv${f} routes${where(ns)}`);
    });
  }
}

/** Puts back the rp_filter values we recorded (devices, then default, then all), then drops the record chain. */
async function restoreRpFilter(runner: CommandRunner, c: Cleanup, b: BackendKind, links: Map<string, LinkState>, procSys: string): Promise<void> {
  await c.step(`restore the rp_filter values we changed (records in ${b} iptables)`, async () => {
    let read: Awaited<ReturnType<typeof readRpFilterRecords>>;
    try {
      read = await readRpFilterRecords(runner, b);
    } catch {
      return; // this backend has no IPv4 tables here: no records
    }
    if (!read.chainExists) return;
    const done = restoreRpFilterRecords(read.records, (dev) => links.get(dev)?.ifindex, procSys);
    c.removed.push(...done.map((r) => `restored rp_filter=${r.was} on ${r.dev}`));
    await writeRpFilterRecords(runner, b, [], true);
    c.removed.push(`removed the rp_filter records (${b} iptables mangle ztunnel-RPFILTER)`);
  });
}

export async function removeZtunnelSide(runner: CommandRunner, c: Cleanup, ns: string, backends: BackendKind[]): Promise<void> {
  await removeChains(runner, c, ns, backends, ZTUNNEL_CHAINS);
  await removeRoutesAndRules(runner, c, ns);
  await c.step(`delete our tunnel links in ${ns}`, async () => {
    const links = [...(await readLinks(runner, ns)).keys()].filter(isOurZtunnelLink);
    await deleteLinks(runner, ns, links);
    c.removed.push(...links.map((l) => `deleted ${l} in ${ns}`));
  });
}

/**
 * Removes everything the iptables mode created on this node (run in the node's netns) and
 * in the ztunnel netns its tunnels point at; nothing else. Idempotent. Every step runs
 * even when another failed; the report says what each did.
 */
export async function uninstallIptables(runner: CommandRunner, procSys = '/proc/sys'): Promise<CleanupReport> {
  const c = new Cleanup();
  const backends = await backendsPresent(runner);
  const links = (await c.step("read the node's links", () => readLinks(runner, null))) ?? new Map<string, LinkState>();
  const ours = [...links.entries()].filter(([n, l]) => isOurNodeLink(n, l));
  const ztNetns = new Set(ours.map(([, l]) => l.alias!.slice(ALIAS_PREFIX.length)));
  const existing = (await c.step('list network namespaces', () => listNetns(runner))) ?? new Set<string>();
  for (const ns of ztNetns) if (existing.has(ns)) await removeZtunnelSide(runner, c, ns, backends);

  // Before the tunnels go: a pod's packets keep passing until the last of ours is gone.
  for (const b of backends) await restoreRpFilter(runner, c, b, links, procSys);
  await removeChains(runner, c, null, backends, OUR_CHAINS);
  await removeRoutesAndRules(runner, c, null);
  await c.step('delete our tunnel links', async () => {
    await deleteLinks(
      runner,
      null,
      ours.map(([n]) => n),
    );
    c.removed.push(...ours.map(([n]) => `deleted ${n}`));
  });
  let sets: Set<string> | undefined;
  try {
    sets = await readSetNames(runner);
  } catch (err) {
    if (isMissingTool(err)) c.skip('destroy our ipsets', 'ipset is not installed, so it never made ours');
    else c.failed.push({ step: 'list ipsets', error: err instanceof Error ? err.message : String(err) });
  }
  for (const name of FAMILIES.flatMap((f) => [IPSET[f], IFSET[f]])) {
    if (!sets?.has(name)) continue;
    await c.step(`destroy ipset ${name}`, async () => {
      await runner.run(['ipset', 'destroy', name]);
      c.removed.push(`destroyed ipset ${name}`);
    });
  }
  return c;
}
