/**
 * The simulated node: a "node" netns that plays the host, one netns per pod, a ztunnel
 * netns with TPROXY capture and an "outside" netns, all named with a per-run prefix.
 * Nothing here touches the root netns: links are created inside the node netns with their
 * peers placed straight into the target netns, and sysctls are written inside each netns.
 *
 * Servers and clients are `agent.js` processes run with `ip netns exec` (see agent.ts).
 */
import { rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { Cleanup } from '../../src/capture/cleanup.js';
import { distEntry } from './dist.js';
import { CommandError, startProcess, systemRunner, type CommandRunner } from '../../src/host/runner.js';
import {
  GATEWAY_IP,
  GATEWAY_IP6,
  OUTSIDE_HOST_IP,
  OUTSIDE_HOST_IP6,
  OUTSIDE_IP,
  OUTSIDE_IP6,
  OUTSIDE_PORT,
  ZTUNNEL_IP,
  ZTUNNEL_IP6,
  ZTUNNEL_PORTS,
  checkPodCount,
  checkPrefix,
  isRunNetns,
  names,
  newPrefix,
  runPinRoot,
} from './names.js';

export { newPrefix } from './names.js';

export interface SimPod {
  index: number;
  name: string;
  ns: string;
  ip: string;
  ip6: string;
  hostVeth: string;
}

/** Where a connection starts: a pod, the node itself (as the kubelet does), or outside. */
export type SimSource = SimPod | 'node' | 'outside';

export interface ConnectResult {
  ok: boolean;
  reply?: string;
  error?: string;
}

export interface SimServer {
  /** Connections in the order the server reported them (`port`: the ztunnel listener's). */
  accepted: { src: string; origDst?: string; port?: number }[];
  /** Resolves once `count` connections were reported (reports arrive asynchronously). */
  waitForAccepted(count: number, timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
}

export interface SimNode {
  prefix: string;
  nodeNs: string;
  ztunnel: { ns: string; ip: string; ip6: string; hostVeth: string };
  outside: { ns: string; ip: string; ip6: string; port: number };
  pods: SimPod[];
  /**
   * The node's own addresses (on its uplink to the outside): what the node's "kubelet"
   * probes come from, as on a real node. Nothing on the node makes probes special: that is
   * the agent's job (docs/datapath.md, "Kubelet probes").
   */
  node: { ip: string; ip6: string };
  /**
   * The ztunnel stand-in: transparent listeners on 15001, 15006 and 15008 in the ztunnel
   * netns (IPv4 and IPv6); resolves once they listen. Each accepted connection records
   * the listener's port and the original destination. With `proxy` the stand-in relays
   * each connection to its original destination instead of answering it (benchmarks).
   */
  startZtunnel(opts?: { proxy?: boolean }): Promise<SimServer>;
  /** The outside server on 8080 in the outside netns; resolves once it listens. */
  startOutside(): Promise<SimServer>;
  /** A server in a pod's netns (for inbound traffic and probes). */
  startPodServer(pod: SimPod, port: number): Promise<SimServer>;
  /** A server in the node's netns on 0.0.0.0 and [::] (as kubelet and exporters listen). */
  startNodeServer(port: number): Promise<SimServer>;
  /**
   * `count` sequential connections; failures are results, not errors. `bind` picks the
   * source address (another pod's IP to spoof, a forged source from outside).
   */
  connect(from: SimSource, to: { ip: string; port: number }, count: number, timeoutMs?: number, bind?: string, localPort?: number): Promise<ConnectResult[]>;
  /** A UDP server answering each datagram (`accepted`: each datagram's source) on `port` of the outside netns. */
  startUdpOutside(port: number): Promise<SimServer>;
  /** `count` sequential datagrams, each waiting `timeoutMs` for the server's answer. */
  udpSend(from: SimSource, to: { ip: string; port: number }, count: number, timeoutMs?: number): Promise<ConnectResult[]>;
  /** ICMP echo (`ping`, one request per count, 1 s wait each): how many were answered. */
  ping(from: SimSource, ip: string, count: number): Promise<number>;
  /** Deletes a pod's veth pair and wires a new one (new ifindex, new MACs), as a CNI re-ADD does. */
  recreatePodLink(pod: SimPod): Promise<void>;
  /** Idempotent: stops the servers, deletes every netns of the run and checks none is left. */
  teardown(): Promise<void>;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 2_000;
const READY_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

// --- netns helpers ---------------------------------------------------------------------

async function listRunNetns(prefix: string, runner: CommandRunner): Promise<string[]> {
  const out = await runner.run(['ip', 'netns', 'list']);
  // Lines look like "name (id: 3)" or just "name".
  return out
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[0] ?? '')
    .filter((name) => isRunNetns(prefix, name));
}

/**
 * Removes every netns of a run by name. Processes still inside them (a crashed run's
 * servers) are killed first: they would keep the netns, and its links, alive unnamed.
 * They can only be ours, since only a run puts processes into its own netns.
 */
export async function cleanupPrefix(prefix: string, runner: CommandRunner = systemRunner, c: Cleanup = new Cleanup()): Promise<void> {
  checkPrefix(prefix);
  for (const ns of (await c.step("list the run's netns", () => listRunNetns(prefix, runner))) ?? []) {
    await c.step(`kill the processes in ${ns}`, () => killNetnsProcesses(ns, runner));
    await c.step(`delete netns ${ns}`, () => runner.run(['ip', 'netns', 'del', ns]));
  }
  // The run's pins (a data path left by a failed test) go with its netns: by name.
  await c.step(`remove ${runPinRoot(prefix)}`, () => rmSync(runPinRoot(prefix), { recursive: true, force: true }));
  await c.step('check nothing of the run is left', async () => {
    const left = await listRunNetns(prefix, runner);
    if (left.length > 0) throw new Error(`netns left behind: ${left.join(', ')}`);
  });
  c.throwIfFailed(`sim cleanup of "${prefix}"`);
}

async function killNetnsProcesses(ns: string, runner: CommandRunner): Promise<void> {
  const pids = (await runner.run(['ip', 'netns', 'pids', ns])).split(/\s+/).filter(Boolean).map(Number);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/** Sysctls are per netns: `ip netns exec` makes sysctl write the netns's own /proc/sys/net. */
async function sysctl(runner: CommandRunner, ns: string, settings: Record<string, string | number>): Promise<void> {
  const args = Object.entries(settings).map(([k, v]) => `${k}=${v}`);
  await runner.run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', ...args]);
}

// A new netns copies rp_filter from the root netns (devconf_inherit_init_net=0), and
// an interface takes `default` when it is created: so these are set before any veth, and
// the effective value, max(all, iface), is 0 everywhere. Redirected packets arrive on
// interfaces their source does not route back through, which strict rp_filter drops.
const RP_FILTER_OFF = { 'net.ipv4.conf.all.rp_filter': 0, 'net.ipv4.conf.default.rp_filter': 0 };

// Duplicate address detection keeps new IPv6 addresses (link-local ones too) tentative
// for a second or more; neighbour discovery waits on them. Nothing here can collide.
const DAD_OFF = { 'net.ipv6.conf.all.accept_dad': 0, 'net.ipv6.conf.default.accept_dad': 0 };

async function addNetns(runner: CommandRunner, ns: string, settings: Record<string, string | number> = {}): Promise<void> {
  await runner.run(['ip', 'netns', 'add', ns]);
  await runner.run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
  await sysctl(runner, ns, { ...DAD_OFF, ...settings });
}

/** A link's MAC address in a netns. */
export async function linkMac(runner: CommandRunner, ns: string, link: string): Promise<string> {
  const [info] = JSON.parse(await runner.run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', link])) as { address?: string }[];
  if (!info?.address) throw new Error(`no MAC address for ${link} in ${ns}`);
  return info.address;
}

/**
 * Wires an endpoint (pod or ztunnel) the way CNI plugins like Calico do: a /32 on eth0,
 * a default route to a link-local gateway that no one owns, answered by a permanent
 * neighbour entry with the host veth's MAC, and a /32 route on the node to the host veth.
 */
async function attachEndpoint(runner: CommandRunner, nodeNs: string, ns: string, hostVeth: string, ip: string, ip6: string): Promise<void> {
  await runner.run(['ip', '-n', nodeNs, 'link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await runner.run(['ip', '-n', nodeNs, 'link', 'set', hostVeth, 'up']);
  await runner.run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  await runner.run(['ip', '-n', ns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0']);
  // nodad: usable at once, as CNI plugins set it up.
  await runner.run(['ip', '-n', ns, 'addr', 'add', `${ip6}/128`, 'dev', 'eth0', 'nodad']);
  await runner.run(['ip', '-n', ns, 'route', 'add', 'default', 'via', GATEWAY_IP, 'dev', 'eth0', 'onlink']);
  await runner.run(['ip', '-n', ns, '-6', 'route', 'add', 'default', 'via', GATEWAY_IP6, 'dev', 'eth0']);
  const mac = await linkMac(runner, nodeNs, hostVeth);
  await runner.run(['ip', '-n', ns, 'neigh', 'add', GATEWAY_IP, 'lladdr', mac, 'dev', 'eth0', 'nud', 'permanent']);
  await runner.run(['ip', '-n', ns, '-6', 'neigh', 'add', GATEWAY_IP6, 'lladdr', mac, 'dev', 'eth0', 'nud', 'permanent']);
  await runner.run(['ip', '-n', nodeNs, 'route', 'add', `${ip}/32`, 'dev', hostVeth]);
  await runner.run(['ip', '-n', nodeNs, '-6', 'route', 'add', `${ip6}/128`, 'dev', hostVeth]);
}

async function addOutside(runner: CommandRunner, nodeNs: string, ns: string, hostVeth: string): Promise<void> {
  await runner.run(['ip', '-n', nodeNs, 'link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
  await runner.run(['ip', '-n', nodeNs, 'addr', 'add', `${OUTSIDE_HOST_IP}/24`, 'dev', hostVeth]);
  await runner.run(['ip', '-n', nodeNs, 'link', 'set', hostVeth, 'up']);
  await runner.run(['ip', '-n', nodeNs, 'addr', 'add', `${OUTSIDE_HOST_IP6}/64`, 'dev', hostVeth, 'nodad']);
  await runner.run(['ip', '-n', ns, 'addr', 'add', `${OUTSIDE_IP}/24`, 'dev', 'eth0']);
  await runner.run(['ip', '-n', ns, 'addr', 'add', `${OUTSIDE_IP6}/64`, 'dev', 'eth0', 'nodad']);
  await runner.run(['ip', '-n', ns, 'link', 'set', 'eth0', 'up']);
  await runner.run(['ip', '-n', ns, 'route', 'add', 'default', 'via', OUTSIDE_HOST_IP]);
  await runner.run(['ip', '-n', ns, '-6', 'route', 'add', 'default', 'via', OUTSIDE_HOST_IP6]);
}

type Topology = Pick<SimNode, 'prefix' | 'nodeNs' | 'ztunnel' | 'outside' | 'pods' | 'node'>;

function plan(prefix: string, podCount: number): Topology {
  return {
    prefix,
    nodeNs: names.nodeNs(prefix),
    ztunnel: { ns: names.ztunnelNs(prefix), ip: ZTUNNEL_IP, ip6: ZTUNNEL_IP6, hostVeth: names.ztunnelVeth(prefix) },
    outside: { ns: names.outsideNs(prefix), ip: OUTSIDE_IP, ip6: OUTSIDE_IP6, port: OUTSIDE_PORT },
    node: { ip: OUTSIDE_HOST_IP, ip6: OUTSIDE_HOST_IP6 },
    pods: Array.from({ length: podCount }, (_, i) => ({
      index: i,
      name: `pod${i}`,
      ns: names.podNs(prefix, i),
      ip: names.podIp(i),
      ip6: names.podIp6(i),
      hostVeth: names.podVeth(prefix, i),
    })),
  };
}

async function build(runner: CommandRunner, t: Topology): Promise<void> {
  await addNetns(runner, t.nodeNs, { 'net.ipv4.ip_forward': 1, 'net.ipv6.conf.all.forwarding': 1, ...RP_FILTER_OFF });
  // ztunnel's netns gets no capture rules of its own: the controller sets them up.
  await addNetns(runner, t.ztunnel.ns, RP_FILTER_OFF);
  await attachEndpoint(runner, t.nodeNs, t.ztunnel.ns, t.ztunnel.hostVeth, t.ztunnel.ip, t.ztunnel.ip6);
  for (const pod of t.pods) {
    await addNetns(runner, pod.ns);
    await attachEndpoint(runner, t.nodeNs, pod.ns, pod.hostVeth, pod.ip, pod.ip6);
  }
  await addNetns(runner, t.outside.ns);
  await addOutside(runner, t.nodeNs, t.outside.ns, names.outsideVeth(t.prefix));
}

// --- agent processes -------------------------------------------------------------------

function agentArgv(ns: string, args: string[]): string[] {
  return ['ip', 'netns', 'exec', ns, process.execPath, distEntry('./agent.js'), ...args];
}

interface AgentEvent {
  event?: string;
  port?: number;
  src?: string;
  origDst?: string;
  ok?: boolean;
  reply?: string;
  error?: string;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()}: timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** One agent event per stdout line; anything else (there should be nothing) is skipped. */
function parseEvent(line: string): AgentEvent | undefined {
  try {
    return JSON.parse(line) as AgentEvent;
  } catch {
    return undefined;
  }
}

/**
 * Starts a server agent in `ns`; resolves once it reports "listening". The server is in
 * `running` from spawn until stopped, so a teardown during start-up stops it too.
 */
async function startServer(ns: string, args: string[], running: Set<SimServer>): Promise<SimServer> {
  const child = startProcess(agentArgv(ns, args));
  const accepted: SimServer['accepted'] = [];
  const waiters: (() => void)[] = [];
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-4096);
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const what = `sim ${args[0]} in ${ns}`;

  const server: SimServer = {
    accepted,
    waitForAccepted(count, timeoutMs = 5_000) {
      const reached = new Promise<void>((resolve) => {
        const check = () => (accepted.length >= count ? resolve() : waiters.push(check));
        check();
      });
      return withTimeout(reached, timeoutMs, () => `${what}: waiting for ${count} connections (saw ${accepted.length})`);
    },
    async stop() {
      running.delete(server);
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      child.kill('SIGTERM');
      await withTimeout(exited, STOP_TIMEOUT_MS, () => `${what}: stop`).catch(() => child.kill('SIGKILL'));
    },
  };
  running.add(server);

  let onListening: (() => void) | undefined;
  const ready = new Promise<SimServer>((resolve, reject) => {
    onListening = () => resolve(server);
    child.once('error', (err) => reject(new Error(`${what}: ${err.message}`)));
    void exited.then(() => reject(new Error(`${what} exited (${child.exitCode ?? child.signalCode}): ${stderr.trim() || '(no output)'}`)));
  });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const ev = parseEvent(line);
    if (ev?.event === 'listening') onListening?.();
    else if (ev?.event === 'accepted' && ev.src) {
      accepted.push({ src: ev.src, ...(ev.origDst !== undefined && { origDst: ev.origDst }), ...(ev.port !== undefined && { port: ev.port }) });
      waiters.splice(0).forEach((w) => w());
    }
  });
  return withTimeout(ready, READY_TIMEOUT_MS, () => `${what}: not listening`).catch(async (err: unknown) => {
    await server.stop();
    throw err;
  });
}

/**
 * Runs one of the sim agent's client commands (connect, udp-send) in `from`'s netns and
 * returns its `count` results.
 */
async function agentResults(
  runner: CommandRunner,
  t: Topology,
  from: SimSource,
  command: 'connect' | 'udp-send',
  to: { ip: string; port: number },
  count: number,
  timeoutMs: number,
  extra: readonly string[] = [],
): Promise<ConnectResult[]> {
  const ns = from === 'node' ? t.nodeNs : from === 'outside' ? t.outside.ns : from.ns;
  const name = typeof from === 'string' ? `the ${from}` : from.name;
  const dest = to.ip.includes(':') ? `[${to.ip}]:${to.port}` : `${to.ip}:${to.port}`;
  const argv = agentArgv(ns, [command, '--to', dest, '--count', String(count), '--timeout-ms', String(timeoutMs), ...extra]);
  // The agent enforces the per-connection timeout; this bound only catches a hung agent
  // (a loaded machine can take seconds just to start Node).
  const out = await runner.run(argv, { timeoutMs: count * (timeoutMs + 1_000) + 60_000 });
  const results = out
    .split('\n')
    .map(parseEvent)
    .filter((ev): ev is AgentEvent => ev?.event === 'result')
    .map(({ ok, reply, error }) => ({ ok: ok === true, ...(reply !== undefined && { reply }), ...(error !== undefined && { error }) }));
  if (results.length !== count) throw new Error(`sim ${command} from ${name}: expected ${count} results, got ${results.length}: ${out}`);
  return results;
}

function connect(
  runner: CommandRunner,
  t: Topology,
  from: SimSource,
  to: { ip: string; port: number },
  count: number,
  timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS,
  bind?: string,
  localPort?: number,
): Promise<ConnectResult[]> {
  return agentResults(runner, t, from, 'connect', to, count, timeoutMs, [
    ...(bind ? ['--bind', bind] : []),
    ...(localPort ? ['--local-port', String(localPort)] : []),
  ]);
}

function udpSend(
  runner: CommandRunner,
  t: Topology,
  from: SimSource,
  to: { ip: string; port: number },
  count: number,
  timeoutMs = DEFAULT_CONNECT_TIMEOUT_MS,
): Promise<ConnectResult[]> {
  return agentResults(runner, t, from, 'udp-send', to, count, timeoutMs);
}

// --- the node --------------------------------------------------------------------------

export async function createSimNode(opts: { pods: number; prefix?: string; runner?: CommandRunner }): Promise<SimNode> {
  const runner = opts.runner ?? systemRunner;
  const prefix = opts.prefix ?? newPrefix();
  checkPrefix(prefix);
  checkPodCount(opts.pods);
  // Never adopt (and later delete) namespaces another run owns.
  const taken = await listRunNetns(prefix, runner);
  if (taken.length > 0) throw new Error(`sim prefix "${prefix}" is in use (${taken.join(', ')}); cleanupPrefix removes leftovers`);

  const topology = plan(prefix, opts.pods);
  try {
    await build(runner, topology);
  } catch (err) {
    const cleanup = await cleanupPrefix(prefix, runner).then(
      () => '',
      (e: unknown) => `; cleanup also failed: ${e instanceof Error ? e.message : String(e)}`,
    );
    throw new Error(`creating sim node "${prefix}" failed: ${err instanceof Error ? err.message : String(err)}${cleanup}`, { cause: err });
  }

  const servers = new Set<SimServer>();
  let torn: Promise<void> | undefined;

  return {
    ...topology,
    startZtunnel: (o) => startServer(topology.ztunnel.ns, ['ztunnel', '--port', ZTUNNEL_PORTS.join(','), ...(o?.proxy ? ['--proxy'] : [])], servers),
    startPodServer: (pod, port) => startServer(pod.ns, ['server', '--port', String(port), '--reply', pod.name], servers),
    startNodeServer: (port) => startServer(topology.nodeNs, ['server', '--port', String(port), '--reply', 'node'], servers),
    startOutside: () => startServer(topology.outside.ns, ['server', '--port', String(OUTSIDE_PORT), '--reply', 'outside'], servers),
    connect: (from, to, count, timeoutMs, bind, localPort) => connect(runner, topology, from, to, count, timeoutMs, bind, localPort),
    startUdpOutside: (port) => startServer(topology.outside.ns, ['udp-server', '--port', String(port), '--reply', 'outside'], servers),
    udpSend: (from, to, count, timeoutMs) => udpSend(runner, topology, from, to, count, timeoutMs),
    async ping(from, ip, count) {
      const ns = from === 'node' ? topology.nodeNs : from === 'outside' ? topology.outside.ns : from.ns;
      let answered = 0;
      for (let i = 0; i < count; i++) {
        // One echo per run: ping exits 1 when it goes unanswered, a result here, not an error.
        const ok = await runner.run(['ip', 'netns', 'exec', ns, 'ping', '-n', '-c', '1', '-W', '1', ip], { timeoutMs: 10_000 }).then(
          () => true,
          (err: unknown) => {
            if (err instanceof CommandError && err.exitCode === 1) return false;
            throw err;
          },
        );
        if (ok) answered++;
      }
      return answered;
    },
    async recreatePodLink(pod) {
      await runner.run(['ip', '-n', topology.nodeNs, 'link', 'del', pod.hostVeth]);
      await attachEndpoint(runner, topology.nodeNs, pod.ns, pod.hostVeth, pod.ip, pod.ip6);
    },
    teardown() {
      // A failed teardown may be retried; a finished or running one is shared.
      // Every step runs even when one fails; the error names all that failed.
      torn ??= (async () => {
        const c = new Cleanup();
        for (const s of servers) await c.step('stop a server', () => s.stop());
        await cleanupPrefix(prefix, runner, c);
      })().catch((err: unknown) => {
        torn = undefined;
        throw err;
      });
      return torn;
    },
  };
}

// --- for the runtime stand-in (harness/sim/runtime.ts) ---------------------------------------

/**
 * The primary CNI's work for one pod, as a runtime's first plugin does it: a new netns,
 * a veth pair, the pod's addresses, its default routes and the node's /32 routes (the same
 * wiring as the pods createSimNode makes up front).
 */
export async function wirePod(runner: CommandRunner, nodeNs: string, podNs: string, hostVeth: string, ip: string, ip6: string): Promise<void> {
  await addNetns(runner, podNs);
  await attachEndpoint(runner, nodeNs, podNs, hostVeth, ip, ip6);
}

/** The primary CNI's DEL: the veth pair (and with it the routes) and the netns. Idempotent. */
export async function unwirePod(runner: CommandRunner, nodeNs: string, podNs: string, hostVeth: string): Promise<void> {
  await runner.run(['ip', '-n', nodeNs, 'link', 'del', hostVeth]).catch(() => '');
  await killNetnsProcesses(podNs, runner).catch(() => undefined);
  await runner.run(['ip', 'netns', 'del', podNs]).catch(() => '');
}
