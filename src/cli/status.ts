/**
 * `ambient-redirect status`: what this node's data path is, read from the kernel only (the
 * pins, the TC hooks, the ipsets), so it answers while `run` is stopped and while the API
 * server is down.
 */
import * as codec from '../bpf/codec.js';
import { netnsPath, withNetns } from '../bpf/netns.js';
import { pinDir } from '../bpf/pins.js';
import { listTcFilters, listTcx, probeTcx } from '../bpf/hooks.js';
import { LEGACY_FILTER, OUR_FILTER, queryTc, type Direction } from '../bpf/tc.js';
import { describeFinding, deviceBypass, programsAhead, type Finding } from '../core/ordering.js';
import { PIN_ROOT_FLAG, resolveFlags, usageOf, ConfigError } from '../lib/flags.js';
import { ZTUNNEL_MODE_FLAGS, ZTUNNEL_MODES } from '../config.js';
import { parseListenAddress } from '../metrics/server.js';
import { gatherKernelFacts } from '../host/kernel.js';
import { linkKinds, readHostNet, readLinksIn } from '../host/netinfo.js';
import { systemRunner, type CommandRunner } from '../host/runner.js';
import { mapUsage, pinnedMaps, podCounters, type MapUsage } from '../metrics/pinned.js';
import { IPSET } from '../capture/iptables/rules.js';
import { selectMode, type KernelFacts } from '../capture/select.js';
import type { SelectedMode } from '../core/modes.js';

const FLAGS = {
  ...PIN_ROOT_FLAG,
  ...ZTUNNEL_MODE_FLAGS,
  'health-address': { env: 'HEALTH_ADDRESS', help: 'inpod mode: the agent’s health address, where /zds is read', default: '' },
};

export const statusUsage = `usage: ambient-redirect status [--pin-root DIR] [--ztunnel-mode inpod|node] [--health-address IP:PORT] [--json]

node mode: shows this node's data path: the capture mode installed, the kernel's facts
and the mode they select, ztunnel, every enrolled pod with the programs on its veth and
its counters, and how full the maps are. Reads the kernel only: it works while \`run\` is
stopped and while the API server is down. Run it in the node's network namespace, as root.

inpod mode (the default, as for \`run\`): asks the running agent (GET /zds on its health
address, $HEALTH_ADDRESS in the agent's container) for the ztunnels connected over ZDS,
how many pods each was sent, and every enrolled pod's netns, capture and ack.

flags (environment equivalents in brackets):
${usageOf(FLAGS)}
`;

/** What the agent's /zds answers (src/cli/run.ts, inpod mode). */
export interface ZdsStatus {
  ztunnelMode: 'inpod';
  socket: string;
  capture: string | null;
  connections: { id: number; phase: string; podsSent: number }[];
  counters: { requests: Record<string, number>; acksOk: number; ackErrors: number; ackTimeouts: number; malformed: number; lastSnapshotMs: number | null };
  pods: { uid: string; namespace: string; name: string; ips: string[]; netns: string | null; installed: boolean; acked: boolean; problem: string | null }[];
}

/** inpod mode: the running agent's ZDS view, from its health address. */
export async function readZdsStatus(healthAddress: string): Promise<ZdsStatus> {
  if (!healthAddress) throw new Error('inpod mode: the agent is asked over its health address: give --health-address (or $HEALTH_ADDRESS)');
  const { host, port } = parseListenAddress(healthAddress);
  const h = !host || host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '::1' : host;
  const url = `http://${h.includes(':') ? `[${h}]` : h}:${port}/zds`;
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  } catch (err) {
    throw new Error(`the agent does not answer at ${url} (is \`run --ztunnel-mode inpod\` running?): ${(err as Error).message}`);
  }
  if (!res.ok) throw new Error(`${url} answered ${res.status}: is the agent in inpod mode?`);
  return (await res.json()) as ZdsStatus;
}

