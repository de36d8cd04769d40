/**
 * The kernel side of the XDP data-path tests: build/xdp.bpf.o loaded without pins, its maps
 * (the same as build/redirect.bpf.o's) filled from a readable state (harness/matrix/state.ts),
 * and xdp_out run with BPF_PROG_RUN inside a network namespace of our own, which the test
 * thread enters (setns on this thread only): xdp_md->ingress_ifindex must name a device of
 * the netns the run happens in, so the two veths live there and the root netns is untouched.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import * as codec from '../../src/bpf/codec.js';
import { BpfObject } from '../../src/bpf/object.js';
import { enterNetns, isNotRunnable, runXdp, XdpAction } from '../../harness/bpf/testrun.js';
import { systemRunner } from '../../src/host/runner.js';
import { applyMapState, recordVeths, slotOf, type MapState } from '../../harness/matrix/state.js';
import type { XdpActionName, XdpVerdict } from './xdp.js';

export const XDP_OBJECT_PATH = 'build/xdp.bpf.o';
export const XDP_PROGRAMS = ['xdp_out', 'xdp_pass'] as const;
export type XdpProgramName = (typeof XDP_PROGRAMS)[number];

export interface XdpOutcome {
  action: XdpActionName | `retval ${number}`;
  dataOut: Buffer;
}

const ACTIONS: Record<number, XdpActionName> = { [XdpAction.PASS]: 'XDP_PASS', [XdpAction.DROP]: 'XDP_DROP', [XdpAction.REDIRECT]: 'XDP_REDIRECT' };

export class XdpHarness {
  readonly netns: string;
  /** Two veths of the run's netns: "pod A's" and "pod B's" host veth. */
  readonly vethA: number;
  readonly vethB: number;
  readonly obj: BpfObject;
  readonly maxPods: number;
  private readonly leave: () => void;

  private constructor(netns: string, vethA: number, vethB: number, obj: BpfObject, leave: () => void) {
    this.netns = netns;
    this.vethA = vethA;
    this.vethB = vethB;
    this.obj = obj;
    this.leave = leave;
    this.maxPods = obj.map('pods').maxEntries;
    // Both veths are hooked as the agent hooks an enrolled pod's: each has its counters slot.
    recordVeths(obj, [vethA, vethB]);
  }

  static async create(): Promise<XdpHarness> {
    const prefix = `xd${randomBytes(2).toString('hex')}`;
    const netns = `${prefix}-run`;
    const run = (argv: string[]) => systemRunner.run(argv);
    await run(['ip', 'netns', 'add', netns]);
    let leave: (() => void) | null = null;
    let obj: BpfObject | null = null;
    try {
      await run(['ip', '-n', netns, 'link', 'set', 'lo', 'up']);
      await run(['ip', '-n', netns, 'link', 'add', `${prefix}a`, 'type', 'veth', 'peer', 'name', `${prefix}b`]);
      const links = JSON.parse(await run(['ip', '-n', netns, '-j', 'link', 'show'])) as { ifname: string; ifindex: number }[];
      const idx = (n: string) => links.find((l) => l.ifname === n)!.ifindex;
      obj = BpfObject.openAndLoad(XDP_OBJECT_PATH, { programs: [...XDP_PROGRAMS] });
      leave = enterNetns(`/var/run/netns/${netns}`);
      return new XdpHarness(netns, idx(`${prefix}a`), idx(`${prefix}b`), obj, leave);
    } catch (err) {
      leave?.();
      obj?.close();
      await run(['ip', 'netns', 'del', netns]).catch(() => undefined);
      throw err;
    }
  }

  /** Makes the maps hold exactly `spec` (counters are left alone). */
  applyState(spec: MapState): void {
    applyMapState(this.obj, spec);
  }

  /** Runs a program on a frame arriving on `ingressIfindex`; null when the kernel refuses the input. */
  run(program: XdpProgramName, frame: Buffer, ingressIfindex: number, repeat = 1): (XdpOutcome & { durationNs: number }) | null {
    const r = runXdp(this.obj.programFd(program), frame, { ingressIfindex, repeat });
    if (isNotRunnable(r)) return null;
    return { action: ACTIONS[r.retval] ?? `retval ${r.retval}`, dataOut: r.dataOut, durationNs: r.durationNs };
  }

  /** The counters of a veth (its slot's), summed over CPUs. */
  counters(ifindex: number): codec.PodCounters {
    return codec.decodePodCountersPerCpu(this.obj.map('counters').lookup(codec.encodeU32Key(slotOf(this.obj, ifindex)))!);
  }

  async close(): Promise<void> {
    this.leave();
    this.obj.close();
    await systemRunner.run(['ip', 'netns', 'del', this.netns]);
    if (existsSync(`/var/run/netns/${this.netns}`)) throw new Error(`netns ${this.netns} left behind`);
  }
}

/** Compares a kernel outcome with the model's; returns what differs, or null. */
export function xdpDisagreement(model: XdpVerdict, k: XdpOutcome): string | null {
  const problems: string[] = [];
  if (model.action !== k.action) problems.push(`action: model ${model.action} (${model.row}), kernel ${k.action}`);
  const expected = model.frameOut;
  if (!k.dataOut.equals(expected)) problems.push(`bytes: expected ${expected.toString('hex')}, kernel ${k.dataOut.toString('hex')}`);
  return problems.length ? problems.join('; ') : null;
}

export function macBytes(mac: string): Buffer {
  return Buffer.from(mac.split(':').map((p) => parseInt(p, 16)));
}
