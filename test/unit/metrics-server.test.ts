/**
 * The limits of the agent's HTTP server (issue 15, item 6): it shares the loop that
 * answers CNI ADDs, so no client may hold it: connections, header size, request bodies,
 * slow requests, slow scrapes and scrape storms are all bounded. And a scrape address
 * serves /metrics alone.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentMetrics, Readiness, serveMetrics, type MetricsServer } from '../../src/metrics/index.js';

const servers: MetricsServer[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(opts: Parameters<typeof serveMetrics>[1]): Promise<MetricsServer> {
  const s = await serveMetrics('127.0.0.1:0', opts);
  servers.push(s);
  return s;
}

/** A raw connection: resolves with everything the server sent once it closes (or after ms). */
function raw(port: number, send: string, ms = 3_000): Promise<{ data: string; closed: boolean; afterMs: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = connect(port, '127.0.0.1');
    sockets.push(s);
    let data = '';
    const timer = setTimeout(() => resolve({ data, closed: false, afterMs: Date.now() - t0 }), ms);
    s.on('data', (d) => (data += d.toString()));
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ data, closed: true, afterMs: Date.now() - t0 });
    });
    if (send) s.write(send);
  });
}

describe('serveMetrics limits', () => {
  it('closes connections beyond maxConnections; the ones within keep working', async () => {
    const srv = await serve({
      metrics: new AgentMetrics(),
      readiness: new Readiness(),
      limits: { maxConnections: 3, idleTimeoutMs: 10_000, requestTimeoutMs: 10_000 },
    });
    // Three idle connections hold every slot.
    const held = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise<Socket>((resolve) => {
            const s = connect(srv.port(), '127.0.0.1', () => resolve(s));
            s.on('error', () => {});
            sockets.push(s);
          }),
      ),
    );
    await new Promise((r) => setTimeout(r, 50));
    const extra = await raw(srv.port(), 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', 2_000);
    expect(extra.closed).toBe(true);
    expect(extra.data).toBe('');
    // A held connection is served.
    const answer = await new Promise<string>((resolve) => {
      held[0]!.once('data', (d) => resolve(d.toString()));
      held[0]!.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    });
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
  });

  it('closes a connection that sends its request too slowly (or nothing at all)', async () => {
    const srv = await serve({ metrics: new AgentMetrics(), readiness: new Readiness(), limits: { requestTimeoutMs: 300, idleTimeoutMs: 300 } });
    const [partial, silent] = await Promise.all([raw(srv.port(), 'GET /metrics HTTP/1.1\r\nHost: x\r\n', 5_000), raw(srv.port(), '', 5_000)]);
    expect(partial.closed).toBe(true);
    expect(silent.closed).toBe(true);
    expect(partial.afterMs).toBeLessThan(4_000);
    expect(silent.afterMs).toBeLessThan(4_000);
  });

  it('refuses oversized headers (431) and any request body (413)', async () => {
    const srv = await serve({ metrics: new AgentMetrics(), readiness: new Readiness(), limits: { maxHeaderBytes: 1024 } });
    const big = await raw(srv.port(), `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(4096)}\r\n\r\n`);
    expect(big.data).toMatch(/^HTTP\/1\.1 431/);
    const url = `http://127.0.0.1:${srv.port()}`;
    const withBody = await raw(srv.port(), 'GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello');
    expect(withBody.data).toMatch(/^HTTP\/1\.1 413/);
    const chunked = await raw(srv.port(), 'GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n');
    expect(chunked.data).toMatch(/^HTTP\/1\.1 413/);
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });

  it('answers 503 when a scrape takes too long, and concurrent scrapes share one computation', async () => {
    let calls = 0;
    let release: (v: string) => void = () => {};
    const real = new AgentMetrics();
    // The server writes AgentMetrics.exposition()'s pieces; this one answers when released.
    const slow = Object.assign(Object.create(real) as AgentMetrics, {
      exposition: () => {
        calls++;
        return new Promise<string[]>((r) => (release = (text) => r([text.slice(0, 2), text.slice(2)])));
      },
    });
    const srv = await serve({ metrics: slow, readiness: new Readiness(), limits: { scrapeTimeoutMs: 300 } });
    const url = `http://127.0.0.1:${srv.port()}/metrics`;
    const timedOut = await fetch(url);
    expect(timedOut.status).toBe(503);
    expect(await timedOut.text()).toMatch(/longer than 300 ms/);
    release('late 1\n');
    await new Promise((r) => setTimeout(r, 20));
    calls = 0;
    // Released only once the server holds all ten requests (a fixed wait let a slow machine
    // release before the last ones arrived, and those started a second computation).
    let arrived = 0;
    srv.server.on('request', () => arrived++);
    const storm = Array.from({ length: 10 }, () => fetch(url).then(async (r) => [r.status, await r.text()] as const));
    while (arrived < 10) await new Promise((r) => setTimeout(r, 10));
    release('x 1\n');
    const answers = await Promise.all(storm);
    expect(calls).toBe(1);
    expect(answers.every(([status, body]) => status === 200 && body === 'x 1\n')).toBe(true);
  });
});

describe('a scrape address', () => {
  it('serves /metrics only', async () => {
    const srv = await serve({ metrics: new AgentMetrics(), readiness: new Readiness(), serve: 'metrics' });
    const url = (p: string) => `http://127.0.0.1:${srv.port()}${p}`;
    expect((await fetch(url('/metrics'))).status).toBe(200);
    expect((await fetch(url('/healthz'))).status).toBe(404);
    expect((await fetch(url('/readyz'))).status).toBe(404);
  });
});
