/**
 * The CNI gate's care of the host (no root): the namespace list written before the socket
 * serves and rewritten when deleted, our entry put back when the primary CNI rewrites its
 * config list (readiness false meanwhile), the socket's folder and per-connection timeouts,
 * and the atomic writes.
 */
import { chmodSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CniConfig } from '../../src/config.js';
import type { NamespaceView } from '../../src/core/enrollment.js';
import { hasPlugin } from '../../src/cni/conflist.js';
import { startCniGate, type CniGate, type GateMembership } from '../../src/cni/gate.js';
import { writeAtomic } from '../../src/cni/nsfile.js';
import { serveCni } from '../../src/cni/server.js';
import { Readiness } from '../../src/metrics/readiness.js';
import { quietLog } from './kube-harness.js';

const LIST = '{"cniVersion":"1.0.0","name":"k8s-pod-network",\n  "plugins":[{"type":"calico"},{"type":"portmap","snat":true}]}\n';
const ambient: NamespaceView = { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } };

/** Only what the gate itself uses; the handler is not exercised here. */
class GateDouble implements GateMembership {
  nsSynced = false;
  namespaces: NamespaceView[] = [];
  private cbs: (() => void)[] = [];
  namespacesSynced = () => this.nsSynced;
  ambientNamespaces = () => this.namespaces.filter((n) => n.labels['istio.io/dataplane-mode'] === 'ambient').map((n) => n.name);
  onChange = (cb: () => void) => void this.cbs.push(cb);
  change() {
    this.cbs.forEach((c) => c());
  }
  hasSynced = () => this.nsSynced;
  namespace = () => undefined;
  namespacesLive = () => true;
  fetchNamespace = async () => null;
  cachedPod = () => undefined;
  podDeleted = () => false;
  fetchPod = async () => null;
  enrollmentContext = () => ({ nodeName: 'n', reserved: new Set<string>() });
  provisionPod = () => {};
  releaseSandbox = () => false;
  announcedSandboxes = () => [];
  programmedNow = () => new Set<string>();
  onProgrammed = () => {};
}

const until = async (cond: () => boolean, ms = 3_000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
};

let dir = '';
let gate: CniGate | null = null;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-cni-gate-'));
  for (const d of ['bin', 'net.d', 'state', 'run']) mkdirSync(join(dir, d));
  writeFileSync(join(dir, 'plugin'), '#!/bin/true\n');
  writeFileSync(join(dir, 'net.d', '10-calico.conflist'), LIST);
});
afterEach(async () => {
  await gate?.close();
  gate = null;
  rmSync(dir, { recursive: true, force: true });
});

const cfg = (install: boolean): CniConfig => ({
  socket: join(dir, 'run', 'cni.sock'),
  addTimeoutMs: 2_000,
  stateDir: join(dir, 'state'),
  install,
  binDir: join(dir, 'bin'),
  confDir: join(dir, 'net.d'),
  plugin: join(dir, 'plugin'),
});
const listFile = () => join(dir, 'state', 'ambient-namespaces');
const conflist = () => join(dir, 'net.d', '10-calico.conflist');

describe('the namespace list', () => {
  it('a namespace labelled ambient while the agent was down is in the list before the socket serves', async () => {
    writeFileSync(listFile(), 'old\n'); // what the previous run left
    const m = new GateDouble();
    setTimeout(() => {
      m.namespaces = [ambient];
      m.nsSynced = true;
      m.change();
    }, 100);
    gate = await startCniGate(cfg(false), m, quietLog);
    expect(existsSync(join(dir, 'run', 'cni.sock'))).toBe(true);
    expect(readFileSync(listFile(), 'utf8')).toBe('shop\n');
  });

  it('without the namespaces in time the socket serves anyway, and the list follows once they come', async () => {
    writeFileSync(listFile(), 'old\n');
    const m = new GateDouble();
    gate = await startCniGate(cfg(false), m, quietLog, { startWaitMs: 50 });
    expect(lstatSync(join(dir, 'run', 'cni.sock')).isSocket()).toBe(true);
    m.namespaces = [ambient];
    m.nsSynced = true;
    m.change();
    expect(readFileSync(listFile(), 'utf8')).toBe('shop\n');
  });

  it('a deleted list is written again without waiting for a namespace change', async () => {
    const m = new GateDouble();
    m.namespaces = [ambient];
    m.nsSynced = true;
    gate = await startCniGate(cfg(false), m, quietLog, { checkIntervalMs: 200 });
    rmSync(listFile());
    await until(() => existsSync(listFile()));
    expect(readFileSync(listFile(), 'utf8')).toBe('shop\n');
  });
});

