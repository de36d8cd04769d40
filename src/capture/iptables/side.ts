/**
 * One side of the iptables mode's data path, the node's netns or ztunnel's, as the kernel
 * holds it: reading its links, routes, rules, iptables chains and ipsets, and applying the
 * difference to a plan (rules.ts). Every command goes through the CommandRunner.
 */
import type { CommandRunner } from '../../host/runner.js';
import type { Logger } from '../../log.js';
import type { Tunnel } from '../select.js';
import { type BackendKind, restoreCmd, saveCmd } from './backend.js';
import { chainRestoreInput } from './restore.js';
import {
  ALIAS_PREFIX,
  FAMILIES,
  IFSET,
  IPSET,
  LINK,
  ROUTE_PROTO,
  TUNNEL_PORT,
  parseRoutes,
  parseRules,
  parseSave,
  routeArgs,
  routeDelArgs,
  ruleOpArgs,
  routeKey,
  ruleKey,
  tunnelArgs,
  type ChainSpec,
  type Family,
  type RouteSpec,
  type RuleSpec,
  type SidePlan,
  type TunnelSpec,
} from './rules.js';

// --- running in a netns ----------------------------------------------------------------

/** null: the netns the controller runs in (the node's). */
export type Ns = string | null;
export const ipCmd = (ns: Ns, ...args: string[]) => (ns ? ['ip', '-n', ns, ...args] : ['ip', ...args]);
export const inNs = (ns: Ns, argv: string[]) => (ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv);

// --- reading a side --------------------------------------------------------------------

export interface LinkState {
  ifindex?: number;
  kind?: string;
  vni?: number;
  remote?: string;
  port?: number;
  alias?: string;
  up: boolean;
  addrs: string[];
}

export interface IpAddrJson {
  ifindex?: number;
  ifname: string;
  flags?: string[];
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; remote?: string; remote6?: string; port?: number } };
  addr_info?: { local: string; prefixlen: number }[];
}

export async function readLinks(runner: CommandRunner, ns: Ns): Promise<Map<string, LinkState>> {
  const text = (await runner.run(ipCmd(ns, '-j', '-d', 'addr', 'show'))).trim();
  const out = new Map<string, LinkState>();
  for (const l of text ? (JSON.parse(text) as IpAddrJson[]) : []) {
    const d = l.linkinfo?.info_data;
    out.set(l.ifname, {
      ...(l.ifindex !== undefined && { ifindex: l.ifindex }),
      ...(l.linkinfo?.info_kind && { kind: l.linkinfo.info_kind }),
      ...(d?.id !== undefined && { vni: d.id }),
      ...((d?.remote ?? d?.remote6) && { remote: d?.remote ?? d?.remote6 }),
      ...(d?.port !== undefined && { port: d.port }),
      ...(l.ifalias && { alias: l.ifalias }),
      up: l.flags?.includes('UP') ?? false,
      addrs: (l.addr_info ?? []).map((a) => `${a.local}/${a.prefixlen}`),
    });
  }
  return out;
}

export interface SideState {
  links: Map<string, LinkState>;
  routes: RouteSpec[];
  rules: RuleSpec[];
  /** iptables-save per family, parsed. */
  saves: Record<Family, ReturnType<typeof parseSave>>;
}

export async function readSide(runner: CommandRunner, ns: Ns, backend: BackendKind): Promise<SideState> {
  const [links, r4, r6, u4, u6, s4, s6] = await Promise.all([
    readLinks(runner, ns),
    runner.run(ipCmd(ns, '-4', '-j', 'route', 'show', 'table', 'all', 'proto', ROUTE_PROTO)),
    runner.run(ipCmd(ns, '-6', '-j', 'route', 'show', 'table', 'all', 'proto', ROUTE_PROTO)),
    runner.run(ipCmd(ns, '-4', '-j', 'rule', 'show')),
    runner.run(ipCmd(ns, '-6', '-j', 'rule', 'show')),
    runner.run(inNs(ns, saveCmd(backend, 4))),
    runner.run(inNs(ns, saveCmd(backend, 6))),
  ]);
  return {
    links,
    routes: [...parseRoutes(4, r4), ...parseRoutes(6, r6)],
    rules: [...parseRules(4, u4), ...parseRules(6, u6)],
    saves: { 4: parseSave(s4), 6: parseSave(s6) },
  };
}

