/**
 * The in-pod capture with iptables (docs/inpod.md, "In-pod capture with iptables"): Istio's
 * in-pod rules written into each enrolled pod's netns, and on the host the SNAT that lets
 * kubelet probes through uncaptured. For kernels without the eBPF in-pod features.
 *
 * A pod's netns is reached through the fd the agent holds (the InPodCapture contract):
 * every command runs under `nsenter --net=/proc/<agent pid>/fd/<fd>`, so no name under
 * /var/run/netns is needed and the netns cannot go away while we work in it. Rules come
 * from iptables-rules.ts; restores are `--noflush` and touch only our chains.
 */
import { existsSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type NetnsCandidate, ownNetnsId, scanHostNetns } from '../../host/pod-netns.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Logger } from '../../log.js';
import { Cleanup, type CleanupReport, isMissingTool } from '../cleanup.js';
import type { InPodCapture, PodNetns } from '../inpod.js';
import { type BackendKind, detectBackend, emptyTables } from '../iptables/iptables.js';
import {
  checkPodIps,
  chainDrift,
  FAMILIES,
  type Family,
  familyOf,
  HOST_CHAIN_NAMES,
  hostChains,
  PROBE_SET,
  POD_CHAIN_NAMES,
  parseSave,
  podChains,
  podRoutes,
  podRules,
  ROUTE_PROTO,
  ROUTE_TABLE,
  RULE_PRIORITY,
  removalInput,
  restoreInput,
  setCreateLines,
  type PodOptions,
  type Table,
  CHAIN,
  CONN_MARK,
  PROBE_SNAT,
} from './iptables-rules.js';
import { withNetns } from '../../bpf/netns.js';
import { dumpAddrs } from '../../host/netlink.js';
import { endConnections } from './end-connections.js';
import { bypassesRules, wireAddr } from './stranded.js';

const saveCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-save`];
const restoreCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-restore`, '--noflush'];

export interface InpodIptablesOptions {
  runner: CommandRunner;
  log: Logger;
  /** DNS (UDP and TCP 53) to ztunnel's 15053. */
  dnsCapture?: boolean;
  /** Forces a backend; otherwise the host's is detected (and used in every pod, as Istio does). */
  backend?: BackendKind;
  /**
   * The host's netns: null (default) is the agent's own, as in production; a name under
   * /var/run/netns is where the host is simulated (the sim node's netns).
   */
  hostNetns?: string | null;
  /** The process whose fd table holds the pods' netns fds (default: this one). */
  agentPid?: number;
}

/** How long a read of the host's state serves drift checks of many pods. */
const HOST_CHECK_TTL_MS = 1_000;

export class InpodIptables implements InPodCapture {
  readonly name = 'iptables' as const;
  private backendKind: BackendKind | null = null;
  private hostChecked: { at: number; drift: Promise<string[]> } | null = null;
  /** Host changes one at a time: pods install in parallel. */
  private hostQueue: Promise<unknown> = Promise.resolve();

  constructor(private readonly opts: InpodIptablesOptions) {}

  get backend(): BackendKind {
    if (!this.backendKind) throw new Error('in-pod iptables capture not initialised (init() first)');
    return this.backendKind;
  }

  private get dns(): boolean {
    return this.opts.dnsCapture ?? false;
  }
  /** The pod's rules: its annotations over the node's DNS setting (docs/operations.md, "Per-pod annotations"). */
  private podOptions(pod: PodNetns): PodOptions {
    const o = pod.overrides;
    return { dnsCapture: o?.dnsCapture ?? this.dns, bypassInbound: o?.bypassInbound ?? false, rerouteInterfaces: o?.rerouteInterfaces ?? [] };
  }

  private host(argv: string[]): string[] {
    const ns = this.opts.hostNetns ?? null;
    return ns ? ['ip', 'netns', 'exec', ns, ...argv] : argv;
  }

  private fdPath(pod: PodNetns): string {
    return `/proc/${this.opts.agentPid ?? process.pid}/fd/${pod.fd}`;
  }

