/**
 * The in-pod capture's iptables rules, as plain data: what each enrolled pod's netns holds
 * (Istio's in-pod rules: REDIRECT to ztunnel's listeners inside the pod) and what the host
 * holds for kubelet probes (SNAT of host-originated TCP to enrolled pods). Pure: no
 * process, no kernel. iptables.ts beside it installs, checks and removes this.
 *
 * Names, marks, ports and addresses are Istio's in-pod ones (docs/inpod.md, "In-pod
 * capture with iptables", lists them and where they come from); the probe guard chain is
 * ours. Rules are in iptables-save's own spelling, so that what the kernel echoes back
 * compares equal to what we want.
 */
import { parseSave } from '../iptables/rules.js';
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];
export type Table = 'raw' | 'mangle' | 'nat';

/** ztunnel's own sockets carry SO_MARK 1337; only the low 12 bits are compared. */
export const ZTUNNEL_MARK = '0x539/0xfff';
/** Connections ztunnel's marked packets belong to: their replies come back to ztunnel. */
export const CONN_MARK = '0x111/0xfff';
/** The restore of CONN_MARK into a reply's packet mark copies the whole connmark. */
export const RESTORE_MASK = '0xffffffff';
/** Policy routing of CONN_MARK: `ip rule` priority and table (a `local` default on lo). */
export const ROUTE_TABLE = '100';
export const RULE_PRIORITY = 32764;
/** Our `ip rule`s and routes carry this protocol, as the node mode's do: remove finds exactly ours. */
export const ROUTE_PROTO = '211';

export const PORT = { outbound: 15001, inboundPlaintext: 15006, hbone: 15008, dns: 15053 } as const;

