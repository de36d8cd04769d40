/**
 * A CNI invocation as the agent sees it (CNI spec 1.1, configurations of 0.3.0 to 1.1.0):
 * the CNI_* environment, the network configuration on stdin with the previous plugin's
 * result, and the Kubernetes facts the runtime passes in CNI_ARGS. Parsing is pure and
 * never throws: a request is valid or a CNI error to answer with. The members the plugin
 * also reads (cniVersion, prevResult) are found as it finds them (json-members.ts), and
 * prevResult is kept as its raw bytes to be passed through unchanged.
 */
import { isIP } from 'node:net';
import { topLevelMembers } from './json-members.js';
import type { RawRequest } from './protocol.js';

/** The spec versions we take in a configuration (the plugin's VERSION answer). */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export const LATEST_VERSION = '1.1.0';

/** CNI spec error codes we answer with. */
export const CNI_ERR = {
  incompatibleVersion: 1,
  notAvailable: 50,
  invalidEnv: 4,
  decode: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
} as const;

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'STATUS' | 'GC';

export interface CniRequest {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  /** K8S_POD_NAMESPACE / K8S_POD_NAME / K8S_POD_UID from CNI_ARGS ('' when absent). */
  pod: { namespace: string; name: string; uid: string };
  cniVersion: string;
  /** The previous plugin's result, parsed (null when the chain gave none). */
  prevResult: Record<string, unknown> | null;
  /** The same, as the bytes received (what ADD passes through). */
  prevResultRaw: Buffer | null;
  /** GC: the container IDs of the attachments the runtime still has. */
  validAttachments: string[] | null;
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

/**
 * "K1=V1;K2=V2" (CNI_ARGS): a term splits at its first '=', terms without a key are
 * skipped, the last of duplicates wins (the plugin reads it the same way).
 */
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

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

const GC_LISTS = ['cni.dev/valid-attachments', 'cni.dev/attachments'];

export function parseRequest(raw: RawRequest): Parsed {
  const env = raw.env;
  let text: string;
  try {
    text = utf8.decode(raw.stdin);
  } catch {
    return { ok: false, cniVersion: '1.0.0', error: { code: CNI_ERR.decode, msg: 'the network configuration is not UTF-8' } };
  }
  let conf: unknown;
  try {
    conf = JSON.parse(text);
  } catch (err) {
    return { ok: false, cniVersion: '1.0.0', error: { code: CNI_ERR.decode, msg: 'the network configuration is not JSON', details: (err as Error).message } };
  }
  if (!isObj(conf)) return { ok: false, cniVersion: '1.0.0', error: { code: CNI_ERR.decode, msg: 'the network configuration is not a JSON object' } };
  const members = topLevelMembers(text, ['cniVersion', 'prevResult', ...GC_LISTS]);
  const member = (k: string): unknown => (members.has(k) ? JSON.parse(members.get(k)!) : undefined);
  const version = member('cniVersion');
  let cniVersion = '1.0.0';
  if (version !== undefined) {
    if (typeof version !== 'string' || !(SUPPORTED_VERSIONS as readonly string[]).includes(version)) {
      return {
        ok: false,
        cniVersion: LATEST_VERSION,
        error: {
          code: CNI_ERR.incompatibleVersion,
          msg: `cniVersion ${JSON.stringify(version).slice(0, 32)} is not supported (${SUPPORTED_VERSIONS.join(', ')})`,
        },
      };
    }
    cniVersion = version;
  }
  const fail = (code: number, msg: string): Parsed => ({ ok: false, cniVersion, error: { code, msg } });
  const command = env.CNI_COMMAND ?? '';
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK' && command !== 'STATUS' && command !== 'GC') {
    return fail(CNI_ERR.invalidEnv, `CNI_COMMAND "${command.slice(0, 32)}" is not ADD, DEL, CHECK, STATUS or GC`);
  }
  const attachment = command === 'ADD' || command === 'DEL' || command === 'CHECK';
  const containerId = env.CNI_CONTAINERID ?? '';
  if (attachment && containerId === '') return fail(CNI_ERR.invalidEnv, 'CNI_CONTAINERID is not set');
  if ((command === 'ADD' || command === 'CHECK') && !env.CNI_NETNS) return fail(CNI_ERR.invalidEnv, 'CNI_NETNS is not set');
  // null is no prevResult (the plugin reads it so too).
  const prev = attachment ? member('prevResult') : undefined; // STATUS and GC have none to read
  if (prev !== undefined && prev !== null && !isObj(prev)) return fail(CNI_ERR.decode, 'prevResult is not an object');
  const prevResult = isObj(prev) ? prev : null;
  const prevResultRaw = prevResult ? Buffer.from(members.get('prevResult')!) : null;
  const ips = prevResultIps(prevResult);
  if (!Array.isArray(ips)) return { ok: false, cniVersion, error: ips };
  let validAttachments: string[] | null = null;
  if (command === 'GC') {
    const list = GC_LISTS.map(member).find((v) => v !== undefined);
    if (!Array.isArray(list)) return fail(CNI_ERR.invalidConfig, 'GC without a cni.dev/valid-attachments list');
    validAttachments = [];
    for (const [i, a] of list.entries()) {
      if (!isObj(a) || typeof a.containerID !== 'string') return fail(CNI_ERR.invalidConfig, `cni.dev/valid-attachments[${i}] has no containerID`);
      validAttachments.push(a.containerID);
    }
  }
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
      prevResultRaw,
      validAttachments,
      ips,
    },
  };
}

/** ADD's answer when we add nothing: the previous result byte for byte, or a bare result. */
export function passThrough(req: Pick<CniRequest, 'cniVersion' | 'prevResultRaw'>): Buffer {
  if (req.prevResultRaw) return Buffer.concat([req.prevResultRaw, Buffer.from('\n')]);
  return Buffer.from(JSON.stringify({ cniVersion: req.cniVersion }) + '\n');
}

export function errorResult(cniVersion: string, e: CniError): string {
  return JSON.stringify({ cniVersion, code: e.code, msg: e.msg, ...(e.details !== undefined && { details: e.details }) }) + '\n';
}