export function renderZdsStatus(z: ZdsStatus): string {
  const lines: string[] = [];
  lines.push(`ztunnel mode: inpod (ZDS socket ${z.socket})`);
  lines.push(`in-pod capture: ${z.capture ?? 'NONE in this build (pods are sent to ztunnel uncaptured)'}`);
  const ready = z.connections.filter((c) => c.phase !== 'hello');
  lines.push(`ztunnels connected: ${ready.length}${ready.length === 0 ? ' (enrolled pods stay enrolled; new pods wait at the CNI gate)' : ''}`);
  if (z.connections.length) {
    const rows = [['connection', 'phase', 'pods sent']];
    for (const c of z.connections) rows.push([String(c.id), c.phase, String(c.podsSent)]);
    lines.push(table(rows));
  }
  const r = z.counters.requests;
  lines.push(
    `requests: add ${r.add ?? 0}, keep ${r.keep ?? 0}, del ${r.del ?? 0}, snapshot_sent ${r.snapshot_sent ?? 0}; acks ok ${z.counters.acksOk}, with error ${z.counters.ackErrors}, timed out ${z.counters.ackTimeouts}; last snapshot ${z.counters.lastSnapshotMs ?? '-'} ms`,
  );
  lines.push(`enrolled pods: ${z.pods.length}`);
  if (z.pods.length) {
    const rows = [['pod', 'ips', 'netns', 'capture', 'acked', 'problem']];
    for (const p of z.pods)
      rows.push([
        `${p.namespace}/${p.name}`,
        p.ips.join(','),
        p.netns ?? 'NOT FOUND',
        p.installed ? (z.capture ? 'installed' : 'none') : 'no',
        p.acked ? 'yes' : 'no',
        p.problem ?? '',
      ]);
    lines.push(table(rows));
  }
  return lines.join('\n') + '\n';
}

export interface PodStatus {
  ip: string;
  ifindex: number;
  veth: string | null;
  /** Program IDs on the veth's hooks (null: none of ours). */
  hooks: { ingress: number | null; egress: number | null };
  counters: { redirected: [string, string]; dropped: [string, string]; passed: [string, string] };
}

export interface Status {
  mode: SelectedMode | 'none';
  pinDir: string;
  kernel: { release: string; probes: KernelFacts['probes']; probeError?: string; selects: string; reason: string };
  ztunnel: { ifindex: number; peerIfindex: number; mac: string; dnsCapture: boolean; netns: string | null; program: number | null } | null;
  pods: PodStatus[];
  maps: MapUsage[];
  /** ebpf mode: the DNS servers port 53 may reach uncaptured (dns_servers). */
  dnsServers: string[];
  /** iptables mode: the enrolled addresses in its ipsets. */
  iptablesPods: string[];
  /**
   * ebpf mode: what runs before our programs on the hooks we use, or lets traffic skip
   * them (the agent's /readyz fails on the same findings); `tcx`: the kernel has tcx hooks.
   */
  ordering: { tcx: boolean; findings: (Finding & { text: string })[] };
}

const DIRECTIONS: Direction[] = ['ingress', 'egress'];

/** The program at our place, or at an older build's (priority 9393) while a run has not moved it yet. */
function ourProgram(ifindex: number, direction: Direction): number | null {
  return queryTc(ifindex, direction) ?? queryTc(ifindex, direction, LEGACY_FILTER);
}

function placeOf(ifindex: number, direction: Direction) {
  return queryTc(ifindex, direction) !== null ? OUR_FILTER : LEGACY_FILTER;
}

