/**
 * Lifecycle of the XDP hook (`run --hook xdp`; docs/datapath.md, "The outbound hook"), with
 * real traffic in the simulated node and the kernel as the oracle (`ip -d link`, `tc filter
 * show`, the snapshot of test/support/snapshot.ts): the same guarantees as the TC hook's
 * (test/kernel/lifecycle.test.ts). A restart adopts (same ids, nothing re-attached); a new
 * build swaps every program in place; drift is repaired; someone else's XDP program is never
 * replaced and turns /readyz false; a switch of hook across a restart leaves exactly one
 * outbound program per veth and never none; status says which hook holds it; uninstall
 * leaves the node as it was.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { netnsPath, withNetns } from '../../src/bpf/netns.js';
import { BpfObject } from '../../src/bpf/object.js';
import type { Status } from '../../src/cli/status.js';
import { systemRunner } from '../../src/host/runner.js';
import { attachXdp, detachXdp } from '../../harness/bpf/xdp-attach.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { netnsSnapshot } from '../support/snapshot.js';
import { teardownNode } from '../support/node.js';
import { httpProber, type HttpProber } from '../support/http-prober.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep } from '../support/wait.js';

const run = (argv: string[]) => systemRunner.run(argv);
const ipOf = (src: string) => src.replace(/^\[/, '').replace(/\]?:\d+$/, '');
const ADDRESS = '127.0.0.1:15036';
const REBUILT = 'build/test/redirect-rebuilt.bpf.o';

/** What holds the outbound program of each enrolled veth, and what is on ztunnel's eth0. */
interface HookState {
  [hook: string]: { xdp: { id: number; name: string } | null; tc: number[] };
}

