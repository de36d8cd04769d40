/**
 * The walking skeleton's promise, with real packets: an enrolled pod's TCP connection to
 * the outside is accepted by the ztunnel stand-in with its original destination, the
 * outside server never sees the pod's IP, an unenrolled pod goes direct, and nothing of
 * the run is left behind. Oracles: the servers' own records, bpftool and tc.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { createSimNode, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor, runStaticScenario, type ScenarioResult } from '../../harness/sim/scenario.js';
import { kernelDescribe } from '../support/gate.js';

const run = (argv: string[]) => systemRunner.run(argv);

kernelDescribe('outbound capture end to end', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 3 });
  });

  afterAll(async () => {
    await sim?.teardown();
  });

  for (const [variant, delivery] of [
    ['redirect_peer', 'sk_assign'],
    ['redirect', 'sk_assign'],
    ['redirect_peer', 'tproxy'],
    ['redirect', 'tproxy'],
  ] as const) {
    it(`enrolled pod reaches only ztunnel, unenrolled goes direct (bpf_${variant}, ${delivery} delivery)`, async () => {
      const pinRoot = pinRootFor(sim);
      const pinDir = join(pinRoot, 'ambient-redirect', 'v1');
      const oracle: Record<string, string> = {};
      const result: ScenarioResult = await runStaticScenario(sim, {
        enrolled: [0, 2],
        connections: 4,
        pinRoot,
        variant,
        delivery,
        beforeUninstall: async () => {
          oracle.zt = await run(['ip', 'netns', 'exec', sim.ztunnel.ns, 'tc', 'filter', 'show', 'dev', 'eth0', 'ingress']);
          oracle.tproxy = await run(['ip', 'netns', 'exec', sim.ztunnel.ns, 'iptables-save', '-t', 'mangle']);
          oracle.pods = await run(['bpftool', '-j', 'map', 'dump', 'pinned', join(pinDir, 'pods')]);
          oracle.tc0 = await run(['ip', 'netns', 'exec', sim.nodeNs, 'tc', 'filter', 'show', 'dev', sim.pods[0]!.hostVeth, 'ingress']);
          oracle.tc1 = await run(['ip', 'netns', 'exec', sim.nodeNs, 'tc', 'filter', 'show', 'dev', sim.pods[1]!.hostVeth, 'ingress']);
        },
      });
      const [pod0, pod1, pod2] = result.reports;

      // The ztunnel stand-in accepted every connection, with the original destination.
      expect(pod0!.viaZtunnel).toEqual(Array(4).fill(`${sim.outside.ip}:${sim.outside.port}`));
      expect(pod2!.viaZtunnel).toHaveLength(4);
      // 0 bypasses: the outside server never saw an enrolled pod's IP.
      expect(pod0!.direct).toBe(0);
      expect(pod2!.direct).toBe(0);
      // The unenrolled pod went straight out and ztunnel never saw it.
      expect(pod1).toMatchObject({ ok: 4, direct: 4, viaZtunnel: [] });

      // bpftool: the pinned map holds exactly the enrolled pods.
      const keys = (JSON.parse(oracle.pods!) as { formatted: { key: { addr: number[] } } }[]).map((e) => e.formatted.key.addr.slice(12).join('.')).sort();
      expect(keys).toEqual([sim.pods[0]!.ip, sim.pods[2]!.ip]);
      // tc: one filter of ours on the enrolled pod's veth, the right program; none on the other.
      expect(oracle.tc0).toContain(variant === 'redirect_peer' ? 'out_redir_peer' : 'out_redirect');
      expect(oracle.tc0!.match(/direct-action/g)).toHaveLength(1);
      expect(oracle.tc1).not.toContain('bpf');
      // ztunnel's side: the delivery program of the variant; TPROXY takes every marked
      // packet with tproxy delivery, only what zt_assign leaves to it (0x1000) otherwise.
      expect(oracle.zt).toContain(delivery === 'sk_assign' ? 'zt_assign' : 'zt_mark');
      expect(oracle.tproxy).toContain(
        delivery === 'tproxy' ? '--mark 0x900/0xf00 -j TPROXY --on-port 15001' : '--mark 0x1900/0x1f00 -j TPROXY --on-port 15001',
      );

      // uninstall took our filters and pins away, and only those.
      expect(result.uninstall).toContain(`detached ingress filter from ${sim.pods[0]!.hostVeth}`);
      expect(result.uninstall).not.toContain(sim.pods[1]!.hostVeth);
      expect(existsSync(pinDir)).toBe(false);
      const tcAfter = await run(['ip', 'netns', 'exec', sim.nodeNs, 'tc', 'qdisc', 'show', 'dev', sim.pods[0]!.hostVeth]);
      expect(tcAfter).not.toContain('clsact');
    });
  }

  it('leaves no netns, link or pin of the run after teardown', async () => {
    const prefix = sim.prefix;
    await sim.teardown();
    expect(await run(['ip', 'netns', 'list'])).not.toContain(prefix);
    expect(await run(['ip', '-o', 'link', 'show'])).not.toContain(prefix);
    expect(existsSync(pinRootFor(sim))).toBe(false);
  });
});
