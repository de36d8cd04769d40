/**
 * The agent's HTTP endpoints: /metrics (Prometheus text), /healthz (the process answers),
 * /readyz (200 only when Readiness says so; 503 names what is missing), /zds (inpod mode:
 * the connected ztunnels and the pods sent to each, JSON, what `status` shows), on the
 * health address; and, on an optional scrape address, /metrics alone.
 *
 * This server shares the event loop that answers the CNI plugin, and /metrics names pods,
 * namespaces and IPs: it is meant for 127.0.0.1 (the chart's default), and whoever reaches
 * it gets little. Bounded: connections, header size, no request body, time to send the
 * request, idle keep-alive; scrapes that arrive while one is being computed share its
 * answer instead of walking the maps again.
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

export interface ServerLimits {
  /** Open connections at once; more are closed on arrival. */
  maxConnections: number;
  /** Bytes of request line and headers. */
  maxHeaderBytes: number;
  /** Time to receive the whole request (headers included). */
  requestTimeoutMs: number;
  /** Time a connection may sit idle (keep-alive, or a client that sends nothing). */
  idleTimeoutMs: number;
  /** Time a /metrics answer may take before 503. */
  scrapeTimeoutMs: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxConnections: 16,
  maxHeaderBytes: 8 * 1024,
  requestTimeoutMs: 5_000,
  idleTimeoutMs: 5_000,
  scrapeTimeoutMs: 10_000,
};

export interface MetricsServer {
  readonly server: http.Server;
  /** The bound port (useful with port 0). */
  port(): number;
  close(): Promise<void>;
}

export interface ServeDeps {
  metrics: AgentMetrics;
  readiness: Readiness;
  onError?: (err: Error) => void;
  /** 'all' (the health address) or 'metrics' (a scrape address: /metrics only). */
  serve?: 'all' | 'metrics';
  limits?: Partial<ServerLimits>;
  /** inpod mode: the ZDS view `status` reads (GET /zds, JSON, health address only). */
  zds?: () => unknown;
}

export async function serveMetrics(address: string, deps: ServeDeps): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(address);
  const limits = { ...DEFAULT_LIMITS, ...deps.limits };
  const only = deps.serve ?? 'all';
  // One scrape computes at a time; those arriving meanwhile get the same body.
  let inflight: Promise<string[]> | null = null;
  const scrape = () =>
    (inflight ??= deps.metrics.exposition().finally(() => {
      inflight = null;
    }));

  const server = http.createServer(
    {
      maxHeaderSize: limits.maxHeaderBytes,
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.idleTimeoutMs,
      // How often Node checks the two timeouts above (its default, 30 s, would let a slow client hold a slot that long).
      connectionsCheckingInterval: Math.min(1_000, limits.requestTimeoutMs),
    },
    (req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      const text = (code: number, body: string, close = false) => {
        if (res.headersSent) return;
        res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8', ...(close && { Connection: 'close' }) });
        res.end(req.method === 'HEAD' ? undefined : body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') return text(405, 'method not allowed\n', true);
      // Nothing here takes a body: refuse one instead of reading it.
      if (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0)
        return text(413, 'no request body accepted\n', true);
      if (only === 'all' && path === '/healthz') return text(200, 'ok\n');
      if (only === 'all' && path === '/readyz') {
        const s = deps.readiness.state();
        return text(s.ready ? 200 : 503, s.ready ? 'ok\n' : s.missing.map((m) => `not ready: ${m}\n`).join(''));
      }
      if (only === 'all' && path === '/zds' && deps.zds) {
        if (res.headersSent) return;
        res.writeHead(200, { 'Content-Type': 'application/json' });
        return res.end(req.method === 'HEAD' ? undefined : `${JSON.stringify(deps.zds())}\n`);
      }
      if (path === '/metrics') {
        const timer = setTimeout(() => text(503, `metrics took longer than ${limits.scrapeTimeoutMs} ms\n`, true), limits.scrapeTimeoutMs);
        scrape().then(
          (pieces) => {
            clearTimeout(timer);
            if (res.headersSent) return;
            // Written piece by piece (AgentMetrics.exposition): the text is never copied whole.
            let length = 0;
            for (const p of pieces) length += Buffer.byteLength(p);
            res.writeHead(200, { 'Content-Type': deps.metrics.registry.contentType, 'Content-Length': length });
            if (req.method !== 'HEAD') for (const p of pieces) res.write(p);
            res.end();
          },
          (err: unknown) => {
            clearTimeout(timer);
            deps.onError?.(err instanceof Error ? err : new Error(String(err)));
            text(500, `metrics failed: ${err instanceof Error ? err.message : String(err)}\n`);
          },
        );
        return;
      }
      text(404, 'not found\n');
    },
  );
  server.maxConnections = limits.maxConnections;
  // A connection that sends nothing (no request at all) is closed too.
  server.setTimeout(limits.idleTimeoutMs + limits.requestTimeoutMs, (socket) => socket.destroy());
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
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
