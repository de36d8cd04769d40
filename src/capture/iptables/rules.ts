/**
 * The iptables mode's desired state, as plain data: which tunnel devices, ip rules,
 * routes, iptables chains and ipset members the node and ztunnel's netns must hold. Pure:
 * no process, no kernel. iptables.ts diffs this against what the kernel holds.
 *
 * Names, marks, route tables and priorities are Istio's (istio/istio cni/pkg/ambient,
 * the iptables redirection of ambient before in-pod mode), so that an operator who knows
 * those recognises them:
 *
 *   ipset  ztunnel-pods-ips (IPv4), ztunnel-pods-ips-v6 (IPv6; Istio had no IPv6 set);
 *          ztunnel-pods-ifaces(-v6) (ours: each enrolled IP with its veth, anti-spoofing)
 *   marks  0x100/0x100 outbound (capture)   0x200/0x200 skip   0x220 conn-skip
 *          0x210 proxy (from ztunnel)        0x040 proxy return
 *          0x400/0xfff TPROXY (ztunnel netns)  0x4d3/0xfff original-source return
 *   tables 100 inbound, 101 outbound, 102 proxy
 *   rules  node: 100 skip → main, 101 outbound → 101, 102 proxy-ret → 102, 103 → 100
 *          ztunnel netns: 20000 TPROXY mark → 100, 20003 orig-src mark → 100
 *   links  istioin (VNI 1000, 192.168.126.1/30) / istioout (VNI 1001, 192.168.127.1/30)
 *          pistioin (192.168.126.2/30) / pistioout (192.168.127.2/30) in ztunnel's netns
 *   chains ztunnel-PREROUTING, -FORWARD, -INPUT, -OUTPUT (mangle), ztunnel-PREROUTING,
 *          -POSTROUTING (nat)
 *
 * Everything we add to routing carries protocol 211 (`proto 211`), so that uninstall
 * and drift repair find exactly ours, and nothing else, in shared tables.
 */
import { isIPv6 } from 'node:net';
import type { Tunnel } from '../select.js';

export type Family = 4 | 6;
export const FAMILIES: readonly Family[] = [4, 6];

export const IPSET = { 4: 'ztunnel-pods-ips', 6: 'ztunnel-pods-ips-v6' } as const;
/** Each enrolled IP with its host veth (hash:net,iface): binds a pod to its veth. */
export const IFSET = { 4: 'ztunnel-pods-ifaces', 6: 'ztunnel-pods-ifaces-v6' } as const;
export const ROUTE_PROTO = '211';

export const MARK = {
  outbound: '0x100/0x100',
  skip: '0x200/0x200',
  connSkip: '0x220/0x220',
  proxy: '0x210/0x210',
  proxyRet: '0x40/0x40',
  tproxy: '0x400/0xfff',
  orgSrcRet: '0x4d3/0xfff',
} as const;

export const TABLE = { inbound: '100', outbound: '101', proxy: '102' } as const;

export const PORT = { outbound: 15001, inboundPlaintext: 15006, inbound: 15008, dns: 15053 } as const;

/** ICMP errors (v4: unreachable, time exceeded, parameter problem; v6: types 1-4): ztunnel's netns delivers them locally (Z8). */
export const ICMP_ERRORS: Record<Family, readonly number[]> = { 4: [3, 11, 12], 6: [1, 2, 3, 4] };
/** ICMPv6 neighbour discovery (133-137) and MLD (130-132, 143): the link's own business, never captured. */
export const ND_MLD_TYPES: readonly number[] = [130, 131, 132, 133, 134, 135, 136, 137, 143];
/** Where ND and MLD go: link-local and link-scope multicast; the host never forwards these. */
export const LINK_SCOPE6: readonly string[] = ['fe80::/10', 'ff02::/16'];

/** UDP ports of the tunnels: Geneve's IANA port, VXLAN's IANA port. */
export const TUNNEL_PORT: Record<Tunnel, number> = { geneve: 6081, vxlan: 4789 };

export const LINK = {
  inbound: { node: 'istioin', ztunnel: 'pistioin', vni: 1000 },
  outbound: { node: 'istioout', ztunnel: 'pistioout', vni: 1001 },
} as const;