  private inPod(pod: PodNetns, argv: string[]): string[] {
    return ['nsenter', `--net=${this.fdPath(pod)}`, '--', ...argv];
  }

  /** The pod's fd names a network namespace: true; the fd is closed: false; anything else: an error. */
  private netnsOpen(pod: PodNetns): boolean {
    if (!Number.isInteger(pod.fd) || pod.fd < 0) throw new Error(`pod ${podName(pod)}: netns fd must be a non-negative integer, got ${pod.fd}`);
    const path = this.fdPath(pod);
    if (!existsSync(path)) return false;
    let target: string;
    try {
      target = readlinkSync(path);
    } catch {
      return false;
    }
    // `net:[inode]`, or the path of a bind mount of one (/var/run/netns/<name>): a file of nsfs.
    if (!target.startsWith('net:[') && statSync(path).dev !== statSync('/proc/self/ns/net').dev)
      throw new Error(`pod ${podName(pod)}: fd ${pod.fd} is not a network namespace (${target})`);
    return true;
  }

  async init(): Promise<void> {
    const { runner, log } = this.opts;
    const hostRunner: CommandRunner = { run: (argv, o) => runner.run(this.host([...argv]), o) };
    const b = this.opts.backend ? { kind: this.opts.backend, reason: 'configured' } : await detectBackend(hostRunner);
    this.backendKind = b.kind;
    await this.ensureHost();
    log.info('in-pod iptables capture ready', { backend: b.kind, backendReason: b.reason, dnsCapture: this.dns, hostNetns: this.opts.hostNetns ?? 'own' });
  }

  /** The host's sets and chains as they should be (created, adopted, or repaired). */
  private ensureHost(): Promise<void> {
    const run = this.hostQueue.then(async () => {
      const { runner } = this.opts;
      await runner.run(this.host(['ipset', 'restore', '-exist']), { input: setCreateLines().join('\n') + '\n' });
      for (const f of FAMILIES) {
        const save = parseSave(await runner.run(this.host(saveCmd(this.backend, f))));
        const input = restoreInput(hostChains(f), HOST_CHAIN_NAMES, save);
        if (input) await runner.run(this.host(restoreCmd(this.backend, f)), { input });
      }
      this.hostChecked = null;
    });
    this.hostQueue = run.catch(() => undefined);
    return run;
  }

  private async hostDrift(): Promise<string[]> {
    const { runner } = this.opts;
    const out: string[] = [];
    const sets = new Set((await runner.run(this.host(['ipset', 'list', '-n']))).split('\n').map((s) => s.trim()));
    for (const f of FAMILIES) if (!sets.has(PROBE_SET[f])) out.push(`host: ipset ${PROBE_SET[f]} missing`);
    for (const f of FAMILIES) {
      const save = parseSave(await runner.run(this.host(saveCmd(this.backend, f))));
      out.push(...chainDrift(hostChains(f), HOST_CHAIN_NAMES, save).map((d) => `host IPv${f}: ${d}`));
    }
    return out;
  }

  private cachedHostDrift(): Promise<string[]> {
    const now = Date.now();
    if (!this.hostChecked || now - this.hostChecked.at > HOST_CHECK_TTL_MS) {
      this.hostChecked = { at: now, drift: this.hostDrift() };
      this.hostChecked.drift.catch(() => {
        this.hostChecked = null;
      });
    }
    return this.hostChecked.drift;
  }