describe('our entry in the runtime’s config list', () => {
  it('re-inserted when the primary CNI rewrites its list; readiness false while it is missing', async () => {
    const m = new GateDouble();
    m.nsSynced = true;
    const readiness = new Readiness();
    const events: boolean[] = [];
    gate = await startCniGate(cfg(true), m, quietLog, {
      checkIntervalMs: 60_000, // fs.watch alone must notice
      onInstalled: (ok, reason) => {
        events.push(ok);
        readiness.setCniInstalled(ok, reason);
      },
    });
    expect(hasPlugin(readFileSync(conflist(), 'utf8'))).toBe(true);
    expect(events).toEqual([true]);
    // The primary CNI restarts and writes its list again, without us.
    writeFileSync(conflist(), LIST);
    await until(() => hasPlugin(readFileSync(conflist(), 'utf8')));
    // A list we must not join (a spec version we do not support): not ready, with the reason.
    writeFileSync(conflist(), LIST.replace('"1.0.0"', '"9.9.9"'));
    await until(() => events.at(-1) === false);
    expect(readiness.state().missing.join(' ')).toMatch(/CNI plugin not in the runtime's config list: .*"9.9.9" is not one the plugin supports/);
    expect(hasPlugin(readFileSync(conflist(), 'utf8'))).toBe(false);
    writeFileSync(conflist(), LIST);
    await until(() => events.at(-1) === true);
    expect(readiness.state().missing.join(' ')).not.toMatch(/CNI/);
  });

  it('the periodic check finds what fs.watch did not see (a config folder created later)', async () => {
    rmSync(join(dir, 'net.d'), { recursive: true });
    const m = new GateDouble();
    m.nsSynced = true;
    const events: [boolean, string][] = [];
    gate = await startCniGate(cfg(true), m, quietLog, { checkIntervalMs: 100, onInstalled: (ok, why) => events.push([ok, why]) });
    expect(events[0]).toEqual([false, expect.stringMatching(/no CNI configuration/)]);
    mkdirSync(join(dir, 'net.d'));
    writeFileSync(conflist(), LIST);
    await until(() => events.at(-1)?.[0] === true);
    expect(hasPlugin(readFileSync(conflist(), 'utf8'))).toBe(true);
  });
});

describe('the socket', () => {
  it('leaves the mode of a folder it did not create; creates a missing one 0700', async () => {
    const shared = join(dir, 'shared-run');
    mkdirSync(shared);
    chmodSync(shared, 0o755);
    const s1 = await serveCni(join(shared, 'cni.sock'), async () => ({ code: 0, stdout: '' }), quietLog);
    expect(statSync(join(shared, 'cni.sock')).mode & 0o777).toBe(0o600);
    await s1.close();
    expect(statSync(shared).mode & 0o777).toBe(0o755);
    const s2 = await serveCni(join(dir, 'fresh', 'cni.sock'), async () => ({ code: 0, stdout: '' }), quietLog);
    await s2.close();
    expect(statSync(join(dir, 'fresh')).mode & 0o777).toBe(0o700);
  });

  it('cuts a connection that sends no request in time', async () => {
    const path = join(dir, 'run', 'idle.sock');
    const s = await serveCni(path, async () => ({ code: 0, stdout: '' }), quietLog, { requestTimeoutMs: 150 });
    try {
      const t0 = Date.now();
      const closedAfter = await new Promise<number>((resolve, reject) => {
        const c = connect(path);
        c.on('error', () => {});
        c.on('close', () => resolve(Date.now() - t0));
        setTimeout(() => reject(new Error('the idle connection was never cut')), 3_000);
      });
      expect(closedAfter).toBeGreaterThanOrEqual(100);
      expect(closedAfter).toBeLessThan(2_000);
    } finally {
      await s.close();
    }
  });
});

describe('atomic writes', () => {
  it('never write through a file planted at the temporary name; leave no temporary file', () => {
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'untouched');
    const file = join(dir, 'state', 'list');
    // The old predictable name: <file>.tmp-<pid>.
    symlinkSync(victim, `${file}.tmp-${process.pid}`);
    writeAtomic(file, 'new\n');
    expect(readFileSync(victim, 'utf8')).toBe('untouched');
    expect(readFileSync(file, 'utf8')).toBe('new\n');
    expect(readdirSync(join(dir, 'state')).filter((n) => n.startsWith('list.tmp-') && n !== `list.tmp-${process.pid}`)).toEqual([]);
  });
});