/** Inner addresses of the tunnels: Istio's /30s for IPv4, our own ULA /64s for IPv6. */
export const TUN_ADDR = {
  inbound: { node: { 4: '192.168.126.1', 6: 'fd69:7374:696f:126::1' }, ztunnel: { 4: '192.168.126.2', 6: 'fd69:7374:696f:126::2' } },
  outbound: { node: { 4: '192.168.127.1', 6: 'fd69:7374:696f:127::1' }, ztunnel: { 4: '192.168.127.2', 6: 'fd69:7374:696f:127::2' } },
} as const;
export const TUN_PREFIX = { 4: 30, 6: 64 } as const;

/** The node-side devices' alias: marks them ours and names the netns of their other end. */
export const ALIAS_PREFIX = 'ambient-redirect ztunnel-netns=';

export const NODE_CHAINS = [
  { table: 'mangle', chain: 'ztunnel-PREROUTING', base: 'PREROUTING' },
  { table: 'mangle', chain: 'ztunnel-FORWARD', base: 'FORWARD' },
  { table: 'mangle', chain: 'ztunnel-INPUT', base: 'INPUT' },
  { table: 'mangle', chain: 'ztunnel-OUTPUT', base: 'OUTPUT' },
  { table: 'nat', chain: 'ztunnel-PREROUTING', base: 'PREROUTING' },
  { table: 'nat', chain: 'ztunnel-POSTROUTING', base: 'POSTROUTING' },
] as const;
export const ZTUNNEL_CHAINS = [{ table: 'mangle', chain: 'ztunnel-PREROUTING', base: 'PREROUTING' }] as const;
/** Every chain name we ever create, per table: uninstall removes these and only these. */
export const OUR_CHAINS: readonly { table: string; chain: string; base: string }[] = NODE_CHAINS;

export interface TunnelSpec {
  name: string;
  kind: Tunnel;
  vni: number;
  /** Outer destination: the other end's underlay address. */
  remote: string;
  port: number;
  /** Inner addresses with prefix length, both families. */
  addrs: string[];
  alias?: string;
}

export interface RuleSpec {
  family: Family;
  priority: number;
  /** What follows `ip rule add priority N`, e.g. ['fwmark', '0x100/0x100', 'lookup', '101']. */
  args: string[];
}

export interface RouteSpec {
  family: Family;
  type: 'unicast' | 'local' | 'unreachable';
  /** 'default' or a host address (no prefix length: a /32 or /128). */
  dst: string;
  via?: string;
  dev?: string;
  src?: string;
  onlink?: boolean;
  scopeLink?: boolean;
  table: string;
}

export interface ChainSpec {
  family: Family;
  table: 'mangle' | 'nat';
  chain: string;
  base: string;
  /** Rules in iptables-save's own spelling, without the leading `-A <chain> `. */
  rules: string[];
}

export interface SidePlan {
  links: TunnelSpec[];
  rules: RuleSpec[];
  routes: RouteSpec[];
  chains: ChainSpec[];
  /** sysctls to write (per-device only: they go away with the device). */
  sysctls: string[];
}

export interface ZtunnelSide {
  /** ztunnel's netns, by name under /var/run/netns. */
  netns: string;
  /** ztunnel's host-side veth, in the node netns. */
  hostVeth: string;
  /** ztunnel's interface inside its netns (eth0). */
  eth: string;
  /** ztunnel's pod IPs (one per family it has). */
  ips: string[];
  /** The node's address toward ztunnel, per family (the tunnels' node-side underlay). */
  hostIps: Partial<Record<Family, string>>;
}

/** An enrolled pod IP and its host veth (null: the veth is gone; the IP fails closed). */
export interface PodLink {
  ip: string;
  dev: string | null;
  /** The pod entry's flags (src/core/values.ts PodFlags): its annotations' DNS capture and inbound bypass. */
  flags?: number;
}

/** Pod flags as the shared header names them (bpf/include/ambient_redirect.h enum pod_flags). */
const POD_F = { DNS_CAPTURE: 2, NO_DNS_CAPTURE: 4, BYPASS_INBOUND: 8 } as const;

