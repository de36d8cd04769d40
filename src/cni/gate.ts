/**
 * The CNI gate as `run` wires it: the socket server with its handler, the ambient
 * namespace list kept on the host on every namespace change, and (with --cni-install)
 * the plugin installed once that list exists, so that the plugin never runs without it.
 */
import type { CniConfig } from '../config.js';
import type { Logger } from '../log.js';
import { CniHandler, type CniMembership } from './handler.js';
import { installCni } from './install.js';
import { namespacesFile, NamespaceListWriter } from './nsfile.js';
import { serveCni, type CniServer } from './server.js';

export interface GateMembership extends CniMembership {
  namespacesSynced(): boolean;
  ambientNamespaces(): string[];
}

/** The plugin waits a little longer than the agent, so the agent's own error is the one seen. */
export const pluginTimeoutMs = (cfg: CniConfig) => Math.round(cfg.addTimeoutMs + 2_000);

export interface CniGate {
  handler: CniHandler;
  close(): Promise<void>;
}

export async function startCniGate(cfg: CniConfig, m: GateMembership, log: Logger): Promise<CniGate> {
  const handler = new CniHandler(m, { addTimeoutMs: cfg.addTimeoutMs, log });
  const writer = new NamespaceListWriter(namespacesFile(cfg.stateDir));
  let installed = !cfg.install;
  const sync = () => {
    if (!m.namespacesSynced()) return;
    try {
      if (writer.update(m.ambientNamespaces())) log.info('cni: ambient namespace list written', { file: writer.file, namespaces: m.ambientNamespaces().length });
    } catch (err) {
      log.error('cni: cannot write the ambient namespace list', { file: writer.file, error: String(err) });
      return;
    }
    if (installed) return;
    installed = true;
    try {
      const r = installCni({
        binDir: cfg.binDir,
        confDir: cfg.confDir,
        stateDir: cfg.stateDir,
        plugin: cfg.plugin,
        entry: { socketPath: cfg.socket, namespacesFile: writer.file, timeoutMs: pluginTimeoutMs(cfg) },
      });
      log.info('cni: plugin installed', { conflist: r.conflist, changed: r.changed });
    } catch (err) {
      log.error('cni: cannot install the plugin', { error: err instanceof Error ? err.message : String(err) });
    }
  };
  m.onChange(sync);
  const server: CniServer = await serveCni(cfg.socket, (r) => handler.handle(r), log);
  sync();
  return { handler, close: () => server.close() };
}
