/**
 * `ambient-redirect status`: what this node's data path is, read from the kernel only (the
 * pins, the TC and XDP hooks, the ipsets), so it answers while `run` is stopped and while the API
 * server is down.
 */
import * as codec from '../bpf/codec.js';
import { netnsPath, withNetns } from '../bpf/netns.js';
import { pinDir } from '../bpf/pins.js';
import { listTcFilters, listTcx, probeTcx, programName } from '../bpf/hooks.js';
import { pinnedProgramIds } from '../bpf/install.js';
import { queryXdp } from '../bpf/xdp.js';
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
and the mode they select, ztunnel (with the XDP program on its eth0, --hook xdp), every
enrolled pod with the programs on its veth (which hook holds its outbound program: tc or
xdp, and any XDP program there that is not ours) and its counters, and how full the maps are. Reads the kernel only: it works while \`run\` is
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
  /** The veth's slot in the counters array (0: none, its frames count in slot 0). */
  slot: number;
  veth: string | null;
  /** Program IDs of our TC filters on the veth's hooks (null: none of ours). */
  hooks: { ingress: number | null; egress: number | null };
  /** Which hook holds our outbound program (`run --hook`): TC ingress or XDP; null: neither. */
  outbound: { hook: 'tc' | 'xdp'; id: number } | null;
  /** The program on the veth's XDP hook, ours or not; null: none. */
  xdp: XdpStatus | null;
  counters: { redirected: [string, string]; dropped: [string, string]; passed: [string, string] };
}

export interface XdpStatus {
  id: number;
  name: string | null;
  mode: 'native' | 'generic';
  /** Pinned in our program folders. */
  ours: boolean;
}

export interface Status {
  mode: SelectedMode | 'none';
  pinDir: string;
  kernel: { release: string; probes: KernelFacts['probes']; probeError?: string; selects: string; reason: string };
  ztunnel: {
    ifindex: number;
    peerIfindex: number;
    mac: string;
    dnsCapture: boolean;
    netns: string | null;
    program: number | null;
    /** The program on eth0's XDP hook: our xdp_pass (NAPI mode, `--hook xdp`), someone else's, or null. */
    xdp: XdpStatus | null;
  } | null;
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
  const podOf = new Map(pods.map((p) => [p.ifindex, p]));
  const kinds = veths.size ? await linkKinds(runner) : new Map<number, string | null>();
  for (const [ifindex, dev] of veths) {
    const bypass = deviceBypass(kinds.get(ifindex) ?? null);
    if (bypass) findings.push({ where: 'pod', device: dev, direction: 'egress', kind: 'bypass', program: bypass });
    const p = podOf.get(ifindex);
    if (p?.xdp && !p.xdp.ours) findings.push({ where: 'pod', device: dev, direction: 'ingress', kind: 'xdp', program: foreignXdp(p.xdp) });
    for (const direction of DIRECTIONS) {
      // Our outbound program at XDP: TC ingress is not where it runs.
      if (direction === 'ingress' && p?.outbound?.hook === 'xdp') continue;
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
  if (ztunnel?.xdp && !ztunnel.xdp.ours && ztDev)
    findings.push({ where: 'ztunnel', device: ztDev, direction: 'ingress', kind: 'xdp', program: foreignXdp(ztunnel.xdp) });
  return { tcx: probeTcx(), findings: findings.map((f) => ({ ...f, text: describeFinding(f) })) };
}

const pair = (packets: bigint, bytes: bigint): [string, string] => [packets.toString(), bytes.toString()];

function foreignXdp(x: XdpStatus): string {
  return `${x.mode} XDP program ${x.id}${x.name ? ` ${x.name}` : ''} (not ours) runs before our TC programs`;
}

/** The program on a device's XDP hook (of the calling thread's netns), and whether it is ours. */
function xdpStatus(ifindex: number, ours: ReadonlyMap<number, string>): XdpStatus | null {
  const x = queryXdp(ifindex);
  return x ? { id: x.id, mode: x.mode, name: ours.get(x.id) ?? programName(x.id), ours: ours.has(x.id) } : null;
}

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
  const ours = pinnedProgramIds(pinDir(pinRoot));

  let ztunnel: Status['ztunnel'] = null;
  const slot = maps.entries('ztunnel')?.[0];
  if (slot) {
    const zt = codec.decodeZtunnelInfo(slot[1]);
    if (zt.flags & codec.ZtunnelFlags.PRESENT) {
      const host = net.links.get(zt.ifindex);
      const netns = host?.peerNetnsId !== undefined ? (net.netnsById.get(host.peerNetnsId) ?? null) : null;
      const [program, xdp] = netns
        ? withNetns(netnsPath(netns), () => [ourProgram(zt.peerIfindex, 'ingress'), xdpStatus(zt.peerIfindex, ours)] as const)
        : [null, null];
      ztunnel = {
        ifindex: zt.ifindex,
        peerIfindex: zt.peerIfindex,
        mac: zt.mac,
        dnsCapture: (zt.flags & codec.ZtunnelFlags.DNS_CAPTURE) !== 0,
        netns,
        program,
        xdp,
      };
    }
  }

  const pods: PodStatus[] = podCounters(maps).map(({ ip, ifindex, slot, counters: c }) => {
    const hooks = { ingress: ourProgram(ifindex, 'ingress'), egress: ourProgram(ifindex, 'egress') };
    const xdp = xdpStatus(ifindex, ours);
    return {
      ip,
      ifindex,
      slot,
      veth: net.links.get(ifindex)?.name ?? null,
      hooks,
      outbound: xdp?.ours ? { hook: 'xdp' as const, id: xdp.id } : hooks.ingress !== null ? { hook: 'tc' as const, id: hooks.ingress } : null,
      xdp,
      counters: {
        redirected: pair(c.redirectedPackets, c.redirectedBytes),
        dropped: pair(c.droppedPackets, c.droppedBytes),
        passed: pair(c.passedPackets, c.passedBytes),
      },
    };
  });
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
        ? `ztunnel: host veth ifindex ${s.ztunnel.ifindex}, netns ${s.ztunnel.netns ?? '?'}, eth0 ${s.ztunnel.mac}, delivery program ${s.ztunnel.program ?? 'MISSING'}${s.ztunnel.xdp ? `, eth0 XDP ${s.ztunnel.xdp.ours ? `${s.ztunnel.xdp.name ?? '?'} ${s.ztunnel.xdp.id} (NAPI mode)` : `program ${s.ztunnel.xdp.id} NOT OURS`}` : ''}${s.ztunnel.dnsCapture ? ', DNS capture' : ''}`
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
      const rows = [['ip', 'veth', 'outbound prog', 'inbound prog', 'redirected pkts/bytes', 'dropped pkts/bytes', 'passed pkts/bytes']];
      for (const p of s.pods) {
        const foreign = p.xdp && !p.xdp.ours ? ` (XDP ${p.xdp.id} NOT OURS)` : '';
        rows.push([
          p.ip,
          p.veth ?? `ifindex ${p.ifindex} (gone)`,
          (p.outbound ? `${p.outbound.hook} ${p.outbound.id}` : 'MISSING') + foreign,
          `tc ${p.hooks.egress ?? 'MISSING'}`,
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
