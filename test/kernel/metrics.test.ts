/**
 * /metrics, /healthz and /readyz of a running controller in the simulated node, checked
 * against what the sim did: the enrolled addresses, the packets the kernel counted on the
 * pod's veth (read from the pinned counters map as the oracle), the mode, and readiness
 * following ztunnel.
 */
import { mkdirSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { runInNode, startController, type ControllerProcess } from '../../harness/sim/controller.js';
import { createSimNode, type SimNode } from '../../harness/sim/node.js';
import { pinRootFor } from '../../harness/sim/scenario.js';
import type { Status } from '../../src/cli/status.js';
import { teardownNode } from '../support/node.js';
import { kernelDescribe } from '../support/gate.js';

const ADDRESS = '127.0.0.1:15034';

kernelDescribe('metrics and health', 'loads BPF and builds network namespaces', () => {
  let sim: SimNode;
  let pinRoot: string;
  let controller: ControllerProcess | undefined;

  beforeAll(async () => {
    sim = await createSimNode({ pods: 2 });
    pinRoot = pinRootFor(sim);
    mkdirSync(pinRoot, { recursive: true, mode: 0o700 });
    await sim.startZtunnel();
    controller = startController(sim.nodeNs, [
      '--pin-root',
      pinRoot,
      '--ztunnel-ip',
      sim.ztunnel.ip,
      '--resync-interval',
      '1',
      '--health-address',
      ADDRESS,
      '--enroll',
      `${sim.pods[0]!.ip},${sim.pods[0]!.ip6}`,
    ]);
    await controller.waitFor('programmed');
  });

  afterAll(() => teardownNode(sim, pinRoot, controller));

  /** GET from inside the node netns, where the controller listens. */
  async function get(path: string): Promise<{ status: number; body: string }> {
    const script = `fetch('http://${ADDRESS}${path}').then(async (r) => process.stdout.write(JSON.stringify({ status: r.status, body: await r.text() })))`;
    return JSON.parse(await systemRunner.run(['ip', 'netns', 'exec', sim.nodeNs, process.execPath, '-e', script])) as { status: number; body: string };
  }

  function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
    for (const line of text.split('\n')) {
      if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
      if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
    }
    return undefined;
  }

  it('is live and ready once programmed with ztunnel known', async () => {
    expect(await get('/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect((await get('/readyz')).status).toBe(200);
  });

  it('reports enrolled pods, the mode, map fill and the kernel’s per-pod counters', async () => {
    const pod = sim.pods[0]!;
    expect(await sim.connect(pod, { ip: sim.outside.ip, port: sim.outside.port }, 4)).toEqual(Array(4).fill({ ok: true, reply: 'ztunnel' }));
    const status = JSON.parse(await runInNode(sim.nodeNs, ['status', '--json', '--pin-root', pinRoot])) as Status;
    const counted = status.pods.find((p) => p.ip === pod.ip)!.counters;
    const { status: code, body } = await get('/metrics');
    expect(code).toBe(200);
    expect(sample(body, 'ambient_redirect_enrolled_pods')).toBe(2);
    expect(sample(body, 'ambient_redirect_programmed_pods')).toBe(2);
    expect(sample(body, 'ambient_redirect_capture_mode', { mode: 'ebpf' })).toBe(1);
    expect(sample(body, 'ambient_redirect_map_entries', { map: 'pods' })).toBe(2);
    const redirected = sample(body, 'ambient_redirect_pod_packets_total', { pod_ip: pod.ip, verdict: 'redirected' });
    expect(redirected).toBeGreaterThanOrEqual(12); // 4 connections, several packets each
    // The scrape reads the same counters (possibly a packet or two later).
    expect(redirected).toBeGreaterThanOrEqual(Number(counted.redirected[0]));
    expect(sample(body, 'ambient_redirect_pod_packets_total', { pod_ip: sim.pods[1]!.ip })).toBeUndefined();
    expect(sample(body, 'ambient_redirect_reconcile_duration_seconds_count', { outcome: 'ok' })).toBeGreaterThanOrEqual(1);
  });

  it('turns not ready, saying why, when ztunnel goes away', async () => {
    const after = controller!.events.length;
    await systemRunner.run(['ip', '-n', sim.nodeNs, 'link', 'del', sim.ztunnel.hostVeth]);
    await controller!.waitForAfter(after, /fail closed/);
    await new Promise((r) => setTimeout(r, 500));
    const ready = await get('/readyz');
    expect(ready.status).toBe(503);
    expect(ready.body).toMatch(/ztunnel/);
    expect((await get('/healthz')).status).toBe(200);
  });
});
