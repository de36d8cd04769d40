/**
 * A CNI invocation as the agent sees it (CNI spec 1.0): the CNI_* environment, the
 * network configuration on stdin with the previous plugin's result, and the Kubernetes
 * facts the runtime passes in CNI_ARGS. Parsing is pure and never throws: a request is
 * valid or a CNI error to answer with.
 */
import { isIP } from 'node:net';
import type { RawRequest } from './protocol.js';

/** CNI spec error codes we answer with. */
export const CNI_ERR = {
  incompatibleVersion: 1,
  invalidEnv: 4,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
} as const;

export type CniCommand = 'ADD' | 'DEL' | 'CHECK';

export interface CniRequest {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  /** K8S_POD_NAMESPACE / K8S_POD_NAME / K8S_POD_UID from CNI_ARGS ('' when absent). */
  pod: { namespace: string; name: string; uid: string };
  cniVersion: string;
  /** The previous plugin's result, as received (null when the chain gave none). */
  prevResult: Record<string, unknown> | null;
  /** The sandbox's addresses from prevResult.ips, without prefix length, canonical. */
  ips: string[];
}

export interface CniError {
  code: number;
  msg: string;
  details?: string;
}

export type Parsed = { ok: true; req: CniRequest } | { ok: false; error: CniError; cniVersion: string };

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** "K1=V1;K2=V2" (CNI_ARGS); later keys win, malformed terms are skipped. */
export function parseCniArgs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const term of text.split(';')) {
    const eq = term.indexOf('=');
    if (eq > 0) out[term.slice(0, eq)] = term.slice(eq + 1);
  }
  return out;
}

/** The addresses of prevResult.ips ("10.0.0.5/24" → "10.0.0.5"); invalid ones are errors. */
export function prevResultIps(prev: Record<string, unknown> | null): string[] | CniError {
  if (!prev || prev.ips === undefined) return [];
  if (!Array.isArray(prev.ips)) return { code: CNI_ERR.decode, msg: 'prevResult.ips is not a list' };
  const out: string[] = [];
  for (const [i, e] of prev.ips.entries()) {
    const addr = isObj(e) ? e.address : undefined;
    if (typeof addr !== 'string') return { code: CNI_ERR.decode, msg: `prevResult.ips[${i}].address is missing` };
    const ip = addr.split('/')[0]!;
    const family = isIP(ip);
    if (family === 0 || ip.includes('%')) return { code: CNI_ERR.decode, msg: `prevResult.ips[${i}].address "${addr.slice(0, 64)}" is not an address` };
    const canon = family === 6 ? ip.toLowerCase() : ip;
    if (!out.includes(canon)) out.push(canon);
  }
  return out;
}

export function parseRequest(raw: RawRequest): Parsed {
  const env = raw.env;
  let conf: unknown;
  try {
    conf = JSON.parse(raw.stdin.toString('utf8'));
  } catch (err) {
    return { ok: false, cniVersion: '1.0.0', error: { code: CNI_ERR.decode, msg: 'the network configuration is not JSON', details: (err as Error).message } };
  }
  if (!isObj(conf)) return { ok: false, cniVersion: '1.0.0', error: { code: CNI_ERR.decode, msg: 'the network configuration is not a JSON object' } };
  const cniVersion = typeof conf.cniVersion === 'string' && conf.cniVersion !== '' ? conf.cniVersion : '1.0.0';
  const fail = (code: number, msg: string): Parsed => ({ ok: false, cniVersion, error: { code, msg } });
  const command = env.CNI_COMMAND ?? '';
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') return fail(CNI_ERR.invalidEnv, `CNI_COMMAND "${command.slice(0, 32)}" is not ADD, DEL or CHECK`);
  const containerId = env.CNI_CONTAINERID ?? '';
  if (containerId === '') return fail(CNI_ERR.invalidEnv, 'CNI_CONTAINERID is not set');
  if (command !== 'DEL' && !env.CNI_NETNS) return fail(CNI_ERR.invalidEnv, 'CNI_NETNS is not set');
  if (conf.prevResult !== undefined && !isObj(conf.prevResult)) return fail(CNI_ERR.decode, 'prevResult is not an object');
  const prevResult = (conf.prevResult as Record<string, unknown> | undefined) ?? null;
  const ips = prevResultIps(prevResult);
  if (!Array.isArray(ips)) return { ok: false, cniVersion, error: ips };
  const args = parseCniArgs(env.CNI_ARGS ?? '');
  return {
    ok: true,
    req: {
      command,
      containerId,
      netns: env.CNI_NETNS ?? '',
      ifname: env.CNI_IFNAME ?? '',
      pod: { namespace: args.K8S_POD_NAMESPACE ?? '', name: args.K8S_POD_NAME ?? '', uid: args.K8S_POD_UID ?? '' },
      cniVersion,
      prevResult,
      ips,
    },
  };
}

/** ADD's answer when we add nothing: the previous result, unchanged. */
export function passThrough(req: Pick<CniRequest, 'cniVersion' | 'prevResult'>): string {
  return JSON.stringify(req.prevResult ?? { cniVersion: req.cniVersion }) + '\n';
}

export function errorResult(cniVersion: string, e: CniError): string {
  return JSON.stringify({ cniVersion, code: e.code, msg: e.msg, ...(e.details !== undefined && { details: e.details }) }) + '\n';
}
