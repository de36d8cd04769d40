/**
 * API objects arrive as untrusted JSON: a field may be missing, of the wrong type, huge,
 * or an address may be odd. Each object becomes a validated view or a reason to reject
 * it; nothing here throws.
 */
import { isIP } from 'node:net';
import { podOverrides, STATUS_ANNOTATION, type NamespaceView, type PodView } from '../core/enrollment.js';

export type Parsed<T> = { ok: true; value: T } | { ok: false; reason: string; uid?: string };

/** The API server's own limit on all annotations of an object together. */
export const MAX_ANNOTATION_BYTES = 256 * 1024;
const MAX_NAME = 253;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

class Reject extends Error {}

function str(o: Obj, key: string, where: string, opts: { optional?: boolean; max?: number } = {}): string {
  const v = o[key];
  if (v === undefined || v === null) {
    if (opts.optional) return '';
    throw new Reject(`${where}.${key} is missing`);
  }
  if (typeof v !== 'string') throw new Reject(`${where}.${key} is a ${typeof v}, not a string`);
  if (v.length > (opts.max ?? MAX_NAME)) throw new Reject(`${where}.${key} is ${v.length} characters long`);
  return v;
}

function obj(o: Obj, key: string, where: string): Obj {
  const v = o[key];
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new Reject(`${where}.${key} is not an object`);
  return v;
}

function stringMap(o: Obj, key: string, where: string): Record<string, string> {
  const m = obj(o, key, where);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(m)) {
    if (typeof v !== 'string') throw new Reject(`${where}.${key}["${k.slice(0, 64)}"] is a ${typeof v}, not a string`);
    out[k] = v;
  }
  return out;
}

function resourceVersion(meta: Obj): bigint {
  const rv = str(meta, 'resourceVersion', 'metadata');
  if (!/^\d{1,20}$/.test(rv)) throw new Reject(`metadata.resourceVersion "${rv.slice(0, 32)}" is not an integer`);
  return BigInt(rv);
}

/** An address exactly as an API server writes it: canonical, no zone, no prefix, no spaces. */
export function canonicalIp(text: string): string | null {
  const family = isIP(text);
  if (family === 4) return text; // node's isIP rejects leading zeros and spaces
  if (family === 6 && !text.includes('%') && !text.includes('.')) return text.toLowerCase();
  return null;
}

function podIps(status: Obj): string[] {
  const list = status.podIPs;
  const raw: unknown[] = Array.isArray(list) ? list.map((e) => (isObj(e) ? e.ip : e)) : [];
  if (raw.length === 0 && status.podIP !== undefined && status.podIP !== null && status.podIP !== '') raw.push(status.podIP);
  return raw.map((ip, i) => {
    if (typeof ip !== 'string') throw new Reject(`status.podIPs[${i}] is a ${typeof ip}, not a string`);
    const c = canonicalIp(ip);
    if (!c) throw new Reject(`status.podIPs[${i}] "${ip.slice(0, 64)}" is not a canonical IP address`);
    return c;
  });
}

function hasSidecar(spec: Obj, annotations: Record<string, string>): boolean {
  if ('sidecar.istio.io/status' in annotations) return true;
  const containers = spec.containers;
  if (containers !== undefined && !Array.isArray(containers)) throw new Reject('spec.containers is not a list');
  return (containers ?? []).some((c: unknown) => isObj(c) && c.name === 'istio-proxy');
}

/** The controlling owner: the ownerReferences entry with controller: true (at most one, as the API enforces). */
function controllerOwner(meta: Obj): { kind: string; name: string } | null {
  const refs = meta.ownerReferences;
  if (refs === undefined || refs === null) return null;
  if (!Array.isArray(refs)) throw new Reject('metadata.ownerReferences is not a list');
  let found: { kind: string; name: string } | null = null;
  for (const [i, r] of refs.entries()) {
    if (!isObj(r)) throw new Reject(`metadata.ownerReferences[${i}] is not an object`);
    if (r.controller !== true) continue;
    if (found) throw new Reject('metadata.ownerReferences has more than one controller');
    found = { kind: str(r, 'kind', `metadata.ownerReferences[${i}]`), name: str(r, 'name', `metadata.ownerReferences[${i}]`) };
  }
  return found;
}