kernelDescribe('XDP hook lifecycle', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let pinDir: string;
  let outside: SimServer;
  let controller: ControllerProcess | undefined;
  let enrolled: SimPod[];
  /** Someone else's XDP program: xdp.bpf.o's xdp_pass loaded apart (not pinned by us, another id). */
  let foreign: BpfObject;

  const start = (hook: 'tc' | 'xdp' = 'xdp', object = 'build/redirect.bpf.o') => {
    controller = startController(sim.nodeNs, [
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--object',
      object,
      '--hook',
      hook,
      '--resync-interval',
      '1',
      '--health-address',
      ADDRESS,
      '--enroll',
      enrolled.flatMap((p) => [p.ip, p.ip6]).join(','),
    ]);
    return controller;
  };
  const stop = async (signal: NodeJS.Signals = 'SIGTERM') => {
    const code = await controller?.stop(signal);
    controller = undefined;
    return code;
  };

  async function hookOf(ns: string, dev: string, dir: string): Promise<HookState[string]> {
    const ours = async () =>
      (
        JSON.parse(await run(['tc', '-n', ns, '-j', 'filter', 'show', 'dev', dev, dir]).catch(() => '[]')) as {
          options?: { handle?: string; prog?: { id: number } };
        }[]
      )
        .filter((f) => f.options?.handle === '0xa4b1')
        .map((f) => f.options!.prog!.id);
    // TC, XDP, TC again: the three reads are not one snapshot, and a switch adds one hook
    // before it removes the other. Read old-then-new, a switch in between shows the new one;
    // read new-then-old, it can show neither. With TC on both sides of the XDP read, one
    // pair is old-then-new whichever way the switch goes, so "neither" is never seen by a
    // switch done in the right order, and a TC filter seen by either read counts.
    const before = await ours();
    const [l] = JSON.parse(await run(['ip', '-n', ns, '-j', '-d', 'link', 'show', 'dev', dev])) as { xdp?: { prog?: { id: number; name: string } } }[];
    const after = await ours();
    return {
      xdp: l!.xdp?.prog ? { id: l!.xdp.prog.id, name: l!.xdp.prog.name } : null,
      tc: after.length > 0 ? after : before,
    };
  }
  /** Each enrolled veth's outbound (XDP and TC ingress), its TC egress, and ztunnel's eth0. */
  async function hooks(): Promise<HookState> {
    const state: HookState = {};
    for (const p of enrolled) {
      state[`${p.hostVeth}/out`] = await hookOf(sim.nodeNs, p.hostVeth, 'ingress');
      state[`${p.hostVeth}/in`] = { xdp: null, tc: (await hookOf(sim.nodeNs, p.hostVeth, 'egress')).tc };
    }
    state['ztunnel/eth0'] = await hookOf(sim.ztunnel.ns, 'eth0', 'ingress');
    return state;
  }
  /** Exactly one outbound program per enrolled veth, at the hook asked for. */
  function expectOneOutbound(state: HookState, hook: 'tc' | 'xdp'): void {
    for (const p of enrolled) {
      const out = state[`${p.hostVeth}/out`]!;
      if (hook === 'xdp') {
        expect(out.xdp?.name, p.hostVeth).toBe('xdp_out');
        expect(out.tc, p.hostVeth).toEqual([]);
      } else {
        expect(out.xdp, p.hostVeth).toBeNull();
        expect(out.tc, p.hostVeth).toHaveLength(1);
      }
      expect(state[`${p.hostVeth}/in`]!.tc).toHaveLength(1);
    }
    expect(state['ztunnel/eth0']!.tc).toHaveLength(1);
    expect(state['ztunnel/eth0']!.xdp?.name ?? null).toBe(hook === 'xdp' ? 'xdp_pass' : null);
  }
  /** Never none, never two: every veth has one outbound program (XDP or TC), one inbound. */
  function expectNeverNone(state: HookState): void {
    for (const p of enrolled) {
      const out = state[`${p.hostVeth}/out`]!;
      expect((out.xdp?.name === 'xdp_out' ? 1 : 0) + out.tc.length, `${p.hostVeth}: ${JSON.stringify(out)}`).toBeGreaterThanOrEqual(1);
      expect(out.tc.length, p.hostVeth).toBeLessThanOrEqual(1);
      expect(state[`${p.hostVeth}/in`]!.tc).toHaveLength(1);
    }
  }

  /** Connections from the first enrolled pod until `until` settles; each must reach ztunnel. */
  async function trafficDuring<T>(until: Promise<T>, poll?: (s: HookState) => void): Promise<{ made: number; failed: string[] }> {
    let done = false;
    const settled = until.finally(() => {
      done = true;
    });
    const polling = (async () => {
      while (poll && !done) poll(await hooks());
    })();
    const failed: string[] = [];
    let made = 0;
    while (!done) {
      const rs = await sim.connect(enrolled[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 5, 3_000);
      made += rs.length;
      failed.push(...rs.filter((r) => !(r.ok && r.reply === 'ztunnel')).map((r) => r.error ?? r.reply ?? '?'));
    }
    await settled;
    await polling;
    return { made, failed };
  }
  const bypasses = () => outside.accepted.filter((a) => enrolled.some((p) => ipOf(a.src) === p.ip || ipOf(a.src) === p.ip6)).length;
  const toZtunnel = async (pod = enrolled[0]!) =>
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
  const status = async () => JSON.parse(await runInNode(sim.nodeNs, ['status', '--json', '--pin-root', pinRoot])) as Status;

  /** GET from inside the node netns, where the agent listens (test/support/http-prober.ts). */
  let prober: HttpProber | undefined;
  const get = (path: string) => (prober ??= httpProber(sim.nodeNs, ADDRESS)).get(path);

  async function ifindexOf(ns: string, dev: string): Promise<number> {
    return (JSON.parse(await run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
  }
  const inNs = <T>(ns: string, f: () => T) => withNetns(netnsPath(ns), f);

  /** Everything the node and ztunnel's netns hold that we touch, XDP programs included (`ip -d link`). */
  const snapshot = async () => ({
    node: await netnsSnapshot(
      sim.nodeNs,
      sim.pods.map((p) => p.hostVeth),
    ),
    ztunnel: withoutEmptyTables(await netnsSnapshot(sim.ztunnel.ns, ['eth0'])),
  });

  beforeAll(async () => {
    foreign = BpfObject.openAndLoad('build/xdp.bpf.o', { programs: ['xdp_pass'] });
    sim = await createSimNode({ pods: 3 });
    enrolled = [sim.pods[0]!, sim.pods[1]!];
    pinRoot = pinRootFor(sim);
    pinDir = join(pinRoot, 'ambient-redirect/v1');
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    [, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
  });

  afterAll(async () => {
    await prober?.close();
    foreign?.close();
    await teardownNode(sim, pinRoot, controller);
  });

  describe('in order on one node', () => {
    let before: Awaited<ReturnType<typeof snapshot>>;

    it('installs with xdp_out on each enrolled veth’s XDP hook, xdp_pass on ztunnel’s eth0; traffic reaches ztunnel', async () => {
      before = await snapshot();
      start('xdp');
      await controller!.waitFor('programmed');
      expectOneOutbound(await hooks(), 'xdp');
      await toZtunnel();
      expect(await get('/readyz')).toEqual({ status: 200, body: 'ok\n' });
    });

    it('status shows which hook holds each veth’s outbound program, and ztunnel’s xdp_pass (JSON and text)', async () => {
      const state = await hooks();
      const s = await status();
      for (const p of s.pods) {
        const out = state[`${p.veth}/out`]!;
        expect(p.outbound).toEqual({ hook: 'xdp', id: out.xdp!.id });
        expect(p.xdp).toEqual({ id: out.xdp!.id, name: 'xdp_out', mode: 'native', ours: true });
        expect(p.hooks).toEqual({ ingress: null, egress: state[`${p.veth}/in`]!.tc[0] });
      }
      expect(s.ztunnel!.xdp).toEqual({ id: state['ztunnel/eth0']!.xdp!.id, name: 'xdp_pass', mode: 'native', ours: true });
      expect(s.ordering.findings).toEqual([]);
      const human = await runInNode(sim.nodeNs, ['status', '--pin-root', pinRoot]);
      const p0 = enrolled[0]!;
      expect(human).toMatch(new RegExp(`${p0.ip.replace(/\./g, '\\.')}\\s+${p0.hostVeth}\\s+xdp ${state[`${p0.hostVeth}/out`]!.xdp!.id}\\s+tc \\d+`));
      expect(human).toContain(`eth0 XDP xdp_pass ${state['ztunnel/eth0']!.xdp!.id} (NAPI mode)`);
    });

    it('SIGKILL, restart 5 s later under traffic: adopted, same program ids, nothing re-attached, no failure, no bypass', async () => {
      const hooksBefore = await hooks();
      const bypassBefore = bypasses();
      await stop('SIGKILL');
      const { made, failed } = await trafficDuring(
        (async () => {
          await sleep(5_000);
          start('xdp');
          await controller!.waitFor('programmed');
          await sleep(2_000);
        })(),
      );
      expect(made).toBeGreaterThan(5);
      expect(failed).toEqual([]);
      expect(bypasses()).toBe(bypassBefore);
      expect(controller!.events.some((e) => e.msg === 'ebpf data path adopted')).toBe(true);
      expect(controller!.events.find((e) => e.msg === 'programmed')).toMatchObject({ attached: 0, detached: 0 });
      expect(await hooks()).toEqual(hooksBefore);
    }, 60_000);

    it('a new build replaces every program in place under traffic: never none, never two', async () => {
      const old = await hooks();
      await stop();
      const bypassBefore = bypasses();
      const { failed } = await trafficDuring(
        (async () => {
          start('xdp', REBUILT);
          await controller!.waitFor('upgrade complete');
          await sleep(1_000);
        })(),
        expectNeverNone,
      );
      expect(failed).toEqual([]);
      expect(bypasses()).toBe(bypassBefore);
      const now = await hooks();
      expectOneOutbound(now, 'xdp');
      for (const p of enrolled) expect(now[`${p.hostVeth}/out`]!.xdp!.id).not.toBe(old[`${p.hostVeth}/out`]!.xdp!.id);
      expect(now['ztunnel/eth0']!.xdp!.id).not.toBe(old['ztunnel/eth0']!.xdp!.id);
      expect(readdirSync(pinDir).filter((e) => e.startsWith('prog-'))).toHaveLength(1);
      // Back to this build for what follows.
      await stop();
      start('xdp');
      await controller!.waitFor('upgrade complete');
      expectOneOutbound(await hooks(), 'xdp');
    }, 60_000);

    it('drift: our xdp_out or xdp_pass taken off is put back on a pass, and said', async () => {
      const veth = enrolled[1]!.hostVeth;
      const n = controller!.events.length;
      await run(['ip', '-n', sim.nodeNs, 'link', 'set', 'dev', veth, 'xdpdrv', 'off']);
      await waitUntil(async () => (await hooks())[`${veth}/out`]!.xdp?.name === 'xdp_out', 10_000, 'xdp_out re-attached');
      expect(await controller!.waitForAfter(n, 'reconciled')).toMatchObject({ attached: 1 });
      await run(['ip', '-n', sim.ztunnel.ns, 'link', 'set', 'dev', 'eth0', 'xdpdrv', 'off']);
      await waitUntil(async () => (await hooks())['ztunnel/eth0']!.xdp?.name === 'xdp_pass', 10_000, 'xdp_pass re-attached');
      expectOneOutbound(await hooks(), 'xdp');
      await toZtunnel(enrolled[1]!);
    }, 30_000);

    it('someone else’s XDP program in place of ours is not replaced: our TC filter goes behind it, /readyz is false and names it, across a restart; once it is gone ours is back', async () => {
      const pod = enrolled[1]!;
      const ifindex = await ifindexOf(sim.nodeNs, pod.hostVeth);
      const theirs = foreign.programFd('xdp_pass');
      // Replaces ours on the hook, as another tool would (no REPLACE check).
      inNs(sim.nodeNs, () => attachXdp(ifindex, theirs));
      try {
        const theirId = (await hooks())[`${pod.hostVeth}/out`]!.xdp!.id;
        await waitUntil(async () => (await hooks())[`${pod.hostVeth}/out`]!.tc.length === 1, 10_000, 'our TC ingress filter behind theirs');
        await waitUntil(async () => (await get('/readyz')).status === 503, 10_000, '/readyz false');
        const r = await get('/readyz');
        expect(r.body).toContain(`native XDP program ${theirId} xdp_pass`);
        expect(r.body).toContain(`${pod.hostVeth} XDP`);
        expect((await get('/metrics')).body).toMatch(/ambient_redirect_foreign_programs\{hook="pod-ingress",kind="xdp"\} 1\n/);
        const s = await status();
        expect(s.pods.find((p) => p.ip === pod.ip)).toMatchObject({ xdp: { id: theirId, ours: false }, outbound: { hook: 'tc' } });
        expect(s.ordering.findings).toEqual([expect.objectContaining({ where: 'pod', device: pod.hostVeth, kind: 'xdp' })]);
        // Their program passes, ours at TC behind it still captures.
        await toZtunnel(pod);
        // A restart does not take the hook either.
        await stop();
        start('xdp');
        await controller!.waitFor('programmed');
        await sleep(2_500);
        const after = (await hooks())[`${pod.hostVeth}/out`]!;
        expect(after.xdp!.id).toBe(theirId);
        expect(after.tc).toHaveLength(1);
        expect((await get('/readyz')).status).toBe(503);
      } finally {
        inNs(sim.nodeNs, () => detachXdp(ifindex));
      }
      await waitUntil(async () => (await hooks())[`${pod.hostVeth}/out`]!.xdp?.name === 'xdp_out', 10_000, 'xdp_out back');
      await waitUntil(async () => (await get('/readyz')).status === 200, 10_000, '/readyz true');
      expectOneOutbound(await hooks(), 'xdp');
    }, 60_000);

    it('someone else’s XDP program on ztunnel’s eth0 is left in place and reported', async () => {
      const ifindex = await ifindexOf(sim.ztunnel.ns, 'eth0');
      inNs(sim.ztunnel.ns, () => attachXdp(ifindex, foreign.programFd('xdp_pass')));
      try {
        const theirId = (await hooks())['ztunnel/eth0']!.xdp!.id;
        await waitUntil(async () => (await get('/readyz')).body.includes("ztunnel's eth0 XDP"), 10_000, '/readyz names ztunnel’s eth0');
        await sleep(1_500);
        expect((await hooks())['ztunnel/eth0']!.xdp!.id).toBe(theirId);
        expect((await status()).ztunnel!.xdp).toMatchObject({ id: theirId, ours: false });
      } finally {
        inNs(sim.ztunnel.ns, () => detachXdp(ifindex));
      }
      await waitUntil(async () => (await get('/readyz')).status === 200, 10_000, '/readyz true');
      expectOneOutbound(await hooks(), 'xdp');
    }, 30_000);

    it('a veth pair the kernel will not run XDP on (MTU 9000): our TC filter stays, /readyz names the refusal; with the MTU lowered xdp_out takes over', async () => {
      const pod = enrolled[1]!;
      const mtu = (n: number) =>
        Promise.all([
          run(['ip', '-n', sim.nodeNs, 'link', 'set', 'dev', pod.hostVeth, 'mtu', String(n)]),
          run(['ip', '-n', pod.ns, 'link', 'set', 'dev', 'eth0', 'mtu', String(n)]),
        ]);
      // XDP on the veth caps its MTU: off the hook first (back to tc), then the jumbo MTU.
      await stop();
      start('tc');
      await controller!.waitFor('programmed');
      await stop();
      await mtu(9000);
      try {
        start('xdp');
        await controller!.waitFor('programmed');
        expect(await controller!.waitFor('XDP hook not ours')).toMatchObject({ problem: expect.stringContaining('ERANGE') });
        const out = (await hooks())[`${pod.hostVeth}/out`]!;
        expect(out.xdp).toBeNull();
        expect(out.tc).toHaveLength(1);
        await waitUntil(async () => (await get('/readyz')).status === 503, 10_000, '/readyz false');
        expect((await get('/readyz')).body).toContain(`our xdp_out could not be attached: bpf_xdp_attach(ifindex`);
        await toZtunnel(pod);
        // The other veth took the XDP hook as asked.
        expect((await hooks())[`${enrolled[0]!.hostVeth}/out`]!.xdp?.name).toBe('xdp_out');
      } finally {
        await mtu(1500);
      }
      await waitUntil(async () => (await hooks())[`${pod.hostVeth}/out`]!.xdp?.name === 'xdp_out', 10_000, 'xdp_out attached once the MTU fits');
      await waitUntil(async () => (await get('/readyz')).status === 200, 10_000, '/readyz true');
      expectOneOutbound(await hooks(), 'xdp');
    }, 60_000);

    it('xdp→tc and tc→xdp across a restart, under traffic: exactly one outbound program per veth after, never none meanwhile', async () => {
      for (const hook of ['tc', 'xdp'] as const) {
        await stop();
        const bypassBefore = bypasses();
        const { failed } = await trafficDuring(
          (async () => {
            start(hook);
            await controller!.waitFor('programmed');
            await sleep(1_500);
          })(),
          expectNeverNone,
        );
        expect(failed).toEqual([]);
        expect(bypasses()).toBe(bypassBefore);
        expectOneOutbound(await hooks(), hook);
        expect((await status()).pods.every((p) => p.outbound?.hook === hook)).toBe(true);
        expect((await get('/readyz')).status).toBe(200);
      }
    }, 90_000);

    it('uninstall removes our XDP programs (only ours) and leaves the node as it was', async () => {
      const state = await hooks();
      const ids = Object.values(state).flatMap((h) => [...(h.xdp ? [h.xdp.id] : []), ...h.tc]);
      expect(ids).toHaveLength(2 * 2 + 2); // per veth xdp_out + in_redirect; ztunnel’s xdp_pass + zt_*
      // Someone else's XDP program on the unenrolled pod's veth, there before and after.
      const other = sim.pods[2]!;
      const otherIfindex = await ifindexOf(sim.nodeNs, other.hostVeth);
      await stop();
      inNs(sim.nodeNs, () => attachXdp(otherIfindex, foreign.programFd('xdp_pass')));
      try {
        const out = await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
        expect(out).toContain('detached XDP program xdp_out');
        expect(out).toContain('detached XDP program xdp_pass');
        // Theirs stays, though it has the name of one of ours: ours are known by id.
        expect((await hookOf(sim.nodeNs, other.hostVeth, 'ingress')).xdp?.name).toBe('xdp_pass');
      } finally {
        inNs(sim.nodeNs, () => detachXdp(otherIfindex));
      }
      expect(await snapshot()).toEqual(before);
      for (const id of ids) await expect(run(['bpftool', 'prog', 'show', 'id', String(id)])).rejects.toThrow();
    }, 60_000);
  });
});

/**
 * The nft backend keeps a table once used, listed with its built-in chains (all ACCEPT,
 * no rule), after the ztunnel side's rules are removed (as test/kernel/lifecycle.test.ts
 * strips them): such a table filters nothing, so only rules count here.
 */
function withoutEmptyTables(snap: Record<string, string>): Record<string, string> {
  const out = { ...snap };
  for (const k of ['iptables-nft', 'ip6tables-nft'])
    out[k] = out[k]!.split('\n')
      .filter((l) => l.startsWith('-A '))
      .join('\n');
  out.nft = out
    .nft!.split('\n')
    .filter((l) => l.trim() !== '' && !/^(table|chain|\}|\s*\}|\s*type .* policy accept;)/.test(l.trim()))
    .join('\n');
  return out;
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`not within ${timeoutMs} ms: ${what}`);
}
