/**
 * The simulated node on the real kernel: namespaces, veths, routes and the agent processes.
 * Needs root; outside CI a non-root run skips with the reason printed, under CI it fails.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { createSimNode, newPrefix, type SimNode } from '../../harness/sim/node.js';
import { kernelDescribe } from '../support/gate.js';

const TIMEOUT = 30_000;
async function netnsWithPrefix(prefix: string): Promise<string[]> {
  const out = await systemRunner.run(['ip', 'netns', 'list']);
  return out.split('\n').filter((line) => line.startsWith(prefix));
}

kernelDescribe('simulated node', 'the sim needs root (netns, veth, iptables)', kernelSuite);

function kernelSuite(): void {
  const prefix = newPrefix();
  let sim: SimNode | undefined;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2, prefix });
  }, TIMEOUT);

  afterAll(async () => {
    await sim?.teardown();
  }, TIMEOUT);

  it('builds the namespaces of the run', async () => {
    const found = (await netnsWithPrefix(prefix)).map((line) => line.split(' ')[0]).sort();
    expect(found).toEqual([`${prefix}-node`, `${prefix}-out`, `${prefix}-pod0`, `${prefix}-pod1`, `${prefix}-zt`].sort());
    expect(sim!.pods.map((p) => p.ip)).toEqual(['198.18.0.10', '198.18.0.11']);
  });

  it(
    'routes a pod to the outside server, which sees the pod IP',
    async () => {
      const outside = await sim!.startOutside();
      try {
        const results = await sim!.connect(sim!.pods[0]!, sim!.outside, 3);
        expect(results).toEqual([
          { ok: true, reply: 'outside' },
          { ok: true, reply: 'outside' },
          { ok: true, reply: 'outside' },
        ]);
        await outside.waitForAccepted(3);
        expect(outside.accepted).toHaveLength(3);
        for (const a of outside.accepted) expect(a.src).toMatch(/^198\.18\.0\.10:\d+$/);
      } finally {
        await outside.stop();
      }
    },
    TIMEOUT,
  );

  it(
    'reports a refused connection as a result',
    async () => {
      // No server is running any more: the outside netns answers with a reset.
      const [result] = await sim!.connect(sim!.pods[0]!, sim!.outside, 1, 2_000);
      expect(result).toEqual({ ok: false, error: 'ECONNREFUSED' });
    },
    TIMEOUT,
  );

  it(
    'lets a pod reach the ztunnel stand-in directly',
    async () => {
      const zt = await sim!.startZtunnel();
      const results = await sim!.connect(sim!.pods[1]!, { ip: sim!.ztunnel.ip, port: 15001 }, 1);
      expect(results).toEqual([{ ok: true, reply: 'ztunnel' }]);
      await zt.waitForAccepted(1);
      expect(zt.accepted[0]?.src).toMatch(/^198\.18\.0\.11:\d+$/);
      expect(zt.accepted[0]?.origDst).toBe('198.18.0.2:15001');
      // Left running on purpose: teardown must stop it.
    },
    TIMEOUT,
  );

  it(
    'reaches pods over IPv6 and from the node’s own address; the node has no probe address',
    async () => {
      const server = await sim!.startPodServer(sim!.pods[1]!, 9090);
      try {
        expect(await sim!.connect(sim!.pods[0]!, { ip: sim!.pods[1]!.ip6, port: 9090 }, 1)).toEqual([{ ok: true, reply: 'pod1' }]);
        expect(await sim!.connect('node', { ip: sim!.pods[1]!.ip, port: 9090 }, 1)).toEqual([{ ok: true, reply: 'pod1' }]);
        // Probes are the agent's business: the simulated node adds no address for them.
        expect(await systemRunner.run(['ip', '-n', sim!.nodeNs, 'addr', 'show', 'dev', 'lo'])).not.toContain('169.254.7.127');
        expect(await sim!.connect(sim!.pods[0]!, { ip: sim!.outside.ip6, port: 9 }, 1)).toEqual([{ ok: false, error: 'ECONNREFUSED' }]);
        await server.waitForAccepted(2);
        expect(server.accepted.map((a) => a.src.slice(0, a.src.lastIndexOf(':')))).toEqual([sim!.pods[0]!.ip6, sim!.node.ip]);
      } finally {
        await server.stop();
      }
    },
    TIMEOUT,
  );

  it('leaves capture in the ztunnel netns to the controller', async () => {
    const ns = sim!.ztunnel.ns;
    expect(await systemRunner.run(['ip', 'netns', 'exec', ns, 'iptables-save', '-t', 'mangle'])).not.toContain('TPROXY');
    expect(await systemRunner.run(['ip', '-n', ns, 'rule', 'show'])).not.toContain('fwmark');
  });

  it(
    'tears down every namespace of the run',
    async () => {
      await sim!.teardown();
      await sim!.teardown(); // idempotent
      expect(await netnsWithPrefix(prefix)).toEqual([]);
    },
    TIMEOUT,
  );
}
