/**
 * `run --ztunnel-mode inpod` on the simulated node: the agent is a real process (Kubernetes
 * membership from the API double), the in-pod ztunnel stand-in connects to its ZDS socket,
 * and the pods are network namespaces of the run, each with a "pause" process in it as a
 * real pod has. Every check of ztunnel's sockets is made from inside each pod's netns
 * with `ss` (the kernel's word, not the stand-in's or the agent's).
 *
 * The agent finds pods that exist before it through the host's processes. This machine is
 * shared and other runs use the same pod addresses, so the agent is given a /proc of this
 * run's processes (--host-proc: a folder of links to /proc/<pid> of the pause processes):
 * it reads the kernel's own files through them (ns/net, net/fib_trie, net/if_inet6), and
 * cannot meet another run's netns holding the same address.
 */
import { existsSync, symlinkSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { netnsSnapshot } from '../support/snapshot.js';
import { SimCluster } from '../../harness/sim/cluster.js';
import { runInNode, type ControllerProcess } from '../../harness/sim/controller.js';
import type { SimKubeApi } from '../../harness/sim/kube-sim.js';
import { OUTSIDE_HOST_IP } from '../../harness/sim/names.js';
import type { SimNode } from '../../harness/sim/node.js';
import { INPOD_PORTS, ZtunnelInpod } from '../../harness/sim/ztunnel-inpod.js';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { closeFd, recvDatagram, seqpacketConnect, sendDatagram } from '../../src/host/libc.js';
import { encodeHello, encodeResponse } from '../../src/zds/codec.js';
import { kernelDescribe } from '../support/gate.js';
import { sleep, until } from '../support/wait.js';

const NODE = 'sim-node';
const FULL = INPOD_PORTS.flatMap((p) => [`4/${p}`, `6/${p}`]).sort();
const HEALTH = '127.0.0.1:15934';
/** Seconds within which a pod's change shows in its netns, by capture mode (the test says why). */
const reflectS = (mode: string): number => (mode === 'ebpf' ? 1 : 2);

/** ztunnel's listeners in a netns (fwmark 0x539), as `ss` lists them from inside it; one entry per socket. */
async function marked(ns: string): Promise<string[]> {
  const out = await systemRunner.run(['ip', 'netns', 'exec', ns, 'ss', '-H', '-tlne']);
  return out
    .split('\n')
    .filter((l) => /fwmark:0x539\b/.test(l))
    .map((l) => {
      const local = l.trim().split(/\s+/)[3]!;
      const i = local.lastIndexOf(':');
      const addr = local.slice(0, i);
      return `${addr.includes('[') || addr === '*' ? '6' : '4'}/${local.slice(i + 1)}`;
    })
    .sort();
}

for (const mode of ['ebpf', 'iptables'] as const)
  kernelDescribe(`run --ztunnel-mode inpod --mode ${mode} on the simulated node`, 'builds network namespaces', () => {
    let sim: SimNode;
    let kube: SimKubeApi;
    let controller: ControllerProcess | undefined;
    let pinRoot: string;
    let dir: string;
    let procDir: string;
    let args: string[];
    const pauses: ChildProcess[] = [];
    const standIns: ZtunnelInpod[] = [];
    /** Connections the stand-ins accepted (inside a pod's netns), as they reported them. */
    const accepted: { uid: string; port: number; origDst: string }[] = [];
    /** Pod name -> sim pod index. */
    const idx: Record<string, number> = { a: 0, b: 1, optout: 2, plain: 3, late: 4, upgrade: 5 };
    const nsOf = (name: string) => sim.pods[idx[name]!]!.ns;
    const beforeAgent = new Map<string, Record<string, string>>();

    const startStandIn = () => {
      const z = new ZtunnelInpod({
        socket: join(dir, 'ztunnel', 'ztunnel.sock'),
        onEvent: (e) => {
          if (e.event === 'accepted') accepted.push(e);
        },
      });
      standIns.push(z);
      return z;
    };

    /** Every pod's netns holds ztunnel's listeners `times` times if enrolled, none otherwise. */
    async function expectExactly(enrolled: string[], times = 1): Promise<void> {
      for (const name of Object.keys(idx)) {
        const want = enrolled.includes(name)
          ? Array.from({ length: times }, () => FULL)
              .flat()
              .sort()
          : [];
        expect(await marked(nsOf(name)), name).toEqual(want);
      }
    }

    async function untilExactly(enrolled: string[], times = 1, ms = 10_000): Promise<void> {
      await until(
        () => `exactly ${enrolled.join(',')} x${times}`,
        async () => {
          for (const name of Object.keys(idx)) {
            const n = enrolled.includes(name) ? FULL.length * times : 0;
            if ((await marked(nsOf(name))).length !== n) return false;
          }
          return true;
        },
        ms,
      );
      await expectExactly(enrolled, times);
    }

    /** How long the change takes to show in the pod's netns (listeners present or not). */
    async function timeUntil(name: string, present: boolean, change: () => void): Promise<number> {
      const t0 = performance.now();
      change();
      await until(`${name} ${present ? 'served' : 'released'}`, async () => (await marked(nsOf(name))).length === (present ? FULL.length : 0), 5_000, 10);
      return performance.now() - t0;
    }

    /** GET on the agent's health address, from the node's netns (where it listens). */
    const httpGet = (path: string) =>
      systemRunner.run([
        'nsenter',
        `--net=/var/run/netns/${sim.nodeNs}`,
        process.execPath,
        '-e',
        'fetch(process.argv[1]).then((r) => r.text()).then((t) => process.stdout.write(t))',
        `http://${HEALTH}${path}`,
      ]);

    const createPod = (name: string, labels: Record<string, string> = {}) =>
      kube.api.createPod({
        name,
        namespace: name === 'plain' ? 'plain' : 'shop',
        nodeName: NODE,
        ip: sim.pods[idx[name]!]!.ip,
        hostIp: OUTSIDE_HOST_IP,
        labels,
        serviceAccount: 'default',
      });

    let cluster: SimCluster | undefined;

    beforeAll(async () => {
      cluster = await SimCluster.create({ pods: Object.keys(idx).length, nodeName: NODE, ztunnel: 'inpod', scratch: 'ar-zds-agent-', hostProc: true });
      ({ sim, kube, pinRoot, dir } = cluster);
      procDir = cluster.hostProc!;
      try {
        // A pause process in each pod's netns, as the runtime keeps one; the agent's /proc holds these.
        for (const p of sim.pods) {
          const child = startProcess(['ip', 'netns', 'exec', p.ns, 'sleep', '3600']);
          pauses.push(child);
          symlinkSync(`/proc/${child.pid}`, join(procDir, String(child.pid)));
        }
        createPod('a');
        createPod('b');
        createPod('optout', { 'istio.io/dataplane-mode': 'none' });
        createPod('plain');
        args = [
          '--ztunnel-mode',
          'inpod',
          '--mode',
          mode,
          '--zds-socket',
          join(dir, 'ztunnel', 'ztunnel.sock'),
          '--resync-interval',
          '1',
          '--health-address',
          HEALTH,
          '--backoff-initial',
          '0.2',
          '--backoff-max',
          '2',
        ];
        // Every netns as it was before the agent: `uninstall` must leave exactly this.
        for (const p of sim.pods) beforeAgent.set(p.ns, await netnsSnapshot(p.ns, ['eth0']));
        beforeAgent.set(
          sim.nodeNs,
          await netnsSnapshot(
            sim.nodeNs,
            sim.pods.map((p) => p.hostVeth),
          ),
        );
        controller = cluster.startAgent(args);
        await controller.waitFor('zds listening');
        await controller.waitFor('programmed');
      } catch (err) {
        await teardown();
        throw err;
      }
    });

    async function teardown(): Promise<void> {
      for (const z of standIns) z.close();
      for (const p of pauses) p.kill('SIGKILL');
      await cluster?.teardown();
      cluster = undefined;
      controller = undefined;
    }
    afterAll(teardown);

    it('never looks for a ztunnel netns nor loads the node-level programs; the in-pod capture is ready', () => {
      const msgs = controller!.events.map((e) => e.msg);
      expect(msgs).toContain('zds listening');
      expect(msgs.some((m) => /ztunnel not found|no Ready ztunnel|attached/i.test(m))).toBe(false);
      // The node topology's maps are never pinned; the in-pod capture's are.
      expect(existsSync(join(pinRoot, 'ambient-redirect', 'v1', 'pods'))).toBe(false);
      expect(existsSync(join(pinRoot, 'ambient-redirect', 'v1', 'inpod'))).toBe(mode === 'ebpf');
      expect(controller!.events.find((e) => e.msg === 'in-pod capture ready')).toMatchObject({ capture: mode });
      expect(controller!.events.find((e) => e.msg === 'starting')).toMatchObject({ ztunnelMode: 'inpod' });
    });

    it('no ztunnel yet: enrolled pods stay enrolled, and /readyz says why', async () => {
      const res = await httpGet('/readyz');
      expect(res).toMatch(/no ztunnel connected to the ZDS socket/);
    });

    it('a ztunnel connects: the existing enrolled pods (found through their processes) get its listeners, the opted-out and plain ones none', async () => {
      const z = startStandIn();
      await until('the snapshot', () => z.ready);
      await untilExactly(['a', 'b']);
      const status = await runInNode(sim.nodeNs, ['status', '--ztunnel-mode', 'inpod', '--health-address', HEALTH]);
      expect(status).toMatch(/ztunnels connected: 1/);
      expect(status).toMatch(new RegExp(`^in-pod capture: ${mode}$`, 'm'));
      expect(status).toMatch(/shop\/a\s+198\.18\.0\.10\s+\d+:\d+\s+installed\s+yes/); // its netns found, captured, acked
      expect(status).toMatch(/^1\s+ready\s+2$/m); // one connection, sent both pods
    });

    it('captured: an enrolled pod’s outbound TCP reaches ztunnel’s 15001 inside its own netns with its original destination; a plain pod’s goes direct', async () => {
      const outside = await sim.startOutside();
      const z = standIns.at(-1)!;
      accepted.length = 0;
      const [captured] = await sim.connect(sim.pods[idx.a!]!, sim.outside, 1);
      expect(captured).toMatchObject({ ok: true, reply: 'ztunnel' });
      await until('the stand-in’s record', () => accepted.length > 0);
      const uidA = z.held().find((h) => h.info.name === 'a')!.uid;
      expect(accepted[0]).toMatchObject({ uid: uidA, port: 15001, origDst: `${sim.outside.ip}:${sim.outside.port}` });
      expect(outside.accepted).toHaveLength(0);
      const [direct] = await sim.connect(sim.pods[idx.plain!]!, sim.outside, 1);
      expect(direct).toMatchObject({ ok: true, reply: 'outside' });
      await outside.waitForAccepted(1);
      expect(accepted).toHaveLength(1);
    });

    it('drift: the capture taken out of a pod’s netns behind the agent’s back is back within 10 s, and captures again', async () => {
      const ns = nsOf('a');
      // What an operator's (or another agent's) cleanup would do: our filters, or our chain's rules.
      const breakIt =
        mode === 'ebpf'
          ? ['ip', 'netns', 'exec', ns, 'tc', 'filter', 'del', 'dev', 'eth0', 'egress']
          : ['ip', 'netns', 'exec', ns, 'iptables', '-t', 'nat', '-F', 'ISTIO_OUTPUT'];
      const repairs = () => controller!.events.filter((e) => e.msg === 'inpod: capture drifted; installing it again').length;
      const before = repairs();
      await systemRunner.run(breakIt);
      const t0 = performance.now();
      await until('the agent to notice the drift', () => repairs() > before, 10_000);
      // Repaired = the pod's next connection is captured again (the reinstall follows the log line).
      let captured = false;
      while (!captured && performance.now() - t0 < 10_000) {
        accepted.length = 0;
        const [r] = await sim.connect(sim.pods[idx.a!]!, sim.outside, 1);
        captured = r?.reply === 'ztunnel';
      }
      const ms = performance.now() - t0;
      console.log(`zds agent (${mode}): drift repaired in ${ms.toFixed(0)} ms`);
      expect(captured).toBe(true);
      expect(ms).toBeLessThan(10_000);
      await until('the stand-in’s record', () => accepted.length > 0);
      expect(accepted[0]).toMatchObject({ port: 15001, origDst: `${sim.outside.ip}:${sim.outside.port}` });
    });

    it(`enroll, opt-out, opt back in and delete are each reflected within ${reflectS(mode)} s`, async () => {
      const times: Record<string, number> = {};
      times.enroll = await timeUntil('late', true, () => createPod('late'));
      times.optOut = await timeUntil('b', false, () =>
        kube.api.updatePod('shop', 'b', (o) => {
          o.metadata.labels['istio.io/dataplane-mode'] = 'none';
        }),
      );
      times.optIn = await timeUntil('optout', true, () =>
        kube.api.updatePod('shop', 'optout', (o) => {
          delete o.metadata.labels['istio.io/dataplane-mode'];
        }),
      );
      times.delete = await timeUntil('late', false, () => kube.api.deletePod('shop', 'late'));
      console.log(
        `zds agent: enroll ${times.enroll!.toFixed(0)} ms, opt-out ${times.optOut!.toFixed(0)} ms, opt-in ${times.optIn!.toFixed(0)} ms, delete ${times.delete!.toFixed(0)} ms`,
      );
      // The watch-to-ZDS path is the same in both modes, and the eBPF run holds it to 1 s. The
      // iptables run adds the pod's iptables-restore and routing commands (a few processes
      // through nsenter): 0.5-1.0 s on a VM whose system calls cost ~1 µs while the rest of
      // the suite runs beside it, so it is held to 2 s (reflectS).
      for (const [what, ms] of Object.entries(times)) expect(ms, what).toBeLessThan(reflectS(mode) * 1_000);
      await expectExactly(['a', 'optout']);
    });

    it('agent restart: ztunnel reconnects, gets the full snapshot, and no pod loses its sockets', async () => {
      const inodes = async () => (await systemRunner.run(['ip', 'netns', 'exec', nsOf('a'), 'ss', '-H', '-tlne'])).match(/ino:\d+/g)?.sort();
      const before = await inodes();
      const snapshots = standIns.at(-1)!.stats.snapshots;
      await controller!.stop('SIGTERM');
      controller = cluster!.startAgent(args);
      await controller.waitFor('programmed');
      await until('the snapshot after the agent restart', () => standIns.at(-1)!.stats.snapshots > snapshots);
      await expectExactly(['a', 'optout']);
      expect(await inodes()).toEqual(before);
    });

    it('ztunnel restart: its listeners go with it, and the new one gets the snapshot', async () => {
      standIns.at(-1)!.close();
      await untilExactly([]);
      const z = startStandIn();
      await until('the snapshot', () => z.ready);
      await untilExactly(['a', 'optout']);
    });

    it('two ztunnels (upgrade): a new pod goes to the newest only, a del reaches both; the old one gone, exactly the enrolled set', async () => {
      const old = standIns.at(-1)!;
      const fresh = startStandIn();
      await until('the second snapshot', () => fresh.ready);
      // SO_REUSEPORT: both ztunnels listen in the enrolled pods' netns.
      await untilExactly(['a', 'optout'], 2);
      createPod('upgrade');
      await until('upgrade served', async () => (await marked(nsOf('upgrade'))).length === FULL.length);
      expect(fresh.held().map((h) => h.info.name)).toContain('upgrade');
      expect(old.held().map((h) => h.info.name)).not.toContain('upgrade');
      kube.api.deletePod('shop', 'optout');
      await until('optout released by both', async () => (await marked(nsOf('optout'))).length === 0);
      old.close();
      await untilExactly(['a', 'upgrade']);
    });

    it('metrics: connections, requests by type, snapshot durations', async () => {
      const text = await httpGet('/metrics');
      expect(text).toMatch(/ambient_redirect_zds_connections\{phase="ready"\} 1/);
      expect(text).toMatch(/ambient_redirect_zds_requests_total\{type="add"\} [1-9]/);
      expect(text).toMatch(/ambient_redirect_zds_requests_total\{type="del"\} [1-9]/);
      expect(text).toMatch(/ambient_redirect_zds_snapshot_duration_seconds_count [1-9]/);
      expect(text).toMatch(/ambient_redirect_ztunnel_mode\{mode="inpod"\} 1/);
    });

    it('bad peers on the running agent’s socket: each gets a warn line and a closed connection; nothing enrolled is lost', async () => {
      const sockPath = join(dir, 'ztunnel', 'ztunnel.sock');
      const resident = standIns.at(-1)!;
      const sent = resident.stats.requests;
      /** Sends, then waits for the agent to close the connection (zero bytes or an error). */
      const feed = async (send: (fd: number) => Promise<void> | void, ms = 8_000) => {
        const fd = seqpacketConnect(sockPath);
        try {
          await send(fd);
          const end = Date.now() + ms;
          while (Date.now() < end) {
            let got: ReturnType<typeof recvDatagram>;
            try {
              got = recvDatagram(fd, 4096);
            } catch {
              return 'closed';
            }
            if (got.kind === 'zero') return 'closed';
            for (const f of got.kind === 'datagram' ? got.fds : []) closeFd(f);
            if (got.kind === 'datagram') sendDatagram(fd, encodeResponse({ error: 'refused by a bad peer' }));
            await sleep(10);
          }
          return 'open';
        } finally {
          closeFd(fd);
        }
      };
      const table: [string, (fd: number) => void, string][] = [
        ['garbage', (fd) => void sendDatagram(fd, Buffer.from('ffffffff', 'hex')), 'zds malformed datagram'],
        ['truncated hello', (fd) => void sendDatagram(fd, Buffer.from('08', 'hex')), 'zds malformed datagram'],
        ['oversized datagram', (fd) => void sendDatagram(fd, Buffer.alloc(2000, 8)), 'zds malformed datagram'],
        ['wrong version', (fd) => void sendDatagram(fd, encodeHello({ version: 2 })), 'zds unsupported version'],
        ['ack with an error', (fd) => void sendDatagram(fd, encodeHello({ version: 1 })), 'zds ack with error'],
        ['silent peer', () => {}, 'zds no hello in time'],
      ];
      for (const [name, send, msg] of table) {
        const seen = controller!.events.length;
        expect(await feed(send), name).toBe('closed');
        await controller!.waitForAfter(seen, msg, 2_000);
      }
      // 100 connections at once: the ones past the limit are refused, each with a line.
      const seen = controller!.events.length;
      const flood = Array.from({ length: 100 }, () => seqpacketConnect(sockPath));
      await controller!.waitForAfter(seen, 'zds connection refused: too many connections', 5_000);
      flood.forEach((fd) => closeFd(fd));
      // The agent kept its state: the resident ztunnel was sent nothing new and still serves
      // every enrolled pod, and a new ztunnel gets them all in its snapshot.
      expect(resident.connected()).toBe(true);
      expect(resident.stats.requests).toBe(sent);
      await expectExactly(['a', 'upgrade']);
      const fresh = startStandIn();
      await until('a new ztunnel’s snapshot', () => fresh.ready);
      expect(
        fresh
          .held()
          .map((h) => h.info.name)
          .sort(),
      ).toEqual(['a', 'upgrade']);
      fresh.close();
      await untilExactly(['a', 'upgrade']);
    }, 60_000);

    it('a pod whose netns is gone (its processes ended) is released', async () => {
      const i = idx.upgrade!;
      const pause = pauses[i]!;
      pause.kill('SIGKILL');
      unlinkSync(join(procDir, String(pause.pid)));
      // The netns itself stays (named), so ztunnel's listeners are what keeps it alive: the agent must del.
      await until('upgrade released', async () => (await marked(nsOf('upgrade'))).length === 0, 5_000);
      await expectExactly(['a']);
    });

    it('uninstall (the command, the agent stopped): every pod netns and the node as before the agent started', async () => {
      for (const z of standIns) z.close();
      await controller!.stop('SIGTERM');
      controller = undefined;
      await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot, '--host-proc', procDir]);
      for (const p of sim.pods) expect(await netnsSnapshot(p.ns, ['eth0']), p.name).toEqual(beforeAgent.get(p.ns));
      expect(
        await netnsSnapshot(
          sim.nodeNs,
          sim.pods.map((p) => p.hostVeth),
        ),
      ).toEqual(beforeAgent.get(sim.nodeNs));
      expect(existsSync(join(pinRoot, 'ambient-redirect', 'v1', 'inpod'))).toBe(false);
    }, 60_000);
  });
