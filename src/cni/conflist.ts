/**
 * Our entry in the node's CNI configuration list, as pure text-to-text functions. The
 * runtime uses the first file of the folder in lexical order (.conf, .conflist, .json);
 * we chain only into a .conflist (a single-plugin .conf has no chain to join), and only
 * into one whose every spec version (cniVersion, and the 1.1 list cniVersions) we
 * support: a runtime that validates the list against our VERSION answer would otherwise
 * reject the whole list, and the node would lose pod networking.
 */
import { SUPPORTED_VERSIONS } from './request.js';

/**
 * How much longer than the agent's ADD deadline the plugin waits for the agent's answer, so
 * that the agent's own error (which names what is missing) is the one the runtime sees, even
 * when the agent's loop is busy (a resync pass checking every pod's capture).
 */
export const PLUGIN_TIMEOUT_MARGIN_MS = 5_000;

/** The plugin's `timeoutMs` for an agent whose ADD deadline is `addTimeoutMs`. */
export const pluginTimeoutFor = (addTimeoutMs: number): number => Math.round(addTimeoutMs + PLUGIN_TIMEOUT_MARGIN_MS);

export const PLUGIN_TYPE = 'ambient-redirect-cni';

export class ConflistError extends Error {}

export interface PluginEntry {
  type: typeof PLUGIN_TYPE;
  socketPath: string;
  namespacesFile: string;
  timeoutMs: number;
}

/** The file the runtime uses, or null when there is none. */
export function pickConfigFile(names: readonly string[]): string | null {
  const candidates = names.filter((n) => /\.(conf|conflist|json)$/.test(n) && !n.startsWith('.')).sort();
  return candidates[0] ?? null;
}

type Obj = Record<string, unknown>;

function parseList(text: string): { conf: Obj; plugins: Obj[] } {
  let conf: unknown;
  try {
    conf = JSON.parse(text);
  } catch (err) {
    throw new ConflistError(`not JSON: ${(err as Error).message}`);
  }
  if (typeof conf !== 'object' || conf === null || Array.isArray(conf)) throw new ConflistError('not a JSON object');
  const plugins = (conf as Obj).plugins;
  if (!Array.isArray(plugins)) throw new ConflistError('no "plugins" list (a .conflist is needed to chain a plugin)');
  return { conf: conf as Obj, plugins: plugins as Obj[] };
}

const ours = (p: unknown) => typeof p === 'object' && p !== null && (p as Obj).type === PLUGIN_TYPE;

export function hasPlugin(text: string): boolean {
  return parseList(text).plugins.some(ours);
}

/** Throws when the list names a spec version the plugin does not support. */
export function checkVersions(conf: Record<string, unknown>): void {
  const supported = SUPPORTED_VERSIONS as readonly string[];
  if (typeof conf.cniVersion !== 'string') throw new ConflistError('no "cniVersion" string: cannot tell whether the plugin supports the list');
  if (conf.cniVersions !== undefined && !Array.isArray(conf.cniVersions)) throw new ConflistError('"cniVersions" is not a list');
  const named = [conf.cniVersion, ...((conf.cniVersions as unknown[] | undefined) ?? [])];
  for (const v of named) {
    if (typeof v !== 'string' || !supported.includes(v)) {
      throw new ConflistError(`the list's CNI version ${JSON.stringify(v)} is not one the plugin supports (${supported.join(', ')}): not installing into it`);
    }
  }
}

/** The list with our entry last (an entry of ours already there is replaced); unchanged text when equal. */
export function addPlugin(text: string, entry: PluginEntry): string {
  const { conf, plugins } = parseList(text);
  checkVersions(conf);
  const others = plugins.filter((p) => !ours(p));
  const next = { ...conf, plugins: [...others, entry] };
  if (JSON.stringify(next) === JSON.stringify(conf)) return text;
  return JSON.stringify(next, null, 2) + '\n';
}

/** The list without our entry, or null when it has none. */
export function removePlugin(text: string): string | null {
  const { conf, plugins } = parseList(text);
  if (!plugins.some(ours)) return null;
  return JSON.stringify({ ...conf, plugins: plugins.filter((p) => !ours(p)) }, null, 2) + '\n';
}
