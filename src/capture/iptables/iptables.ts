/**
 * The iptables capture mode: an ipset of enrolled pods, mangle marks, `ip rule` fwmark →
 * route tables, Geneve (or VXLAN) tunnels to ztunnel's netns, TPROXY there. Four files, one
 * job each: rules.ts (the desired state, pure), restore.ts (iptables-restore inputs, pure),
 * backend.ts (nft or legacy), side.ts (reading and changing one netns's state through the
 * CommandRunner), uninstall.ts; this one is the mode that puts them together.
 */
import type { Desired } from '../../core/desired.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Logger } from '../../log.js';
import { Cleanup } from '../cleanup.js';
import type { ActualState, ApplyResult, RedirectMode } from '../mode.js';
import type { Tunnel } from '../select.js';
import { type Backend, type BackendKind, detectBackend } from './backend.js';
import { ALIAS_PREFIX, FAMILIES, IFSET, IPSET, TUNNEL_PORT, buildPlan, familyOf, type Family, type ZtunnelSide } from './rules.js';
import {
  applyChains,
  applyLinks,
  applyRoutesAndRules,
  createSetLines,
  deleteLinks,
  type IpAddrJson,
  isOurNodeLink,
  listNetns,
  readSetMembers,
  readSide,
} from './side.js';
import { removeZtunnelSide } from './uninstall.js';
import { RECORDABLE_DEV, RP_CHAIN, parseRpFilterRecords, writeRpFilterRecords } from './rpfilter-record.js';
import { mergeRpFilterRecords, planCloseRpFilter, planOpenRpFilter, recordLive, writeRpFilter } from '../../host/rpfilter.js';

// src/capture/inpod/iptables.ts imports these from here.
export { type BackendKind, detectBackend } from './backend.js';
export { emptyTables } from './restore.js';

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
  /** Where the node's sysctls are (default /proc/sys): rp_filter is read and written there. */
  procSys?: string;
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
    await this.openRpFilter(node, [...(z ? [z.hostVeth] : []), ...pods.flatMap((p) => (p.dev ? [p.dev] : []))]);
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

  /**
   * Strict reverse-path filtering drops the enrolled pods' own packets on their veths (the
   * reverse lookup of a forwarded packet goes through rule 103 to the inbound tunnel) and
   * ztunnel's transparent answers on its veth (docs/operations.md "Sysctls"): those are
   * opened, every other link kept as strict as it was (src/host/rpfilter.ts decides how).
   * Each change is recorded (rpfilter-record.ts) before it is made; a pod that left gets its
   * veth's value back; the records of devices gone are dropped.
   */
  private async openRpFilter(node: Awaited<ReturnType<typeof readSide>>, wanted: string[]): Promise<void> {
    const { runner, log } = this.opts;
    const devs = [...new Set(wanted)].filter((d) => {
      if (RECORDABLE_DEV.test(d)) return true;
      log.warn('rp_filter left as it is on a device whose name we cannot record', { dev: d });
      return false;
    });
    const procSys = this.opts.procSys ?? '/proc/sys';
    const ifindexOf = (dev: string) => node.links.get(dev)?.ifindex;
    const had = parseRpFilterRecords(node.saves[4]);
    const live = had.filter((r) => recordLive(r, ifindexOf));
    const all = live.find((r) => r.dev === 'all');
    const closes = live.filter((r) => !devs.includes(r.dev)).flatMap((r) => planCloseRpFilter(r, all, procSys) ?? []);
    const opens = devs.length ? planOpenRpFilter(devs, procSys) : [];
    const writes = [...closes, ...opens];
    const records = mergeRpFilterRecords(live, writes, ifindexOf);
    if (JSON.stringify(records) !== JSON.stringify(had)) {
      const chainExists = !!node.saves[4].get(RP_CHAIN.table)?.chains.has(RP_CHAIN.chain);
      await writeRpFilterRecords(runner, this.backend, records, chainExists);
    }
    try {
      writeRpFilter(writes, procSys);
    } catch (err) {
      // The rest of the data path still goes in: IPv6 and the fail-closed rules need no sysctl.
      log.error('could not write rp_filter: captured IPv4 connections will not complete on this node', {
        error: (err as Error).message,
        writes,
        hint: 'is /proc/sys read-only in the agent container? (deploy/README.md "Known gaps")',
      });
      return;
    }
    if (writes.length) log.info('rp_filter changed', { opened: devs, writes });
  }

  close(): void {}
}
