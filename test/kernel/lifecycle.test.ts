/**
 * Lifecycle (issue 4), with real traffic in the simulated node and the kernel as the
 * oracle (tc, bpftool, the pin folder): the data path does not depend on the controller
 * process; restarts adopt, upgrades swap in place, schema changes migrate, drift is
 * repaired, and uninstall leaves the node as it was.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as codec from '../../src/bpf/codec.js';
import type { Status } from '../../src/cli/status.js';
import { CommandError, systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode, type SimPod, type SimServer } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep } from '../support/wait.js';

const run = (argv: string[]) => systemRunner.run(argv);
const ipOf = (src: string) => src.replace(/^\[/, '').replace(/\]?:\d+$/, '');

const OBJECTS = {
  current: 'build/redirect.bpf.o',
  rebuilt: 'build/test/redirect-rebuilt.bpf.o',
  small: 'build/test/redirect-small.bpf.o',
  unloadable: 'build/test/redirect-unloadable.bpf.o',
};

/** The last build before the counters array, agent and object (the Makefile builds it from git history). */
const PREVIOUS = { entry: resolve('build/test/prev/dist/src/cli/main.js'), object: 'build/test/prev/redirect.bpf.o' };

interface HookState {
  /** Our filters per hook: `<veth>/<direction>` -> program ids found there. */
  [hook: string]: number[];
}

