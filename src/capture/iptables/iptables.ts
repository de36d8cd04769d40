/**
 * The iptables capture mode: an ipset of enrolled pods, mangle marks, `ip rule` fwmark →
 * route tables, Geneve (or VXLAN) tunnels to ztunnel's netns, TPROXY there. The desired
 * state comes from rules.ts; this module reads what the kernel holds, applies
 * the difference, and uninstalls. Every command goes through the CommandRunner.
 */
import type { Desired } from '../../core/desired.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Logger } from '../../log.js';
import { Cleanup, type CleanupReport, isMissingTool } from '../cleanup.js';
import type { ActualState, ApplyResult, RedirectMode } from '../mode.js';
import {
  ALIAS_PREFIX,
  FAMILIES,
  IFSET,
  IPSET,
  LINK,
  OUR_CHAINS,
  ROUTE_PROTO,
  TUNNEL_PORT,
  ZTUNNEL_CHAINS,
  buildPlan,
  familyOf,
  parseRoutes,
  parseRules,
  parseSave,
  routeArgs,
  routeKey,
  ruleKey,
  tunnelArgs,
  type ChainSpec,
  type Family,
  type RouteSpec,
  type RuleSpec,
  type SidePlan,
  type TunnelSpec,
  type ZtunnelSide,
} from './rules.js';
import type { Tunnel } from '../select.js';

// --- the iptables backend --------------------------------------------------------------

export type BackendKind = 'nft' | 'legacy';

export interface Backend {
  kind: BackendKind;
  reason: string;
}

const saveCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-save`];
const restoreCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-restore`, '--noflush'];

async function countRules(runner: CommandRunner, b: BackendKind): Promise<number | null> {
  let n = 0;
  for (const f of FAMILIES) {
    try {
      n += (await runner.run(saveCmd(b, f))).split('\n').filter((l) => l.startsWith('-A ')).length;
    } catch (err) {
      if (isMissingTool(err)) return null;
      // A legacy save on a kernel without the legacy tables: nothing there.
    }
  }
  return n;
}

/**
 * The backend the node already uses: the one holding more rules (kube-proxy's, the
 * CNI's); on a tie, the one the `iptables` command points at.
 */
export async function detectBackend(runner: CommandRunner): Promise<Backend> {
  const [nft, legacy] = await Promise.all([countRules(runner, 'nft'), countRules(runner, 'legacy')]);
  if (nft === null && legacy === null) throw new Error('neither iptables-nft nor iptables-legacy is installed');
  if (nft === null) return { kind: 'legacy', reason: 'only iptables-legacy is installed' };
  if (legacy === null) return { kind: 'nft', reason: 'only iptables-nft is installed' };
  if (nft !== legacy) {
    const kind = nft > legacy ? 'nft' : 'legacy';
    return { kind, reason: `the node's rules are there (nft ${nft}, legacy ${legacy})` };
  }
  const version = await runner.run(['iptables', '--version']).catch(() => '');
  const kind: BackendKind = /legacy/.test(version) ? 'legacy' : 'nft';
  return { kind, reason: `no rules in either; \`iptables\` is ${version.trim() || 'unknown'}` };
}

// --- running in a netns ----------------------------------------------------------------

/** null: the netns the controller runs in (the node's). */
type Ns = string | null;
const ipCmd = (ns: Ns, ...args: string[]) => (ns ? ['ip', '-n', ns, ...args] : ['ip', ...args]);
const inNs = (ns: Ns, argv: string[]) => (ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv);

// --- reading a side --------------------------------------------------------------------

interface LinkState {
  ifindex?: number;
  kind?: string;
  vni?: number;
  remote?: string;
  port?: number;
  alias?: string;
  up: boolean;
  addrs: string[];
}

interface IpAddrJson {
  ifindex?: number;
  ifname: string;
  flags?: string[];
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; remote?: string; remote6?: string; port?: number } };
  addr_info?: { local: string; prefixlen: number }[];
}

