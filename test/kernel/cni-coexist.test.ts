/**
 * Beside the primary CNI's programs (issue 21; docs/datapath.md, "Beside the primary CNI's
 * programs"): the matrix behind the supported-CNI table. On the simulated node, node
 * topology, `--mode ebpf`, a foreign program (build/tests/foreign-verdicts.bpf.o) sits on
 * both hooks of the enrolled pod's host veth, as Cilium's and Calico's eBPF mode attach
 * theirs: as a clsact filter at priority 1 (where those CNIs put theirs, and ours) or as
 * a tcx program; attached before the agent starts (its first pass finds it) or after (a
 * pass finds it); returning ok, next, drop, or redirecting the pod's frames to the node's
 * uplink (Cilium's BPF host routing). For each: where a real connection of the pod to the
 * outside server and one of the outside server to the pod end up (ztunnel, the peer
 * directly, nowhere), whether the foreign program saw the pod's frames, what /readyz
 * says, and that removing it gives capture back without a restart. Each row's
 * expectation is derived below from the kernel's order on a hook; a change of the
 * agent's attach or detection, or of the kernel's order, fails the row.
 */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as ffi from '../../src/bpf/ffi.js';
import { netnsPath, withNetns } from '../../src/bpf/netns.js';
import { BpfObject } from '../../src/bpf/object.js';
import { systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { names } from '../../harness/sim/names.js';
import { createSimNode, type ConnectResult, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { teardownNode } from '../support/node.js';
import { httpProber, type HttpProber } from '../support/http-prober.js';
import { kernelDescribe } from '../support/gate.js';

const OBJECT = 'build/tests/foreign-verdicts.bpf.o';
const ADDRESS = '127.0.0.1:15036';
const POD_PORT = 9090;
const UDP_PORT = 9091;
const FOREIGN_TC = { handle: 1, priority: 1 };
/** Program names are cut to 15 characters by the kernel: the object's names per verdict. */
const PROGRAM: Record<Verdict, string> = { ok: 'foreign_ok', next: 'foreign_next', drop: 'foreign_drop', redirect: 'foreign_redir' };
const DEADLINE_MS = 20_000;
const run = (argv: string[]) => systemRunner.run(argv);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Hook = 'tc' | 'tcx';
type When = 'before' | 'after';
type Verdict = 'ok' | 'next' | 'drop' | 'redirect';
/** Where a connection ended up: ztunnel answered, the peer itself (around the mesh), or no answer. */
type Path = 'ztunnel' | 'direct' | 'none';

interface Outcome {
  /** TCP, captured: the pod to the outside server, the outside server to the pod. */
  outbound: Path;
  inbound: Path;
  /** The foreign program saw frames of those connections (the pod's own, or ztunnel's answers to it). */
  foreignSeesCaptured: boolean;
  /** A UDP datagram of the pod to the outside (`--non-tcp pass`: not captured). */
  udp: Path;
  /** The foreign program saw the datagram. */
  foreignSeesPassed: boolean;
  /** /readyz: 503 naming the foreign program (true), or 200. */
  reported: boolean;
}

/**
 * What each combination gives, from the kernel's order on a hook (docs/datapath.md,
 * "Ordering"): tcx programs run before every clsact filter; at one tc priority the filter
 * attached last runs first. Ours is a filter at priority 1, attached when the agent
 * starts. So a tc filter attached before the agent runs after ours: the captured traffic
 * ours redirects to ztunnel never reaches it, what ours passes (TC_ACT_UNSPEC) does, and
 * the agent does not report it. Anything else runs before ours: ok and redirect take the
 * pod's traffic around ztunnel, drop drops it, next hands it on to ours; the agent cannot
 * tell a verdict, so it reports each of them. The UDP datagram, passed by ours, ends as
 * the foreign program says wherever it sits.
 */
function expected(hook: Hook, when: When, verdict: Verdict): Outcome {
  const udp: Path = verdict === 'drop' ? 'none' : 'direct';
  // Ours first: it redirects the pod's segments to ztunnel and passes ztunnel's answers to
  // the pod, which the foreign program then sees (and drop drops). The inbound
  // connection's answers leave ztunnel's netns straight for the outside, past no pod veth.
  if (hook === 'tc' && when === 'before')
    return { outbound: verdict === 'drop' ? 'none' : 'ztunnel', inbound: 'ztunnel', foreignSeesCaptured: true, udp, foreignSeesPassed: true, reported: false };
  const path: Path = verdict === 'next' ? 'ztunnel' : verdict === 'drop' ? 'none' : 'direct';
  return { outbound: path, inbound: path, foreignSeesCaptured: true, udp, foreignSeesPassed: true, reported: true };
}

function pathOf(r: ConnectResult, peer: string): Path | string {
  if (!r.ok) return 'none';
  if (r.reply === 'ztunnel') return 'ztunnel';
  if (r.reply === peer) return 'direct';
  return `unexpected reply ${r.reply}`;
}

kernelDescribe('beside the primary CNI’s programs', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;
  let foreign: BpfObject;
  /**
   * uninstall's --host-proc: an empty folder. This node topology has no in-pod capture to
   * look for, and the host's /proc would hand uninstall the pods of other tests running now.
   */
  let noProc = '';
  let prober: HttpProber | undefined;
  const results: string[] = [];

  const start = async () => {
    controller = startController(sim.nodeNs, [
      '--mode',
      'ebpf',
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--resync-interval',
      '1',
      '--health-address',
      ADDRESS,
      '--enroll',
      sim.pods.flatMap((p) => [p.ip, p.ip6]).join(','),
    ]);
    await controller.waitFor('programmed');
  };
  /** Stops the agent and removes what it installed: the next combination starts from a bare veth. */
  const stopAndUninstall = async () => {
    await controller?.stop('SIGTERM');
    controller = undefined;
    await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot, '--host-proc', noProc]);
  };

  beforeAll(async () => {
    noProc = mkdtempSync(join(tmpdir(), 'cni-coexist-proc-'));
    foreign = BpfObject.openAndLoad(OBJECT, {});
    sim = await createSimNode({ pods: 1 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    await Promise.all([sim.startZtunnel(), sim.startOutside(), sim.startPodServer(sim.pods[0]!, POD_PORT), sim.startUdpOutside(UDP_PORT)]);
    const uplink = await ifindexOf(names.outsideVeth(sim.prefix), sim.nodeNs);
    const v = Buffer.alloc(4);
    v.writeUInt32LE(uplink);
    foreign.map('target').update(Buffer.alloc(4), v);
  });

  afterAll(async () => {
    console.log(
      `cni-coexist matrix (hook, attached, verdict: TCP outbound, TCP inbound, foreign sees captured, UDP, foreign sees UDP, /readyz):\n${results.join('\n')}`,
    );
    await prober?.close();
    for (const fd of links) ffi.closeFd(fd);
    links.clear();
    foreign?.close();
    await teardownNode(sim, pinRoot, controller, noProc);
    if (noProc) rmSync(noProc, { recursive: true, force: true });
  });

  /** GET from inside the node netns, where the agent listens (test/support/http-prober.ts). */
  const get = (path: string) => (prober ??= httpProber(sim.nodeNs, ADDRESS)).get(path);

  async function readyzUntil(pred: (r: { status: number; body: string }) => boolean, what: string): Promise<{ status: number; body: string }> {
    const t0 = Date.now();
    for (;;) {
      const r = await get('/readyz');
      if (pred(r)) return r;
      if (Date.now() - t0 > DEADLINE_MS) throw new Error(`/readyz never ${what}; last: ${r.status} ${r.body.trim()}`);
      await sleep(100);
    }
  }

  async function ifindexOf(dev: string, ns: string): Promise<number> {
    return (JSON.parse(await run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
  }

  const links = new Set<number>();
  /** Attaches `foreign_<verdict>` on both hooks of the pod's host veth; returns how to take it off. */
  async function attach(hook: Hook, verdict: Verdict): Promise<() => void> {
    const ifindex = await ifindexOf(sim.pods[0]!.hostVeth, sim.nodeNs);
    const fd = foreign.programFd(PROGRAM[verdict]);
    return withNetns(netnsPath(sim.nodeNs), () => {
      if (hook === 'tcx') {
        const mine = [ffi.TcxAttachType.INGRESS, ffi.TcxAttachType.EGRESS].map((type) => ffi.tcxLinkCreate(ifindex, type, fd, 0));
        for (const l of mine) links.add(l);
        return () => {
          for (const l of mine) {
            ffi.closeFd(l);
            links.delete(l);
          }
        };
      }
      const points = [ffi.TcAttachPoint.INGRESS, ffi.TcAttachPoint.EGRESS];
      for (const point of points) {
        ffi.tcHookCreate(ifindex, point);
        ffi.tcAttach(ifindex, point, fd, FOREIGN_TC, false);
      }
      return () => withNetns(netnsPath(sim.nodeNs), () => points.forEach((point) => ffi.tcDetach(ifindex, point, FOREIGN_TC)));
    });
  }

  function seen(): number {
    let n = 0;
    for (const k of [0, 1]) {
      const key = Buffer.alloc(4);
      key.writeUInt32LE(k);
      n += Number(foreign.map('seen').lookup(key)!.readBigUInt64LE());
    }
    return n;
  }
  function resetSeen(): void {
    for (const k of [0, 1]) {
      const key = Buffer.alloc(4);
      key.writeUInt32LE(k);
      foreign.map('seen').update(key, Buffer.alloc(8));
    }
  }

  const udp = async () => pathOf((await sim.udpSend(sim.pods[0]!, { ip: sim.outside.ip, port: UDP_PORT }, 1))[0]!, 'outside');
  const passes = async () => {
    const line = (await get('/metrics')).body
      .split('\n')
      .find((l) => l.startsWith('ambient_redirect_reconcile_duration_seconds_count{') && l.includes('outcome="ok"'));
    return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  };
  /** /readyz once two more passes completed (the first may have started before the change). */
  async function readyzAfterTwoPasses(): Promise<{ status: number; body: string }> {
    const first = await passes();
    const t0 = Date.now();
    while ((await passes()) < first + 2) {
      if (Date.now() - t0 > DEADLINE_MS) throw new Error('no two passes completed');
      await sleep(100);
    }
    return get('/readyz');
  }
  const outbound = async () => pathOf((await sim.connect(sim.pods[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 1))[0]!, 'outside');
  const inbound = async () => pathOf((await sim.connect('outside', { ip: sim.pods[0]!.ip, port: POD_PORT }, 1))[0]!, sim.pods[0]!.name);

  // The agent runs from one case to the next; a case that needs a bare veth first stops it
  // and uninstalls (and so does a failed case, to leave a known state).
  for (const when of ['after', 'before'] as const) {
    for (const hook of ['tc', 'tcx'] as const) {
      for (const verdict of ['ok', 'next', 'drop', 'redirect'] as const) {
        const want = expected(hook, when, verdict);
        it(`${hook}, attached ${when} the agent starts, ${verdict}: TCP out ${want.outbound}, in ${want.inbound}, UDP ${want.udp}, ${want.reported ? 'reported' : 'not reported'}`, async () => {
          const veth = sim.pods[0]!.hostVeth;
          let detach: (() => void) | undefined;
          let ok = false;
          try {
            if (when === 'before') {
              await stopAndUninstall();
              detach = await attach(hook, verdict);
              await start();
            } else {
              if (!controller) await start();
              await readyzUntil((r) => r.status === 200, 'ready before the foreign program comes');
              expect(await outbound()).toBe('ztunnel');
              detach = await attach(hook, verdict);
            }
            const name = PROGRAM[verdict];
            let r: { status: number; body: string };
            if (want.reported) {
              r = await readyzUntil((r) => r.status === 503 && r.body.includes(name), `names ${name}`);
              for (const dir of ['ingress', 'egress'])
                expect(r.body).toMatch(
                  hook === 'tcx'
                    ? new RegExp(`tcx program \\d+ ${name} runs before ours on ${veth} ${dir}`)
                    : new RegExp(`tc bpf filter pref 1 handle 0x1 program \\d+ ${name} shares our priority on ${veth} ${dir} and may run first`),
                );
            } else {
              r = await readyzAfterTwoPasses();
            }
            resetSeen();
            const tcp = { outbound: await outbound(), inbound: await inbound() };
            const foreignSeesCaptured = seen() > 0;
            resetSeen();
            const got = { ...tcp, foreignSeesCaptured, udp: await udp(), foreignSeesPassed: seen() > 0, reported: r.status === 503 };
            results.push(
              `${hook}, ${when}, ${verdict}: ${got.outbound}, ${got.inbound}, ${got.foreignSeesCaptured}, ${got.udp}, ${got.foreignSeesPassed}, ${r.status}`,
            );
            expect(got).toEqual(want);
            if (!want.reported) expect(r).toEqual({ status: 200, body: 'ok\n' });
            // Taken off again: capture is whole without a restart, and the agent says so.
            detach();
            detach = undefined;
            await readyzUntil((r) => r.status === 200, 'ready again once the foreign program is gone');
            expect(await outbound()).toBe('ztunnel');
            expect(await inbound()).toBe('ztunnel');
            ok = true;
          } finally {
            detach?.();
            if (!ok) await stopAndUninstall();
          }
        });
      }
    }
  }
});
