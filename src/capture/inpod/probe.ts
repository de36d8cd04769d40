/**
 * The in-pod capture's delivery probe: does this kernel's bpf_sk_assign take an
 * SO_REUSEPORT socket (6.5, kernel commit 9c02bec95954; ztunnel's listeners all use it)?
 * Not a helper the verifier knows about, nor a release number: it is tried. In a throwaway
 * network namespace, a TC program on lo assigns every UDP datagram sent to one socket to a
 * SO_REUSEPORT socket on another port; whichever socket receives the datagram says whether
 * the kernel honoured the assignment. docs/datapath.md, "In-pod capture", says why a
 * kernel that refuses gets the iptables in-pod capture instead.
 */
import { randomBytes } from 'node:crypto';
import { BpfObject } from '../../bpf/object.js';
import { netnsPath, withNetns } from '../../bpf/netns.js';
import { attachTc } from '../../bpf/tc.js';
import { closeFd, recvDatagram, udpLoopbackSocket, udpSendLoopback } from '../../host/libc.js';
import type { CommandRunner } from '../../host/runner.js';

export const PROBE_PROGRAM = 'inpod_reuseport_probe';
/* The ports the probe program knows (bpf/inpod.bpf.c). */
const PROBE_TO = 15999;
const PROBE_REUSEPORT = 15998;
const LOOPBACK_IFINDEX = 1;
const WAIT_MS = 1_000;

export interface DeliveryProbe {
  /** bpf_sk_assign delivers to a SO_REUSEPORT socket at TC ingress. */
  reuseportAssign: boolean;
  /** Why not, when not. */
  reason?: string;
}

/** The netns name the probe uses: the agent's pid and a random part, removed after. */
export function probeNetnsName(): string {
  return `ambient-redirect-probe-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/**
 * Runs the probe. `program` names the probe program in the object (tests give one that
 * never assigns, to see the probe say no).
 */
export async function probeReuseportAssign(objectPath: string, runner: CommandRunner, program = PROBE_PROGRAM): Promise<DeliveryProbe> {
  const ns = probeNetnsName();
  await runner.run(['ip', 'netns', 'add', ns]);
  const fds: number[] = [];
  let obj: BpfObject | null = null;
  try {
    await runner.run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']);
    try {
      obj = BpfObject.openAndLoad(objectPath, { programs: [program] });
    } catch (err) {
      return { reuseportAssign: false, reason: `the probe program does not load (no bpf_sk_assign?): ${(err as Error).message}` };
    }
    const prog = obj.programFd(program);
    const [assigned, plain] = withNetns(netnsPath(ns), () => {
      attachTc(LOOPBACK_IFINDEX, 'ingress', prog);
      const a = udpLoopbackSocket(PROBE_REUSEPORT, true);
      fds.push(a);
      const b = udpLoopbackSocket(PROBE_TO, false);
      fds.push(b);
      const sender = udpLoopbackSocket(0, false);
      fds.push(sender);
      udpSendLoopback(sender, PROBE_TO, Buffer.from('probe'));
      return [a, b];
    });
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      if (recvDatagram(assigned, 64).kind === 'datagram') return { reuseportAssign: true };
      if (recvDatagram(plain, 64).kind === 'datagram') {
        return { reuseportAssign: false, reason: 'bpf_sk_assign refuses SO_REUSEPORT sockets on this kernel (before 6.5)' };
      }
      if (Date.now() > deadline) return { reuseportAssign: false, reason: `the probe datagram reached neither socket within ${WAIT_MS} ms` };
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    for (const fd of fds) closeFd(fd);
    obj?.close();
    await runner.run(['ip', 'netns', 'del', ns]);
  }
}