  async install(pod: PodNetns): Promise<void> {
    const { runner, log } = this.opts;
    const ips = checkPodIps(pod.ips, `pod ${podName(pod)}`);
    if (!this.netnsOpen(pod)) throw new Error(`pod ${podName(pod)}: netns fd ${pod.fd} is not open in process ${this.opts.agentPid ?? process.pid}`);
    if ((await this.cachedHostDrift()).length) await this.ensureHost();
    // Probes are SNATed before the pod captures anything: the first probe after the rules
    // are in already comes from the one source they let through.
    if (ips.length)
      await runner.run(this.host(['ipset', 'restore', '-exist']), { input: ips.map((ip) => `add ${PROBE_SET[familyOf(ip)]} ${ip}`).join('\n') + '\n' });
    const v6 = await this.podHasIPv6(pod);
    const families = FAMILIES.filter((f) => f === 4 || v6);
    const fresh = new Set<Family>();
    for (const f of families) {
      // Routing first: the rules mark ztunnel's replies for a table that must be there.
      await this.ensurePodRouting(pod, f);
      const save = parseSave(await runner.run(this.inPod(pod, saveCmd(this.backend, f))));
      if (!save.get('nat')?.chains.has(CHAIN.output)) fresh.add(f);
      const input = restoreInput(podChains(f, this.podOptions(pod)), POD_CHAIN_NAMES, save);
      if (input) await runner.run(this.inPod(pod, restoreCmd(this.backend, f)), { input });
    }
    log.info('in-pod iptables capture installed', { pod: podName(pod), uid: pod.uid, ips, families });
    // REDIRECT takes a connection's first packet only: what the pod had open before the
    // rules came would go on around ztunnel. Ended now (the first install of a family only:
    // after it, every connection of the pod is captured or exempt).
    if (fresh.size)
      withNetns(this.fdPath(pod), () => {
        const local = new Set(dumpAddrs().map((a) => wireAddr(a.address)));
        endConnections(log, { pod: podName(pod), uid: pod.uid }, (s) => bypassesRules(s, { families: fresh, local, probe: PROBE_SNAT }));
      });
  }

  /** IPv6 in the pod unless its loopback has IPv6 disabled (the table 100 route needs it). */
  private async podHasIPv6(pod: PodNetns): Promise<boolean> {
    const out = await this.opts.runner.run(this.inPod(pod, ['sysctl', '-n', 'net.ipv6.conf.lo.disable_ipv6'])).catch(() => '1');
    return out.trim() === '0';
  }

  private async routingDrift(pod: PodNetns, f: Family): Promise<{ rule: boolean; route: boolean }> {
    const { runner } = this.opts;
    const rules = JSON.parse((await runner.run(this.inPod(pod, ['ip', `-${f}`, '-j', 'rule', 'show']))).trim() || '[]') as IpRuleJson[];
    const [mark, mask] = CONN_MARK.split('/');
    const rule = rules.some(
      (r) => r.priority === RULE_PRIORITY && r.fwmark === mark && r.fwmask === mask && r.table === ROUTE_TABLE && r.protocol === ROUTE_PROTO,
    );
    // `table all`: asking for table 100 before it exists is an error, not an empty list.
    const routes = JSON.parse((await runner.run(this.inPod(pod, ['ip', `-${f}`, '-j', 'route', 'show', 'table', 'all']))).trim() || '[]') as IpRouteJson[];
    const route = routes.some((r) => r.table === ROUTE_TABLE && r.type === 'local' && r.dst === 'default' && r.dev === 'lo' && r.protocol === ROUTE_PROTO);
    return { rule, route };
  }

  private async ensurePodRouting(pod: PodNetns, f: Family): Promise<void> {
    const have = await this.routingDrift(pod, f);
    const { runner } = this.opts;
    if (!have.route) for (const r of podRoutes(f)) await runner.run(this.inPod(pod, ['ip', `-${f}`, 'route', 'replace', ...r.args]));
    if (!have.rule) for (const r of podRules(f)) await runner.run(this.inPod(pod, ['ip', `-${f}`, 'rule', 'add', ...r.args]));
  }