/** The enrolled IPs of family f whose pod entry has `flag`, sorted. */
function podsWith(input: PlanInput, f: Family, flag: number): string[] {
  return input.pods
    .filter((p) => familyOf(p.ip) === f && ((p.flags ?? 0) & flag) !== 0)
    .map((p) => p.ip)
    .sort();
}

/** Whether DNS is captured for a pod: its annotation first, else the node's setting. */
function dnsCapturedFor(input: PlanInput, p: PodLink): boolean {
  const flags = p.flags ?? 0;
  if (flags & POD_F.DNS_CAPTURE) return true;
  if (flags & POD_F.NO_DNS_CAPTURE) return false;
  return input.dnsCapture;
}

export interface PlanInput {
  tunnel: Tunnel;
  /** Enrolled pod IPs placed on this node, with their host veths. */
  pods: readonly PodLink[];
  /** null: no ztunnel; enrolled pods fail closed. */
  ztunnel: ZtunnelSide | null;
  /** Capture the pods' DNS (UDP and TCP 53) to ztunnel's 15053, as in ebpf mode's flag. */
  dnsCapture: boolean;
  /** UDP (but captured DNS) and ICMP (but errors): pass uncaptured or drop, as ebpf mode's O15b/I16b (default pass). */
  nonTcp?: 'pass' | 'drop';
  /**
   * The cluster's DNS servers: without DNS capture, an enrolled pod's UDP to port 53 of
   * one of these goes direct (and its answers come back direct), as ebpf mode's O15/I16.
   */
  dnsServers?: readonly string[];
}

export interface Plan {
  /** Members of IPSET per family: enrolled IPs. */
  sets: Record<Family, string[]>;
  /** Members of IFSET per family: `<ip>,<veth>` (ipset's own spelling). */
  ifaceSets: Record<Family, string[]>;
  node: SidePlan;
  ztunnel: (SidePlan & { netns: string }) | null;
}

export const familyOf = (ip: string): Family => (isIPv6(ip) ? 6 : 4);
const hostLen = (f: Family) => (f === 4 ? 32 : 128);
const loopback = (f: Family) => (f === 4 ? '127.0.0.1' : '::1');

/** The underlay: ztunnel's address and the node's, in the first family both have (IPv4 first). */
export function underlay(z: ZtunnelSide): { family: Family; ztunnel: string; node: string } | null {
  for (const f of FAMILIES) {
    const zt = z.ips.find((ip) => familyOf(ip) === f);
    const node = z.hostIps[f];
    if (zt && node) return { family: f, ztunnel: zt, node };
  }
  return null;
}

function tunnels(tunnel: Tunnel, side: 'node' | 'ztunnel', remote: string, alias?: string): TunnelSpec[] {
  return (['inbound', 'outbound'] as const).map((dir) => ({
    name: LINK[dir][side],
    kind: tunnel,
    vni: LINK[dir].vni,
    remote,
    port: TUNNEL_PORT[tunnel],
    addrs: FAMILIES.map((f) => `${TUN_ADDR[dir][side][f]}/${TUN_PREFIX[f]}`),
    ...(alias !== undefined && { alias }),
  }));
}

const icmpProto = (f: Family) => (f === 4 ? '-p icmp -m icmp --icmp-type' : '-p ipv6-icmp -m icmp6 --icmpv6-type');

