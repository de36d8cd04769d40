/**
 * Runs the plugin binary with raw bytes in and out, and checks one run against the CNI
 * spec's contract for its input (docs/cni.md, "The plugin's contract"). Shared by the
 * plugin's tests and the fuzz run.
 */
import { startProcess } from '../../src/host/runner.js';

export interface RawRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
  timedOut: boolean;
  ms: number;
}

/** Runs `plugin` with exactly `env` and `stdin`; killed (timedOut) after `timeoutMs`. */
export function runRaw(
  plugin: string,
  env: Record<string, string>,
  stdin: Buffer | string,
  timeoutMs = 10_000,
  extraEnv: Record<string, string> = {},
): Promise<RawRun> {
  const t0 = performance.now();
  const child = startProcess([plugin], { env: { ...env, ...extraEnv }, stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout!.on('data', (d: Buffer) => out.push(d));
  child.stderr!.on('data', (d: Buffer) => err.push(d));
  child.stdin!.on('error', () => {}); // VERSION and early errors exit without reading stdin
  child.stdin!.end(stdin);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), timedOut, ms: performance.now() - t0 });
    });
  });
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function json(buf: Buffer): { ok: true; value: unknown } | { ok: false; why: string } {
  let text: string;
  try {
    text = utf8.decode(buf);
  } catch {
    return { ok: false, why: 'not UTF-8' };
  }
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false, why: `not JSON: ${JSON.stringify(text.slice(0, 80))}` };
  }
}

/** A crash: killed by a signal, a sanitizer's exit code, a sanitizer report, or a hang. */
export function crashOf(r: RawRun): string | null {
  if (r.timedOut) return 'hung (killed after the timeout)';
  if (r.signal) return `killed by ${r.signal}`;
  if (r.code === 98 || r.code === 99) return `sanitizer exit code ${r.code}`;
  const err = r.stderr.toString('latin1');
  if (/AddressSanitizer|UndefinedBehaviorSanitizer|runtime error:|LeakSanitizer/.test(err)) return `sanitizer report: ${err.slice(0, 200)}`;
  return null;
}

/**
 * What in this run breaks the contract for its command (empty when it keeps it). `stdin`
 * lets an ADD result that is the input's prevResult, passed through unchanged, be judged
 * as the input's (a prevResult without cniVersion is the runtime's to answer for).
 */
export function contractViolations(command: string, r: RawRun, stdin?: Buffer): string[] {
  const v: string[] = [];
  if (crashOf(r)) return v; // counted as a crash, not twice
  if (r.stderr.length > 0) v.push(`wrote to stderr: ${JSON.stringify(r.stderr.toString('latin1').slice(0, 80))}`);
  if (r.code !== 0 && r.code !== 1) v.push(`exit code ${r.code}`);
  if (command === 'DEL' && r.code !== 0) v.push('DEL failed');
  if (r.code === 1) {
    const j = json(r.stdout);
    if (!j.ok) return [...v, `error output ${j.why}`];
    const e = j.value;
    if (!isObj(e)) return [...v, 'error output is not an object'];
    if (typeof e.cniVersion !== 'string' || e.cniVersion === '') v.push('error without cniVersion');
    if (!Number.isInteger(e.code) || (e.code as number) < 1) v.push(`error code ${JSON.stringify(e.code)}`);
    if (typeof e.msg !== 'string') v.push('error without msg');
    if (e.details !== undefined && typeof e.details !== 'string') v.push('details is not a string');
    return v;
  }
  if (r.code !== 0) return v;
  if (command === 'ADD') {
    const j = json(r.stdout);
    if (!j.ok) return [...v, `ADD result ${j.why}`];
    if (!isObj(j.value)) v.push('ADD result is not an object');
    else if (typeof j.value.cniVersion !== 'string') {
      const passedThrough = stdin !== undefined && r.stdout.length > 1 && stdin.includes(r.stdout.subarray(0, -1));
      if (!passedThrough) v.push('ADD result without cniVersion');
    }
  } else if (command === 'VERSION') {
    const j = json(r.stdout);
    if (!j.ok) return [...v, `VERSION answer ${j.why}`];
    const a = j.value;
    if (!isObj(a) || typeof a.cniVersion !== 'string' || !Array.isArray(a.supportedVersions) || !a.supportedVersions.includes('1.1.0'))
      v.push('VERSION answer malformed or without 1.1.0');
  } else if (r.stdout.length > 0) {
    v.push(`${command} success printed ${r.stdout.length} bytes`);
  }
  return v;
}