  /** What differs from what `install` leaves, in the pod and on the host; [] when nothing. */
  async drift(pod: PodNetns): Promise<string[]> {
    const { runner } = this.opts;
    const ips = checkPodIps(pod.ips, `pod ${podName(pod)}`);
    if (!this.netnsOpen(pod)) return [`pod ${podName(pod)}: netns fd ${pod.fd} is not open`];
    const out = [...(await this.cachedHostDrift())];
    for (const ip of ips) {
      try {
        await runner.run(this.host(['ipset', 'test', PROBE_SET[familyOf(ip)], ip]));
      } catch {
        out.push(`host: ${ip} not in ${PROBE_SET[familyOf(ip)]}`);
      }
    }
    const v6 = await this.podHasIPv6(pod);
    for (const f of FAMILIES.filter((x) => x === 4 || v6)) {
      const save = parseSave(await runner.run(this.inPod(pod, saveCmd(this.backend, f))));
      out.push(...chainDrift(podChains(f, this.podOptions(pod)), POD_CHAIN_NAMES, save).map((d) => `pod IPv${f}: ${d}`));
      const r = await this.routingDrift(pod, f);
      if (!r.rule) out.push(`pod IPv${f}: ip rule ${RULE_PRIORITY} fwmark ${CONN_MARK} lookup ${ROUTE_TABLE} missing`);
      if (!r.route) out.push(`pod IPv${f}: local default route on lo in table ${ROUTE_TABLE} missing`);
    }
    return out;
  }

  async check(pod: PodNetns): Promise<boolean> {
    return (await this.drift(pod)).length === 0;
  }

  async remove(pod: PodNetns): Promise<void> {
    const { runner, log } = this.opts;
    const ips = checkPodIps(pod.ips, `pod ${podName(pod)}`);
    const c = new Cleanup();
    if (this.netnsOpen(pod)) {
      await removeFromNetns(runner, c, (argv) => this.inPod(pod, argv), `pod ${podName(pod)}`);
    }
    // The probe SNAT last: until the rules are gone, probes must keep their source.
    await c.step(`remove ${podName(pod)} from the probe sets`, async () => {
      // A set already gone (the host half uninstalled) holds nothing to remove.
      const sets = new Set((await runner.run(this.host(['ipset', 'list', '-n']))).split('\n').map((l) => l.trim()));
      const lines = ips.filter((ip) => sets.has(PROBE_SET[familyOf(ip)])).map((ip) => `del ${PROBE_SET[familyOf(ip)]} ${ip}`);
      if (lines.length) await runner.run(this.host(['ipset', 'restore', '-exist']), { input: lines.join('\n') + '\n' });
    });
    c.throwIfFailed(`removing the in-pod iptables capture of ${podName(pod)}`);
    log.info('in-pod iptables capture removed', { pod: podName(pod), uid: pod.uid, removed: c.removed });
  }

  close(): void {}
}

interface IpRuleJson {
  priority: number;
  fwmark?: string;
  fwmask?: string;
  table?: string;
  protocol?: string;
}

interface IpRouteJson {
  table?: string;
  type?: string;
  dst: string;
  dev?: string;
  protocol?: string;
}

const podName = (pod: PodNetns) => `${pod.namespace}/${pod.name}`;

type Wrap = (argv: string[]) => string[];

