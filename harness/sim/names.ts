/**
 * Names and addresses of a simulated node. Every netns and link of a run carries the
 * run's prefix, so that a run can find (and remove) exactly what it made.
 */
import { randomBytes } from 'node:crypto';

/** The pods' default gateway: never assigned, only answered by a static neighbour entry. */
export const GATEWAY_IP = '169.254.1.1';
/** The pods' IPv6 gateway: link-local, answered by a static neighbour entry too. */
export const GATEWAY_IP6 = 'fe80::1';
export const ZTUNNEL_IP = '198.18.0.2';
export const ZTUNNEL_IP6 = 'fd00:198:18::2';
/** ztunnel's listeners: outbound capture, inbound plaintext, inbound HBONE. */
export const ZTUNNEL_PORTS = [15001, 15006, 15008, 15053] as const;
export const OUTSIDE_HOST_IP = '198.19.0.1';
export const OUTSIDE_HOST_IP6 = 'fd00:198:19::1';
export const OUTSIDE_IP = '198.19.0.2';
export const OUTSIDE_IP6 = 'fd00:198:19::2';
export const OUTSIDE_PORT = 8080;

/** Link names are at most 15 characters: a 6-character prefix leaves room for `p<index>`. */
const PREFIX_RE = /^[a-z0-9]{1,6}$/;
const MAX_PODS = 240; // keeps 198.18.0.(10 + i) a valid address

export function newPrefix(): string {
  return `ar${randomBytes(2).toString('hex')}`;
}

/** Where a run pins its data path: a folder of the host bpffs named by the run's prefix. */
export function runPinRoot(prefix: string): string {
  return `/sys/fs/bpf/${prefix}`;
}

export function checkPrefix(prefix: string): void {
  if (!PREFIX_RE.test(prefix)) throw new Error(`sim prefix must match ${PREFIX_RE}, got "${prefix}"`);
}

export function checkPodCount(pods: number): void {
  if (!Number.isInteger(pods) || pods < 0 || pods > MAX_PODS) {
    throw new Error(`sim pod count must be an integer in 0..${MAX_PODS}, got ${pods}`);
  }
}

/** True for every netns name a run with this prefix creates. */
export function isRunNetns(prefix: string, name: string): boolean {
  return name.startsWith(`${prefix}-`);
}

export const names = {
  nodeNs: (prefix: string) => `${prefix}-node`,
  ztunnelNs: (prefix: string) => `${prefix}-zt`,
  outsideNs: (prefix: string) => `${prefix}-out`,
  podNs: (prefix: string, i: number) => `${prefix}-pod${i}`,
  podVeth: (prefix: string, i: number) => `${prefix}p${i}`,
  ztunnelVeth: (prefix: string) => `${prefix}zt`,
  outsideVeth: (prefix: string) => `${prefix}o`,
  podIp: (i: number) => `198.18.0.${10 + i}`,
  podIp6: (i: number) => `fd00:198:18::${(10 + i).toString(16)}`,
};
