/**
 * The kernel side of the in-pod data-path tests: build/inpod.bpf.o loaded without pins,
 * its maps written through the codec, its programs run with BPF_PROG_RUN inside a netns
 * of the test's own (per-run name, deleted on close), where the test thread also holds
 * the sockets the programs look up (setns on this thread, as test/model/harness.ts).
 */
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { existsSync } from 'node:fs';
import * as codec from '../../src/bpf/inpod-codec.js';
import { BpfObject, type BpfMap } from '../../src/bpf/object.js';
import { systemRunner } from '../../src/host/runner.js';
import { enterNetns, isNotRunnable, runProgram, TcAct } from '../../harness/bpf/testrun.js';
import { expectedBytes, type InpodState, type InpodVerdict, type InpodVerdictName, LOOP_MARK } from './inpod.js';

export const INPOD_OBJECT = 'build/inpod.bpf.o';
export const INPOD_PROGRAMS = ['inpod_out', 'inpod_in', 'inpod_host_in', 'inpod_host_out'] as const;
export type InpodProgram = (typeof INPOD_PROGRAMS)[number];

export interface InpodOutcome {
  verdict: InpodVerdictName | `retval ${number}`;
  mark: number;
  dataOut: Buffer;
}

export class InpodHarness {
  private readonly closers: (() => Promise<void>)[] = [];

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
      await run(['ip', '-n', netns, 'link', 'add', `${prefix}a`, 'type', 'veth', 'peer', 'name', `${prefix}b`]);
      for (const a of addresses)
        await run(['ip', '-n', netns, 'addr', 'add', a.includes(':') ? `${a}/128` : `${a}/32`, 'dev', 'lo', ...(a.includes(':') ? ['nodad'] : [])]);
      const links = JSON.parse(await run(['ip', '-n', netns, '-j', 'link', 'show'])) as { ifname: string; ifindex: number }[];
      obj = BpfObject.openAndLoad(INPOD_OBJECT, { programs: [...INPOD_PROGRAMS] });
      leave = enterNetns(`/var/run/netns/${netns}`);
      return new InpodHarness(netns, links.find((l) => l.ifname === `${prefix}a`)!.ifindex, obj, leave);
    } catch (err) {
      leave?.();
      obj?.close();
      await run(['ip', 'netns', 'del', netns]).catch(() => undefined);
      throw err;
    }
  }

  map(name: 'inpod_config' | 'probe_flows'): BpfMap {
    return this.obj.map(name);
  }

  /** Makes the maps hold exactly `state`. */
  applyState(state: InpodState): void {
    this.map('inpod_config').update(codec.encodeConfigSlot(), codec.encodeInpodConfig(state.dnsCapture ? codec.InpodFlags.DNS_CAPTURE : 0));
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

  /** Runs a program; null when the kernel refuses the input (not runnable). */
  run(program: InpodProgram, frame: Buffer, ctx: { mark?: number; ingressIfindex?: number } = {}): InpodOutcome | null {
    const mark = ctx.mark ?? 0;
    const r = runProgram(this.obj.programFd(program), frame, { ctx: { mark, ingressIfindex: ctx.ingressIfindex ?? 0, ifindex: this.ifindex } });
    if (isNotRunnable(r)) return null;
    let verdict: InpodOutcome['verdict'];
    if (r.retval === TcAct.SHOT) verdict = 'drop';
    else if (r.retval === TcAct.OK) verdict = 'pass';
    else if (r.retval === TcAct.REDIRECT && program === 'inpod_out') verdict = 'loop';
    else verdict = `retval ${r.retval}`;
    return { verdict, mark: r.mark, dataOut: r.dataOut };
  }

  /** A listening socket of the run's netns; returns the function that closes it. */
  async listen(kind: 'tcp4' | 'tcp6' | 'udp4' | 'udp6', port: number): Promise<() => Promise<void>> {
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
    const close = () => new Promise<void>((resolve) => server.close(() => resolve()));
    this.closers.push(close);
    return close;
  }

  /**
   * A connection client → server over lo. `timeWait`: both ends closed, the client first,
   * so that the client's end stays in TIME_WAIT.
   */
  async connection(client: { ip: string; port: number }, server: { ip: string; port: number }, timeWait = false): Promise<void> {
    const accepted: net.Socket[] = [];
    const srv = net.createServer((c) => {
      c.on('error', () => undefined);
      accepted.push(c);
    });
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ port: server.port, host: server.ip }, () => resolve());
    });
    const cli = net.connect({ host: server.ip, port: server.port, localAddress: client.ip, localPort: client.port });
    cli.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      cli.once('connect', () => resolve());
      cli.once('error', reject);
    });
    while (accepted.length === 0) await new Promise((r) => setTimeout(r, 5));
    srv.close();
    if (timeWait) {
      const closed = new Promise<void>((r) => accepted[0]!.once('close', () => r()));
      cli.end();
      accepted[0]!.end();
      await closed;
      await new Promise((r) => setTimeout(r, 50));
      return;
    }
    this.closers.push(async () => {
      cli.destroy();
      for (const s of accepted) s.destroy();
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

/** The kernel's outcome against the model's verdict: what differs, or null. */
export function inpodDisagreement(model: InpodVerdict, k: InpodOutcome, frame: Buffer, inMark: number): string | null {
  const problems: string[] = [];
  // Under BPF_PROG_RUN bpf_sk_assign fails (EOPNOTSUPP: not at TC ingress), so a deliver
  // is a drop there; test/kernel/inpod-e2e.test.ts sees the real delivery.
  const want = model.verdict === 'deliver' ? 'drop' : model.verdict;
  if (k.verdict !== want) problems.push(`verdict: model ${model.verdict} (${model.row}), kernel ${k.verdict}`);
  const mark = model.verdict === 'loop' ? LOOP_MARK : inMark;
  if (k.verdict !== 'drop' && k.mark !== mark) problems.push(`mark: model 0x${mark.toString(16)}, kernel 0x${k.mark.toString(16)}`);
  if (k.verdict !== 'drop') {
    const expected = expectedBytes(frame, model);
    if (!k.dataOut.equals(expected)) problems.push(`bytes: expected ${expected.toString('hex')}, kernel ${k.dataOut.toString('hex')}`);
  }
  return problems.length ? problems.join('; ') : null;
}