/** Our chains in one netns, with every backend that has any there; empty nft tables we leave behind go too. */
async function removeChains(
  runner: CommandRunner,
  c: Cleanup,
  wrap: Wrap,
  where: string,
  names: readonly { table: Table; chain: string; base: string }[],
): Promise<void> {
  for (const b of ['nft', 'legacy'] as const) {
    for (const f of FAMILIES) {
      const cmd = f === 4 ? 'iptables' : 'ip6tables';
      let save: string;
      try {
        save = await runner.run(wrap(saveCmd(b, f)));
      } catch {
        continue; // this backend is not installed, or holds no tables for this family here: nothing of ours
      }
      const input = removalInput(names, parseSave(save));
      if (!input) continue;
      const done = await c.step(`remove our ${cmd} (${b}) chains in ${where}`, async () => {
        await runner.run(wrap(restoreCmd(b, f)), { input });
        c.removed.push(`removed ${cmd} (${b}) chains in ${where}`);
        return true;
      });
      if (!done || b !== 'nft') continue;
      // iptables-restore made these nft tables when we first wrote to them; empty now, they
      // filter nothing, and deleting them leaves the netns's ruleset as it was.
      const touched = input
        .split('\n')
        .filter((l) => l.startsWith('*'))
        .map((l) => l.slice(1));
      const family = f === 4 ? 'ip' : 'ip6';
      await c.step(`delete the empty nft ${family} tables in ${where}`, async () => {
        const after = await runner.run(wrap(saveCmd('nft', f)));
        const tables = emptyTables(after, touched);
        // In a table that holds someone else's rules too (a VM's MASQUERADE in the pod's
        // nat), iptables-restore made the base chains our jumps were in; empty now, with
        // their policy accept, they go the same way.
        const chains = leftBaseChains(parseSave(save), after, names, touched).filter(([t]) => !tables.includes(t));
        try {
          for (const t of tables) {
            await runner.run(wrap(['nft', 'delete', 'table', family, t]));
            c.removed.push(`deleted the empty ${family} ${t} table in ${where}`);
          }
          for (const [t, chain] of chains) {
            await runner.run(wrap(['nft', 'delete', 'chain', family, t, chain]));
            c.removed.push(`deleted the empty ${family} ${t} ${chain} chain in ${where}`);
          }
        } catch (err) {
          if (!isMissingTool(err)) throw err;
          c.skip('delete the empty nft tables', 'nft is not installed; the empty tables filter nothing and are left');
        }
      });
    }
  }
}

/**
 * Base chains of `touched` tables that held nothing but our jumps before the removal
 * (`was`) and are empty, policy ACCEPT, after it (`after`, iptables-save text): [table, chain].
 */
export function leftBaseChains(
  was: ReturnType<typeof parseSave>,
  after: string,
  names: readonly { table: Table; chain: string; base: string }[],
  touched: readonly string[],
): [string, string][] {
  const now = parseSave(after);
  const out: [string, string][] = [];
  for (const t of touched) {
    const jumps = new Set(names.filter((n) => n.table === t).map((n) => `-j ${n.chain}`));
    for (const base of new Set(names.filter((n) => n.table === t).map((n) => n.base))) {
      const before = was.get(t)?.rules.get(base) ?? [];
      if (before.length === 0 || !before.every((r) => jumps.has(r))) continue;
      if (!now.get(t)?.chains.has(base) || (now.get(t)?.rules.get(base)?.length ?? 0) > 0) continue;
      if (!policyAccept(after, t, base)) continue;
      out.push([t, base]);
    }
  }
  return out;
}

/** The base chain's policy in iptables-save text is ACCEPT. */
function policyAccept(save: string, table: string, chain: string): boolean {
  let cur = '';
  for (const line of save.split('\n')) {
    if (line.startsWith('*')) cur = line.slice(1).trim();
    else if (cur === table && line.startsWith(`:${chain} `)) return line.split(' ')[1] === 'ACCEPT';
  }
  return false;
}

/** Removes our chains, ip rule and route from one netns (a pod's); nothing else. */
async function removeFromNetns(runner: CommandRunner, c: Cleanup, wrap: Wrap, where: string): Promise<void> {
  await removeChains(runner, c, wrap, where, POD_CHAIN_NAMES);
  for (const f of FAMILIES) {
    await c.step(`remove our IPv${f} ip rule and route in ${where}`, async () => {
      const rules = JSON.parse((await runner.run(wrap(['ip', `-${f}`, '-j', 'rule', 'show']))).trim() || '[]') as IpRuleJson[];
      for (const r of rules.filter((x) => x.priority === RULE_PRIORITY && x.protocol === ROUTE_PROTO)) {
        const sel = r.fwmark ? ['fwmark', `${r.fwmark}/${r.fwmask ?? '0xffffffff'}`] : [];
        await runner.run(
          wrap(['ip', `-${f}`, 'rule', 'del', 'priority', String(r.priority), ...sel, 'lookup', r.table ?? ROUTE_TABLE, 'protocol', ROUTE_PROTO]),
        );
        c.removed.push(`removed the IPv${f} ip rule ${r.priority} in ${where}`);
      }
      const routes = JSON.parse(
        (await runner.run(wrap(['ip', `-${f}`, '-j', 'route', 'show', 'table', 'all', 'proto', ROUTE_PROTO]))).trim() || '[]',
      ) as IpRouteJson[];
      for (const r of routes.filter((x) => x.table === ROUTE_TABLE)) {
        await runner.run(
          wrap(['ip', `-${f}`, 'route', 'del', ...(r.type && r.type !== 'unicast' ? [r.type] : []), r.dst, 'table', ROUTE_TABLE, 'proto', ROUTE_PROTO]),
        );
        c.removed.push(`removed the IPv${f} ${r.type ?? ''} ${r.dst} route of table ${ROUTE_TABLE} in ${where}`);
      }
    });
  }
}

