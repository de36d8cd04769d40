/**
 * The API transport's requests (src/kube/http.ts) against a real HTTP server that drops a
 * kept-alive connection when the next request comes on it, as a server whose idle timeout
 * meets the client's reuse does: a GET is sent again on a new connection, a PATCH is not.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeError, kubeTransport, loadKubeConfig } from '../../src/kube/index.js';

interface Dropper {
  url: string;
  /** Each request as `<method> <path> on <connection number>`. */
  seen: string[];
  close(): Promise<void>;
}

/** Answers the first request of each connection; drops the connection at its second, unanswered. */
async function dropper(): Promise<Dropper> {
  const seen: string[] = [];
  const served = new WeakMap<Socket, number>();
  let connections = 0;
  const server = http.createServer((req, res) => {
    const n = served.get(req.socket) ?? ++connections;
    seen.push(`${req.method} ${req.url} on ${n}`);
    if (served.has(req.socket)) {
      req.socket.destroy();
      return;
    }
    served.set(req.socket, n);
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ path: req.url }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

describe('API requests on a kept-alive connection the server has dropped', () => {
  let dir = '';
  let server: Dropper | undefined;
  afterEach(async () => {
    await server?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function transport(url: string) {
    dir = mkdtempSync(join(tmpdir(), 'kube-http-'));
    const file = join(dir, 'kubeconfig');
    const cfg = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster: { server: url, 'insecure-skip-tls-verify': true } }],
      users: [{ name: 'u', user: { token: 't' } }],
      contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'x',
    };
    writeFileSync(file, JSON.stringify(cfg), { mode: 0o600 });
    return kubeTransport(loadKubeConfig({ kubeconfig: file }), 2_000);
  }

  it('a GET is sent once more, on a new connection, and answered', async () => {
    server = await dropper();
    const t = transport(server.url);
    expect(await t.request('GET', '/api/v1/namespaces/a')).toEqual({ path: '/api/v1/namespaces/a' });
    expect(await t.request('GET', '/api/v1/namespaces/b')).toEqual({ path: '/api/v1/namespaces/b' });
    expect(server.seen).toEqual(['GET /api/v1/namespaces/a on 1', 'GET /api/v1/namespaces/b on 1', 'GET /api/v1/namespaces/b on 2']);
  });

  it('a PATCH is not sent again (the server may have applied it): the error is the caller’s', async () => {
    server = await dropper();
    const t = transport(server.url);
    await t.request('GET', '/api/v1/namespaces/a');
    const patch = t.request('PATCH', '/api/v1/namespaces/shop/pods/a/status', {}, { contentType: 'application/merge-patch+json', data: {} });
    await expect(patch).rejects.toBeInstanceOf(KubeError);
    await expect(patch).rejects.toMatchObject({ status: 0 });
    expect(server.seen.filter((s) => s.startsWith('PATCH'))).toHaveLength(1);
  });

  it('a GET on a new connection that fails is not sent again', async () => {
    server = await dropper();
    const t = transport(server.url);
    const url = server.url;
    await server.close();
    server = undefined;
    await expect(t.request('GET', '/api/v1/namespaces/a')).rejects.toThrow(
      new RegExp(`GET /api/v1/namespaces/a: connect ECONNREFUSED ${url.replace('http://', '')}`),
    );
  });
});