/** The ordering check on our hooks as they are now; our program is whatever holds our place. */
async function readOrdering(pods: PodStatus[], ztunnel: Status['ztunnel'], ztDev: string | null, runner: CommandRunner): Promise<Status['ordering']> {
  const findings: Finding[] = [];
  const veths = new Map<number, string>();
  for (const p of pods) if (p.veth) veths.set(p.ifindex, p.veth);
  const hooksOf = new Map(pods.map((p) => [p.ifindex, p.hooks]));
  const kinds = veths.size ? await linkKinds(runner) : new Map<number, string | null>();
  for (const [ifindex, dev] of veths) {
    const bypass = deviceBypass(kinds.get(ifindex) ?? null);
    if (bypass) findings.push({ where: 'pod', device: dev, direction: 'egress', kind: 'bypass', program: bypass });
    for (const direction of DIRECTIONS) {
      const progId = hooksOf.get(ifindex)?.[direction] ?? null;
      if (progId === null) continue; // shown as MISSING in the pod table
      const hook = { tcx: listTcx(ifindex, direction), tc: listTcFilters(ifindex, direction) };
      findings.push(...programsAhead({ where: 'pod', device: dev, direction }, hook, { ...placeOf(ifindex, direction), progId }));
    }
  }
  if (ztunnel?.netns && ztunnel.program !== null && ztDev) {
    const { hook, place } = withNetns(netnsPath(ztunnel.netns), () => ({
      hook: { tcx: listTcx(ztunnel.peerIfindex, 'ingress'), tc: listTcFilters(ztunnel.peerIfindex, 'ingress') },
      place: placeOf(ztunnel.peerIfindex, 'ingress'),
    }));
    findings.push(...programsAhead({ where: 'ztunnel', device: ztDev, direction: 'ingress' }, hook, { ...place, progId: ztunnel.program }));
  }
  return { tcx: probeTcx(), findings: findings.map((f) => ({ ...f, text: describeFinding(f) })) };
}

const pair = (packets: bigint, bytes: bigint): [string, string] => [packets.toString(), bytes.toString()];

async function ipsetMembers(runner: CommandRunner): Promise<string[] | null> {
  const out: string[] = [];
  let found = false;
  for (const set of Object.values(IPSET)) {
    const text = await runner.run(['ipset', 'list', set]).catch(() => null);
    if (text === null) continue;
    found = true;
    const members = text.split('Members:')[1] ?? '';
    out.push(
      ...members
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    );
  }
  return found ? out : null;
}