kernelDescribe('lifecycle', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let pinDir: string;
  let ztunnel: SimServer;
  let outside: SimServer;
  let controller: ControllerProcess | undefined;
  let enrolled: SimPod[];

  const start = (object = OBJECTS.current, extra: string[] = [], entry?: string) => {
    controller = startController(
      sim.nodeNs,
      [
        '--pin-root',
        pinRoot,
        '--ztunnel-ip',
        sim.ztunnel.ip,
        '--object',
        object,
        '--resync-interval',
        '2',
        '--enroll',
        enrolled.flatMap((p) => [p.ip, p.ip6]).join(','),
        ...extra,
      ],
      { entry },
    );
    return controller;
  };

  const stop = async (signal: NodeJS.Signals) => {
    const code = await controller?.stop(signal);
    controller = undefined;
    return code;
  };

  /** Our filters on every enrolled veth and on ztunnel's eth0, by program id. */
  async function hooks(): Promise<HookState> {
    const state: HookState = {};
    const read = async (ns: string, dev: string, dir: string) => {
      const json = JSON.parse(await run(['tc', '-n', ns, '-j', 'filter', 'show', 'dev', dev, dir]).catch(() => '[]')) as {
        options?: { handle?: string; prog?: { id: number } };
      }[];
      state[`${dev}/${dir}`] = json.filter((f) => f.options?.handle === '0xa4b1').map((f) => f.options!.prog!.id);
    };
    for (const p of enrolled) for (const d of ['ingress', 'egress']) await read(sim.nodeNs, p.hostVeth, d);
    await read(sim.ztunnel.ns, 'eth0', 'ingress');
    return state;
  }

  const dumpMap = (name: string) => run(['bpftool', '-j', 'map', 'dump', 'pinned', join(pinDir, name)]);
  const mapInfo = async (name: string) =>
    JSON.parse(await run(['bpftool', '-j', 'map', 'show', 'pinned', join(pinDir, name)])) as { id: number; max_entries: number };

  /**
   * Opens connections from the first enrolled pod until `until` settles; every one must
   * be answered by ztunnel. Returns how many were made and how many failed.
   */
  async function trafficDuring<T>(until: Promise<T>): Promise<{ made: number; failed: string[]; result: T }> {
    let done = false;
    const settled = until.finally(() => {
      done = true;
    });
    const failed: string[] = [];
    let made = 0;
    while (!done) {
      const rs = await sim.connect(enrolled[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 5, 3_000);
      made += rs.length;
      failed.push(...rs.filter((r) => !(r.ok && r.reply === 'ztunnel')).map((r) => r.error ?? r.reply ?? '?'));
    }
    return { made, failed, result: await settled };
  }

  const bypasses = () => outside.accepted.filter((a) => enrolled.some((p) => ipOf(a.src) === p.ip || ipOf(a.src) === p.ip6)).length;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3 });
    enrolled = [sim.pods[0]!, sim.pods[1]!];
    pinRoot = pinRootFor(sim);
    pinDir = join(pinRoot, 'ambient-redirect/v1');
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    [ztunnel, outside] = await Promise.all([sim.startZtunnel(), sim.startOutside()]);
  });

  afterAll(() => teardownNode(sim, pinRoot, controller));

  describe('in order on one node', () => {
    let before: Awaited<ReturnType<typeof snapshot>>;

    it('records the node before install', async () => {
      // Someone else's (empty) clsact on one veth: uninstall must leave it, as it was.
      await run(['tc', '-n', sim.nodeNs, 'qdisc', 'add', 'dev', enrolled[1]!.hostVeth, 'clsact']);
      before = await snapshot();
      expect(before.tc).toContain('clsact');
      start();
      await controller!.waitFor('programmed');
      expect(await sim.connect(enrolled[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
    });

    it('records only the clsact qdiscs it created', async () => {
      const keys = JSON.parse(await run(['bpftool', '-j', 'map', 'dump', 'pinned', join(pinDir, 'qdiscs')])) as {
        formatted: { key: { ifindex: number; netns: number } };
      }[];
      const ifindex = async (dev: string) =>
        (JSON.parse(await run(['ip', '-n', sim.nodeNs, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
      const node = keys.filter((k) => k.formatted.key.netns === 0).map((k) => k.formatted.key.ifindex);
      expect(node).toEqual([await ifindex(enrolled[0]!.hostVeth)]);
      expect(keys.filter((k) => k.formatted.key.netns === 1)).toHaveLength(1); // ztunnel's eth0
    });

    it('pins folder 0700, pins 0600', async () => {
      const { statSync } = await import('node:fs');
      expect(statSync(pinDir).mode & 0o777).toBe(0o700);
      expect(statSync(join(pinRoot, 'ambient-redirect')).mode & 0o777).toBe(0o700);
      for (const name of ['pods', 'ztunnel', 'dns_servers', 'host_flows', 'counters', 'veth_slots', 'qdiscs'])
        expect(statSync(join(pinDir, name)).mode & 0o777).toBe(0o600);
    });

    it('SIGTERM leaves everything attached and pinned; traffic is unaffected', async () => {
      const hooksBefore = await hooks();
      expect(await stop('SIGTERM')).toBe(0);
      expect(await hooks()).toEqual(hooksBefore);
      expect(readdirSync(pinDir).sort()).toEqual(expect.arrayContaining(['counters', 'dns_servers', 'host_flows', 'pods', 'ztunnel']));
      expect(await sim.connect(enrolled[1]!, { ip: sim.outside.ip6, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
    });

    it('SIGKILL, restart 20 s later under traffic: no failure, no bypass, same IDs and contents, one program per hook', async () => {
      start();
      await controller!.waitFor('programmed');
      const hooksBefore = await hooks();
      const podsBefore = await dumpMap('pods');
      const mapIds = await Promise.all(['pods', 'ztunnel', 'counters'].map(async (m) => (await mapInfo(m)).id));
      const bypassBefore = bypasses();
      await stop('SIGKILL');

      const { made, failed } = await trafficDuring(
        (async () => {
          await sleep(20_000);
          start();
          await controller!.waitFor('programmed');
          await sleep(3_000); // a few resync passes under traffic
        })(),
      );
      expect(made).toBeGreaterThan(20);
      expect(failed).toEqual([]);
      expect(bypasses()).toBe(bypassBefore);
      expect(controller!.events.some((e) => e.msg === 'ebpf data path adopted')).toBe(true);
      const hooksAfter = await hooks();
      expect(hooksAfter).toEqual(hooksBefore);
      for (const ids of Object.values(hooksAfter)) expect(ids).toHaveLength(1);
      expect(await dumpMap('pods')).toEqual(podsBefore);
      expect(await Promise.all(['pods', 'ztunnel', 'counters'].map(async (m) => (await mapInfo(m)).id))).toEqual(mapIds);
    }, 90_000);

    it('a new build replaces every program in place under traffic: hooks never empty nor doubled', async () => {
      const old = await hooks();
      await stop('SIGTERM');
      const seen: HookState[] = [];
      let polling = true;
      const poller = (async () => {
        while (polling) seen.push(await hooks());
      })();
      const bypassBefore = bypasses();
      // A map an older build pinned that this one no longer has (host_addrs, before host_flows).
      await systemRunner.run([
        'bpftool',
        'map',
        'create',
        join(pinDir, 'host_addrs'),
        'type',
        'hash',
        'key',
        '16',
        'value',
        '4',
        'entries',
        '64',
        'name',
        'host_addrs',
      ]);
      // An older build had no host_flows4: its IPv4 flows were in host_flows, and move over.
      const flow = { pod: '198.18.0.77', podPort: 8080, peer: '10.0.0.4', peerPort: 41234, proto: 6 };
      const hex = (buf: Buffer) => [...buf].map((x) => x.toString(16).padStart(2, '0'));
      rmSync(join(pinDir, 'host_flows4'));
      await systemRunner.run([
        'bpftool',
        'map',
        'update',
        'pinned',
        join(pinDir, 'host_flows'),
        'key',
        'hex',
        ...hex(codec.encodeHostFlowKey(flow)),
        'value',
        'hex',
        ...hex(codec.encodeHostFlowInfo({ ifindex: 4242 })),
      ]);
      const { failed } = await trafficDuring(
        (async () => {
          start(OBJECTS.rebuilt);
          await controller!.waitFor('upgrade complete');
          await sleep(1_000);
        })(),
      );
      polling = false;
      await poller;
      const keysOf = async (name: string) =>
        (JSON.parse(await dumpMap(name)) as { key: string[] }[]).map((e) => e.key.map((x) => x.replace(/^0x/, '')).join(''));
      expect(await keysOf('host_flows4')).toContain(codec.encodeHostFlow4Key(flow).toString('hex'));
      // Copied at the load, removed from host_flows only once the old programs were gone.
      expect(await keysOf('host_flows')).not.toContain(codec.encodeHostFlowKey(flow).toString('hex'));
      expect(JSON.stringify(controller!.events)).toContain('moved IPv4 flows from host_flows to host_flows4');
      expect(failed).toEqual([]);
      expect(bypasses()).toBe(bypassBefore);
      expect(seen.length).toBeGreaterThan(3);
      for (const state of seen) for (const ids of Object.values(state)) expect(ids).toHaveLength(1);
      const now = await hooks();
      for (const [hook, ids] of Object.entries(now)) expect(ids[0]).not.toBe(old[hook]![0]);
      // Only the new build's programs stay pinned, and the retired map is gone.
      expect(readdirSync(pinDir).filter((e) => e.startsWith('prog-'))).toHaveLength(1);
      expect(readdirSync(pinDir)).not.toContain('host_addrs');
      expect(JSON.stringify(controller!.events)).toContain('unpinned retired map host_addrs');
    }, 60_000);

    it('a schema change (max entries) migrates the maps without a gap, and back', async () => {
      for (const [object, maxEntries] of [
        [OBJECTS.small, 1024],
        [OBJECTS.current, 65536],
      ] as const) {
        const entries = async () => (JSON.parse(await dumpMap('pods')) as { formatted: unknown }[]).map((e) => JSON.stringify(e.formatted)).sort();
        const podsBefore = await entries();
        await stop('SIGTERM');
        const bypassBefore = bypasses();
        const { failed } = await trafficDuring(
          (async () => {
            start(object);
            await controller!.waitFor('upgrade complete');
          })(),
        );
        expect(failed).toEqual([]);
        expect(bypasses()).toBe(bypassBefore);
        expect((await mapInfo('pods')).max_entries).toBe(maxEntries);
        // Same entries (a hash map of another size iterates in another order).
        expect(await entries()).toEqual(podsBefore);
        expect(podsBefore).toHaveLength(4);
        expect(readdirSync(pinDir).filter((e) => e.endsWith('__next'))).toEqual([]);
      }
    }, 90_000);

    it('a migration that fails leaves the old data path working', async () => {
      const hooksBefore = await hooks();
      const podsBefore = await dumpMap('pods');
      await stop('SIGTERM');
      const failing = start(OBJECTS.unloadable);
      expect(await failing.exited()).not.toBe(0);
      expect(failing.events.some((e) => e.level === 'error')).toBe(true);
      controller = undefined;
      expect(await hooks()).toEqual(hooksBefore);
      expect(await dumpMap('pods')).toEqual(podsBefore);
      expect(await sim.connect(enrolled[0]!, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
    }, 60_000);

    it('uninstall leaves the node as it was before install, and our programs gone', async () => {
      const ids = Object.values(await hooks()).flat();
      expect(ids.length).toBe(5);
      await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
      expect(await snapshot()).toEqual(before);
      expect(existsSync(pinDir)).toBe(false);
      for (const id of ids) await expect(run(['bpftool', 'prog', 'show', 'id', String(id)])).rejects.toThrow();
    });
  });

  describe('drift', () => {
    it('repairs drift: filters and qdiscs removed by someone else, a recreated veth', async () => {
      start();
      await controller!.waitFor('programmed');
      const veth = enrolled[0]!.hostVeth;
      await run(['tc', '-n', sim.nodeNs, 'filter', 'del', 'dev', veth, 'ingress']);
      await waitUntil(async () => (await hooks())[`${veth}/ingress`]!.length === 1, 10_000, 'ingress filter re-attached');
      await run(['tc', '-n', sim.nodeNs, 'qdisc', 'del', 'dev', veth, 'clsact']);
      await waitUntil(async () => Object.values(await hooks()).every((ids) => ids.length === 1), 10_000, 'clsact and filters re-attached');

      const pod = enrolled[1]!;
      await sim.recreatePodLink(pod);
      await waitUntil(async () => Object.values(await hooks()).every((ids) => ids.length === 1), 10_000, 'recreated veth re-programmed');
      const before = ztunnel.accepted.length;
      expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
      await ztunnel.waitForAccepted(before + 2);
      await stop('SIGTERM');
    }, 60_000);
  });

  describe('upgrade from the build before the counters array', () => {
    const status = async () => JSON.parse(await runInNode(sim.nodeNs, ['status', '--json', '--pin-root', pinRoot])) as Status;
    const mapShow = async (name: string) =>
      JSON.parse(await run(['bpftool', '-j', 'map', 'show', 'pinned', join(pinDir, name)])) as { id: number; type: string; bytes_value: number };
    /** Per enrolled pod: the slots of its addresses' entries, and its redirected packets. */
    const slotsAndCounts = (s: Status) =>
      enrolled.map((p) => {
        const entries = s.pods.filter((e) => e.ip === p.ip || e.ip === p.ip6);
        return { slots: [...new Set(entries.map((e) => e.slot))], redirected: BigInt(entries[0]?.counters.redirected[0] ?? '0') };
      });

    it('pods values grow a slot and counters becomes an array under traffic: no failure, no bypass, enrollment and counts kept', async () => {
      expect(existsSync(PREVIOUS.entry), 'make build builds the previous build from git history').toBe(true);
      await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
      start(PREVIOUS.object, [], PREVIOUS.entry);
      await controller!.waitFor('programmed');
      expect((await mapShow('pods')).bytes_value).toBe(12);
      expect((await mapShow('counters')).type).toBe('percpu_hash');
      // Pod 1's traffic only before the upgrade: what its counters hold after came over from the hash.
      expect(await sim.connect(enrolled[1]!, { ip: sim.outside.ip, port: sim.outside.port }, 3)).toEqual(Array(3).fill({ ok: true, reply: 'ztunnel' }));
      await stop('SIGTERM');

      const bypassBefore = bypasses();
      const { made, failed } = await trafficDuring(
        (async () => {
          start();
          await controller!.waitFor('upgrade complete');
          await sleep(1_000);
        })(),
      );
      expect(made).toBeGreaterThan(0);
      expect(failed).toEqual([]);
      expect(bypasses()).toBe(bypassBefore);
      expect(JSON.stringify(controller!.events)).toMatch(/migrated map pods.*migrated map counters|migrated map counters.*migrated map pods/);
      expect(controller!.events.find((e) => e.msg === 'counters carried over')).toMatchObject({ veths: 2 });
      expect((await mapShow('pods')).bytes_value).toBe(codec.POD_INFO_SIZE);
      expect((await mapShow('counters')).type).toBe('percpu_array');
      expect(readdirSync(pinDir).filter((e) => e.endsWith('__next'))).toEqual([]);
      expect(readdirSync(pinDir).filter((e) => e.startsWith('prog-'))).toHaveLength(1);

      // Every address enrolled; a pod's addresses share its veth's slot, the pods' differ.
      const s = await status();
      expect(s.pods.map((p) => p.ip).sort()).toEqual(enrolled.flatMap((p) => [p.ip, p.ip6]).sort());
      const after = slotsAndCounts(s);
      for (const p of after) {
        expect(p.slots).toHaveLength(1);
        expect(p.slots[0]).toBeGreaterThan(0);
      }
      expect(after[0]!.slots[0]).not.toBe(after[1]!.slots[0]);
      // Pod 1's three connections (a SYN, an ACK and more each), from the old map; pod 0's counted by the new programs.
      expect(after[1]!.redirected).toBeGreaterThanOrEqual(6n);
      expect(after[0]!.redirected).toBeGreaterThan(0n);

      // A restart adopts the slots from the pods map: same slots, nothing zeroed.
      await stop('SIGKILL');
      start();
      await controller!.waitFor('programmed');
      await sleep(2_500); // a resync pass
      const again = slotsAndCounts(await status());
      expect(again.map((p) => p.slots)).toEqual(after.map((p) => p.slots));
      expect(again[1]!.redirected).toBe(after[1]!.redirected);
      await stop('SIGTERM');
    }, 90_000);

    it('a slot given back is zeroed before another pod gets it: no pod inherits counts', async () => {
      const [first, second] = enrolled as [SimPod, SimPod];
      const third = sim.pods[2]!;
      start();
      await controller!.waitFor('programmed');
      expect(await sim.connect(first, { ip: sim.outside.ip, port: sim.outside.port }, 2)).toEqual(Array(2).fill({ ok: true, reply: 'ztunnel' }));
      const [given] = slotsAndCounts(await status());
      expect(given!.redirected).toBeGreaterThan(0n);
      await stop('SIGTERM');
      try {
        // The first pod leaves (its entries and slot go), then a pod never enrolled arrives.
        enrolled = [second];
        start();
        await controller!.waitFor('programmed');
        await stop('SIGTERM');
        enrolled = [second, third];
        start();
        await controller!.waitFor('programmed');
        const [, arrived] = slotsAndCounts(await status());
        expect(arrived!.slots).toEqual(given!.slots);
        expect(arrived!.redirected).toBe(0n);
        expect(await sim.connect(third, { ip: sim.outside.ip, port: sim.outside.port }, 1)).toEqual([{ ok: true, reply: 'ztunnel' }]);
        expect(slotsAndCounts(await status())[1]!.redirected).toBeGreaterThan(0n);
      } finally {
        await stop('SIGTERM');
        enrolled = [first, second];
      }
    }, 60_000);
  });

  it('refuses a pin root that is not a bpffs, in one clear line', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ar-notbpffs-'));
    try {
      const err = (await runInNode(sim.nodeNs, [
        'run',
        '--ztunnel-mode',
        'node',
        '--pin-root',
        dir,
        '--ztunnel-ip',
        sim.ztunnel.ip,
        '--enroll',
        sim.pods[0]!.ip,
      ]).catch((e: unknown) => e)) as CommandError;
      expect(err).toBeInstanceOf(CommandError);
      expect(err.exitCode).not.toBe(0);
      expect(err.stderr).toContain(`${dir} is not a bpffs mount`);
      expect(err.stderr).toContain(`mount -t bpf bpf ${dir}`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  async function snapshot() {
    const links = enrolled.map((p) => p.hostVeth);
    const tc = (
      await Promise.all(
        links.map(
          async (l) =>
            `${l}: ${await run(['tc', '-n', sim.nodeNs, 'qdisc', 'show', 'dev', l])}${await run(['tc', '-n', sim.nodeNs, 'filter', 'show', 'dev', l, 'ingress'])}`,
        ),
      )
    ).join('\n');
    const ztTc = await run(['tc', '-n', sim.ztunnel.ns, 'qdisc', 'show', 'dev', 'eth0']);
    return {
      tc: tc + ztTc,
      links: (await run(['ip', '-n', sim.nodeNs, '-d', 'link', 'show'])).replace(/\s+/g, ' '),
      ipt: await run(['ip', 'netns', 'exec', sim.nodeNs, 'iptables-save']).then(stripComments),
      ztIpt:
        (await run(['ip', 'netns', 'exec', sim.ztunnel.ns, 'iptables-save']).then(stripComments)) +
        (await run(['ip', 'netns', 'exec', sim.ztunnel.ns, 'ip6tables-save']).then(stripComments)),
      ztRules:
        (await run(['ip', '-n', sim.ztunnel.ns, 'rule', 'show'])) +
        (await run(['ip', '-n', sim.ztunnel.ns, '-6', 'rule', 'show'])) +
        (await run(['ip', '-n', sim.ztunnel.ns, 'route', 'show', 'table', 'all'])),
      net: await run(['ip', 'netns', 'exec', sim.nodeNs, 'bpftool', 'net', 'show']),
    };
  }
});

/**
 * iptables-save without its timestamps, and without tables that hold no rule: with the
 * nft backend a table, once used, stays listed with its built-in chains (all ACCEPT),
 * which filters nothing.
 */
function stripComments(text: string): string {
  const tables = text
    .split('\n')
    .filter((l) => !l.startsWith('#'))
    .join('\n')
    .split(/^(?=\*)/m);
  return tables.filter((t) => !/^\*/.test(t) || /^-A /m.test(t) || /^:\S+ (?!ACCEPT)/m.test(t)).join('');
}

async function waitUntil(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await sleep(200);
  }
  throw new Error(`not within ${timeoutMs} ms: ${what}`);
}
