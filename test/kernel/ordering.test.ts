/**
 * Ordering (issue 14, "A program ahead of ours"; docs/datapath.md, "Ordering"): another
 * program placed before ours on a hook we use, a clsact filter at a priority no higher than
 * ours or a tcx program, turns /readyz false within one pass with a reason naming the
 * device and the program, shows in `status --json` and in ambient_redirect_foreign_programs,
 * and clears once it is gone; the same when it was there before the agent started. The
 * foreign program is build/tests/foreign.bpf.o (it passes every packet: a primary CNI's
 * verdict), attached with `tc` or, for tcx, a BPF link this test holds.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as ffi from '../../src/bpf/ffi.js';
import { netnsPath, withNetns } from '../../src/bpf/netns.js';
import { BpfObject } from '../../src/bpf/object.js';
import type { Status } from '../../src/cli/status.js';
import { systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { teardownNode } from '../support/node.js';
import { httpProber, type HttpProber } from '../support/http-prober.js';
import { kernelDescribe } from '../support/gate.js';

const ADDRESS = '127.0.0.1:15035';
const FOREIGN = 'build/tests/foreign.bpf.o';
const RESYNC_SECONDS = 1;
/** A gross bound only: "within one pass" is counted in passes (passesToSee), not time. */
const DEADLINE_MS = 20_000;
const run = (argv: string[]) => systemRunner.run(argv);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

