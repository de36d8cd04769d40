/**
 * The iptables-restore inputs of the iptables mode, from the desired chains (rules.ts) and
 * what iptables-save printed: pure text in, text out; side.ts and uninstall.ts run them.
 */
import type { ChainSpec, parseSave } from './rules.js';

/** iptables-restore input that makes our chains hold `want`, jumped to once each. */
export function chainRestoreInput(want: ChainSpec[], save: ReturnType<typeof parseSave>): string | null {
  const byTable = new Map<string, string[]>();
  for (const c of want) {
    const t = save.get(c.table);
    const haveRules = t?.rules.get(c.chain) ?? [];
    const jumps = (t?.rules.get(c.base) ?? []).filter((r) => r === `-j ${c.chain}`).length;
    const same = !!t?.chains.has(c.chain) && haveRules.length === c.rules.length && haveRules.every((r, i) => r === c.rules[i]);
    const lines: string[] = [];
    if (!same) lines.push(`:${c.chain} - [0:0]`, ...c.rules.map((r) => `-A ${c.chain} ${r}`));
    if (jumps === 0) lines.push(`-I ${c.base} -j ${c.chain}`);
    for (let i = 1; i < jumps; i++) lines.push(`-D ${c.base} -j ${c.chain}`);
    if (lines.length) byTable.set(c.table, [...(byTable.get(c.table) ?? []), ...lines]);
  }
  if (byTable.size === 0) return null;
  // Chain declarations first within a table: a jump needs its target to exist.
  return (
    [...byTable.entries()]
      .map(([table, lines]) => [`*${table}`, ...lines.filter((l) => l.startsWith(':')), ...lines.filter((l) => !l.startsWith(':')), 'COMMIT'].join('\n'))
      .join('\n') + '\n'
  );
}

/** iptables-restore input that removes our chains and the jumps to them; null if none. */
export function chainRemovalInput(chains: readonly { table: string; chain: string; base: string }[], save: ReturnType<typeof parseSave>): string | null {
  const byTable = new Map<string, string[]>();
  const seen = new Set<string>();
  for (const c of chains) {
    const t = save.get(c.table);
    if (!t) continue;
    const lines = byTable.get(c.table) ?? [];
    for (const r of t.rules.get(c.base) ?? []) if (r === `-j ${c.chain}`) lines.push(`-D ${c.base} -j ${c.chain}`);
    if (t.chains.has(c.chain) && !seen.has(`${c.table}/${c.chain}`)) {
      seen.add(`${c.table}/${c.chain}`);
      lines.push(`-F ${c.chain}`, `-X ${c.chain}`);
    }
    if (lines.length) byTable.set(c.table, lines);
  }
  if (byTable.size === 0) return null;
  // Jumps go before the chains they point at can be deleted.
  return (
    [...byTable.entries()]
      .map(([table, lines]) => [`*${table}`, ...lines.filter((l) => l.startsWith('-D')), ...lines.filter((l) => !l.startsWith('-D')), 'COMMIT'].join('\n'))
      .join('\n') + '\n'
  );
}

/**
 * Tables that hold nothing now (built-in chains, ACCEPT policies, no rule) among those
 * the removal touched. With the nft backend, iptables-restore created them when we first
 * wrote to them; an empty table filters nothing, so deleting it leaves the node as before.
 */
export function emptyTables(save: string, touched: readonly string[]): string[] {
  const out: string[] = [];
  let table: string | null = null;
  let empty = true;
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) {
      table = line.slice(1).trim();
      empty = true;
    } else if (table && line.startsWith(':')) {
      if (line.split(' ')[1] !== 'ACCEPT') empty = false;
    } else if (table && line.startsWith('-')) {
      empty = false;
    } else if (table && line === 'COMMIT') {
      if (empty && touched.includes(table)) out.push(table);
      table = null;
    }
  }
  return out;
}
