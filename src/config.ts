/**
 * Configuration of `run`, parsed and validated once at start into a frozen object. Every
 * flag has an environment equivalent (for the DaemonSet); a flag wins over its variable.
 * A bad value is a ConfigError: one clear line and exit code 2.
 */
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { LEVELS, type Level } from './log.js';

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type Mode = 'ebpf' | 'iptables' | 'auto';
export type VariantChoice = 'auto' | 'redirect' | 'redirect_peer';

export interface RunConfig {
  readonly nodeName: string;
  readonly mode: Mode;
  readonly pinRoot: string;
  readonly objectPath: string;
  readonly ztunnelIp: string;
  readonly enroll: readonly string[];
  readonly resyncSeconds: number;
  readonly variant: VariantChoice;
  readonly logLevel: Level;
}

/** The object `make` builds, relative to this module (dist/ or src/). */
export const DEFAULT_OBJECT = fileURLToPath(new URL('../build/redirect.bpf.o', import.meta.url));

interface FlagSpec {
  env: string;
  help: string;
  default?: string;
}

export const RUN_FLAGS: Record<string, FlagSpec> = {
  'node-name': { env: 'NODE_NAME', help: 'this node’s name', default: '' },
  mode: { env: 'REDIRECT_MODE', help: 'capture mode: ebpf | iptables | auto (probe the kernel)', default: 'auto' },
  'pin-root': { env: 'PIN_ROOT', help: 'bpffs mount holding our pins (ambient-redirect/v1/ under it)', default: '/sys/fs/bpf' },
  object: { env: 'BPF_OBJECT', help: 'compiled BPF object', default: DEFAULT_OBJECT },
  'ztunnel-ip': { env: 'ZTUNNEL_IP', help: 'ztunnel’s pod IP (required until ztunnel is discovered from Kubernetes)' },
  enroll: { env: 'ENROLL_IPS', help: 'static membership: comma-separated pod IPs to capture', default: '' },
  'resync-interval': { env: 'RESYNC_INTERVAL', help: 'seconds between full reconcile passes', default: '10' },
  variant: { env: 'REDIRECT_VARIANT', help: 'auto | redirect | redirect_peer (auto: probe the kernel)', default: 'auto' },
  'log-level': { env: 'LOG_LEVEL', help: 'debug | info | warn | error', default: 'info' },
};

export function usageOf(flags: Record<string, FlagSpec>): string {
  return Object.entries(flags)
    .map(([name, f]) => `  --${name.padEnd(16)} ${f.help} [$${f.env}${f.default ? `, default ${f.default}` : ''}]`)
    .join('\n');
}

function oneOf<T extends string>(name: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) throw new ConfigError(`--${name}: "${value}" is not one of ${allowed.join(', ')}`);
  return value as T;
}

function ipList(name: string, value: string): string[] {
  const ips = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const ip of ips) if (!isIP(ip)) throw new ConfigError(`--${name}: "${ip}" is not an IP address`);
  return ips;
}

/** Flag value, else environment value, else default. */
function resolve(values: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv, flags: Record<string, FlagSpec>): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [name, spec] of Object.entries(flags)) {
    const v = values[name];
    out[name] = typeof v === 'string' ? v : env[spec.env] !== undefined && env[spec.env] !== '' ? env[spec.env] : spec.default;
  }
  return out;
}

export function parseFlags(
  argv: readonly string[],
  flags: Record<string, FlagSpec>,
  extra: Record<string, { type: 'boolean' }> = {},
): { values: Record<string, string | boolean | undefined> } {
  try {
    const options = Object.fromEntries(Object.keys(flags).map((k) => [k, { type: 'string' as const }]));
    return parseArgs({ args: [...argv], options: { ...options, ...extra, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
  } catch (err) {
    throw new ConfigError((err as Error).message.split('\n')[0]!);
  }
}

export function parseRunConfig(argv: readonly string[], env: NodeJS.ProcessEnv): RunConfig {
  const { values } = parseFlags(argv, RUN_FLAGS);
  const v = resolve(values, env, RUN_FLAGS);
  const ztunnelIp = v['ztunnel-ip'];
  if (!ztunnelIp) throw new ConfigError('--ztunnel-ip (or $ZTUNNEL_IP) is required');
  if (!isIP(ztunnelIp)) throw new ConfigError(`--ztunnel-ip: "${ztunnelIp}" is not an IP address`);
  const resync = Number(v['resync-interval']);
  if (!Number.isFinite(resync) || resync < 1 || resync > 3600) throw new ConfigError(`--resync-interval: "${v['resync-interval']}" is not a number of seconds in 1..3600`);
  const mode = oneOf('mode', v.mode!, ['ebpf', 'iptables', 'auto'] as const);
  return Object.freeze({
    nodeName: v['node-name'] || (env.HOSTNAME ?? ''),
    mode,
    pinRoot: v['pin-root']!,
    objectPath: v.object!,
    ztunnelIp,
    enroll: Object.freeze(ipList('enroll', v.enroll!)),
    resyncSeconds: resync,
    variant: oneOf('variant', v.variant!, ['auto', 'redirect', 'redirect_peer'] as const),
    logLevel: oneOf('log-level', v['log-level']!, LEVELS),
  });
}
