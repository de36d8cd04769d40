/**
 * The API double on a simulated node: served on a Unix socket of this process and put on
 * 127.0.0.1:6443 of the node netns by a relay process (see kube-api.ts for why), with a
 * kubeconfig the controller uses as it would a real cluster's.
 */
import { rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startProcess } from '../../src/host/runner.js';
import { distEntry } from './dist.js';
import { KubeApiDouble, type KubeApiOptions } from './kube-api.js';

export const SIM_API_ADDRESS = '127.0.0.1:6443';

export interface SimKubeApi {
  api: KubeApiDouble;
  /** The kubeconfig file the controller is given. */
  kubeconfig: string;
  stop(): Promise<void>;
}

export async function startSimKubeApi(nodeNs: string, opts: KubeApiOptions = {}): Promise<SimKubeApi> {
  // Named after the run (its node netns), so a run's leftovers can be found by name.
  const dir = mkdtempSync(join(tmpdir(), `ar-kube-${nodeNs}-`));
  const socket = join(dir, 'api.sock');
  const kubeconfig = join(dir, 'kubeconfig');
  const api = new KubeApiDouble(opts);
  await api.listen({ path: socket });
  api.writeKubeconfig(kubeconfig, `http://${SIM_API_ADDRESS}`);
  const relay = startProcess(['ip', 'netns', 'exec', nodeNs, process.execPath, distEntry('./kube-relay.js'), '--listen', SIM_API_ADDRESS, '--to', socket]);
  const exited = new Promise<void>((resolve) => relay.once('close', () => resolve()));
  let stderr = '';
  relay.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const stop = async () => {
    if (relay.exitCode === null && relay.signalCode === null) relay.kill('SIGTERM');
    await exited;
    await api.close();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('kube relay: not listening after 10 s')), 10_000);
      createInterface({ input: relay.stdout! }).on('line', (l) => {
        if (l.includes('"listening"')) {
          clearTimeout(timer);
          resolve();
        }
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`kube relay exited: ${stderr.trim()}`));
      });
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { api, kubeconfig, stop };
}