/**
 * Removes the host half (probe SNAT, guard, probe sets) from the host netns (`hostNetns`:
 * null for the agent's own). Pods' netns are emptied by `remove`, pod by pod. Idempotent;
 * every step runs even when another failed.
 */
export async function uninstallInpodIptablesHost(runner: CommandRunner, hostNetns: string | null = null): Promise<CleanupReport> {
  const c = new Cleanup();
  const wrap: Wrap = (argv) => (hostNetns ? ['ip', 'netns', 'exec', hostNetns, ...argv] : argv);
  const where = hostNetns ?? 'the host';
  await removeChains(runner, c, wrap, where, HOST_CHAIN_NAMES);
  let sets: Set<string> | undefined;
  try {
    sets = new Set((await runner.run(wrap(['ipset', 'list', '-n']))).split('\n').map((s) => s.trim()));
  } catch (err) {
    if (isMissingTool(err)) c.skip('destroy the probe sets', 'ipset is not installed, so it never made ours');
    else c.failed.push({ step: 'list ipsets', error: err instanceof Error ? err.message : String(err) });
  }
  for (const f of FAMILIES) {
    if (!sets?.has(PROBE_SET[f])) continue;
    await c.step(`destroy ipset ${PROBE_SET[f]}`, async () => {
      await runner.run(wrap(['ipset', 'destroy', PROBE_SET[f]]));
      c.removed.push(`destroyed ipset ${PROBE_SET[f]} in ${where}`);
    });
  }
  return c;
}

/**
 * `uninstall`, the pods' half: every network namespace of the host's processes (`hostProc`,
 * the host's /proc) that holds our in-pod policy rule (priority RULE_PRIORITY, protocol
 * ROUTE_PROTO: the mark `install` leaves in each pod) has the in-pod rules and routing
 * removed, as `remove` does. A netns that ends during the scan is skipped.
 */
export async function uninstallInpodIptablesPods(runner: CommandRunner, hostProc: string): Promise<CleanupReport> {
  const c = new Cleanup();
  const own = ownNetnsId();
  let candidates: NetnsCandidate[] = [];
  await c.step(`list the network namespaces of ${hostProc}`, () => {
    candidates = scanHostNetns(hostProc);
  });
  for (const ns of candidates) {
    if (ns.id === own) continue;
    const path = join(hostProc, String(ns.pid), 'ns', 'net');
    const wrap: Wrap = (argv) => ['nsenter', `--net=${path}`, '--', ...argv];
    let ours = false;
    for (const f of FAMILIES) {
      const out = await runner.run(wrap(['ip', `-${f}`, '-j', 'rule', 'show'])).catch(() => '[]');
      const rules = JSON.parse(out.trim() || '[]') as IpRuleJson[];
      if (rules.some((r) => r.priority === RULE_PRIORITY && String(r.protocol) === ROUTE_PROTO)) ours = true;
    }
    if (ours) await removeFromNetns(runner, c, wrap, `netns ${ns.id} (process ${ns.pid})`);
  }
  return c;
}