function nodeChains(f: Family, input: PlanInput, z: ZtunnelSide | null, port: number): ChainSpec[] {
  const set = IPSET[f];
  const ifset = IFSET[f];
  const chain = (table: 'mangle' | 'nat', name: string, base: string, rules: string[]): ChainSpec => ({ family: f, table, chain: name, base, rules });
  const saveConn = [MARK.connSkip, MARK.proxy].map((m) => {
    const bits = m.split('/')[0]!;
    return `-m mark --mark ${m} -j CONNMARK --save-mark --nfmask ${bits} --ctmask ${bits}`;
  });
  const pre: string[] = [];
  const ztIp = z?.ips.find((ip) => familyOf(ip) === f);
  // What comes out of the tunnels has been through ztunnel already.
  for (const dev of [LINK.inbound.node, LINK.outbound.node]) pre.push(`-i ${dev} -j MARK --set-xmark ${MARK.skip}`, `-i ${dev} -j RETURN`);
  // Neighbour discovery and MLD stay on the link (DAD's source is ::, so before the binding).
  if (f === 6) for (const dst of LINK_SCOPE6) for (const t of ND_MLD_TYPES) pre.push(`-d ${dst} ${icmpProto(6)} ${t} -j RETURN`);
  // Anti-spoofing: ztunnel's address only from ztunnel's veth; an enrolled pod's address
  // only from that pod's veth (ztunnel sends as pods: exempt); an enrolled veth carries
  // only its pod's addresses.
  if (z && ztIp) pre.push(`-s ${ztIp}/${hostLen(f)} ! -i ${z.hostVeth} -j DROP`);
  pre.push(`${z ? `! -i ${z.hostVeth} ` : ''}-m set --match-set ${set} src -m set ! --match-set ${ifset} src,src -j DROP`);
  const devs = [...new Set(input.pods.map((p) => p.dev).filter((d): d is string => d !== null))].sort();
  for (const dev of devs) pre.push(`-i ${dev} -m set ! --match-set ${ifset} src,src -j DROP`);
  // The tunnel's own packets: from ztunnel's address, on ztunnel's veth, to the tunnel port.
  if (z && ztIp) pre.push(`-s ${ztIp}/${hostLen(f)} -i ${z.hostVeth} -p udp -m udp --dport ${port} -j RETURN`);
  // DNS to the cluster's servers, without DNS capture: the connection is skipped like the
  // node's own, so its answers come back direct too (the connmark rule below). A pod's
  // dns-capture annotation overrides the node's setting for that pod, either way.
  const servers = [...new Set(input.dnsServers ?? [])].filter((ip) => familyOf(ip) === f).sort();
  const nonTcp = (input.nonTcp ?? 'pass') === 'drop' ? '-j DROP' : `-j MARK --set-xmark ${MARK.connSkip}`;
  if (!input.dnsCapture) {
    const own = podsWith(input, f, POD_F.DNS_CAPTURE);
    for (const ip of own) pre.push(`-s ${ip}/${hostLen(f)} -p udp -m udp --dport 53 -j MARK --set-xmark ${MARK.outbound}`);
    if (own.length) pre.push(`-m mark --mark ${MARK.outbound} -j RETURN`);
    for (const dns of servers) {
      pre.push(`-d ${dns}/${hostLen(f)} -p udp -m set --match-set ${set} src -m udp --dport 53 -j MARK --set-xmark ${MARK.connSkip}`);
    }
  } else {
    for (const ip of podsWith(input, f, POD_F.NO_DNS_CAPTURE)) {
      for (const dns of servers) pre.push(`-s ${ip}/${hostLen(f)} -d ${dns}/${hostLen(f)} -p udp -m udp --dport 53 -j MARK --set-xmark ${MARK.connSkip}`);
      pre.push(`-s ${ip}/${hostLen(f)} -p udp -m udp --dport 53 -m mark ! --mark ${MARK.skip} ${nonTcp}`);
    }
  }
  // Connections the node or ztunnel opened are never captured, in either direction.
  pre.push(`-m connmark --mark ${MARK.connSkip} -j MARK --set-xmark ${MARK.skip}`, `-m mark --mark ${MARK.skip} -j RETURN`);
  if (z) {
    // Replies to what ztunnel sent with a pod's source go back to ztunnel (table 102).
    pre.push(`! -i ${z.hostVeth} -m connmark --mark ${MARK.proxy} -j MARK --set-xmark ${MARK.proxyRet}`, `-m mark --mark ${MARK.proxyRet} -j RETURN`);
    if (ztIp) pre.push(`! -s ${ztIp}/${hostLen(f)} -i ${z.hostVeth} -j MARK --set-xmark ${MARK.proxy}`);
    pre.push(`-m mark --mark ${MARK.skip} -j RETURN`, `-i ${z.hostVeth} -j MARK --set-xmark ${MARK.connSkip}`, `-m mark --mark ${MARK.skip} -j RETURN`);
  }
  // bypass-inbound-capture: what comes to the pod skips capture, its connection marked so
  // that the pod's answers skip it too; the pod's own connections are captured as ever.
  // After ztunnel's and the tunnels' RETURNs: what ztunnel delivers to the pod (answers
  // on the pod's captured connections) must not mark those connections.
  const bypass = podsWith(input, f, POD_F.BYPASS_INBOUND);
  for (const ip of bypass) pre.push(`-d ${ip}/${hostLen(f)} -m set --match-set ${set} dst -j MARK --set-xmark ${MARK.connSkip}`);
  if (bypass.length) pre.push(`-m mark --mark ${MARK.skip} -j RETURN`);
  // --non-tcp (ebpf's O15b, I16b): what ztunnel does not proxy, UDP but captured DNS and
  // ICMP but errors (which concern ztunnel's sockets), in either direction, passes
  // uncaptured (its connection skipped, so the answers come back direct) or is dropped.
  // Inbound DNS is never captured (ztunnel answers from its netns, marked above).
  const icmp = f === 4 ? 'icmp' : 'ipv6-icmp';
  if (input.dnsCapture) pre.push(`-p udp -m set --match-set ${set} src -m udp --dport 53 -j MARK --set-xmark ${MARK.outbound}`);
  for (const t of ICMP_ERRORS[f]) pre.push(`${icmpProto(f)} ${t} -m set --match-set ${set} src -j MARK --set-xmark ${MARK.outbound}`);
  pre.push(`-m mark --mark ${MARK.outbound} -j RETURN`);
  for (const t of ICMP_ERRORS[f]) pre.push(`${icmpProto(f)} ${t} -m set --match-set ${set} dst -j RETURN`);
  for (const dir of ['src', 'dst']) for (const proto of ['udp', icmp]) pre.push(`-p ${proto} -m set --match-set ${set} ${dir} ${nonTcp}`);
  pre.push(`-m mark --mark ${MARK.skip} -j RETURN`);
  // Capture: the rest of TCP from an enrolled pod (UDP and ICMP were judged above, as the
  // ebpf programs do); every other protocol from it is dropped (ebpf's O13).
  pre.push(`-p tcp -m set --match-set ${set} src -j MARK --set-xmark ${MARK.outbound}`);
  pre.push(`-m mark --mark ${MARK.outbound} -j RETURN`, `-m set --match-set ${set} src -j DROP`);
  return [
    chain('mangle', 'ztunnel-PREROUTING', 'PREROUTING', pre),
    chain('mangle', 'ztunnel-FORWARD', 'FORWARD', saveConn),
    // Captured packets the node would deliver to itself (its own addresses, broadcast,
    // multicast): the kernel's `local` rule (priority 0) is consulted before our fwmark
    // rule, so they cannot be sent to ztunnel; they are dropped instead.
    chain('mangle', 'ztunnel-INPUT', 'INPUT', [`-m mark --mark ${MARK.outbound} -j DROP`, ...saveConn]),
    // Kubelet probes, and anything else the node itself sends, bypass capture; the mark is
    // saved into the connection at once, so that the pod's answers are skipped too (P8).
    chain('mangle', 'ztunnel-OUTPUT', 'OUTPUT', [`-m addrtype --src-type LOCAL -j MARK --set-xmark ${MARK.connSkip}`, saveConn[0]!]),
    // Captured packets keep their addresses: no kube-proxy DNAT/SNAT on the way to ztunnel.
    chain('nat', 'ztunnel-PREROUTING', 'PREROUTING', [`-m mark --mark ${MARK.outbound} -j ACCEPT`]),
    chain('nat', 'ztunnel-POSTROUTING', 'POSTROUTING', [`-m mark --mark ${MARK.outbound} -j ACCEPT`]),
  ];
}

