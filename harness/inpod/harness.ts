/**
 * The kernel side of the in-pod data-path tests and of the kernel matrix's in-pod replay:
 * build/inpod.bpf.o loaded without pins, its maps written through the codec, its programs
 * run with BPF_PROG_RUN inside a netns of the run's own (per-run name, deleted on close),
 * where the calling thread also holds the sockets the programs look up (setns on this
 * thread, as test/model/harness.ts). Compiled into dist/ so that the matrix's in-VM runner
 * (harness/matrix/vm-runner.ts) runs the same code in each kernel.
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { connectOverLo } from '../lib/lo-connection.js';
import { existsSync } from 'node:fs';
import * as codec from '../../src/bpf/inpod-codec.js';
import { decodeAddrKey } from '../../src/bpf/codec.js';
import { genBefore, handoffGen, monotonicNs } from '../../src/capture/inpod/handoffs.js';
import { BpfObject, type BpfMap } from '../../src/bpf/object.js';
import { systemRunner } from '../../src/host/runner.js';
import { enterNetns, isNotRunnable, runProgram, runSkLookup, TcAct, type NotRunnable, type RunResult } from '../bpf/testrun.js';
import { handoffKey, type SocketKind, type SocketStep } from './sockets.js';
import { socketCookie } from '../sim/transparent.js';

/** The maps' contents as test/model/inpod.ts's InpodState holds them (addresses as 16-byte hex keys). */
export interface InpodMapState {
  dnsCapture: boolean;
  probeFlows: ReadonlyMap<string, string>;
  overrides?: ReadonlyMap<string, number>;
}

/** A listener lookup as inpod_lookup receives it (test/model/inpod.ts LookupCtx). */
export type LookupQuery = { family: 4 | 6; protocol: number; remoteHex: string; remotePort: number; localHex: string; localPort: number };
export type LookupOutcome = { verdict: 'pass' | 'drop' | `retval ${number}`; selected?: string };

export const INPOD_OBJECT = 'build/inpod.bpf.o';
export const INPOD_PROGRAMS = ['inpod_out', 'inpod_in', 'inpod_host_in', 'inpod_host_out', 'inpod_vm_in', 'inpod_lo_in'] as const;
export type InpodProgram = (typeof INPOD_PROGRAMS)[number];
/** The socket lookup program (SK_LOOKUP): run on a lookup, not a frame (runLookup). */
export const INPOD_LOOKUP = 'inpod_lookup';

export interface InpodOutcome {
  /** A frame program's verdicts ('deliver' is the model's: BPF_PROG_RUN shows it as a drop). */
  verdict: 'pass' | 'drop' | 'loop' | `retval ${number}`;
  mark: number;
  dataOut: Buffer;
}

export class InpodHarness {
  private readonly closers: (() => Promise<void>)[] = [];
  /** The fds of this netns's TCP listeners by name ('tcp4:15001'), for seeding handoffs. */
  private readonly listenerFds = new Map<string, number>();
  /** The closers of the sockets setUp opened, by name ('udp6:15053'). */
  private readonly closeByName = new Map<string, () => Promise<void>>();
  /** socketsByCookie's answer while the listeners stay as they are. */
  private cookies: Map<bigint, string> | null = null;

  private constructor(
    readonly netns: string,
    /** A device of the run's netns for skb->ifindex. */
    readonly ifindex: number,
    readonly obj: BpfObject,
    private readonly leave: () => void,
  ) {}

  /** `addresses` go on lo of the netns (for connections between them). */
  static async create(addresses: readonly string[] = []): Promise<InpodHarness> {
    const prefix = `ip${randomBytes(2).toString('hex')}`;
    const netns = `${prefix}-run`;
    const run = (argv: string[]) => systemRunner.run(argv);
    await run(['ip', 'netns', 'add', netns]);
    let leave: (() => void) | null = null;
    let obj: BpfObject | null = null;
    try {
      await run(['ip', '-n', netns, 'link', 'set', 'lo', 'up']);
      // A connecting socket whose SYN meets a TIME_WAIT on lo answers its ACK with a RST;
      // RFC 1337 keeps the TIME_WAIT alive (and the socket connecting) for the PL5 rows.
      await run(['ip', 'netns', 'exec', netns, 'sysctl', '-q', '-w', 'net.ipv4.tcp_rfc1337=1']);
      await run(['ip', '-n', netns, 'link', 'add', `${prefix}a`, 'type', 'veth', 'peer', 'name', `${prefix}b`]);
      for (const a of addresses)
        await run(['ip', '-n', netns, 'addr', 'add', a.includes(':') ? `${a}/128` : `${a}/32`, 'dev', 'lo', ...(a.includes(':') ? ['nodad'] : [])]);
      const links = JSON.parse(await run(['ip', '-n', netns, '-j', 'link', 'show'])) as { ifname: string; ifindex: number }[];
      obj = BpfObject.openAndLoad(INPOD_OBJECT, { programs: [...INPOD_PROGRAMS, INPOD_LOOKUP] });
      leave = enterNetns(`/var/run/netns/${netns}`);
      return new InpodHarness(netns, links.find((l) => l.ifname === `${prefix}a`)!.ifindex, obj, leave);
    } catch (err) {
      leave?.();
      obj?.close();
      await run(['ip', 'netns', 'del', netns]).catch(() => undefined);
      throw err;
    }
  }