export async function readStatus(pinRoot: string, runner: CommandRunner = systemRunner): Promise<Status> {
  const facts = gatherKernelFacts();
  let selects = 'none';
  let reason = '';
  try {
    const s = selectMode('auto', facts);
    selects = s.mode;
    reason = s.reason;
  } catch (err) {
    reason = (err as Error).message;
  }
  const maps = pinnedMaps(pinRoot);
  const podsRaw = maps.entries('pods');
  const ipset = await ipsetMembers(runner);
  const net = await readHostNet(runner);

  let ztunnel: Status['ztunnel'] = null;
  const slot = maps.entries('ztunnel')?.[0];
  if (slot) {
    const zt = codec.decodeZtunnelInfo(slot[1]);
    if (zt.flags & codec.ZtunnelFlags.PRESENT) {
      const host = net.links.get(zt.ifindex);
      const netns = host?.peerNetnsId !== undefined ? (net.netnsById.get(host.peerNetnsId) ?? null) : null;
      const program = netns ? withNetns(netnsPath(netns), () => ourProgram(zt.peerIfindex, 'ingress')) : null;
      ztunnel = {
        ifindex: zt.ifindex,
        peerIfindex: zt.peerIfindex,
        mac: zt.mac,
        dnsCapture: (zt.flags & codec.ZtunnelFlags.DNS_CAPTURE) !== 0,
        netns,
        program,
      };
    }
  }

  const pods: PodStatus[] = podCounters(maps).map(({ ip, ifindex, counters: c }) => ({
    ip,
    ifindex,
    veth: net.links.get(ifindex)?.name ?? null,
    hooks: { ingress: ourProgram(ifindex, 'ingress'), egress: ourProgram(ifindex, 'egress') },
    counters: {
      redirected: pair(c.redirectedPackets, c.redirectedBytes),
      dropped: pair(c.droppedPackets, c.droppedBytes),
      passed: pair(c.passedPackets, c.passedBytes),
    },
  }));
  pods.sort((a, b) => a.ip.localeCompare(b.ip));
  let ztDev: string | null = null;
  if (ztunnel?.netns) ztDev = (await readLinksIn(runner, ztunnel.netns)).get(ztunnel.peerIfindex)?.name ?? null;
  const ordering = podsRaw ? await readOrdering(pods, ztunnel, ztDev, runner) : { tcx: probeTcx(), findings: [] };

  return {
    mode: podsRaw ? 'ebpf' : ipset ? 'iptables' : 'none',
    pinDir: pinDir(pinRoot),
    kernel: { release: facts.release, probes: facts.probes, ...(facts.probeError && { probeError: facts.probeError }), selects, reason },
    ztunnel,
    pods,
    maps: mapUsage(maps),
    dnsServers: (maps.entries('dns_servers') ?? []).map(([k]) => codec.decodeAddrKey(k)).sort(),
    iptablesPods: ipset ?? [],
    ordering,
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function renderStatus(s: Status): string {
  const lines: string[] = [];
  lines.push(`mode: ${s.mode === 'none' ? 'not installed' : s.mode}`);
  lines.push(`kernel: ${s.kernel.release}; selects ${s.kernel.selects} (${s.kernel.reason})`);
  if (s.kernel.probes)
    lines.push(
      `probes: ${Object.entries(s.kernel.probes)
        .map(([k, v]) => `${k}=${v ? 'yes' : 'no'}`)
        .join(' ')}`,
    );
  if (s.mode === 'ebpf') {
    lines.push(`pins: ${s.pinDir}`);
    lines.push(
      s.ztunnel
        ? `ztunnel: host veth ifindex ${s.ztunnel.ifindex}, netns ${s.ztunnel.netns ?? '?'}, eth0 ${s.ztunnel.mac}, delivery program ${s.ztunnel.program ?? 'MISSING'}${s.ztunnel.dnsCapture ? ', DNS capture' : ''}`
        : 'ztunnel: absent (enrolled pods fail closed)',
    );
    lines.push(`maps: ${s.maps.map((m) => `${m.map} ${m.entries}/${m.capacity}`).join(', ')}`);
    lines.push(
      `DNS servers (UDP 53 uncaptured${s.ztunnel?.dnsCapture ? ' only without DNS capture' : ''}): ${s.dnsServers.length ? s.dnsServers.join(', ') : 'none (all of UDP 53 is captured)'}`,
    );
    lines.push(
      s.ordering.findings.length
        ? `ordering: NOT VERIFIED (tcx ${s.ordering.tcx ? 'available' : 'absent'})\n${s.ordering.findings.map((f) => `  ${f.text}`).join('\n')}`
        : `ordering: nothing runs before our programs (tcx ${s.ordering.tcx ? 'available' : 'absent'})`,
    );
    lines.push(`enrolled pod addresses: ${s.pods.length}`);
    if (s.pods.length) {
      const rows = [['ip', 'veth', 'ingress prog', 'egress prog', 'redirected pkts/bytes', 'dropped pkts/bytes', 'passed pkts/bytes']];
      for (const p of s.pods) {
        rows.push([
          p.ip,
          p.veth ?? `ifindex ${p.ifindex} (gone)`,
          String(p.hooks.ingress ?? 'MISSING'),
          String(p.hooks.egress ?? 'MISSING'),
          p.counters.redirected.join('/'),
          p.counters.dropped.join('/'),
          p.counters.passed.join('/'),
        ]);
      }
      lines.push(table(rows));
    }
  } else if (s.mode === 'iptables') {
    lines.push(`enrolled pod addresses: ${s.iptablesPods.length}${s.iptablesPods.length ? ` (${s.iptablesPods.join(', ')})` : ''}`);
  }
  return lines.join('\n') + '\n';
}

export async function statusCommand(argv: string[]): Promise<number> {
  const f = resolveFlags(argv, FLAGS, process.env, ['json']);
  if (f.help) {
    process.stdout.write(statusUsage);
    return 0;
  }
  const mode = f.get('ztunnel-mode')!;
  if (!(ZTUNNEL_MODES as readonly string[]).includes(mode)) throw new ConfigError(`--ztunnel-mode: "${mode}" is not one of ${ZTUNNEL_MODES.join(', ')}`);
  if (mode === 'inpod') {
    const z = await readZdsStatus(f.get('health-address') ?? '');
    process.stdout.write(f.flag('json') ? JSON.stringify(z) + '\n' : renderZdsStatus(z));
    return 0;
  }
  const s = await readStatus(f.get('pin-root')!);
  process.stdout.write(f.flag('json') ? JSON.stringify({ ztunnelMode: 'node', ...s }) + '\n' : `ztunnel mode: node\n${renderStatus(s)}`);
  return 0;
}