function nodeRoutes(f: Family, input: PlanInput, z: ZtunnelSide | null): RouteSpec[] {
  const pods = input.pods.map((p) => p.ip).filter((ip) => familyOf(ip) === f);
  const routes: RouteSpec[] = [];
  const ztIp = z?.ips.find((ip) => familyOf(ip) === f);
  if (!z) {
    // Fail closed: an enrolled pod's traffic has nowhere to go but ztunnel.
    routes.push({ family: f, type: 'unreachable', dst: 'default', table: TABLE.outbound });
    for (const ip of pods) routes.push({ family: f, type: 'unreachable', dst: ip, table: TABLE.inbound });
    return routes;
  }
  routes.push({ family: f, type: 'unicast', dst: 'default', via: TUN_ADDR.outbound.ztunnel[f], dev: LINK.outbound.node, table: TABLE.outbound });
  if (ztIp) {
    for (const table of [TABLE.inbound, TABLE.outbound, TABLE.proxy])
      routes.push({ family: f, type: 'unicast', dst: ztIp, dev: z.hostVeth, scopeLink: true, table });
    routes.push({ family: f, type: 'unicast', dst: 'default', via: ztIp, dev: z.hostVeth, onlink: true, table: TABLE.proxy });
  } else {
    routes.push({ family: f, type: 'unreachable', dst: 'default', table: TABLE.proxy });
  }
  const src = z.hostIps[f];
  for (const ip of pods)
    routes.push({ family: f, type: 'unicast', dst: ip, via: TUN_ADDR.inbound.ztunnel[f], dev: LINK.inbound.node, ...(src && { src }), table: TABLE.inbound });
  return routes;
}

