/**
 * HTTP to the API server with the credentials of a kubeconfig (or the in-cluster service
 * account). @kubernetes/client-node gives us the configuration and authentication (its
 * parts, src/kube/config.ts, not its generated API); the
 * requests themselves are ours so that every one has a timeout and a watch can be cut at
 * any moment (the client's Watch cannot be aborted before the response headers arrive).
 */
import http from 'node:http';
import https from 'node:https';
import { createInterface } from 'node:readline';
import { KubeConfig } from './config.js';

export class KubeError extends Error {
  constructor(
    message: string,
    /** HTTP status, or 0 for a transport error (refused, reset, timeout, bad JSON). */
    readonly status: number,
  ) {
    super(message);
    this.name = 'KubeError';
  }
}

/** A request that failed on a reused kept-alive connection before any answer (`failure`: its error). */
class StaleConnection extends Error {
  constructor(readonly failure: KubeError) {
    super(failure.message);
  }
}

export interface WatchHandle {
  abort(): void;
}

export interface KubeTransport {
  /** GET/PATCH returning parsed JSON; a non-2xx answer or unparsable body is a KubeError. */
  request(method: 'GET' | 'PATCH', path: string, query?: Record<string, string>, body?: { contentType: string; data: unknown }): Promise<unknown>;
  /** A watch stream: one parsed JSON object per line; `onEnd` once, with an error unless the server ended it cleanly. */
  stream(path: string, query: Record<string, string>, onLine: (obj: unknown) => void, onEnd: (err: KubeError | null) => void, onOpen?: () => void): WatchHandle;
  readonly server: string;
}

export interface KubeSource {
  /** Path of a kubeconfig; when empty, the in-cluster service account. */
  kubeconfig: string;
}

export function loadKubeConfig(src: KubeSource): KubeConfig {
  const kc = src.kubeconfig ? KubeConfig.fromFile(src.kubeconfig) : KubeConfig.fromCluster();
  if (!kc.getCurrentCluster()) throw new Error('the kubeconfig names no current cluster');
  return kc;
}

export function kubeTransport(kc: KubeConfig, requestTimeoutMs = 30_000): KubeTransport {
  const server = kc.getCurrentCluster()!.server.replace(/\/+$/, '');
  const base = new URL(server);
  const client = base.protocol === 'http:' ? http : https;
  // One agent per transport: connections are reused, and an outage is retried on fresh ones.
  const agent = base.protocol === 'http:' ? new http.Agent({ keepAlive: true }) : undefined;

  async function options(method: string, path: string, query: Record<string, string>): Promise<https.RequestOptions & { url: URL }> {
    const opts: https.RequestOptions = {};
    await kc.applyToHTTPSOptions(opts);
    const url = new URL(base.pathname.replace(/\/$/, '') + path, base);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const headers = { Accept: 'application/json', ...(opts.headers as Record<string, string>) };
    if (agent) return { url, method, headers, agent, ...(opts.auth && { auth: opts.auth }) };
    return { ...opts, url, method, headers };
  }

  /**
   * One request. A kept-alive connection the server has just closed (its idle timeout
   * meeting our reuse) fails a request before any answer, with a reset or a hang-up: a GET
   * that failed so on a reused connection is sent once more, on a new one. A PATCH is not:
   * the server may have applied it.
   */
  async function request(
    method: 'GET' | 'PATCH',
    path: string,
    query: Record<string, string>,
    body?: { contentType: string; data: unknown },
  ): Promise<unknown> {
    try {
      return await requestOnce(method, path, query, body);
    } catch (err) {
      if (!(err instanceof StaleConnection)) throw err;
      if (method !== 'GET') throw err.failure;
      return requestOnce(method, path, query, body, true);
    }
  }

  async function requestOnce(
    method: 'GET' | 'PATCH',
    path: string,
    query: Record<string, string>,
    body?: { contentType: string; data: unknown },
    fresh = false,
  ): Promise<unknown> {
    const { url, ...opts } = await options(method, path, query);
    // The retry takes a connection of its own (agent false: none of the pooled ones).
    if (fresh) opts.agent = false;
    const data = body ? Buffer.from(JSON.stringify(body.data)) : undefined;
    if (body) opts.headers = { ...(opts.headers as Record<string, string>), 'Content-Type': body.contentType, 'Content-Length': String(data!.length) };
    return new Promise((resolve, reject) => {
      const req = client.request(url, opts, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (e) => reject(new KubeError(`${method} ${path}: ${e.message}`, 0)));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status < 200 || status > 299) {
            reject(new KubeError(`${method} ${path}: HTTP ${status}${statusMessage(text)}`, status));
            return;
          }
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new KubeError(`${method} ${path}: the answer is not valid JSON (${text.length} bytes)`, 0));
          }
        });
      });
      let answered = false;
      req.setTimeout(requestTimeoutMs, () => req.destroy(new Error(`no answer within ${requestTimeoutMs} ms`)));
      req.on('error', (e: NodeJS.ErrnoException) => {
        const failure = new KubeError(`${method} ${path}: ${e.message}`, 0);
        const stale = !answered && req.reusedSocket && (e.code === 'ECONNRESET' || e.message === 'socket hang up');
        reject(stale ? new StaleConnection(failure) : failure);
      });
      req.on('response', (res) => {
        answered = true;
        res.on('aborted', () => req.destroy(new Error('answer cut short')));
      });
      req.end(data);
    });
  }

  return {
    server,
    request: (method, path, query = {}, body) => request(method, path, query, body),
    stream(path, query, onLine, onEnd, onOpen) {
      let ended = false;
      let req: http.ClientRequest | undefined;
      const end = (err: KubeError | null) => {
        if (ended) return;
        ended = true;
        req?.destroy();
        onEnd(err);
      };
      void options('GET', path, { ...query, watch: 'true' }).then(
        ({ url, ...opts }) => {
          if (ended) return;
          req = client.request(url, opts, (res) => {
            const status = res.statusCode ?? 0;
            if (status !== 200) {
              const chunks: Buffer[] = [];
              res.on('data', (c: Buffer) => chunks.push(c));
              res.on('end', () => end(new KubeError(`watch ${path}: HTTP ${status}${statusMessage(Buffer.concat(chunks).toString('utf8'))}`, status)));
              res.on('error', () => end(new KubeError(`watch ${path}: HTTP ${status}`, status)));
              return;
            }
            onOpen?.();
            const lines = createInterface({ input: res });
            // readline re-emits the response's errors (a cut connection): handled below on res.
            lines.on('error', () => {});
            lines.on('line', (line) => {
              if (ended || line.trim() === '') return;
              let obj: unknown;
              try {
                obj = JSON.parse(line);
              } catch {
                end(new KubeError(`watch ${path}: a line is not valid JSON (${line.length} bytes)`, 0));
                return;
              }
              onLine(obj);
            });
            res.on('error', (e) => end(new KubeError(`watch ${path}: ${e.message}`, 0)));
            res.on('end', () => end(null));
            res.on('close', () => end(res.complete ? null : new KubeError(`watch ${path}: connection closed mid-stream`, 0)));
          });
          req.on('error', (e) => end(new KubeError(`watch ${path}: ${e.message}`, 0)));
          req.end();
        },
        (e: unknown) => end(new KubeError(`watch ${path}: ${String(e)}`, 0)),
      );
      return { abort: () => end(null) };
    },
  };
}

function statusMessage(text: string): string {
  try {
    const s = JSON.parse(text) as { message?: unknown };
    return typeof s.message === 'string' ? `: ${s.message.slice(0, 200)}` : '';
  } catch {
    return '';
  }
}