kernelDescribe('ordering', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;
  let foreign: BpfObject;
  /** tcx links this test holds (closing one detaches its program). */
  const links = new Set<number>();

  const start = async () => {
    controller = startController(sim.nodeNs, [
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--resync-interval',
      String(RESYNC_SECONDS),
      '--health-address',
      ADDRESS,
      '--enroll',
      sim.pods.flatMap((p) => [p.ip, p.ip6]).join(','),
    ]);
    await controller.waitFor('programmed');
  };

  beforeAll(async () => {
    foreign = BpfObject.openAndLoad(FOREIGN, {});
    sim = await createSimNode({ pods: 2 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    await Promise.all([sim.startZtunnel(), sim.startOutside()]);
    await start();
  });

  afterAll(async () => {
    await prober?.close();
    for (const fd of links) ffi.closeFd(fd);
    links.clear();
    foreign?.close();
    await teardownNode(sim, pinRoot, controller);
  });

  /** GET from inside the node netns, where the agent listens (test/support/http-prober.ts). */
  let prober: HttpProber | undefined;
  const get = (path: string) => (prober ??= httpProber(sim.nodeNs, ADDRESS)).get(path);

  function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
    for (const line of text.split('\n')) {
      if (!line.startsWith(name + '{')) continue;
      if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return undefined;
  }
  const passes = (metrics: string) => sample(metrics, 'ambient_redirect_reconcile_duration_seconds_count', { outcome: 'ok' }) ?? 0;

  /**
   * Runs `change`, then scrapes until the gauge for hook/kind reads `want`; returns how many
   * passes completed after the change up to that scrape. The gauge and the pass count are
   * set together at the end of each pass, so one scrape sees both from the same pass. The
   * pass under way during the change may miss it: 2 means "the first pass after it".
   */
  async function passesToSee(change: () => Promise<unknown>, hook: string, kind: string, want: number): Promise<{ passes: number; ms: number }> {
    await change();
    const before = passes((await get('/metrics')).body);
    const t0 = Date.now();
    for (;;) {
      const m = (await get('/metrics')).body;
      if (sample(m, 'ambient_redirect_foreign_programs', { hook, kind }) === want) return { passes: passes(m) - before, ms: Date.now() - t0 };
      if (Date.now() - t0 > DEADLINE_MS) throw new Error(`foreign_programs{hook="${hook}",kind="${kind}"} never read ${want}`);
      await sleep(50);
    }
  }

  const foreignGauge = async (hook: string, kind: string) => sample((await get('/metrics')).body, 'ambient_redirect_foreign_programs', { hook, kind });
  const status = async () => JSON.parse(await runInNode(sim.nodeNs, ['status', '--json', '--pin-root', pinRoot])) as Status;

  const addTcFilter = (dev: string, dir: string, ns = sim.nodeNs, prio = 1) =>
    run(['tc', '-n', ns, 'filter', 'add', 'dev', dev, dir, 'prio', String(prio), 'handle', '1', 'bpf', 'da', 'obj', FOREIGN, 'sec', 'tc']);
  const delTcFilter = (dev: string, dir: string, ns = sim.nodeNs, prio = 1) =>
    run(['tc', '-n', ns, 'filter', 'del', 'dev', dev, dir, 'prio', String(prio), 'handle', '1', 'bpf']);
  const toOutside = (pod = sim.pods[0]!) => sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 1);

  async function ifindexOf(dev: string, ns: string): Promise<number> {
    return (JSON.parse(await run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
  }

  /** Attaches the foreign program first on a tcx hook; returns the link fd (close to detach). */
  async function addTcx(dev: string, dir: 'ingress' | 'egress', ns = sim.nodeNs): Promise<number> {
    const ifindex = await ifindexOf(dev, ns);
    const type = dir === 'ingress' ? ffi.TcxAttachType.INGRESS : ffi.TcxAttachType.EGRESS;
    const fd = withNetns(netnsPath(ns), () => ffi.tcxLinkCreate(ifindex, type, foreign.programFd('foreign_pass'), ffi.BPF_F_BEFORE));
    links.add(fd);
    return fd;
  }
  const delTcx = (fd: number) => {
    ffi.closeFd(fd);
    links.delete(fd);
  };

  it('is ready with nothing before our programs', async () => {
    const r = await get('/readyz');
    expect(r).toEqual({ status: 200, body: 'ok\n' });
    expect(await foreignGauge('pod-ingress', 'tc-same-priority')).toBe(0);
    const s = await status();
    expect(s.ordering.findings).toEqual([]);
    expect(s.ordering.tcx).toBe(true);
  });

  it('a foreign tc filter at priority 1 on an enrolled veth turns readiness false within one pass, and back', async () => {
    const dev = sim.pods[0]!.hostVeth;
    // Ours sits at priority 1 too: a filter there is as good as first (of two at one
    // priority the one attached last runs first), and Cilium and Calico's eBPF mode use 1.
    const kind = 'tc-same-priority';
    try {
      const seen = await passesToSee(() => addTcFilter(dev, 'ingress'), 'pod-ingress', kind, 1);
      const r = await get('/readyz');
      console.log(`ordering: foreign tc filter on ${dev} ingress seen ${seen.passes} pass(es), ${seen.ms} ms after it was added: ${r.body.trim()}`);
      expect(seen.passes).toBeLessThanOrEqual(2);
      expect(r.status).toBe(503);
      expect(r.body).toMatch(
        new RegExp(
          `not ready: data path bypassed: tc bpf filter pref 1 handle 0x1 program \\d+ foreign_pass shares our priority on ${dev} ingress and may run first`,
        ),
      );
      const s = await status();
      expect(s.ordering.findings).toEqual([expect.objectContaining({ where: 'pod', device: dev, direction: 'ingress', kind })]);
      expect(await runInNode(sim.nodeNs, ['status', '--pin-root', pinRoot])).toContain('ordering: NOT VERIFIED');
      // Not a false alarm: with the same filter on the egress too (one pass to see it),
      // the pod's connection goes around ztunnel straight to the outside server.
      const egress = await passesToSee(() => addTcFilter(dev, 'egress'), 'pod-egress', kind, 1);
      expect(egress.passes).toBeLessThanOrEqual(2);
      expect(await toOutside()).toEqual([{ ok: true, reply: 'outside' }]);
    } finally {
      await delTcFilter(dev, 'egress').catch(() => '');
      const gone = await passesToSee(() => delTcFilter(dev, 'ingress'), 'pod-ingress', kind, 0);
      expect(gone.passes).toBeLessThanOrEqual(2);
    }
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
    expect(await toOutside()).toEqual([{ ok: true, reply: 'ztunnel' }]);
  });

  it('a foreign filter at a higher priority than ours runs after ours: still ready, still captured', async () => {
    const dev = sim.pods[0]!.hostVeth;
    await addTcFilter(dev, 'ingress', sim.nodeNs, 5);
    try {
      const first = passes((await get('/metrics')).body);
      while (passes((await get('/metrics')).body) < first + 2) await sleep(100);
      expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
      for (const kind of ['tc-lower-priority', 'tc-same-priority', 'tcx']) expect(await foreignGauge('pod-ingress', kind)).toBe(0);
      expect(await toOutside()).toEqual([{ ok: true, reply: 'ztunnel' }]);
    } finally {
      await delTcFilter(dev, 'ingress', sim.nodeNs, 5);
    }
  });

  it('a tcx program on an enrolled veth or on ztunnel’s eth0 turns readiness false within one pass, and back', async () => {
    const dev = sim.pods[1]!.hostVeth;
    let onPod = -1;
    let onZtunnel = -1;
    try {
      const seen = await passesToSee(
        async () => {
          onPod = await addTcx(dev, 'egress');
          onZtunnel = await addTcx('eth0', 'ingress', sim.ztunnel.ns);
        },
        'pod-egress',
        'tcx',
        1,
      );
      const r = await get('/readyz');
      console.log(
        `ordering: tcx programs on ${dev} egress and ztunnel's eth0 ingress seen ${seen.passes} pass(es), ${seen.ms} ms after they were attached: ${r.body.trim()}`,
      );
      expect(seen.passes).toBeLessThanOrEqual(2);
      expect(await foreignGauge('ztunnel-ingress', 'tcx')).toBe(1);
      expect(r.status).toBe(503);
      expect(r.body).toMatch(new RegExp(`not ready: data path bypassed: tcx program \\d+ foreign_pass runs before ours on ${dev} egress`));
      expect(r.body).toMatch(/not ready: data path bypassed: tcx program \d+ foreign_pass runs before ours on ztunnel's eth0 ingress/);
      const s = await status();
      expect(s.ordering.findings.map((f) => [f.where, f.device, f.direction, f.kind]).sort()).toEqual([
        ['pod', dev, 'egress', 'tcx'],
        ['ztunnel', 'eth0', 'ingress', 'tcx'],
      ]);
    } finally {
      const gone = await passesToSee(
        async () => {
          if (onPod >= 0) delTcx(onPod);
          if (onZtunnel >= 0) delTcx(onZtunnel);
        },
        'pod-egress',
        'tcx',
        0,
      );
      expect(gone.passes).toBeLessThanOrEqual(2);
    }
    expect(await foreignGauge('ztunnel-ingress', 'tcx')).toBe(0);
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
  });

  it('programs placed before the agent starts keep it unready from its first pass, until they go', async () => {
    await controller!.stop('SIGTERM');
    controller = undefined;
    const tcDev = sim.pods[0]!.hostVeth;
    const tcxDev = sim.pods[0]!.hostVeth;
    await addTcFilter(tcDev, 'egress');
    const link = await addTcx(tcxDev, 'ingress');
    try {
      await start();
      // The first pass already found them: no ready window in between.
      const r = await get('/readyz');
      console.log(`ordering: programs present at start: ${r.body.trim()}`);
      expect(r.status).toBe(503);
      expect(r.body).toContain(`foreign_pass runs before ours on ${tcDev} ingress`);
      expect(r.body).toMatch(new RegExp(`tc bpf filter pref 1 handle 0x1 program \\d+ foreign_pass shares our priority on ${tcDev} egress`));
      expect(controller!.events.find((e) => e.msg === 'data path not verified: something runs before our programs or skips them')).toBeDefined();
    } finally {
      delTcx(link);
      await delTcFilter(tcDev, 'egress');
    }
    await passesToSee(async () => {}, 'pod-egress', 'tc-same-priority', 0);
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
    await controller!.waitFor('data path verified again: nothing runs before our programs');
  });

  it('an older build’s filters (priority 9393) move to priority 1 on start, same programs, nothing left behind', async () => {
    await controller!.stop('SIGTERM');
    controller = undefined;
    const pod = sim.pods[0]!;
    const hooks = [
      { ns: sim.nodeNs, dev: pod.hostVeth, dir: 'ingress' as const },
      { ns: sim.nodeNs, dev: pod.hostVeth, dir: 'egress' as const },
      { ns: sim.ztunnel.ns, dev: 'eth0', dir: 'ingress' as const },
    ];
    const ours = async (h: (typeof hooks)[number]) =>
      (
        JSON.parse(await run(['tc', '-n', h.ns, '-j', 'filter', 'show', 'dev', h.dev, h.dir])) as {
          pref: number;
          options?: { handle?: string; prog?: { id: number } };
        }[]
      )
        .filter((f) => f.options?.handle === '0xa4b1')
        .map((f) => ({ pref: f.pref, id: f.options!.prog!.id }));
    const ids: number[] = [];
    // What a node run by an older build looks like: our programs at priority 9393.
    for (const h of hooks) {
      const [now] = await ours(h);
      expect(now?.pref).toBe(1);
      ids.push(now!.id);
      const ifindex = await ifindexOf(h.dev, h.ns);
      const point = h.dir === 'ingress' ? ffi.TcAttachPoint.INGRESS : ffi.TcAttachPoint.EGRESS;
      const fd = ffi.progGetFdById(now!.id);
      try {
        withNetns(netnsPath(h.ns), () => {
          ffi.tcAttach(ifindex, point, fd, { handle: 0xa4b1, priority: 9393 }, false);
          ffi.tcDetach(ifindex, point, { handle: 0xa4b1, priority: 1 });
        });
      } finally {
        ffi.closeFd(fd);
      }
      expect(await ours(h)).toEqual([{ pref: 9393, id: now!.id }]);
    }
    await start();
    for (const [i, h] of hooks.entries()) expect(await ours(h)).toEqual([{ pref: 1, id: ids[i] }]);
    expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
  });
});