function nodeRules(f: Family): RuleSpec[] {
  return [
    { family: f, priority: 100, args: ['fwmark', MARK.skip, 'goto', '32766'] },
    { family: f, priority: 101, args: ['fwmark', MARK.outbound, 'lookup', TABLE.outbound] },
    { family: f, priority: 102, args: ['fwmark', MARK.proxyRet, 'lookup', TABLE.proxy] },
    { family: f, priority: 103, args: ['lookup', TABLE.inbound] },
  ];
}

function ztunnelPlan(input: PlanInput, z: ZtunnelSide, nodeUnderlay: string): SidePlan & { netns: string } {
  const tp = (dev: string, port: number, f: Family, match = '-p tcp') =>
    `-i ${dev} ${match} -j TPROXY --on-port ${port} --on-ip ${loopback(f)} --tproxy-mark ${MARK.tproxy}`;
  const chains: ChainSpec[] = FAMILIES.map((f) => {
    const rules = [
      tp(LINK.inbound.ztunnel, PORT.inbound, f, `-p tcp -m tcp --dport ${PORT.inbound}`),
      tp(LINK.outbound.ztunnel, PORT.outbound, f),
      tp(LINK.inbound.ztunnel, PORT.inboundPlaintext, f),
    ];
    // DNS over UDP and TCP to 15053, before the catch-all TCP rule takes TCP 53 to 15001;
    // per pod where its annotation says otherwise than the node (the tunnel keeps the source).
    const dns = (src: string) => [
      tp(LINK.outbound.ztunnel, PORT.dns, f, `${src}-p udp -m udp --dport 53`),
      tp(LINK.outbound.ztunnel, PORT.dns, f, `${src}-p tcp -m tcp --dport 53`),
    ];
    const own = input.pods.filter((p) => familyOf(p.ip) === f && dnsCapturedFor(input, p) !== input.dnsCapture).map((p) => `-s ${p.ip}/${hostLen(f)} `);
    const perPod = input.dnsCapture
      ? own.sort().map((src) => tp(LINK.outbound.ztunnel, PORT.outbound, f, `${src}-p tcp -m tcp --dport 53`))
      : own.sort().flatMap(dns);
    rules.unshift(...perPod, ...(input.dnsCapture ? dns('') : []));
    // What the tunnels bring and no listener takes: ICMP errors are delivered locally (to
    // the ztunnel socket they concern, as Z8); everything else is dropped (as Z10).
    // IPv6 neighbour discovery over the tunnels themselves (the node resolving ztunnel's
    // tunnel address) passes: ICMPv6 with hop limit 255 can only be the node's own, as
    // anything the node forwards into a tunnel arrives with 254 or less.
    for (const dev of [LINK.inbound.ztunnel, LINK.outbound.ztunnel]) {
      for (const t of ICMP_ERRORS[f]) rules.push(`-i ${dev} ${icmpProto(f)} ${t} -j MARK --set-xmark ${MARK.tproxy}`);
      rules.push(`-i ${dev} -m mark --mark ${MARK.tproxy} -j RETURN`);
      if (f === 6) rules.push(`-i ${dev} -p ipv6-icmp -m hl --hl-eq 255 -j RETURN`);
      rules.push(`-i ${dev} -j DROP`);
    }
    const ztIp = z.ips.find((ip) => familyOf(ip) === f);
    // Replies to connections ztunnel opened with a foreign source come back to it.
    if (ztIp) rules.push(`! -d ${ztIp}/${hostLen(f)} -i ${z.eth} -p tcp -j MARK --set-xmark ${MARK.orgSrcRet}`);
    return { family: f, table: 'mangle', chain: 'ztunnel-PREROUTING', base: 'PREROUTING', rules };
  });
  const routes: RouteSpec[] = [];
  const rules: RuleSpec[] = [];
  for (const f of FAMILIES) {
    routes.push({ family: f, type: 'local', dst: 'default', dev: 'lo', table: TABLE.inbound });
    routes.push({ family: f, type: 'unicast', dst: 'default', via: TUN_ADDR.outbound.node[f], dev: LINK.outbound.ztunnel, table: TABLE.outbound });
    routes.push({ family: f, type: 'unicast', dst: 'default', via: TUN_ADDR.inbound.node[f], dev: LINK.inbound.ztunnel, table: TABLE.proxy });
    const host = z.hostIps[f];
    if (host) for (const table of [TABLE.outbound, TABLE.proxy]) routes.push({ family: f, type: 'unicast', dst: host, dev: z.eth, scopeLink: true, table });
    rules.push({ family: f, priority: 20000, args: ['fwmark', MARK.tproxy, 'lookup', TABLE.inbound] });
    rules.push({ family: f, priority: 20003, args: ['fwmark', MARK.orgSrcRet, 'lookup', TABLE.inbound] });
  }
  return {
    netns: z.netns,
    links: tunnels(input.tunnel, 'ztunnel', nodeUnderlay),
    rules,
    routes,
    chains,
    // Loose, not 0: the kernel takes the larger of conf.all and the device, so 0 is strict
    // on a node whose conf.all is 1; loose passes there (the tunnels have addresses).
    sysctls: [LINK.inbound.ztunnel, LINK.outbound.ztunnel].map((d) => `net.ipv4.conf.${d}.rp_filter=2`),
  };
}

