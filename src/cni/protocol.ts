/**
 * The wire format between the plugin (tools/cni/ambient-redirect-cni.c) and the agent,
 * all integers unsigned 32-bit big-endian:
 *
 *   request  total | count | count x (len, "KEY=VALUE") | len, stdin
 *   reply    total | exit code | stdout bytes
 *
 * `total` counts the bytes after itself. Pure: no I/O.
 */

/** Far above any real netconf (the plugin refuses stdin over 1 MiB). */
export const MAX_FRAME = 2 * 1024 * 1024;

export interface RawRequest {
  env: Record<string, string>;
  stdin: Buffer;
}

export class FrameError extends Error {}

/** The length of the first complete frame in `buf` (prefix included), 0 when incomplete. */
export function frameLength(buf: Buffer): number {
  if (buf.length < 4) return 0;
  const total = buf.readUInt32BE(0);
  if (total > MAX_FRAME) throw new FrameError(`frame of ${total} bytes exceeds ${MAX_FRAME}`);
  return buf.length >= 4 + total ? 4 + total : 0;
}

export function decodeRequest(frame: Buffer): RawRequest {
  const total = frame.readUInt32BE(0);
  if (frame.length !== 4 + total) throw new FrameError(`frame says ${total} bytes, has ${frame.length - 4}`);
  let off = 4;
  const u32 = (what: string) => {
    if (off + 4 > frame.length) throw new FrameError(`truncated at ${what}`);
    const v = frame.readUInt32BE(off);
    off += 4;
    return v;
  };
  const bytes = (n: number, what: string) => {
    if (off + n > frame.length) throw new FrameError(`truncated in ${what}`);
    const b = frame.subarray(off, off + n);
    off += n;
    return b;
  };
  const count = u32('the variable count');
  if (count > 1024) throw new FrameError(`${count} variables`);
  const env: Record<string, string> = {};
  for (let i = 0; i < count; i++) {
    const kv = bytes(u32('a variable length'), 'a variable').toString('utf8');
    const eq = kv.indexOf('=');
    if (eq <= 0) throw new FrameError(`variable ${i} is not KEY=VALUE`);
    env[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  const stdin = Buffer.from(bytes(u32('the stdin length'), 'stdin'));
  if (off !== frame.length) throw new FrameError(`${frame.length - off} bytes after stdin`);
  return { env, stdin };
}

export function encodeRequest(req: RawRequest): Buffer {
  const parts: Buffer[] = [];
  const entries = Object.entries(req.env);
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  parts.push(u32(entries.length));
  for (const [k, v] of entries) {
    const kv = Buffer.from(`${k}=${v}`);
    parts.push(u32(kv.length), kv);
  }
  parts.push(u32(req.stdin.length), req.stdin);
  const body = Buffer.concat(parts);
  return Buffer.concat([u32(body.length), body]);
}

export interface Reply {
  code: number;
  /** A Buffer when bytes must pass unchanged (prevResult). */
  stdout: string | Buffer;
}

export function encodeReply(r: Reply): Buffer {
  const out = typeof r.stdout === 'string' ? Buffer.from(r.stdout) : r.stdout;
  const head = Buffer.alloc(8);
  head.writeUInt32BE(4 + out.length, 0);
  head.writeUInt32BE(r.code >>> 0, 4);
  return Buffer.concat([head, out]);
}

export function decodeReply(frame: Buffer): Reply {
  const total = frame.readUInt32BE(0);
  if (total < 4 || frame.length !== 4 + total) throw new FrameError('malformed reply');
  return { code: frame.readUInt32BE(4), stdout: frame.subarray(8).toString('utf8') };
}