/** What host-originated probes are rewritten to, and the only source the pod lets through uncaptured. */
export const PROBE_SNAT: Record<Family, string> = { 4: '169.254.7.127', 6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff' };
/** The enrolled pods' addresses, on the host: probes to them are SNATed. */
export const PROBE_SET: Record<Family, string> = { 4: 'istio-inpod-probes-v4', 6: 'istio-inpod-probes-v6' };

export const CHAIN = { prerouting: 'ISTIO_PRERT', output: 'ISTIO_OUTPUT', hostPostrouting: 'ISTIO_POSTRT', hostGuard: 'ztunnel-PROBE-GUARD' } as const;

const LOOPBACK: Record<Family, string> = { 4: '127.0.0.1/32', 6: '::1/128' };
const hostLen = (f: Family) => (f === 4 ? 32 : 128);

export interface InpodChain {
  family: Family;
  table: Table;
  chain: string;
  /** The built-in chain that jumps to it (once, first). */
  base: string;
  /** Rules in iptables-save's spelling, without the leading `-A <chain> `. */
  rules: string[];
}

export interface PodOptions {
  /** DNS (UDP and TCP 53) to ztunnel's 15053. */
  dnsCapture: boolean;
  /** bypass-inbound-capture: inbound TCP reaches the pod uncaptured (no REDIRECT to 15006). */
  bypassInbound?: boolean;
  /** reroute-virtual-interfaces: TCP arriving on these interfaces inside the pod goes to 15001. */
  rerouteInterfaces?: readonly string[];
}

/** The chains of one pod netns, for one family. */
export function podChains(f: Family, opts: PodOptions): InpodChain[] {
  const c = (table: Table, chain: string, base: string, rules: string[]): InpodChain => ({ family: f, table, chain, base, rules });
  const notLocal = `! -d ${LOOPBACK[f]}`;
  const notZtunnel = `-m mark ! --mark ${ZTUNNEL_MARK}`;
  const probe = `${PROBE_SNAT[f]}/${hostLen(f)}`;
  const chains: InpodChain[] = [];
  if (opts.dnsCapture) {
    // ztunnel's upstream DNS queries and their answers in a conntrack zone of their own, so
    // that they cannot collide with the pod's redirected queries on the same ports.
    chains.push(
      c('raw', CHAIN.prerouting, 'PREROUTING', [`-p udp ${notZtunnel} -m udp --sport 53 -j CT --zone 1`]),
      c('raw', CHAIN.output, 'OUTPUT', [`-p udp -m mark --mark ${ZTUNNEL_MARK} -m udp --dport 53 -j CT --zone 1`]),
    );
  }
  chains.push(
    // A packet of ztunnel's marks its connection, so that the replies are marked too.
    c('mangle', CHAIN.prerouting, 'PREROUTING', [`-m mark --mark ${ZTUNNEL_MARK} -j CONNMARK --set-xmark ${CONN_MARK}`]),
    c('mangle', CHAIN.output, 'OUTPUT', [`-m connmark --mark ${CONN_MARK} -j CONNMARK --restore-mark --nfmask ${RESTORE_MASK} --ctmask ${RESTORE_MASK}`]),
    c('nat', CHAIN.prerouting, 'PREROUTING', [
      // A virtual interface's TCP (a VM's tap in the pod) is the pod's outbound.
      ...(opts.rerouteInterfaces ?? []).map((i) => `-i ${i} -p tcp -j REDIRECT --to-ports ${PORT.outbound}`),
      // Kubelet probes, SNATed on the host: the one source let in uncaptured.
      `-s ${probe} -p tcp -m tcp -j ACCEPT`,
      // Every other inbound TCP but HBONE (which ztunnel takes on 15008 itself), unless the
      // pod bypasses inbound capture.
      ...(opts.bypassInbound ? [] : [`${notLocal} -p tcp -m tcp ! --dport ${PORT.hbone} ${notZtunnel} -j REDIRECT --to-ports ${PORT.inboundPlaintext}`]),
    ]),
  );
  const out = [`-d ${probe} -p tcp -m tcp -j ACCEPT`];
  if (opts.dnsCapture) {
    out.push(
      `! -o lo -p udp ${notZtunnel} -m udp --dport 53 -j REDIRECT --to-ports ${PORT.dns}`,
      `${notLocal} -p tcp -m tcp --dport 53 ${notZtunnel} -j REDIRECT --to-ports ${PORT.dns}`,
    );
  }
  out.push(
    `-p tcp -m mark --mark ${CONN_MARK} -j ACCEPT`,
    // The pod calling itself on its own address stays inside the pod.
    `${notLocal} -o lo -j ACCEPT`,
    `${notLocal} -p tcp ${notZtunnel} -j REDIRECT --to-ports ${PORT.outbound}`,
  );
  chains.push(c('nat', CHAIN.output, 'OUTPUT', out));
  return chains;
}

/** Every chain a pod netns may hold of ours (either DNS setting): remove takes these. */
export const POD_CHAIN_NAMES: readonly { table: Table; chain: string; base: string }[] = (['raw', 'mangle', 'nat'] as const).flatMap((table) => [
  { table, chain: CHAIN.prerouting, base: 'PREROUTING' },
  { table, chain: CHAIN.output, base: 'OUTPUT' },
]);

export interface PodRoute {
  family: Family;
  /** What follows `ip -<f> route <verb>`. */
  args: string[];
}

/** The `local` default on lo in table 100: where CONN_MARK sends ztunnel's replies. */
export function podRoutes(f: Family): PodRoute[] {
  return [{ family: f, args: ['local', f === 4 ? '0.0.0.0/0' : '::/0', 'dev', 'lo', 'table', ROUTE_TABLE, 'proto', ROUTE_PROTO] }];
}

export function podRules(f: Family): PodRoute[] {
  return [{ family: f, args: ['priority', String(RULE_PRIORITY), 'fwmark', CONN_MARK, 'lookup', ROUTE_TABLE, 'protocol', ROUTE_PROTO] }];
}

/** The host's chains, for one family: the probe SNAT, and the guard that keeps its source the host's alone. */
export function hostChains(f: Family): InpodChain[] {
  return [
    // Only a socket of the host itself (kubelet, and whatever runs in the host netns),
    // never a forwarded packet (another pod's, kube-proxy's DNAT from outside).
    {
      family: f,
      table: 'nat',
      chain: CHAIN.hostPostrouting,
      base: 'POSTROUTING',
      rules: [`-p tcp -m owner --socket-exists -m set --match-set ${PROBE_SET[f]} dst -j SNAT --to-source ${PROBE_SNAT[f]}`],
    },
    // The probe source never arrives from a link: a pod (or anyone outside) forging it is
    // dropped before it can reach a pod's uncaptured path.
    { family: f, table: 'raw', chain: CHAIN.hostGuard, base: 'PREROUTING', rules: [`-s ${PROBE_SNAT[f]}/${hostLen(f)} -j DROP`] },
  ];
}

export const HOST_CHAIN_NAMES: readonly { table: Table; chain: string; base: string }[] = [
  { table: 'nat', chain: CHAIN.hostPostrouting, base: 'POSTROUTING' },
  { table: 'raw', chain: CHAIN.hostGuard, base: 'PREROUTING' },
];

export function setCreateLines(): string[] {
  return FAMILIES.map((f) => `create ${PROBE_SET[f]} hash:ip family ${f === 4 ? 'inet' : 'inet6'}`);
}

export const familyOf = (ip: string): Family => (isIPv6(ip) ? 6 : 4);

export class InpodRuleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InpodRuleError';
  }
}

