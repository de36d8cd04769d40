/**
 * iptables mode end to end on a simulated node, with real packets: an enrolled pod's TCP
 * connection reaches the ztunnel stand-in (through the VXLAN tunnel here, this kernel has
 * no Geneve) with its original destination and never the outside; an unenrolled pod goes
 * direct; with no ztunnel the enrolled pod fails closed; uninstall, and a restart in the
 * other mode, leave the node and ztunnel's netns as they were. Oracles: the servers'
 * records and snapshots of iptables-save, ip rule/route/link and ipset, taken by tools.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { startController, runInNode } from '../../harness/sim/controller.js';
import { createSimNode, newPrefix, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor, runStaticScenario } from '../../harness/sim/scenario.js';
import { emptyTables } from '../../src/capture/iptables/restore.js';
import { kernelDescribe } from '../support/gate.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isRoot } from '../support/gate.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** What must be identical before install and after uninstall, per netns. */
async function snapshot(ns: string): Promise<Record<string, string>> {
  const exec = (argv: string[]) => run(['ip', 'netns', 'exec', ns, ...argv]);
  const save = (text: string) =>
    text
      .split('\n')
      .filter((l) => !l.startsWith('#'))
      .map((l) => l.replace(/\[\d+:\d+\]$/, '[0:0]'))
      .join('\n');
  return {
    iptables: save(await exec(['iptables-save'])),
    ip6tables: save(await exec(['ip6tables-save'])),
    rule4: await run(['ip', '-n', ns, '-4', 'rule', 'show']),
    rule6: await run(['ip', '-n', ns, '-6', 'rule', 'show']),
    route4: await run(['ip', '-n', ns, '-4', 'route', 'show', 'table', 'all']),
    // Link-local addresses come up on their own (DAD) some time after the netns is built.
    route6: (await run(['ip', '-n', ns, '-6', 'route', 'show', 'table', 'all']))
      .split('\n')
      .filter((l) => !/^(local|anycast) fe80:/.test(l))
      .join('\n'),
    links: await run(['ip', '-n', ns, '-d', 'link', 'show']),
    ipset: await exec(['ipset', 'list']),
  };
}

async function snapshots(sim: SimNode) {
  return { node: await snapshot(sim.nodeNs), ztunnel: await snapshot(sim.ztunnel.ns) };
}

/**
 * Whether this kernel creates Geneve links, tried in a throwaway netns of our own: the
 * controller's `auto` tunnel picks Geneve there and VXLAN here (no CONFIG_GENEVE).
 */
function geneveWorks(): { ok: boolean; reason: string } {
  if (!isRoot) return { ok: false, reason: 'not root' };
  const ns = `${newPrefix()}-geneve`;
  try {
    execFileSync('ip', ['netns', 'add', ns]);
    execFileSync('ip', ['-n', ns, 'link', 'add', 'g0', 'type', 'geneve', 'id', '1', 'remote', '127.0.0.1'], { stdio: 'pipe' });
    return { ok: true, reason: '' };
  } catch (err) {
    return { ok: false, reason: `\`ip link add ... type geneve\` fails on this kernel (${String((err as { stderr?: Buffer }).stderr ?? err).trim()})` };
  } finally {
    execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore' });
  }
}
const GENEVE = geneveWorks();
const TUNNEL = GENEVE.ok ? { kind: 'geneve', port: 6081 } : { kind: 'vxlan', port: 4789 };
if (!GENEVE.ok) console.warn(`skipping the Geneve end-to-end test: ${GENEVE.reason}; Geneve is covered by golden files`);

/** A folder of links to every command on PATH but `tool`: a node where `tool` is not installed. */
function pathWithout(tool: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'ar-path-'));
  for (const d of (process.env.PATH ?? '').split(':')) {
    let entries: string[];
    try {
      entries = readdirSync(d);
    } catch {
      continue;
    }
    for (const e of entries) {
      if (e === tool) continue;
      try {
        symlinkSync(join(d, e), join(dir, e));
      } catch {
        // an earlier PATH entry already provides it
      }
    }
  }
  return dir;
}

/** An iptables-save text without its tables that hold nothing (built-in chains, ACCEPT). */
function dropEmptyTables(save: string): string {
  const empty = new Set(emptyTables(save, ['mangle', 'nat', 'filter', 'raw']));
  return save
    .split(/(?=^\*)/m)
    .filter((block) => !empty.has(block.split('\n')[0]!.slice(1)))
    .join('');
}

