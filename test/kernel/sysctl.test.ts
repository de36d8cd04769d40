/**
 * The data path on a node whose defaults are strict: rp_filter=1 on every interface of
 * every netns of the simulated node (all, default, each link, so links made later inherit
 * it). ztunnel's transparent replies (source: the pod's original destination) arrive on
 * ztunnel's host veth, where strict reverse-path filtering would drop them; in ebpf mode
 * the agent opens that link (keeping every
 * other one as strict as it was), and uninstall puts back what was there. iptables mode
 * on such a node is not supported yet: its two causes are in docs/operations.md
 * "Sysctls". Oracles: real connections through the
 * ztunnel stand-in, the sysctls read back from /proc in each netns.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { createSimNode, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor, runStaticScenario } from '../../harness/sim/scenario.js';
import { kernelDescribe } from '../support/gate.js';

const run = (argv: string[]) => systemRunner.run(argv);

/** Every rp_filter (and every `all`/`default`) in a netns, as name=value lines. */
async function rpFilters(ns: string): Promise<string[]> {
  const out = await run(['ip', 'netns', 'exec', ns, 'sysctl', '-a', '--pattern', '\\.rp_filter$']);
  return out
    .split('\n')
    .map((l) => l.replace(/\s/g, ''))
    .filter(Boolean)
    .sort();
}

async function strict(ns: string): Promise<void> {
  await run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.conf.all.rp_filter=1', 'net.ipv4.conf.default.rp_filter=1']);
  const links = JSON.parse(await run(['ip', '-n', ns, '-j', 'link', 'show'])) as { ifname: string }[];
  for (const l of links) await run(['ip', 'netns', 'exec', ns, 'sysctl', '-q', '-w', `net.ipv4.conf.${l.ifname}.rp_filter=1`]);
}

kernelDescribe('a node with strict reverse-path filtering', 'builds network namespaces, loads BPF, writes sysctls in them', () => {
  let sim: SimNode;
  let before: Record<string, string[]>;
  const nets = () => [sim.nodeNs, sim.ztunnel.ns, ...sim.pods.map((p) => p.ns)];

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    for (const ns of nets()) await strict(ns);
    before = Object.fromEntries(await Promise.all(nets().map(async (ns) => [ns, await rpFilters(ns)] as const)));
    expect(before[sim.nodeNs]!.every((l) => l.endsWith('=1'))).toBe(true);
  });

  afterAll(async () => {
    await sim?.teardown();
  });

  for (const [mode, variant] of [
    ['ebpf', 'redirect_peer'],
    ['ebpf', 'redirect'],
  ] as const) {
    it(`${mode}${variant ? ` (bpf_${variant})` : ''}: the enrolled pod's connections complete through ztunnel; uninstall restores every rp_filter`, async () => {
      let during: string[] = [];
      const result = await runStaticScenario(sim, {
        enrolled: [0],
        connections: 3,
        pinRoot: pinRootFor(sim),
        mode,
        ...(variant && { variant }),
        beforeUninstall: async () => {
          during = await rpFilters(sim.nodeNs);
        },
      });
      const [pod0, pod1] = result.reports;
      expect(pod0).toMatchObject({ ok: 3, direct: 0 });
      expect(pod0!.viaZtunnel).toEqual(Array(3).fill(`${sim.outside.ip}:${sim.outside.port}`));
      expect(pod1).toMatchObject({ ok: 3, direct: 3 });
      {
        // ztunnel's host veth has no address: only 0 passes there, and the kernel takes the
        // larger of all and the device. So all is 0, ztunnel's veth 0, and every other
        // link (and default, for links made later) stays strict: effectively nothing else changed.
        const zt = `net.ipv4.conf.${sim.ztunnel.hostVeth}.rp_filter=0`;
        expect(during).toContain('net.ipv4.conf.all.rp_filter=0');
        expect(during).toContain(zt);
        expect(during.filter((l) => l !== zt && !l.includes('.all.')).every((l) => l.endsWith('=1'))).toBe(true);
      }
      for (const ns of nets()) expect(await rpFilters(ns), ns).toEqual(before[ns]);
    });
  }
});
