/**
 * The kernel side of the data-path tests: the compiled object loaded without pins, its
 * maps filled through the codec from a readable state, and its programs run with
 * BPF_PROG_RUN inside a network namespace of our own (per-run name, deleted on close).
 *
 * The test thread itself enters that netns (setns on this thread only) for the whole
 * file: `skb->ifindex` must name a device of the netns the run happens in, and zt_assign's
 * socket lookups see that netns's sockets, so the veths and the listeners live there and
 * nothing touches the root netns.
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { connectOverLo } from '../../harness/lib/lo-connection.js';
import { existsSync } from 'node:fs';
import * as codec from '../../src/bpf/codec.js';
import { BpfObject, type BpfMap } from '../../src/bpf/object.js';
import { enterNetns, isNotRunnable, runProgram, TcAct } from '../../harness/bpf/testrun.js';
import { systemRunner } from '../../src/host/runner.js';
import { ipBytes } from '../../harness/packet/builder.js';
import { applyMapState, FILLER_IFINDEX, fillerPods, recordVeths, slotOf, type MapState } from '../../harness/matrix/state.js';
import { addrKeyHex, EMPTY_ZTUNNEL, hostFlowKey, type ModelState, type PodEntry, type Verdict, type VerdictName } from './datapath.js';

export const OBJECT_PATH = 'build/redirect.bpf.o';
export const PROGRAMS = ['out_redir_peer', 'out_redirect', 'in_redirect', 'zt_mark', 'zt_assign'] as const;
export type ProgramName = (typeof PROGRAMS)[number];

/** A map state (harness/matrix/state.ts: the kernel matrix writes the same ones). */
export type StateSpec = MapState;
export { FILLER_IFINDEX, fillerPods };

export function modelStateOf(spec: StateSpec, maxPods: number): ModelState {
  const pods = new Map<string, PodEntry>();
  if (spec.fillPods) {
    for (const f of fillerPods(maxPods - spec.pods.length)) pods.set(f.key.toString('hex'), { ifindex: FILLER_IFINDEX, mac: '00:00:00:00:00:00', flags: 1 });
  }
  for (const p of spec.pods) pods.set(addrKeyHex(ipBytes(p.ip)), { ifindex: p.ifindex, mac: p.mac ?? '00:00:00:00:00:00', flags: p.flags });
  return {
    pods,
    ztunnel: spec.ztunnel ?? EMPTY_ZTUNNEL,
    dnsServers: new Set(spec.dnsServers.map((ip) => addrKeyHex(ipBytes(ip)))),
    hostFlows: new Map(
      (spec.hostFlows ?? []).map((f) => [
        hostFlowKey(addrKeyHex(ipBytes(f.flow.pod)), f.flow.podPort, addrKeyHex(ipBytes(f.flow.peer)), f.flow.peerPort, f.flow.proto),
        f.ifindex,
      ]),
    ),
  };
}

/** What the kernel did, in the model's terms. */
export interface KernelOutcome {
  verdict: VerdictName | `retval ${number}`;
  mark: number;
  dataOut: Buffer;
}

export interface ModelCounters {
  redirected: [bigint, bigint];
  dropped: [bigint, bigint];
  passed: [bigint, bigint];
}

export class DatapathHarness {
  readonly prefix: string;
  readonly netns: string;
  /** Two veths of the run's netns: "pod A's" and "pod B's" host veth. */
  readonly vethA: number;
  readonly vethB: number;
  readonly obj: BpfObject;
  readonly maxPods: number;
  private readonly leave: () => void;
  private readonly closers: (() => Promise<void>)[] = [];

  private constructor(prefix: string, netns: string, vethA: number, vethB: number, obj: BpfObject, leave: () => void) {
    this.prefix = prefix;
    this.netns = netns;
    this.vethA = vethA;
    this.vethB = vethB;
    this.obj = obj;
    this.leave = leave;
    this.maxPods = obj.map('pods').maxEntries;
    // Both veths are hooked as the agent hooks an enrolled pod's: each has its counters slot.
    recordVeths(obj, [vethA, vethB]);
  }

  /** `addresses` are put on lo of the netns (for established sockets between them). */
  static async create(addresses: readonly string[] = []): Promise<DatapathHarness> {
    const prefix = `dp${randomBytes(2).toString('hex')}`;
    const netns = `${prefix}-run`;
    const run = (argv: string[]) => systemRunner.run(argv);
    await run(['ip', 'netns', 'add', netns]);
    let leave: (() => void) | null = null;
    let obj: BpfObject | null = null;
    try {
      await run(['ip', '-n', netns, 'link', 'set', 'lo', 'up']);
      await run(['ip', '-n', netns, 'link', 'add', `${prefix}a`, 'type', 'veth', 'peer', 'name', `${prefix}b`]);
      for (const a of addresses)
        await run(['ip', '-n', netns, 'addr', 'add', a.includes(':') ? `${a}/128` : `${a}/32`, 'dev', 'lo', ...(a.includes(':') ? ['nodad'] : [])]);
      const links = JSON.parse(await run(['ip', '-n', netns, '-j', 'link', 'show'])) as { ifname: string; ifindex: number }[];
      const idx = (n: string) => links.find((l) => l.ifname === n)!.ifindex;
      obj = BpfObject.openAndLoad(OBJECT_PATH, { programs: [...PROGRAMS] });
      leave = enterNetns(`/var/run/netns/${netns}`);
      return new DatapathHarness(prefix, netns, idx(`${prefix}a`), idx(`${prefix}b`), obj, leave);
    } catch (err) {
      leave?.();
      obj?.close();
      await run(['ip', 'netns', 'del', netns]).catch(() => undefined);
      throw err;
    }
  }