export class PlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlanError';
  }
}

export function buildPlan(input: PlanInput): Plan {
  const z = input.ztunnel;
  const u = z ? underlay(z) : null;
  if (z && !u) throw new PlanError(`ztunnel (${z.ips.join(', ') || 'no IP'}) and the node share no address family for the tunnel underlay`);
  const port = TUNNEL_PORT[input.tunnel];
  const sets = { 4: [] as string[], 6: [] as string[] };
  const ifaceSets = { 4: [] as string[], 6: [] as string[] };
  for (const p of input.pods) {
    sets[familyOf(p.ip)].push(p.ip);
    if (p.dev !== null) ifaceSets[familyOf(p.ip)].push(`${p.ip},${p.dev}`);
  }
  for (const f of FAMILIES) {
    sets[f].sort();
    ifaceSets[f].sort();
  }
  const node: SidePlan = {
    links: z && u ? tunnels(input.tunnel, 'node', u.ztunnel, ALIAS_PREFIX + z.netns) : [],
    rules: FAMILIES.flatMap(nodeRules),
    routes: FAMILIES.flatMap((f) => nodeRoutes(f, input, z)),
    chains: FAMILIES.flatMap((f) => nodeChains(f, input, z, port)),
    // Packets with foreign sources come back out of the tunnels: strict reverse-path
    // filtering would drop them (see above). ztunnel's transparent answers leave its eth0
    // instead and arrive on its host veth, where these do not help: a strict node is not
    // supported in this mode yet (docs/operations.md "Sysctls").
    sysctls: z && u ? [LINK.inbound.node, LINK.outbound.node].map((d) => `net.ipv4.conf.${d}.rp_filter=2`) : [],
  };
  return { sets, ifaceSets, node, ztunnel: z && u ? ztunnelPlan(input, z, u.node) : null };
}

// --- rendering and parsing (shared by apply, actual and uninstall) ---------------------

