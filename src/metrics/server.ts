/**
 * The agent's HTTP endpoints on one address: /metrics (Prometheus text), /healthz (the
 * process answers), /readyz (200 only when Readiness says so; 503 names what is missing).
 */
import http from 'node:http';
import { isIP } from 'node:net';
import type { AgentMetrics } from './registry.js';
import type { Readiness } from './readiness.js';

/** "host:port", "[v6]:port" or ":port" (every address) → listen() arguments. */
export function parseListenAddress(address: string): { host: string | undefined; port: number } {
  const m = /^(.*):(\d{1,5})$/.exec(address);
  const host = m?.[1]?.replace(/^\[(.*)\]$/, '$1') ?? '';
  const port = Number(m?.[2]);
  if (!m || port > 65535 || (host !== '' && !isIP(host))) throw new Error(`"${address}" is not IP:PORT (or :PORT)`);
  return { host: host || undefined, port };
}

export interface MetricsServer {
  readonly server: http.Server;
  /** The bound port (useful with port 0). */
  port(): number;
  close(): Promise<void>;
}

export async function serveMetrics(
  address: string,
  deps: { metrics: AgentMetrics; readiness: Readiness; onError?: (err: Error) => void },
): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const text = (code: number, body: string) => {
      res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') {
      const s = deps.readiness.state();
      return text(s.ready ? 200 : 503, s.ready ? 'ok\n' : s.missing.map((m) => `not ready: ${m}\n`).join(''));
    }
    if (path === '/metrics') {
      deps.metrics.metrics().then(
        (body) => {
          res.writeHead(200, { 'Content-Type': deps.metrics.registry.contentType });
          res.end(req.method === 'HEAD' ? undefined : body);
        },
        (err: unknown) => {
          deps.onError?.(err instanceof Error ? err : new Error(String(err)));
          text(500, `metrics failed: ${err instanceof Error ? err.message : String(err)}\n`);
        },
      );
      return;
    }
    text(404, 'not found\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  if (deps.onError) server.on('error', deps.onError);
  return {
    server,
    port: () => (server.address() as { port: number }).port,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