  map(name: 'inpod_config' | 'probe_flows' | 'inpod_handoff' | 'inpod_overrides'): BpfMap {
    return this.obj.map(name);
  }

  /** Makes the maps hold exactly `state`. */
  applyState(state: InpodMapState): void {
    this.map('inpod_config').update(codec.encodeConfigSlot(), codec.encodeInpodConfig(state.dnsCapture ? codec.InpodFlags.DNS_CAPTURE : 0));
    const o = this.map('inpod_overrides');
    for (const k of o.keys()) o.delete(k);
    for (const [addr, flags] of state.overrides ?? []) o.update(Buffer.from(addr, 'hex'), codec.encodeInpodOverride(flags));
    const flows = this.map('probe_flows');
    for (const k of flows.keys()) flows.delete(k);
    for (const [key, node] of state.probeFlows) {
      const [pod, podPort, nodePort, family] = key.split('|');
      const k = Buffer.alloc(codec.PROBE_FLOW_KEY_SIZE);
      Buffer.from(pod!, 'hex').copy(k, 0);
      k.writeUInt16BE(Number(podPort), 16);
      k.writeUInt16BE(Number(nodePort), 18);
      k.writeUInt8(Number(family), 20);
      flows.update(k, Buffer.from(node, 'hex'));
    }
  }

