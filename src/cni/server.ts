/**
 * The Unix socket the plugin asks. Authenticated by file permissions: the socket is 0600
 * from birth (bound under umask 0177), root's, so only root on the host (the container
 * runtime) can connect; folders we create for it are 0700, a folder that exists is left as
 * it is (with runDir=/run, chmod would lock the host's /run). One request and one reply per
 * connection; a connection gets `requestTimeoutMs` to send its request and
 * `connectionTimeoutMs` in all, then it is cut.
 */
import { chmodSync, lstatSync, mkdirSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from '../log.js';
import { decodeRequest, encodeReply, frameLength, FrameError, type RawRequest, type Reply } from './protocol.js';

export interface CniServer {
  close(): Promise<void>;
}

export interface ServeOptions {
  /** From connect to a complete request (default 5 s). */
  requestTimeoutMs?: number;
  /** From connect to the reply written (default 60 s; the handler's own deadline is shorter). */
  connectionTimeoutMs?: number;
}

export async function serveCni(path: string, handle: (r: RawRequest) => Promise<Reply>, log: Logger, opts: ServeOptions = {}): Promise<CniServer> {
  const requestTimeoutMs = opts.requestTimeoutMs ?? 5_000;
  const connectionTimeoutMs = opts.connectionTimeoutMs ?? 60_000;
  // Only folders created here get 0700 (umask aside, mkdir's mode is what we ask).
  const created = mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  if (created !== undefined) chmodSync(dirname(path), 0o700);
  try {
    // A socket left by a previous run (SIGKILL, reboot without tmpfs): take its place.
    if (lstatSync(path).isSocket()) unlinkSync(path);
    else throw new Error(`${path} exists and is not a socket`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    const cut = (what: string) => () => {
      log.warn('cni: connection cut', { reason: what });
      sock.destroy();
    };
    const requestTimer = setTimeout(cut(`no complete request within ${requestTimeoutMs} ms`), requestTimeoutMs);
    const connectionTimer = setTimeout(cut(`no reply within ${connectionTimeoutMs} ms`), connectionTimeoutMs);
    sock.on('close', () => {
      clearTimeout(requestTimer);
      clearTimeout(connectionTimer);
      sockets.delete(sock);
    });
    sock.on('error', () => sock.destroy());
    let buf = Buffer.alloc(0);
    let done = false;
    sock.on('data', (d: Buffer) => {
      if (done) return;
      buf = Buffer.concat([buf, d]);
      let n: number;
      try {
        n = frameLength(buf);
      } catch (err) {
        done = true;
        log.warn('cni: bad request frame', { error: (err as Error).message });
        sock.destroy();
        return;
      }
      if (n === 0) return;
      done = true;
      clearTimeout(requestTimer);
      let req: RawRequest;
      try {
        req = decodeRequest(buf.subarray(0, n));
      } catch (err) {
        log.warn('cni: bad request frame', { error: err instanceof FrameError ? err.message : String(err) });
        sock.destroy();
        return;
      }
      handle(req).then(
        (reply) => sock.end(encodeReply(reply)),
        (err: unknown) => {
          log.error('cni: handler failed', { error: String(err) });
          sock.destroy();
        },
      );
    });
  });
  const old = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
  } finally {
    process.umask(old);
  }
  chmodSync(path, 0o600);
  log.info('cni: listening', { socket: path });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
