/**
 * The CNI gate as `run` wires it: the ambient namespace list kept on the host, the socket
 * server with its handler, and (with --cni-install) our entry in the runtime's config list.
 *
 * - At start the gate waits (at most `startWaitMs`) for the namespaces and writes the list
 *   before the socket serves: a namespace labelled ambient while the agent was down is in
 *   the list the plugin falls back on from then on. Without the namespaces in time it
 *   serves anyway (the handler answers "try again" until it knows) and writes the list as
 *   soon as they come.
 * - The list is written on every namespace change and checked again on a timer and on
 *   changes in its folder: deleted or edited by someone else, it is rewritten.
 * - The plugin is installed once the list exists, and the config folder is watched
 *   (fs.watch plus the timer): when the primary CNI rewrites its list without our entry
 *   (Cilium, Calico do on restart or upgrade), the entry goes back in. `onInstalled`
 *   reports whether the entry is in place (readiness), with the reason when it is not.
 */
import { watch, type FSWatcher } from 'node:fs';
import { dirname } from 'node:path';
import type { CniConfig } from '../config.js';
import type { Logger } from '../log.js';
import { CniHandler, type CniMembership, type InPodGate } from './handler.js';
import { installCni } from './install.js';
import { pluginTimeoutFor } from './conflist.js';
import { namespacesFile, NamespaceListWriter } from './nsfile.js';
import { serveCni, type CniServer } from './server.js';

export interface GateMembership extends CniMembership {
  namespacesSynced(): boolean;
  ambientNamespaces(): string[];
}

export interface GateOptions {
  /** Our entry in the runtime's config list is in place (true) or not (false, with why). */
  onInstalled?: (installed: boolean, reason: string) => void;
  /** The timer of the config folder and namespace list checks (default 5 s). */
  checkIntervalMs?: number;
  /** How long start waits for the namespaces before serving (default the ADD timeout). */
  startWaitMs?: number;
  /** inpod mode: ADD waits for ztunnel's ack instead of the node-level pass (handler.ts InPodGate). */
  inpod?: InPodGate;
  /** node mode: the fast path of an announced pod (handler.ts CniHandlerOptions.programPod). */
  programPod?: (uid: string) => Promise<ReadonlySet<string>>;
}

/** The plugin waits a little longer than the agent, so the agent's own error is the one seen. */
export const pluginTimeoutMs = (cfg: CniConfig) => pluginTimeoutFor(cfg.addTimeoutMs);

export interface CniGate {
  handler: CniHandler;
  /** Runs the checks now (the timer's work). */
  check(): void;
  close(): Promise<void>;
}

function untilOrTimeout(m: GateMembership, cond: () => boolean, ms: number): Promise<void> {
  if (cond()) return Promise.resolve();
  return new Promise<void>((resolve) => {
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(finish, ms);
    m.onChange(() => {
      if (cond()) finish();
    });
  });
}

export async function startCniGate(cfg: CniConfig, m: GateMembership, log: Logger, opts: GateOptions = {}): Promise<CniGate> {
  const handler = new CniHandler(m, {
    addTimeoutMs: cfg.addTimeoutMs,
    log,
    ...(opts.inpod && { inpod: opts.inpod }),
    ...(opts.programPod && { programPod: opts.programPod }),
  });
  const writer = new NamespaceListWriter(namespacesFile(cfg.stateDir));
  let closed = false;

  const writeList = (): boolean => {
    if (!m.namespacesSynced()) return false;
    try {
      if (writer.update(m.ambientNamespaces()))
        log.info('cni: ambient namespace list written', { file: writer.file, namespaces: m.ambientNamespaces().length });
      return true;
    } catch (err) {
      log.error('cni: cannot write the ambient namespace list', { file: writer.file, error: String(err) });
      return false;
    }
  };

  let installed: boolean | null = null;
  let lastError = '';
  const install = () => {
    if (!cfg.install || closed) return;
    // Never a plugin in the chain without its namespace list.
    if (!writeList()) return;
    try {
      const r = installCni({
        binDir: cfg.binDir,
        confDir: cfg.confDir,
        stateDir: cfg.stateDir,
        plugin: cfg.plugin,
        entry: { socketPath: cfg.socket, namespacesFile: writer.file, timeoutMs: pluginTimeoutMs(cfg) },
      });
      if (r.changed || installed !== true)
        log.info('cni: plugin installed', { conflist: r.conflist, changed: r.changed, reinserted: installed === true || lastError !== '' });
      lastError = '';
      if (installed !== true) opts.onInstalled?.(true, '');
      installed = true;
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (reason !== lastError) log.error('cni: cannot install the plugin; retrying on every change of the config folder', { error: reason });
      lastError = reason;
      installed = false;
      opts.onInstalled?.(false, reason);
    }
  };

  const check = () => {
    if (closed) return;
    writeList();
    install();
  };

  // The list first, then the socket.
  await untilOrTimeout(m, () => m.namespacesSynced(), opts.startWaitMs ?? cfg.addTimeoutMs);
  if (!m.namespacesSynced()) log.warn('cni: namespaces not known yet; serving, ADD answers "try again" until they are');
  writeList();
  const server: CniServer = await serveCni(cfg.socket, (r) => handler.handle(r), log);
  m.onChange(() => {
    if (closed) return;
    writeList();
    if (installed === null) install();
  });
  install();

  // Watch the config folder and the list's folder; the timer covers what fs.watch misses
  // (a folder created later, events lost on some file systems).
  const watchers = new Map<string, FSWatcher>();
  let debounce: NodeJS.Timeout | undefined;
  const soon = () => {
    clearTimeout(debounce);
    debounce = setTimeout(check, 100);
  };
  const watchDirs = () => {
    for (const dir of [...(cfg.install ? [cfg.confDir] : []), dirname(writer.file)]) {
      if (watchers.has(dir)) continue;
      try {
        const w = watch(dir, soon);
        w.on('error', () => {
          w.close();
          watchers.delete(dir);
        });
        watchers.set(dir, w);
      } catch {
        // Not there (yet): the timer checks, and watches once it is.
      }
    }
  };
  watchDirs();
  const timer = setInterval(() => {
    watchDirs();
    check();
  }, opts.checkIntervalMs ?? 5_000);
  timer.unref();

  return {
    handler,
    check,
    close: async () => {
      closed = true;
      clearInterval(timer);
      clearTimeout(debounce);
      for (const w of watchers.values()) w.close();
      await server.close();
    },
  };
}