  /** probe_flows as the model keys it. */
  probeFlows(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [k, v] of this.map('probe_flows').entries()) {
      out.set(`${k.subarray(0, 16).toString('hex')}|${k.readUInt16BE(16)}|${k.readUInt16BE(18)}|${k.readUInt8(20)}`, v.toString('hex'));
    }
    return out;
  }

  /** inpod_handoff as the model keys it, each value the listener it holds ('tcp6:15006'). */
  async handoffs(): Promise<Map<string, string>> {
    const entries = this.map('inpod_handoff').entries();
    const out = new Map<string, string>();
    if (entries.length === 0) return out;
    const names = this.socketsByCookie();
    for (const [k, v] of entries) {
      const key = codec.decodeHandoffKey(k);
      const cookie = v.readBigUInt64LE(0);
      const name = names.get(cookie) ?? `cookie ${cookie}`;
      out.set(handoffKey(key.family, k.subarray(0, 16).toString('hex'), key.remotePort, k.subarray(16, 32).toString('hex'), key.localPort), name);
    }
    return out;
  }

  /** Empties inpod_handoff. */
  clearHandoffs(): void {
    const m = this.map('inpod_handoff');
    for (const k of m.keys()) m.delete(k);
  }

  /**
   * Puts a handoff in the map from here (the listener by name, as the model keys them), in
   * the generation `back` before now's (src/capture/inpod/handoffs.ts; default now's).
   */
  seedHandoff(key: string, socket: string, back = 0): void {
    const fd = this.listenerFds.get(socket);
    if (fd === undefined) throw new Error(`no listener ${socket} to hand over to`);
    const [family, remote, rport, local, lport] = key.split('|');
    const k = codec.encodeHandoffKey({
      remote: decodeAddrKey(Buffer.from(remote!, 'hex')),
      remotePort: Number(rport),
      local: decodeAddrKey(Buffer.from(local!, 'hex')),
      localPort: Number(lport),
      family: Number(family) as 4 | 6,
      gen: genBefore(handoffGen(monotonicNs()), back),
    });
    const v = Buffer.alloc(8);
    v.writeBigUInt64LE(BigInt(fd));
    this.map('inpod_handoff').update(k, v);
  }

  /** This netns's TCP listeners by socket cookie (SO_COOKIE), named as the model names them. */
  private socketsByCookie(): Map<bigint, string> {
    if (this.cookies) return this.cookies;
    this.cookies = new Map([...this.listenerFds].map(([name, fd]) => [socketCookie(fd), name]));
    return this.cookies;
  }

  /** Runs inpod_lookup on a lookup: its verdict and the socket it selected (by name), if any. */
  async runLookup(ctx: LookupQuery): Promise<LookupOutcome> {
    const addr = (hex: string) => (ctx.family === 4 ? Buffer.from(hex, 'hex').subarray(12) : Buffer.from(hex, 'hex'));
    const r = runSkLookup(this.obj.programFd(INPOD_LOOKUP), {
      family: ctx.family,
      protocol: ctx.protocol,
      remote: addr(ctx.remoteHex),
      remotePort: ctx.remotePort,
      local: addr(ctx.localHex),
      localPort: ctx.localPort,
    });
    const verdict = r.retval === 1 ? 'pass' : r.retval === 0 ? 'drop' : (`retval ${r.retval}` as const);
    if (r.cookie === 0n) return { verdict };
    return { verdict, selected: this.socketsByCookie().get(r.cookie) ?? `cookie ${r.cookie}` };
  }

  /** Runs a program on a frame in the run's netns (skb->ifindex: its veth): BPF_PROG_RUN's answer. */
  runFrame(program: InpodProgram, frame: Buffer, ctx: { mark?: number; ingressIfindex?: number } = {}): RunResult | NotRunnable {
    return runProgram(this.obj.programFd(program), frame, { ctx: { mark: ctx.mark ?? 0, ingressIfindex: ctx.ingressIfindex ?? 0, ifindex: this.ifindex } });
  }

  /** Runs a program; null when the kernel refuses the input (not runnable). */
  run(program: InpodProgram, frame: Buffer, ctx: { mark?: number; ingressIfindex?: number } = {}): InpodOutcome | null {
    const r = this.runFrame(program, frame, ctx);
    if (isNotRunnable(r)) return null;
    return { verdict: inpodVerdictOf(program, r.retval), mark: r.mark, dataOut: r.dataOut };
  }

  /** Carries out `steps` (harness/inpod/sockets.ts) in the run's netns, in order. */
  async setUp(steps: readonly SocketStep[]): Promise<void> {
    for (const s of steps) {
      if ('listen' in s) this.closeByName.set(`${s.listen}:${s.port}`, await this.listen(s.listen, s.port));
      else if ('close' in s) {
        const name = `${s.close}:${s.port}`;
        const close = this.closeByName.get(name);
        if (!close) throw new Error(`no socket ${name} to close`);
        this.closeByName.delete(name);
        await close();
      } else if ('connecting' in s) await this.connecting(...s.connecting);
      else await this.connection(...s.connection, s.timeWait);
    }
  }

  /** A listening socket of the run's netns; returns the function that closes it. */
  async listen(kind: SocketKind, port: number): Promise<() => Promise<void>> {
    if (kind === 'udp4' || kind === 'udp6') {
      const s = dgram.createSocket({ type: kind, ipv6Only: kind === 'udp6' });
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(port, kind === 'udp4' ? '0.0.0.0' : '::', () => resolve());
      });
      const close = () => new Promise<void>((resolve) => s.close(() => resolve()));
      this.closers.push(close);
      return close;
    }
    const server = net.createServer((c) => c.on('error', () => undefined));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host: kind === 'tcp4' ? '0.0.0.0' : '::', ipv6Only: kind === 'tcp6' }, () => resolve());
    });
    const name = `${kind}:${port}`;
    this.cookies = null;
    this.listenerFds.set(name, (server as unknown as { _handle: { fd: number } })._handle.fd);
    const close = () =>
      new Promise<void>((resolve) => {
        this.listenerFds.delete(name);
        this.cookies = null;
        server.close(() => resolve());
      });
    this.closers.push(close);
    return close;
  }

  /**
   * A socket of the run's netns connecting client → server and staying so (SYN_SENT): the
   * server's end must be a TIME_WAIT over lo that answers with an ACK (see create()).
   */
  async connecting(client: { ip: string; port: number }, server: { ip: string; port: number }): Promise<void> {
    const cli = net.connect({ host: server.ip, port: server.port, localAddress: client.ip, localPort: client.port });
    cli.on('error', () => undefined);
    this.closers.push(async () => {
      cli.destroy();
    });
    const ip = client.ip.includes(':') ? `[${client.ip}]` : client.ip;
    for (let i = 0; i < 100; i++) {
      const out = await systemRunner.run(['ip', 'netns', 'exec', this.netns, 'ss', '-tanH', 'state', 'syn-sent', 'src', `${ip}:${client.port}`]);
      if (out.trim()) return;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no connecting socket ${client.ip}:${client.port} -> ${server.ip}:${server.port}`);
  }

  /**
   * A connection client → server over lo. `timeWait`: both ends closed, the client first,
   * so that the client's end stays in TIME_WAIT.
   */
  async connection(client: { ip: string; port: number }, server: { ip: string; port: number }, timeWait = false): Promise<void> {
    const { client: cli, accepted } = await connectOverLo(client, server);
    if (timeWait) {
      const closed = new Promise<void>((r) => accepted.once('close', () => r()));
      cli.end();
      accepted.end();
      await closed;
      await new Promise((r) => setTimeout(r, 50));
      return;
    }
    this.closers.push(async () => {
      cli.destroy();
      accepted.destroy();
    });
  }

  async close(): Promise<void> {
    for (const c of this.closers.splice(0)) await c().catch(() => undefined);
    this.leave();
    this.obj.close();
    await systemRunner.run(['ip', 'netns', 'del', this.netns]);
    if (existsSync(`/var/run/netns/${this.netns}`)) throw new Error(`netns ${this.netns} left behind`);
  }
}

/** The verdict a frame program's return value names (TC_ACT_REDIRECT: inpod_out's loop). */
export function inpodVerdictOf(program: InpodProgram, retval: number): InpodOutcome['verdict'] {
  if (retval === TcAct.SHOT) return 'drop';
  if (retval === TcAct.OK) return 'pass';
  if (retval === TcAct.REDIRECT && program === 'inpod_out') return 'loop';
  return `retval ${retval}`;
}