function isReady(status: Obj): boolean {
  const conds = status.conditions;
  if (!Array.isArray(conds)) return false;
  return conds.some((c: unknown) => isObj(c) && c.type === 'Ready' && c.status === 'True');
}

export function parsePod(raw: unknown): Parsed<PodView> {
  let uid: string | undefined;
  try {
    if (!isObj(raw)) throw new Reject('not an object');
    const meta = obj(raw, 'metadata', 'pod');
    uid = str(meta, 'uid', 'metadata', { max: 64 });
    if (uid === '') throw new Reject('metadata.uid is empty');
    const annotations = stringMap(meta, 'annotations', 'metadata');
    let bytes = 0;
    for (const [k, v] of Object.entries(annotations)) bytes += k.length + v.length;
    if (bytes > MAX_ANNOTATION_BYTES) throw new Reject(`annotations are ${bytes} bytes (the API's limit is ${MAX_ANNOTATION_BYTES})`);
    const spec = obj(raw, 'spec', 'pod');
    const status = obj(raw, 'status', 'pod');
    const hostNetwork = spec.hostNetwork ?? false;
    if (typeof hostNetwork !== 'boolean') throw new Reject('spec.hostNetwork is not a boolean');
    const created = str(meta, 'creationTimestamp', 'metadata', { optional: true });
    const createdMs = created ? Date.parse(created) : 0;
    if (Number.isNaN(createdMs)) throw new Reject(`metadata.creationTimestamp "${created.slice(0, 40)}" is not a date`);
    const hostIpText = str(status, 'hostIP', 'status', { optional: true });
    const deletion = meta.deletionTimestamp;
    if (deletion !== undefined && deletion !== null && typeof deletion !== 'string') throw new Reject('metadata.deletionTimestamp is not a string');
    const value: PodView = {
      uid,
      name: str(meta, 'name', 'metadata'),
      namespace: str(meta, 'namespace', 'metadata'),
      nodeName: str(spec, 'nodeName', 'spec', { optional: true }),
      resourceVersion: resourceVersion(meta),
      labels: stringMap(meta, 'labels', 'metadata'),
      ips: podIps(status),
      hostIp: hostIpText ? canonicalIp(hostIpText) : null,
      hostNetwork,
      phase: str(status, 'phase', 'status', { optional: true }) || 'Pending',
      sidecar: hasSidecar(spec, annotations),
      ready: isReady(status),
      created: createdMs,
      statusAnnotation: annotations[STATUS_ANNOTATION] ?? null,
      owner: controllerOwner(meta),
      serviceAccount: str(spec, 'serviceAccountName', 'spec', { optional: true }),
      terminating: typeof deletion === 'string' && deletion !== '',
      overrides: podOverrides(annotations),
    };
    return { ok: true, value };
  } catch (err) {
    if (err instanceof Reject) return { ok: false, reason: err.message, ...(uid && { uid }) };
    return { ok: false, reason: `unexpected: ${String(err)}`, ...(uid && { uid }) };
  }
}

export function parseNamespace(raw: unknown): Parsed<{ ns: NamespaceView; resourceVersion: bigint }> {
  try {
    if (!isObj(raw)) throw new Reject('not an object');
    const meta = obj(raw, 'metadata', 'namespace');
    return {
      ok: true,
      value: { ns: { name: str(meta, 'name', 'metadata'), labels: stringMap(meta, 'labels', 'metadata') }, resourceVersion: resourceVersion(meta) },
    };
  } catch (err) {
    return { ok: false, reason: err instanceof Reject ? err.message : `unexpected: ${String(err)}` };
  }
}
