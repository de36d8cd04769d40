/** `ambient-redirect cni install|uninstall`: the plugin and our entry in the node's CNI config list. */
import { RUN_FLAGS, ConfigError, usageOf } from '../config.js';
import { resolveFlags } from '../lib/flags.js';
import { pluginTimeoutFor } from './conflist.js';
import { installCni, uninstallCni } from './install.js';
import { namespacesFile } from './nsfile.js';

const FLAGS = Object.fromEntries(
  ['cni-socket', 'cni-add-timeout', 'cni-state-dir', 'cni-bin-dir', 'cni-conf-dir', 'cni-plugin'].map((k) => [k, RUN_FLAGS[k]!]),
);

export const cniUsage = `usage: ambient-redirect cni install|uninstall [flags]

install    copies the plugin into the CNI bin folder and adds it at the end of the node's
           CNI configuration list (the first file of the folder, a .conflist); the
           original bytes are kept in the state folder
uninstall  restores the list byte for byte (or, if it changed since, removes our entry)
           and removes the plugin

\`run --cni-socket ... --cni-install true\` installs by itself once the namespaces are known.

flags (environment equivalents in brackets):
${usageOf(FLAGS)}
`;

export async function cniCommand(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(cniUsage);
    return 0;
  }
  const [action, ...rest] = argv;
  if (action !== 'install' && action !== 'uninstall') throw new ConfigError(`expected install or uninstall, got "${action ?? ''}"`);
  const f = resolveFlags(rest, FLAGS);
  const v = (k: string) => f.get(k) ?? '';
  const dirs = { binDir: v('cni-bin-dir'), confDir: v('cni-conf-dir'), stateDir: v('cni-state-dir') };
  if (action === 'uninstall') {
    const r = uninstallCni(dirs);
    process.stdout.write(`${JSON.stringify({ msg: 'cni: uninstalled', ...r })}\n`);
    return 0;
  }
  const socket = v('cni-socket') || '/var/run/ambient-redirect/cni.sock';
  const timeout = Number(v('cni-add-timeout'));
  if (!Number.isFinite(timeout) || timeout <= 0) throw new ConfigError(`--cni-add-timeout: "${v('cni-add-timeout')}" is not a number of seconds`);
  const r = installCni({
    ...dirs,
    plugin: v('cni-plugin'),
    entry: { socketPath: socket, namespacesFile: namespacesFile(dirs.stateDir), timeoutMs: pluginTimeoutFor(timeout * 1000) },
  });
  process.stdout.write(`${JSON.stringify({ msg: 'cni: installed', ...r })}\n`);
  return 0;
}