/** A pod's addresses, checked: each a plain IPv4 or IPv6 address, never the probe source. */
export function checkPodIps(ips: readonly string[], who: string): string[] {
  const bad = ips.filter((ip) => !isIPv4(ip) && !isIPv6(ip));
  if (bad.length) throw new InpodRuleError(`${who}: not an IP address: ${bad.map((b) => JSON.stringify(b)).join(', ')}`);
  const probe = ips.filter((ip) => ip === PROBE_SNAT[familyOf(ip)]);
  if (probe.length) throw new InpodRuleError(`${who}: ${probe[0]} is the probe source address, never a pod's`);
  return [...ips];
}

// --- iptables-save parsing and restore input --------------------------------------------

/** `iptables-save` output read by the node topology's parser: each table's chains and rules. */
export { parseSave };
export type Save = ReturnType<typeof parseSave>;

/** What differs between `want` (and the chains of ours that should not be there) and a save. */
export function chainDrift(want: readonly InpodChain[], names: readonly { table: Table; chain: string; base: string }[], save: Save): string[] {
  const out: string[] = [];
  for (const c of want) {
    const t = save.get(c.table);
    const have = t?.rules.get(c.chain) ?? [];
    if (!t?.chains.has(c.chain)) out.push(`${c.table}/${c.chain} missing`);
    else if (have.length !== c.rules.length || have.some((r, i) => r !== c.rules[i])) out.push(`${c.table}/${c.chain} differs`);
    const base = t?.rules.get(c.base) ?? [];
    const jumps = base.filter((r) => r === `-j ${c.chain}`).length;
    if (jumps !== 1 || base[0] !== `-j ${c.chain}`) out.push(`${c.table}/${c.base} does not jump to ${c.chain} once, first`);
  }
  for (const n of names) {
    if (want.some((c) => c.table === n.table && c.chain === n.chain)) continue;
    const t = save.get(n.table);
    if (t?.chains.has(n.chain) || (t?.rules.get(n.base) ?? []).includes(`-j ${n.chain}`)) out.push(`${n.table}/${n.chain} should not be there`);
  }
  return out;
}

/**
 * iptables-restore (--noflush) input that makes our chains hold `want`, each jumped to
 * once from the top of its built-in chain, and removes our chains not wanted (`names`
 * minus `want`: DNS capture turned off). null when nothing differs.
 */
export function restoreInput(want: readonly InpodChain[], names: readonly { table: Table; chain: string; base: string }[], save: Save): string | null {
  const byTable = new Map<string, { decl: string[]; body: string[]; drop: string[] }>();
  const of = (table: string) => {
    let e = byTable.get(table);
    if (!e) byTable.set(table, (e = { decl: [], body: [], drop: [] }));
    return e;
  };
  for (const c of want) {
    const t = save.get(c.table);
    const have = t?.rules.get(c.chain) ?? [];
    const base = t?.rules.get(c.base) ?? [];
    const same = !!t?.chains.has(c.chain) && have.length === c.rules.length && have.every((r, i) => r === c.rules[i]);
    const jumps = base.filter((r) => r === `-j ${c.chain}`).length;
    const first = base[0] === `-j ${c.chain}`;
    if (!same) {
      // A chain declared again in --noflush mode is flushed: its rules are written anew.
      of(c.table).decl.push(`:${c.chain} - [0:0]`);
      of(c.table).body.push(...c.rules.map((r) => `-A ${c.chain} ${r}`));
    }
    if (jumps !== 1 || !first) {
      for (let i = 0; i < jumps; i++) of(c.table).body.push(`-D ${c.base} -j ${c.chain}`);
      of(c.table).body.push(`-I ${c.base} -j ${c.chain}`);
    }
  }
  for (const n of names) {
    if (want.some((c) => c.table === n.table && c.chain === n.chain)) continue;
    const t = save.get(n.table);
    if (!t) continue;
    for (const r of t.rules.get(n.base) ?? []) if (r === `-j ${n.chain}`) of(n.table).body.push(`-D ${n.base} -j ${n.chain}`);
    if (t.chains.has(n.chain)) of(n.table).drop.push(`-F ${n.chain}`, `-X ${n.chain}`);
  }
  const tables = [...byTable.entries()].filter(([, e]) => e.decl.length + e.body.length + e.drop.length > 0);
  if (tables.length === 0) return null;
  return tables.map(([table, e]) => [`*${table}`, ...e.decl, ...e.body, ...e.drop, 'COMMIT'].join('\n')).join('\n') + '\n';
}

/** iptables-restore input that removes `names` and the jumps to them; null if none is there. */
export function removalInput(names: readonly { table: Table; chain: string; base: string }[], save: Save): string | null {
  return restoreInput([], names, save);
}