  programFd(name: ProgramName): number {
    return this.obj.programFd(name);
  }

  map(name: 'pods' | 'ztunnel' | 'dns_servers' | 'host_flows' | 'host_flows4' | 'counters' | 'veth_slots'): BpfMap {
    return this.obj.map(name);
  }

  /** Makes the maps hold exactly `spec` (counters are left alone). */
  applyState(spec: StateSpec): void {
    applyMapState(this.obj, spec);
  }

  /** Runs a program; null when the kernel refuses the input (not runnable). */
  run(program: ProgramName, frame: Buffer, ctx: { ifindex?: number; ingressIfindex?: number; mark?: number } = {}): KernelOutcome | null {
    const inMark = ctx.mark ?? 0;
    const r = runProgram(this.programFd(program), frame, { ctx: { ...ctx, mark: inMark } });
    if (isNotRunnable(r)) return null;
    const zt = program === 'zt_mark' || program === 'zt_assign';
    let verdict: KernelOutcome['verdict'];
    if (r.retval === TcAct.SHOT) verdict = 'drop';
    else if (r.retval === TcAct.REDIRECT && !zt) verdict = 'redirect';
    // The pod programs pass with TC_ACT_UNSPEC (the hook's next filter decides); ztunnel's with TC_ACT_OK.
    else if (r.retval === TcAct.UNSPEC && !zt) verdict = 'pass';
    else if (r.retval === TcAct.OK && zt) verdict = r.mark !== inMark ? 'deliver' : 'pass';
    else verdict = `retval ${r.retval}`;
    return { verdict, mark: r.mark, dataOut: r.dataOut };
  }

  /** The counters of a veth (its slot's), summed over CPUs. */
  counters(ifindex: number): codec.PodCounters {
    return this.slotCounters(this.slotOf(ifindex));
  }

  /** The counters of a slot, summed over CPUs. */
  slotCounters(slot: number): codec.PodCounters {
    return codec.decodePodCountersPerCpu(this.map('counters').lookup(codec.encodeU32Key(slot))!);
  }

  /** A veth's counters slot (0: none). */
  slotOf(ifindex: number): number {
    return slotOf(this.obj, ifindex);
  }

  // --- sockets in the run's netns (zt_assign) ---------------------------------------------

  /** A listening socket; returns the function that closes it. */
  async listen(kind: 'tcp4' | 'tcp6' | 'udp4' | 'udp6', port: number, host?: string): Promise<() => Promise<void>> {
    if (kind === 'udp4' || kind === 'udp6') {
      const s = dgram.createSocket({ type: kind, ipv6Only: kind === 'udp6' });
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(port, host ?? (kind === 'udp4' ? '0.0.0.0' : '::'), () => resolve());
      });
      const close = () => new Promise<void>((resolve) => s.close(() => resolve()));
      this.closers.push(close);
      return close;
    }
    const server = net.createServer((c) => c.on('error', () => undefined));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host: host ?? (kind === 'tcp4' ? '0.0.0.0' : '::'), ipv6Only: kind === 'tcp6' }, () => resolve());
    });
    const close = () => new Promise<void>((resolve) => server.close(() => resolve()));
    this.closers.push(close);
    return close;
  }

  /**
   * An established TCP connection client → server over lo, with the server's listener
   * closed afterwards so that only the two established sockets remain.
   */
  async establish(client: { ip: string; port: number }, server: { ip: string; port: number }): Promise<() => Promise<void>> {
    const { client: cli, accepted } = await connectOverLo(client, server);
    const sockets = [accepted];
    sockets.push(cli);
    const close = async () => {
      for (const s of sockets) s.destroy();
    };
    this.closers.push(close);
    return close;
  }

  async close(): Promise<void> {
    for (const c of this.closers.splice(0)) await c().catch(() => undefined);
    this.leave();
    this.obj.close();
    await systemRunner.run(['ip', 'netns', 'del', this.netns]);
    if (existsSync(`/var/run/netns/${this.netns}`)) throw new Error(`netns ${this.netns} left behind`);
  }
}

/** Compares a kernel outcome with the model's verdict; returns what differs, or null. */
export function disagreement(model: Verdict, k: KernelOutcome, frame: Buffer, inMark = 0): string | null {
  const problems: string[] = [];
  if (model.verdict !== k.verdict) problems.push(`verdict: model ${model.verdict} (${model.row}), kernel ${k.verdict}`);
  const expectMark = model.verdict === 'deliver' ? model.mark! : inMark;
  if (k.mark !== expectMark) problems.push(`mark: model 0x${expectMark.toString(16)}, kernel 0x${k.mark.toString(16)}`);
  const expected = Buffer.from(frame);
  if (model.verdict === 'redirect' && k.verdict === 'redirect' && model.rewrittenDstMac) ipMacInto(expected, model.rewrittenDstMac);
  if (!k.dataOut.equals(expected)) problems.push(`bytes: expected ${expected.toString('hex')}, kernel ${k.dataOut.toString('hex')}`);
  return problems.length ? problems.join('; ') : null;
}

function ipMacInto(frame: Buffer, mac: string): void {
  Buffer.from(mac.split(':').map((p) => parseInt(p, 16))).copy(frame, 0);
}
