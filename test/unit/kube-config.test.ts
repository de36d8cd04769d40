/**
 * src/kube/config.ts: the kubeconfig read with the library's parts, not its generated API.
 * What reaches a request (server, TLS material, credentials), the in-cluster account, the
 * errors, and the import graph that keeps the generated API out of the agent.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type https from 'node:https';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubeConfig } from '../../src/kube/config.js';
import { loadKubeConfig } from '../../src/kube/http.js';
import { ROOT, tsFiles } from './source-files.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-kubeconfig-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const CA = Buffer.from('-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n');

function write(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

async function options(kc: KubeConfig): Promise<https.RequestOptions> {
  const o: https.RequestOptions = {};
  await kc.applyToHTTPSOptions(o);
  return o;
}

describe('kubeconfig file', () => {
  it('the current context picks the cluster and user; relative files are taken from the kubeconfig folder', async () => {
    write('ca.crt', CA.toString());
    const file = write(
      'config',
      `apiVersion: v1
kind: Config
current-context: b
clusters:
- name: one
  cluster: { server: 'https://10.0.0.1:6443', certificate-authority: ca.crt, tls-server-name: api.local }
- name: two
  cluster: { server: 'https://10.0.0.2:6443', insecure-skip-tls-verify: true }
users:
- name: u1
  user: { token: abc }
- name: u2
  user: { username: admin, password: s3cret, client-certificate-data: ${Buffer.from('CERT').toString('base64')} }
contexts:
- name: a
  context: { cluster: two, user: u2 }
- name: b
  context: { cluster: one, user: u1 }
`,
    );
    const kc = KubeConfig.fromFile(file);
    expect(kc.getCurrentCluster()?.server).toBe('https://10.0.0.1:6443');
    const o = await options(kc);
    expect(o.ca).toEqual(CA);
    expect(o.servername).toBe('api.local');
    expect(o.rejectUnauthorized).toBeUndefined();
    expect((o.headers as Record<string, string>).Authorization).toBe('Bearer abc');
    expect(o.agent).toBeUndefined();
  });

  it('basic auth, client certificate data and skip-verify of another context', async () => {
    const file = write(
      'config',
      `current-context: a
clusters:
- name: two
  cluster: { server: 'https://10.0.0.2:6443', insecure-skip-tls-verify: true }
users:
- name: u2
  user: { username: admin, password: s3cret, client-certificate-data: ${Buffer.from('CERT').toString('base64')}, as: someone }
contexts:
- name: a
  context: { cluster: two, user: u2 }
`,
    );
    const o = await options(KubeConfig.fromFile(file));
    expect(o.auth).toBe('admin:s3cret');
    expect(o.cert).toEqual(Buffer.from('CERT'));
    expect(o.rejectUnauthorized).toBe(false);
    expect((o.headers as Record<string, string>)['Impersonate-User']).toBe('someone');
  });

  it('a token file is read through the library authenticator', async () => {
    const token = write('token', 'from-file');
    const file = write(
      'config',
      `current-context: c
clusters: [{ name: k, cluster: { server: 'http://127.0.0.1:1' } }]
users: [{ name: u, user: { auth-provider: { name: tokenFile, config: { tokenFile: ${token} } } } }]
contexts: [{ name: c, context: { cluster: k, user: u } }]
`,
    );
    const o = await options(KubeConfig.fromFile(file));
    expect((o.headers as Record<string, string>).Authorization).toBe('Bearer from-file');
  });

  it('refuses what it cannot serve with a clear error', async () => {
    expect(() => loadKubeConfig({ kubeconfig: write('empty', '') })).toThrow(/not a kubeconfig/);
    const noCtx = write('noctx', `clusters: [{ name: k, cluster: { server: 'https://x' } }]\nusers: []\ncontexts: []\n`);
    expect(() => loadKubeConfig({ kubeconfig: noCtx })).toThrow(/names no current cluster/);
    // The library's validation: a cluster with no server.
    expect(() => KubeConfig.fromFile(write('bad', 'clusters: [{ name: k, cluster: {} }]\n'))).toThrow(/server/);
    const proxy = write(
      'proxy',
      `current-context: c
clusters: [{ name: k, cluster: { server: 'https://x', proxy-url: 'http://proxy:3128' } }]
users: [{ name: u, user: { token: t } }]
contexts: [{ name: c, context: { cluster: k, user: u } }]
`,
    );
    await expect(options(KubeConfig.fromFile(proxy))).rejects.toThrow(/proxy-url/);
  });
});

describe('in-cluster service account', () => {
  const saved = { host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT };
  afterEach(() => {
    for (const [k, v] of [
      ['KUBERNETES_SERVICE_HOST', saved.host],
      ['KUBERNETES_SERVICE_PORT', saved.port],
    ] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('server from the environment (IPv6 bracketed), CA and token from the account folder', async () => {
    const sa = join(dir, 'var/run/secrets/kubernetes.io/serviceaccount');
    await import('node:fs').then((fs) => fs.mkdirSync(sa, { recursive: true }));
    writeFileSync(join(sa, 'ca.crt'), CA);
    writeFileSync(join(sa, 'token'), 'sa-token');
    process.env.KUBERNETES_SERVICE_HOST = 'fd00::1';
    process.env.KUBERNETES_SERVICE_PORT = '443';
    const kc = KubeConfig.fromCluster(dir);
    expect(kc.getCurrentCluster()?.server).toBe('https://[fd00::1]:443');
    const o = await options(kc);
    expect(o.ca).toEqual(CA);
    expect((o.headers as Record<string, string>).Authorization).toBe('Bearer sa-token');
  });

  it('outside a cluster with no kubeconfig: a clear error', () => {
    delete process.env.KUBERNETES_SERVICE_HOST;
    expect(() => loadKubeConfig({ kubeconfig: '' })).toThrow(/not in a cluster/);
  });
});

describe('what the agent loads of the library', () => {
  /** The library modules a file imports (relative specifiers inside the library, static only). */
  function libraryClosure(entry: string): Set<string> {
    const seen = new Set<string>();
    const todo = [entry];
    while (todo.length) {
      const f = todo.pop()!;
      if (seen.has(f)) continue;
      seen.add(f);
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]/gm)) todo.push(join(dirname(f), m[1]!));
    }
    return seen;
  }

  it('src/ imports only the parts of @kubernetes/client-node that do not load its generated API', () => {
    const require = createRequire(join(ROOT, 'package.json'));
    const specifiers = tsFiles('src').flatMap((f) =>
      [...readFileSync(join(ROOT, f), 'utf8').matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"](@kubernetes\/client-node[^'"]*)['"]/g)].map((m) => ({
        f,
        spec: m[1]!,
      })),
    );
    expect(specifiers.length).toBeGreaterThan(0);
    for (const { f, spec } of specifiers) {
      expect(f.startsWith('src/kube/'), `${f} imports ${spec}`).toBe(true);
      expect(spec, `${f}: the package root loads the whole generated API`).not.toBe('@kubernetes/client-node');
      const loaded = [...libraryClosure(require.resolve(spec))].map((p) => posix.normalize(p.split('\\').join('/')));
      const heavy = loaded.filter((p) => /\/client-node\/dist\/(gen\/|config\.js$|api\.js$|index\.js$)/.test(p));
      expect(heavy, `${spec} loads`).toEqual([]);
    }
  });
});