// --- applying a side -------------------------------------------------------------------

interface Counts {
  added: number;
  removed: number;
}

/** One `ip -batch` per family and netns: one process for any number of changes. */
export async function ipBatch(runner: CommandRunner, ns: Ns, family: Family | null, lines: string[][]): Promise<void> {
  if (lines.length === 0) return;
  const argv = ipCmd(ns, ...(family ? [`-${family}`] : []), '-batch', '-');
  await runner.run(argv, { input: lines.map((l) => l.join(' ')).join('\n') + '\n' });
}

function linkMatches(want: TunnelSpec, have: LinkState | undefined): boolean {
  return (
    !!have &&
    have.kind === want.kind &&
    have.vni === want.vni &&
    have.remote === want.remote &&
    have.port === want.port &&
    (want.alias === undefined || have.alias === want.alias)
  );
}

export const isOurNodeLink = (name: string, l: LinkState) => (name === LINK.inbound.node || name === LINK.outbound.node) && !!l.alias?.startsWith(ALIAS_PREFIX);
export const isOurZtunnelLink = (name: string) => name === LINK.inbound.ztunnel || name === LINK.outbound.ztunnel;

export async function applyLinks(
  runner: CommandRunner,
  log: Logger,
  ns: Ns,
  want: TunnelSpec[],
  have: Map<string, LinkState>,
): Promise<{ counts: Counts; created: boolean }> {
  const lines: string[][] = [];
  let added = 0;
  let created = false;
  const creating = want.filter((t) => !linkMatches(t, have.get(t.name)));
  if (creating.some((t) => t.kind === 'geneve')) await warnIfPortTaken(runner, log, ns, 'geneve', have);
  for (const t of want) {
    const cur = have.get(t.name);
    let addrs = cur?.addrs ?? [];
    if (!linkMatches(t, cur)) {
      if (cur) lines.push(['link', 'del', t.name]);
      lines.push(tunnelArgs(t));
      if (t.alias) lines.push(['link', 'set', 'dev', t.name, 'alias', `"${t.alias}"`]);
      addrs = [];
      added++;
      created = true;
    }
    for (const a of t.addrs) if (!addrs.includes(a)) lines.push(['addr', 'add', a, 'dev', t.name, ...(a.includes(':') ? ['nodad'] : [])]);
    if (!cur?.up || !linkMatches(t, cur)) lines.push(['link', 'set', 'dev', t.name, 'up']);
  }
  try {
    await ipBatch(runner, ns, null, lines);
  } catch (err) {
    const geneve = creating.find((t) => t.kind === 'geneve');
    if (geneve)
      throw new Error(
        `creating the Geneve tunnel ${geneve.name} failed (UDP ${TUNNEL_PORT.geneve} in use, or no Geneve driver? --tunnel vxlan avoids both): ${(err as Error).message}`,
        { cause: err },
      );
    throw err;
  }
  return { counts: { added, removed: 0 }, created };
}

/** Says so when someone else already listens on the Geneve port here. */
async function warnIfPortTaken(runner: CommandRunner, log: Logger, ns: Ns, kind: Tunnel, have: Map<string, LinkState>): Promise<void> {
  const port = TUNNEL_PORT[kind];
  const ours = [...have.entries()].some(([name, l]) => l.kind === kind && (isOurZtunnelLink(name) || isOurNodeLink(name, l)));
  if (ours) return;
  const out = (await runner.run(inNs(ns, ['ss', '-H', '-u', '-l', '-n', 'sport', '=', `:${port}`])).catch(() => '')).trim();
  if (out)
    log.warn(`UDP port ${port} (${kind}) is already in use`, {
      netns: ns ?? 'node',
      sockets: out.split('\n'),
      hint: 'another tunnel (a CNI?) owns it; our devices share it if their VNIs differ, else use --tunnel vxlan',
    });
}