async function readLinks(runner: CommandRunner, ns: Ns): Promise<Map<string, LinkState>> {
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

interface SideState {
  links: Map<string, LinkState>;
  routes: RouteSpec[];
  rules: RuleSpec[];
  /** iptables-save per family, parsed. */
  saves: Record<Family, ReturnType<typeof parseSave>>;
}

async function readSide(runner: CommandRunner, ns: Ns, backend: BackendKind): Promise<SideState> {
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
async function ipBatch(runner: CommandRunner, ns: Ns, family: Family | null, lines: string[][]): Promise<void> {
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

const isOurNodeLink = (name: string, l: LinkState) => (name === LINK.inbound.node || name === LINK.outbound.node) && !!l.alias?.startsWith(ALIAS_PREFIX);
const isOurZtunnelLink = (name: string) => name === LINK.inbound.ztunnel || name === LINK.outbound.ztunnel;

async function applyLinks(
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

async function deleteLinks(runner: CommandRunner, ns: Ns, names: string[]): Promise<number> {
  await ipBatch(
    runner,
    ns,
    null,
    names.map((n) => ['link', 'del', n]),
  );
  return names.length;
}

const slot = (r: RouteSpec) => `${r.family} ${r.table} ${r.dst}`;

async function applyRoutesAndRules(runner: CommandRunner, ns: Ns, want: SidePlan, have: SideState): Promise<Counts> {
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
      lines.push(['route', 'del', ...(r.type === 'unicast' ? [] : [r.type]), r.dst, 'table', r.table, 'proto', ROUTE_PROTO]);
      removed++;
    }
    const haveRules = new Set(have.rules.filter((r) => r.family === f).map(ruleKey));
    const wantRules = want.rules.filter((r) => r.family === f);
    const wantRuleKeys = new Set(wantRules.map(ruleKey));
    for (const r of wantRules)
      if (!haveRules.has(ruleKey(r))) {
        lines.push(['rule', 'add', 'priority', String(r.priority), ...r.args, 'protocol', ROUTE_PROTO]);
        added++;
      }
    for (const r of have.rules.filter((x) => x.family === f && !wantRuleKeys.has(ruleKey(x)))) {
      lines.push(['rule', 'del', 'priority', String(r.priority), ...r.args, 'protocol', ROUTE_PROTO]);
      removed++;
    }
    await ipBatch(runner, ns, f, lines);
  }
  return { added, removed };
}

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

async function applyChains(runner: CommandRunner, ns: Ns, backend: BackendKind, want: ChainSpec[], have: SideState): Promise<number> {
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

// --- ipsets ----------------------------------------------------------------------------

async function readSetNames(runner: CommandRunner): Promise<Set<string>> {
  return new Set(
    (await runner.run(['ipset', 'list', '-n']))
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean),
  );
}

async function readSetMembers(runner: CommandRunner, sets: Record<Family, string> = IPSET): Promise<Map<string, Family>> {
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
const createSetLines = (f: Family) => [`create ${IPSET[f]} hash:ip family ${inet(f)}`, `create ${IFSET[f]} hash:net,iface family ${inet(f)}`];

// --- the mode --------------------------------------------------------------------------

export interface IptablesOptions {
  runner: CommandRunner;
  log: Logger;
  tunnel: Tunnel;
  /** Capture the pods' DNS to ztunnel's 15053. */
  dnsCapture?: boolean;
  /** UDP (but captured DNS) and ICMP (but errors): pass uncaptured (default) or drop. */
  nonTcp?: 'pass' | 'drop';
  /** The cluster's DNS servers, read on every pass: UDP 53 to them goes direct without DNS capture. */
  dnsServers?: () => readonly string[];
  /** Forces a backend; detected when absent. */
  backend?: BackendKind;
}

export class IptablesRedirect implements RedirectMode {
  readonly name = 'iptables' as const;
  private backendInUse: Backend | null = null;

  constructor(private readonly opts: IptablesOptions) {}

  get backend(): BackendKind {
    if (!this.backendInUse) throw new Error('iptables mode not initialised');
    return this.backendInUse.kind;
  }

  async init(): Promise<void> {
    const { runner, log, tunnel } = this.opts;
    this.backendInUse = this.opts.backend ? { kind: this.opts.backend, reason: 'configured' } : await detectBackend(runner);
    await runner.run(['ipset', 'restore', '-exist'], { input: FAMILIES.flatMap(createSetLines).join('\n') + '\n' });
    log.info('iptables data path ready', { backend: this.backendInUse.kind, backendReason: this.backendInUse.reason, tunnel, tunnelPort: TUNNEL_PORT[tunnel] });
  }

  async actual(): Promise<ActualState> {
    const pods = new Map<string, { ifindex: number; mac: string; flags: number }>();
    for (const ip of (await readSetMembers(this.opts.runner)).keys()) pods.set(ip, { ifindex: 0, mac: '00:00:00:00:00:00', flags: 1 });
    return { pods, ztunnel: null, hooks: new Set() };
  }

  /** ztunnel's addresses (read in its netns) and the node's address toward each. */
  private async ztunnelSide(desired: Desired): Promise<ZtunnelSide | null> {
    const p = desired.ztunnelPlacement;
    if (!p) return null;
    const { runner } = this.opts;
    const text = (await runner.run(['ip', '-n', p.netns, '-j', 'addr', 'show', 'dev', p.peer.name])).trim();
    const info = text ? (JSON.parse(text) as IpAddrJson[]) : [];
    const ips = (info[0]?.addr_info ?? []).map((a) => a.local).filter((ip) => !ip.startsWith('fe80:'));
    const hostIps: Partial<Record<Family, string>> = {};
    for (const ip of ips) {
      const [route] = JSON.parse(await runner.run(['ip', '-j', 'route', 'get', ip])) as { prefsrc?: string }[];
      if (route?.prefsrc) hostIps[familyOf(ip)] = route.prefsrc;
    }
    return { netns: p.netns, hostVeth: p.hostLink.name, eth: p.peer.name, ips, hostIps };
  }

  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const { runner, log, tunnel } = this.opts;
    const backend = this.backend;
    const z = await this.ztunnelSide(desired);
    const node = await readSide(runner, null, backend);
    // Each pod's host veth by name, for the anti-spoofing rules and set.
    const byIndex = new Map([...node.links.entries()].filter(([, l]) => l.ifindex !== undefined).map(([n, l]) => [l.ifindex!, n]));
    const pods = [...desired.pods.entries()].map(([ip, info]) => ({ ip, dev: byIndex.get(info.ifindex) ?? null, flags: info.flags }));
    const lost = pods.filter((p) => p.dev === null).map((p) => p.ip);
    if (lost.length) log.warn('enrolled pods whose host veth is gone: their traffic is dropped until the next pass', { pods: lost });
    const plan = buildPlan({
      tunnel,
      pods,
      ztunnel: z,
      dnsCapture: this.opts.dnsCapture ?? false,
      nonTcp: this.opts.nonTcp ?? 'pass',
      dnsServers: this.opts.dnsServers?.() ?? [],
    });
    let attached = 0;
    let detached = 0;
    // Where the node-side devices say the other end lives: cleaned if ztunnel moved.
    const staleNetns = new Set([...node.links.entries()].filter(([n, l]) => isOurNodeLink(n, l)).map(([, l]) => l.alias!.slice(ALIAS_PREFIX.length)));

    // 1. ztunnel's side first: the tunnels' far end is ready before traffic enters them.
    if (plan.ztunnel) {
      staleNetns.delete(plan.ztunnel.netns);
      const ns = plan.ztunnel.netns;
      const zs = await readSide(runner, ns, backend);
      const links = await applyLinks(runner, log, ns, plan.ztunnel.links, zs.links);
      if (links.created) await runner.run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', ...plan.ztunnel.sysctls]);
      const rr = await applyRoutesAndRules(runner, ns, plan.ztunnel, zs);
      const ch = await applyChains(runner, ns, backend, plan.ztunnel.chains, zs);
      attached += links.counts.added + rr.added + ch;
      detached += rr.removed;
    }

    // 2. The node: tunnels, then routes and rules, then devices no longer wanted.
    const nl = await applyLinks(runner, log, null, plan.node.links, node.links);
    if (nl.created && plan.node.sysctls.length) await runner.run(['sysctl', '-q', '-w', ...plan.node.sysctls]);
    const rr = await applyRoutesAndRules(runner, null, plan.node, node);
    const unwanted = [...node.links.entries()].filter(([n, l]) => isOurNodeLink(n, l) && !plan.node.links.some((t) => t.name === n)).map(([n]) => n);
    detached += await deleteLinks(runner, null, unwanted);
    attached += nl.counts.added + rr.added;
    detached += rr.removed;

    // 3. Members before rules that use them; deletions last. A pod's (IP, veth) pair is
    // added before its IP (else the anti-spoofing rule drops it meanwhile), removed after.
    const have = new Set(actual.pods.keys());
    const want = new Set([...plan.sets[4], ...plan.sets[6]]);
    const adds = [...want].filter((ip) => !have.has(ip));
    const dels = [...have].filter((ip) => !want.has(ip));
    const haveIf = await readSetMembers(runner, IFSET);
    const wantIf = new Set([...plan.ifaceSets[4], ...plan.ifaceSets[6]]);
    const ifAdds = [...wantIf].filter((e) => !haveIf.has(e));
    const ifDels = [...haveIf.keys()].filter((e) => !wantIf.has(e));
    const member = (e: string) => familyOf(e.split(',')[0]!);
    const setLines = [
      ...FAMILIES.flatMap(createSetLines),
      ...ifAdds.map((e) => `add ${IFSET[member(e)]} ${e}`),
      ...adds.map((ip) => `add ${IPSET[familyOf(ip)]} ${ip}`),
    ];
    await runner.run(['ipset', 'restore', '-exist'], { input: setLines.join('\n') + '\n' });
    attached += await applyChains(runner, null, backend, plan.node.chains, node);
    const delLines = [...dels.map((ip) => `del ${IPSET[familyOf(ip)]} ${ip}`), ...ifDels.map((e) => `del ${IFSET[member(e)]} ${e}`)];
    if (delLines.length) await runner.run(['ipset', 'restore', '-exist'], { input: delLines.join('\n') + '\n' });

    // 4. A ztunnel that moved left our half of the tunnels in its old netns.
    const existing = await listNetns(runner);
    for (const ns of staleNetns) {
      if (!existing.has(ns)) continue;
      const c = new Cleanup();
      await removeZtunnelSide(runner, c, ns, [backend]);
      if (c.removed.length) log.info('removed our state from a former ztunnel netns', { netns: ns, removed: c.removed });
      for (const f of c.failed) log.warn('could not remove our state from a former ztunnel netns', { netns: ns, ...f });
    }
    if (!z) log.debug('no ztunnel: enrolled pods fail closed (unreachable routes)', {});
    return { upserted: adds.length, deleted: dels.length, attached, detached };
  }

  close(): void {}
}

async function listNetns(runner: CommandRunner): Promise<Set<string>> {
  const text = (await runner.run(['ip', '-j', 'netns', 'list'])).trim();
  return new Set(text ? (JSON.parse(text) as { name: string }[]).map((n) => n.name) : []);
}

// --- uninstall -------------------------------------------------------------------------

async function backendsPresent(runner: CommandRunner): Promise<BackendKind[]> {
  const out: BackendKind[] = [];
  for (const b of ['nft', 'legacy'] as const) {
    try {
      await runner.run(saveCmd(b, 4));
      out.push(b);
    } catch (err) {
      if (!isMissingTool(err)) out.push(b);
    }
  }
  return out;
}

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
      await ipBatch(runner, ns, f, [
        ...rules.map((r) => ['rule', 'del', 'priority', String(r.priority), ...r.args, 'protocol', ROUTE_PROTO]),
        ...routes.map((r) => ['route', 'del', ...(r.type === 'unicast' ? [] : [r.type]), r.dst, 'table', r.table, 'proto', ROUTE_PROTO]),
      ]);
      if (rules.length) c.removed.push(`removed ${rules.length} IPv${f} ip rules${where(ns)}`);
      if (routes.length) c.removed.push(`removed ${routes.length} IPv${f} routes${where(ns)}`);
    });
  }
}

async function removeZtunnelSide(runner: CommandRunner, c: Cleanup, ns: string, backends: BackendKind[]): Promise<void> {
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
export async function uninstallIptables(runner: CommandRunner): Promise<CleanupReport> {
  const c = new Cleanup();
  const backends = await backendsPresent(runner);
  const links = (await c.step("read the node's links", () => readLinks(runner, null))) ?? new Map<string, LinkState>();
  const ours = [...links.entries()].filter(([n, l]) => isOurNodeLink(n, l));
  const ztNetns = new Set(ours.map(([, l]) => l.alias!.slice(ALIAS_PREFIX.length)));
  const existing = (await c.step('list network namespaces', () => listNetns(runner))) ?? new Set<string>();
  for (const ns of ztNetns) if (existing.has(ns)) await removeZtunnelSide(runner, c, ns, backends);

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