/** Lines of a snapshot that only iptables mode writes: chains, proto 211, tunnels, sets. */
function iptablesModeTraces(s: Awaited<ReturnType<typeof snapshots>>): string[] {
  return (['node', 'ztunnel'] as const).flatMap((side) =>
    Object.values(s[side])
      .flatMap((text) => text.split('\n'))
      .filter((l) => /ztunnel-(PREROUTING|FORWARD|INPUT|OUTPUT|POSTROUTING)|proto 211|istio(in|out)|ztunnel-pods-ips/.test(l))
      .map((l) => `${side}: ${l}`),
  );
}

kernelDescribe('iptables mode end to end', 'builds network namespaces, iptables and tunnels', () => {
  let sim: SimNode;
  let pristine: Awaited<ReturnType<typeof snapshots>>;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3, prefix: newPrefix() });
    pristine = await snapshots(sim);
  });

  afterAll(async () => {
    await sim?.teardown();
  });

  it('enrolled pod reaches only ztunnel through the tunnel; unenrolled goes direct; uninstall leaves no trace', async () => {
    const oracle: Record<string, string> = {};
    const result = await runStaticScenario(sim, {
      enrolled: [0, 2],
      connections: 4,
      pinRoot: pinRootFor(sim),
      mode: 'iptables',
      beforeUninstall: async () => {
        oracle.ipset = await run(['ip', 'netns', 'exec', sim.nodeNs, 'ipset', 'save', 'ztunnel-pods-ips']);
        oracle.ifset = await run(['ip', 'netns', 'exec', sim.nodeNs, 'ipset', 'save', 'ztunnel-pods-ifaces']);
        oracle.links = await run(['ip', '-n', sim.nodeNs, '-d', 'link', 'show', 'istioout']);
        oracle.ztLinks = await run(['ip', '-n', sim.ztunnel.ns, '-d', 'link', 'show', 'pistioout']);
        oracle.mangle = await run(['ip', 'netns', 'exec', sim.nodeNs, 'iptables-save', '-t', 'mangle']);
        oracle.ztMangle = await run(['ip', 'netns', 'exec', sim.ztunnel.ns, 'iptables-save', '-t', 'mangle']);
        oracle.rules = await run(['ip', '-n', sim.nodeNs, 'rule', 'show']);
        oracle.routeToZt = await run(['ip', '-n', sim.nodeNs, '-j', 'route', 'get', sim.ztunnel.ip]);
        oracle.table101 = await run(['ip', '-n', sim.nodeNs, 'route', 'show', 'table', '101']);
      },
    });
    const [pod0, pod1, pod2] = result.reports;
    // ztunnel accepted each enrolled connection with its original destination; 0 bypasses.
    expect(pod0!.viaZtunnel).toEqual(Array(4).fill(`${sim.outside.ip}:${sim.outside.port}`));
    expect(pod2!.viaZtunnel).toEqual(Array(4).fill(`${sim.outside.ip}:${sim.outside.port}`));
    expect(pod0!.direct + pod2!.direct).toBe(0);
    expect(pod1).toMatchObject({ ok: 4, direct: 4, viaZtunnel: [] });

    // The kernel held what the mode says: the set, the tunnel (VXLAN here), marks, tables.
    expect(
      oracle
        .ipset!.split('\n')
        .filter((l) => l.startsWith('add'))
        .sort(),
    ).toEqual([`add ztunnel-pods-ips ${sim.pods[0]!.ip}`, `add ztunnel-pods-ips ${sim.pods[2]!.ip}`]);
    // Each enrolled pod is bound to its own veth (anti-spoofing), and only there.
    expect(
      oracle
        .ifset!.split('\n')
        .filter((l) => l.startsWith('add'))
        .sort(),
    ).toEqual([`add ztunnel-pods-ifaces ${sim.pods[0]!.ip},${sim.pods[0]!.hostVeth}`, `add ztunnel-pods-ifaces ${sim.pods[2]!.ip},${sim.pods[2]!.hostVeth}`]);
    expect(oracle.mangle).toContain(`-A ztunnel-PREROUTING -i ${sim.pods[0]!.hostVeth} -m set ! --match-set ztunnel-pods-ifaces src,src -j DROP`);
    expect(oracle.links).toMatch(new RegExp(`${TUNNEL.kind} id 1001 remote 198\\.18\\.0\\.2 .*dstport ${TUNNEL.port}`));
    expect(oracle.links).toContain('alias ambient-redirect ztunnel-netns=' + sim.ztunnel.ns);
    // ztunnel's end points back at the node's address toward ztunnel.
    const [toZt] = JSON.parse(oracle.routeToZt!) as { prefsrc: string }[];
    expect(oracle.ztLinks).toContain(`${TUNNEL.kind} id 1001 remote ${toZt!.prefsrc} `);
    expect(oracle.mangle).toContain('-A ztunnel-PREROUTING -p tcp -m set --match-set ztunnel-pods-ips src -j MARK --set-xmark 0x100/0x100');
    expect(oracle.ztMangle).toContain('-A ztunnel-PREROUTING -i pistioout -p tcp -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff');
    expect(oracle.rules).toMatch(/101:\s+from all fwmark 0x100\/0x100 lookup 101 proto 211/);
    expect(oracle.table101).toMatch(/default via 192\.168\.127\.2 dev istioout/);

    expect(result.uninstall).toContain('deleted istioout');
    expect(await snapshots(sim)).toEqual(pristine);
  });

  it.skipIf(!GENEVE.ok)(`captures through a Geneve tunnel where the kernel has Geneve${GENEVE.ok ? '' : ` (skipped: ${GENEVE.reason})`}`, async () => {
    let link = '';
    const result = await runStaticScenario(sim, {
      enrolled: [1],
      connections: 3,
      pinRoot: pinRootFor(sim),
      mode: 'iptables',
      beforeUninstall: async () => {
        link = await run(['ip', '-n', sim.nodeNs, '-d', 'link', 'show', 'istioout']);
      },
    });
    expect(link).toMatch(/geneve id 1001 remote 198\.18\.0\.2 /);
    expect(result.reports[1]!.viaZtunnel).toEqual(Array(3).fill(`${sim.outside.ip}:${sim.outside.port}`));
    expect(result.reports[1]!.direct).toBe(0);
    expect(await snapshots(sim)).toEqual(pristine);
  });

  it('fails closed when ztunnel is absent: the enrolled pod reaches no one', async () => {
    const pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    const outside = await sim.startOutside();
    // An address nothing routes to: the controller finds no ztunnel.
    const controller = startController(sim.nodeNs, ['--pin-root', pinRoot, '--ztunnel-ip', '198.18.0.250', '--enroll', sim.pods[0]!.ip, '--mode', 'iptables']);
    try {
      await controller.waitFor('programmed');
      const [enrolled, other] = await Promise.all([sim.connect(sim.pods[0]!, sim.outside, 2, 1_000), sim.connect(sim.pods[1]!, sim.outside, 2)]);
      expect(enrolled.every((r) => !r.ok)).toBe(true);
      expect(other.every((r) => r.ok)).toBe(true);
      await outside.waitForAccepted(2);
      expect(outside.accepted.map((a) => a.src.split(':')[0])).toEqual([sim.pods[1]!.ip, sim.pods[1]!.ip]);
      expect(await run(['ip', '-n', sim.nodeNs, 'route', 'show', 'table', '101'])).toMatch(/unreachable default/);
    } finally {
      expect(await controller.stop('SIGTERM')).toBe(0);
      await outside.stop();
      await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
      rmSync(pinRoot, { recursive: true, force: true });
    }
    expect(await snapshots(sim)).toEqual(pristine);
  });

  it('uninstall without the nft command: exit 0, nothing of ours left, one line for the skipped step', async () => {
    const pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    const bin = pathWithout('nft');
    const zt = await sim.startZtunnel();
    try {
      const controller = startController(sim.nodeNs, [
        '--pin-root',
        pinRoot,
        '--ztunnel-ip',
        sim.ztunnel.ip,
        '--enroll',
        sim.pods[0]!.ip,
        '--mode',
        'iptables',
      ]);
      await controller.waitFor('programmed', 60_000);
      expect(await controller.stop('SIGTERM')).toBe(0);
      expect(iptablesModeTraces(await snapshots(sim)).length).toBeGreaterThan(0);
      // The uninstall command as a node without nftables runs it: nft is not on PATH.
      // An empty --host-proc: the machine's /proc would take the in-pod rules out of other runs' pods.
      const noProc = mkdtempSync(join(tmpdir(), 'ar-noproc-'));
      const r = spawnSync(
        'nsenter',
        [`--net=/var/run/netns/${sim.nodeNs}`, process.execPath, 'dist/src/cli/main.js', 'uninstall', '--pin-root', pinRoot, '--host-proc', noProc],
        {
          encoding: 'utf8',
          env: { ...process.env, PATH: bin },
        },
      );
      rmSync(noProc, { recursive: true, force: true });
      expect(r.status, r.stderr).toBe(0);
      expect(r.stdout).toContain('deleted istioout');
      const logged = r.stderr
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { level: string; msg: string; step?: string; reason?: string });
      expect(logged).toEqual([
        expect.objectContaining({
          level: 'info',
          msg: 'uninstall: skipped a step',
          step: 'delete the empty nft tables we created',
          reason: expect.stringContaining('nft is not installed'),
        }),
      ]);
      // Nothing of ours is left; the empty tables iptables-restore created filter nothing.
      const after = await snapshots(sim);
      for (const side of ['node', 'ztunnel'] as const) for (const k of ['iptables', 'ip6tables'] as const) after[side][k] = dropEmptyTables(after[side][k]);
      expect(iptablesModeTraces(after)).toEqual([]);
      expect(after).toEqual(pristine);
    } finally {
      await zt.stop();
      rmSync(bin, { recursive: true, force: true });
      await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]).catch(() => '');
      rmSync(pinRoot, { recursive: true, force: true });
    }
  });

  for (const [from, to] of [
    ['iptables', 'ebpf'],
    ['ebpf', 'iptables'],
  ] as const) {
    it(`a restart from ${from} mode to ${to} mode leaves no state of the first`, async () => {
      const pinRoot = pinRootFor(sim);
      mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
      const args = ['--pin-root', pinRoot, '--ztunnel-ip', sim.ztunnel.ip, '--enroll', sim.pods[0]!.ip];
      const zt = await sim.startZtunnel();
      try {
        const first = startController(sim.nodeNs, [...args, '--mode', from]);
        await first.waitFor('programmed');
        expect(await first.stop('SIGTERM')).toBe(0);
        const second = startController(sim.nodeNs, [...args, '--mode', to]);
        try {
          await second.waitFor('programmed');
          await second.waitFor('removed the state of the other capture mode');
          const now = await snapshots(sim);
          if (to === 'iptables') expect(iptablesModeTraces(now).length).toBeGreaterThan(0);
          const tc = await run(['ip', 'netns', 'exec', sim.nodeNs, 'tc', 'filter', 'show', 'dev', sim.pods[0]!.hostVeth, 'ingress']);
          if (to === 'ebpf') {
            // Nothing of iptables mode is left; ebpf mode's own state is its business.
            expect(iptablesModeTraces(now)).toEqual([]);
            expect(iptablesModeTraces(pristine)).toEqual([]);
            expect(tc).toContain('bpf');
          } else {
            expect(tc).not.toContain('bpf');
            expect(await run(['ls', pinRoot])).not.toContain('ambient-redirect');
          }
          // The new mode captures: the enrolled pod's connection reaches ztunnel.
          const [r] = await sim.connect(sim.pods[0]!, sim.outside, 1);
          expect(r).toEqual({ ok: true, reply: 'ztunnel' });
        } finally {
          expect(await second.stop('SIGTERM')).toBe(0);
        }
      } finally {
        await zt.stop();
        await runInNode(sim.nodeNs, ['uninstall', '--pin-root', pinRoot]);
        rmSync(pinRoot, { recursive: true, force: true });
      }
      const after = await snapshots(sim);
      if (to === 'ebpf') {
        // ebpf mode adopted the mangle tables iptables mode had created in ztunnel's netns
        // and its uninstall leaves them empty (its owner is told); empty is all we forgive.
        for (const k of ['iptables', 'ip6tables'] as const) after.ztunnel[k] = dropEmptyTables(after.ztunnel[k]);
      }
      expect(after).toEqual(pristine);
    });
  }
});