export async function deleteLinks(runner: CommandRunner, ns: Ns, names: string[]): Promise<number> {
  await ipBatch(
    runner,
    ns,
    null,
    names.map((n) => ['link', 'del', n]),
  );
  return names.length;
}

const slot = (r: RouteSpec) => `${r.family} ${r.table} ${r.dst}`;

export async function applyRoutesAndRules(runner: CommandRunner, ns: Ns, want: SidePlan, have: SideState): Promise<Counts> {
  let added = 0;
  let removed = 0;
  for (const f of FAMILIES) {
    const lines: string[][] = [];
    const haveRoutes = have.routes.filter((r) => r.family === f);
    const wantRoutes = want.routes.filter((r) => r.family === f);
    const haveKeys = new Set(haveRoutes.map(routeKey));
    for (const r of wantRoutes)
      if (!haveKeys.has(routeKey(r))) {
        lines.push(['route', 'replace', ...routeArgs(r)]);
        added++;
      }
    const wantSlots = new Set(wantRoutes.map(slot));
    for (const r of haveRoutes) {
      if (wantSlots.has(slot(r))) continue;
      lines.push(routeDelArgs(r));
      removed++;
    }
    const haveRules = new Set(have.rules.filter((r) => r.family === f).map(ruleKey));
    const wantRules = want.rules.filter((r) => r.family === f);
    const wantRuleKeys = new Set(wantRules.map(ruleKey));
    for (const r of wantRules)
      if (!haveRules.has(ruleKey(r))) {
        lines.push(ruleOpArgs('add', r));
        added++;
      }
    for (const r of have.rules.filter((x) => x.family === f && !wantRuleKeys.has(ruleKey(x)))) {
      lines.push(ruleOpArgs('del', r));
      removed++;
    }
    await ipBatch(runner, ns, f, lines);
  }
  return { added, removed };
}

export async function applyChains(runner: CommandRunner, ns: Ns, backend: BackendKind, want: ChainSpec[], have: SideState): Promise<number> {
  let changed = 0;
  for (const f of FAMILIES) {
    const input = chainRestoreInput(
      want.filter((c) => c.family === f),
      have.saves[f],
    );
    if (!input) continue;
    await runner.run(inNs(ns, restoreCmd(backend, f)), { input });
    changed++;
  }
  return changed;
}

// --- ipsets ----------------------------------------------------------------------------

export async function readSetNames(runner: CommandRunner): Promise<Set<string>> {
  return new Set(
    (await runner.run(['ipset', 'list', '-n']))
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

export async function readSetMembers(runner: CommandRunner, sets: Record<Family, string> = IPSET): Promise<Map<string, Family>> {
  const names = await readSetNames(runner);
  const members = new Map<string, Family>();
  for (const f of FAMILIES) {
    if (!names.has(sets[f])) continue;
    for (const line of (await runner.run(['ipset', 'save', sets[f]])).split('\n')) {
      const m = /^add \S+ (\S+)/.exec(line);
      if (m) members.set(m[1]!, f);
    }
  }
  return members;
}

const inet = (f: Family) => (f === 4 ? 'inet' : 'inet6');
export const createSetLines = (f: Family) => [`create ${IPSET[f]} hash:ip family ${inet(f)}`, `create ${IFSET[f]} hash:net,iface family ${inet(f)}`];

/** The named network namespaces (`ip netns list`). */
export async function listNetns(runner: CommandRunner): Promise<Set<string>> {
  const text = (await runner.run(['ip', '-j', 'netns', 'list'])).trim();
  return new Set(text ? (JSON.parse(text) as { name: string }[]).map((n) => n.name) : []);
}
