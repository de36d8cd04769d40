/**
 * Install: the plugin binary into the CNI bin folder, our entry at the end of the node's
 * CNI configuration list. The list's original bytes are kept in our state folder, with
 * the bytes we wrote: uninstall puts the original back byte for byte when the file is
 * still ours as we left it, and otherwise (someone rewrote it since) removes only our
 * entry.
 */
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { addPlugin, ConflistError, hasPlugin, pickConfigFile, PLUGIN_TYPE, removePlugin, type PluginEntry } from './conflist.js';
import { writeAtomic } from './nsfile.js';

export interface InstallOptions {
  binDir: string;
  confDir: string;
  stateDir: string;
  /** The plugin binary to copy. */
  plugin: string;
  entry: Omit<PluginEntry, 'type'>;
}

export interface InstallResult {
  conflist: string;
  changed: boolean;
}

const saved = (stateDir: string, file: string) => ({
  orig: join(stateDir, 'cni', `${file}.orig`),
  ours: join(stateDir, 'cni', `${file}.ours`),
});

function configFile(confDir: string): string {
  const name = pickConfigFile(existsSync(confDir) ? readdirSync(confDir) : []);
  if (!name) throw new ConflistError(`no CNI configuration in ${confDir} (is the primary CNI installed?)`);
  if (!name.endsWith('.conflist')) throw new ConflistError(`${join(confDir, name)} is the runtime's configuration but not a .conflist: cannot chain into it`);
  return name;
}

export function installCni(o: InstallOptions): InstallResult {
  // The binary first: a list naming a plugin the runtime cannot find fails every pod.
  // Copied only when it differs (the folder watch installs again on every change), through
  // writeAtomic: the runtime never runs half a binary.
  const bin = join(o.binDir, PLUGIN_TYPE);
  const want = readFileSync(o.plugin);
  let have: Buffer | null = null;
  try {
    have = readFileSync(bin);
  } catch {
    // not there yet
  }
  if (!have?.equals(want)) writeAtomic(bin, want, 0o755);
  const name = configFile(o.confDir);
  const file = join(o.confDir, name);
  const text = readFileSync(file, 'utf8');
  const next = addPlugin(text, { type: PLUGIN_TYPE, ...o.entry });
  if (next === text) return { conflist: file, changed: false };
  const s = saved(o.stateDir, name);
  // Keep the original only when the file has no entry of ours (a rewrite by the primary
  // CNI with our entry still in it is not an original).
  if (!hasPlugin(text)) writeAtomic(s.orig, readFileSync(file), statSync(file).mode & 0o777);
  writeAtomic(file, next, statSync(file).mode & 0o777);
  writeAtomic(s.ours, next);
  return { conflist: file, changed: true };
}

export interface UninstallResult {
  conflist: string | null;
  restored: 'original' | 'entry removed' | 'nothing to do';
}

export function uninstallCni(o: Pick<InstallOptions, 'binDir' | 'confDir' | 'stateDir'>): UninstallResult {
  let result: UninstallResult = { conflist: null, restored: 'nothing to do' };
  const names = existsSync(o.confDir) ? readdirSync(o.confDir) : [];
  for (const name of names.filter((n) => n.endsWith('.conflist'))) {
    const file = join(o.confDir, name);
    const s = saved(o.stateDir, name);
    const text = readFileSync(file, 'utf8');
    if (existsSync(s.orig) && existsSync(s.ours) && readFileSync(s.ours, 'utf8') === text) {
      writeAtomic(file, readFileSync(s.orig), statSync(file).mode & 0o777);
      result = { conflist: file, restored: 'original' };
    } else {
      let without: string | null = null;
      try {
        without = removePlugin(text);
      } catch {
        // Not a list we can read: not ours to touch.
      }
      if (without !== null) {
        writeAtomic(file, without, statSync(file).mode & 0o777);
        result = { conflist: file, restored: 'entry removed' };
      }
    }
    rmSync(s.orig, { force: true });
    rmSync(s.ours, { force: true });
  }
  rmSync(join(o.binDir, PLUGIN_TYPE), { force: true });
  return result;
}