export function routeArgs(r: RouteSpec): string[] {
  const a: string[] = r.type === 'unicast' ? [r.dst] : [r.type, r.dst];
  if (r.via) a.push('via', r.via);
  if (r.dev && r.type !== 'unreachable') a.push('dev', r.dev);
  if (r.src) a.push('src', r.src);
  if (r.onlink) a.push('onlink');
  if (r.scopeLink) a.push('scope', 'link');
  a.push('table', r.table, 'proto', ROUTE_PROTO);
  return a;
}

/** `ip route del` arguments for one of our routes: its slot (type, destination, table) and our protocol. */
export function routeDelArgs(r: RouteSpec): string[] {
  return ['route', 'del', ...(r.type === 'unicast' ? [] : [r.type]), r.dst, 'table', r.table, 'proto', ROUTE_PROTO];
}

/** `ip rule add|del` arguments for one of our rules (priority, selector, our protocol). */
export function ruleOpArgs(op: 'add' | 'del', r: RuleSpec): string[] {
  return ['rule', op, 'priority', String(r.priority), ...r.args, 'protocol', ROUTE_PROTO];
}

/** What identifies a route for comparison: the fields the kernel echoes back. */
export function routeKey(r: RouteSpec): string {
  return [r.family, r.table, r.type, r.dst, r.via ?? '-', r.type === 'unreachable' ? '-' : (r.dev ?? '-'), r.src ?? '-'].join(' ');
}

interface IpRouteJson {
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
  table?: string;
  prefsrc?: string;
  flags?: string[];
}

export function parseRoutes(family: Family, json: string): RouteSpec[] {
  const text = json.trim();
  if (!text) return [];
  return (JSON.parse(text) as IpRouteJson[]).map((r) => ({
    family,
    type: (r.type ?? 'unicast') as RouteSpec['type'],
    dst: r.dst,
    ...(r.gateway && { via: r.gateway }),
    ...(r.dev && { dev: r.dev }),
    ...(r.prefsrc && { src: r.prefsrc }),
    ...(r.flags?.includes('onlink') && { onlink: true }),
    table: r.table ?? 'main',
  }));
}

export function ruleKey(r: RuleSpec): string {
  return [r.family, r.priority, ...r.args].join(' ');
}

interface IpRuleJson {
  priority: number;
  fwmark?: string;
  fwmask?: string;
  table?: string;
  goto?: number;
  protocol?: string;
}

/** Our rules (protocol 211) from `ip -j rule show`, in RuleSpec form. */
export function parseRules(family: Family, json: string): RuleSpec[] {
  const text = json.trim();
  if (!text) return [];
  return (JSON.parse(text) as IpRuleJson[])
    .filter((r) => r.protocol === ROUTE_PROTO)
    .map((r) => {
      const args: string[] = [];
      if (r.fwmark) args.push('fwmark', `${r.fwmark}/${r.fwmask ?? '0xffffffff'}`);
      if (r.goto !== undefined) args.push('goto', String(r.goto));
      else if (r.table) args.push('lookup', r.table);
      return { family, priority: r.priority, args };
    });
}

/** `iptables-save` output → rules of each chain ("-A chain ..." lines, the rest kept). */
export function parseSave(text: string): Map<string, { chains: Set<string>; rules: Map<string, string[]> }> {
  const tables = new Map<string, { chains: Set<string>; rules: Map<string, string[]> }>();
  let cur: { chains: Set<string>; rules: Map<string, string[]> } | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      cur = { chains: new Set(), rules: new Map() };
      tables.set(line.slice(1).trim(), cur);
    } else if (cur && line.startsWith(':')) {
      cur.chains.add(line.slice(1).split(' ')[0]!);
    } else if (cur && line.startsWith('-A ')) {
      const rest = line.slice(3);
      const sp = rest.indexOf(' ');
      const chain = sp < 0 ? rest : rest.slice(0, sp);
      const rule = sp < 0 ? '' : rest.slice(sp + 1);
      const list = cur.rules.get(chain) ?? [];
      list.push(rule);
      cur.rules.set(chain, list);
    }
  }
  return tables;
}

export function tunnelArgs(t: TunnelSpec): string[] {
  const a = ['link', 'add', t.name, 'type', t.kind, 'id', String(t.vni), 'remote', t.remote, 'dstport', String(t.port)];
  if (t.kind === 'vxlan') a.push('nolearning');
  return a;
}
