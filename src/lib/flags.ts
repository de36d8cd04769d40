/**
 * The one flag resolver every command uses (run, status, uninstall, cni, and the harness's
 * demo and bench). Each flag has an environment equivalent and maybe a default; a value
 * comes from, in order:
 *   1. the command line, when the flag is given there (even as `--flag=`, an empty value);
 *   2. the environment variable, when it is set AND not empty;
 *   3. the default (or undefined when the flag has none).
 * An empty environment variable counts as unset everywhere: a manifest that renders
 * `PIN_ROOT: ""` gets the default, never an empty path.
 */
import { parseArgs } from 'node:util';

/** A bad flag or environment value: one line on stderr, exit code 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface FlagSpec {
  env: string;
  help: string;
  default?: string;
}

/** Where the agent's bpffs is mounted, unless --pin-root / $PIN_ROOT say otherwise. */
export const DEFAULT_PIN_ROOT = '/sys/fs/bpf';

/** --pin-root, the one declaration every command that reads or writes our pins shares. */
export const PIN_ROOT_FLAG: Record<'pin-root', FlagSpec> = {
  'pin-root': { env: 'PIN_ROOT', help: 'bpffs mount holding our pins (ambient-redirect/v1/ under it)', default: DEFAULT_PIN_ROOT },
};

/** --host-proc: the host's /proc, where `run` (inpod) and `uninstall` find the pods' netns. */
export const HOST_PROC_FLAG: Record<'host-proc', FlagSpec> = {
  'host-proc': {
    env: 'HOST_PROC',
    help: 'the host’s /proc (hostPID: /proc), where the pods’ network namespaces are found (inpod mode)',
    default: '/proc',
  },
};

export function usageOf(flags: Record<string, FlagSpec>): string {
  return Object.entries(flags)
    .map(([name, f]) => `  --${name.padEnd(16)} ${f.help} [$${f.env}${f.default ? `, default ${f.default}` : ''}]`)
    .join('\n');
}

/** The command line alone: string flags, the given booleans, and --help/-h. */
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

/** Each flag's value by the rule above (the module comment). */
export function resolveValues(
  values: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  flags: Record<string, FlagSpec>,
): Record<string, string | undefined> {
  const out: Record<string, string | undefined> = {};
  for (const [name, spec] of Object.entries(flags)) {
    const v = values[name];
    const e = env[spec.env];
    out[name] = typeof v === 'string' ? v : e !== undefined && e !== '' ? e : spec.default;
  }
  return out;
}

export interface ResolvedFlags<F extends string> {
  /** Every string flag, resolved (command line, then a non-empty environment variable, then the default). */
  get(name: F): string | undefined;
  /** A boolean flag given on the command line. */
  flag(name: string): boolean;
  /** --help or -h was given. */
  help: boolean;
  /** The raw command-line values (for a caller that must tell "given empty" from "not given"). */
  given: Record<string, string | boolean | undefined>;
}

/** Parses argv and resolves every flag against the environment: what each command calls. */
export function resolveFlags<F extends string>(
  argv: readonly string[],
  flags: Record<F, FlagSpec>,
  env: NodeJS.ProcessEnv = process.env,
  booleans: readonly string[] = [],
): ResolvedFlags<F> {
  const { values } = parseFlags(argv, flags, Object.fromEntries(booleans.map((b) => [b, { type: 'boolean' as const }])));
  const resolved = resolveValues(values, env, flags);
  return {
    get: (name) => resolved[name],
    flag: (name) => values[name] === true,
    help: values.help === true,
    given: values,
  };
}
