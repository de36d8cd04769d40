/**
 * The kubeconfig (or the in-cluster service account) and the credentials it names, with
 * @kubernetes/client-node's own parts: its validation of clusters, users and contexts
 * (`config_types`) and its authenticators (token file, exec plugin; OIDC, Azure and GCP
 * loaded only when a kubeconfig names them). Not its `KubeConfig` class: that module
 * imports the whole generated API (about 65 MiB of RSS, docs/operations.md "Memory") to
 * build API clients, which the agent never uses (its requests are its own, src/kube/http.ts).
 *
 * What it does is what `KubeConfig.loadFromFile`/`loadFromCluster` and
 * `applyToHTTPSOptions` do for a direct connection; an HTTP(S) proxy in the kubeconfig is
 * refused with a clear error (the agent talks to the API server directly).
 */
import fs from 'node:fs';
import type https from 'node:https';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { type Cluster, type Context, newClusters, newContexts, newUsers, type User } from '@kubernetes/client-node/dist/config_types.js';
import { ExecAuth } from '@kubernetes/client-node/dist/exec_auth.js';
import { FileAuth } from '@kubernetes/client-node/dist/file_auth.js';

/** The shape of the library's authenticators (`isAuthProvider`, `applyAuthentication`). */
interface Authenticator {
  isAuthProvider(user: User): boolean | undefined | unknown;
  applyAuthentication(user: User, opts: https.RequestOptions): Promise<void>;
}

/**
 * The library's YAML parser, resolved from the library itself: the kubeconfig is read the
 * way the library reads it, with no dependency of ours on a YAML package.
 */
function parseYaml(text: string): unknown {
  const fromLibrary = createRequire(createRequire(import.meta.url).resolve('@kubernetes/client-node/dist/config_types.js'));
  const yaml = fromLibrary('js-yaml') as { load(text: string): unknown };
  return yaml.load(text);
}

const SERVICEACCOUNT = '/var/run/secrets/kubernetes.io/serviceaccount';

export class KubeConfig {
  private clusters: Cluster[] = [];
  private users: User[] = [];
  private contexts: Context[] = [];
  private currentContext = '';
  private readonly always: Authenticator[] = [new ExecAuth(), new FileAuth()];
  /** Loaded on the first request when the kubeconfig names them (each pulls in its own libraries). */
  private optional: Promise<Authenticator[]> | undefined;

  /** A kubeconfig file; relative certificate paths are taken from its folder. */
  static fromFile(file: string): KubeConfig {
    const kc = new KubeConfig();
    const obj = parseYaml(fs.readFileSync(file, 'utf8')) as Record<string, unknown> | null;
    if (!obj || typeof obj !== 'object') throw new Error(`${file}: not a kubeconfig (no YAML mapping)`);
    kc.clusters = newClusters(obj.clusters);
    kc.users = newUsers(obj.users);
    kc.contexts = newContexts(obj.contexts);
    kc.currentContext = typeof obj['current-context'] === 'string' ? obj['current-context'] : '';
    const root = path.dirname(file);
    const abs = (f: string | undefined) => (f && !path.isAbsolute(f) ? path.join(root, f) : f);
    kc.clusters = kc.clusters.map((c) => ({ ...c, caFile: abs(c.caFile) }));
    kc.users = kc.users.map((u) => ({ ...u, certFile: abs(u.certFile), keyFile: abs(u.keyFile) }));
    return kc;
  }

  /** The pod's service account, as the library's `loadFromCluster` builds it. */
  static fromCluster(prefix = ''): KubeConfig {
    const host = process.env.KUBERNETES_SERVICE_HOST ?? '';
    const port = process.env.KUBERNETES_SERVICE_PORT ?? '';
    if (!host || !port) throw new Error('no kubeconfig given and not in a cluster (KUBERNETES_SERVICE_HOST/PORT unset)');
    const scheme = ['80', '8080', '8001'].includes(port) ? 'http' : 'https';
    const kc = new KubeConfig();
    kc.clusters = [
      {
        name: 'inCluster',
        caFile: `${prefix}${SERVICEACCOUNT}/ca.crt`,
        server: `${scheme}://${net.isIPv6(host) ? `[${host}]` : host}:${port}`,
        skipTLSVerify: false,
      },
    ];
    kc.users = [{ name: 'inClusterUser', authProvider: { name: 'tokenFile', config: { tokenFile: `${prefix}${SERVICEACCOUNT}/token` } } }];
    kc.contexts = [{ name: 'inClusterContext', cluster: 'inCluster', user: 'inClusterUser' }];
    kc.currentContext = 'inClusterContext';
    return kc;
  }

  private async loadOptionalAuthenticators(): Promise<Authenticator[]> {
    const names = new Set(this.users.map((u) => u.authProvider?.name));
    const out: Authenticator[] = [];
    if (names.has('oidc')) out.push(new (await import('@kubernetes/client-node/dist/oidc_auth.js')).OpenIDConnectAuth());
    if (names.has('azure')) out.push(new (await import('@kubernetes/client-node/dist/azure_auth.js')).AzureAuth());
    if (names.has('gcp')) out.push(new (await import('@kubernetes/client-node/dist/gcp_auth.js')).GoogleCloudPlatformAuth());
    return out;
  }

  getCurrentContext(): string {
    return this.currentContext;
  }

  getCurrentCluster(): Cluster | null {
    const ctx = this.contexts.find((c) => c.name === this.currentContext);
    return (ctx && this.clusters.find((c) => c.name === ctx.cluster)) ?? null;
  }

  getCurrentUser(): User | null {
    const ctx = this.contexts.find((c) => c.name === this.currentContext);
    return (ctx && this.users.find((u) => u.name === ctx.user)) ?? null;
  }

  /**
   * TLS material and credentials for one request (files re-read, tokens refreshed by the
   * authenticators as they expire), as the library's `applyToHTTPSOptions` sets them, less
   * the agent: the caller keeps its own.
   */
  async applyToHTTPSOptions(opts: https.RequestOptions): Promise<void> {
    const cluster = this.getCurrentCluster();
    const user = this.getCurrentUser();
    if (cluster?.proxyUrl) throw new Error(`the kubeconfig's cluster "${cluster.name}" has proxy-url set; the agent connects to the API server directly`);
    if (!user) return;
    if (cluster?.skipTLSVerify) opts.rejectUnauthorized = false;
    if (cluster?.tlsServerName) opts.servername = cluster.tlsServerName;
    const fileOrData = (file?: string, data?: string) => (file ? fs.readFileSync(file) : data ? Buffer.from(data, 'base64') : undefined);
    const ca = cluster && fileOrData(cluster.caFile, cluster.caData);
    if (ca) opts.ca = ca;
    const cert = fileOrData(user.certFile, user.certData);
    if (cert) opts.cert = cert;
    const key = fileOrData(user.keyFile, user.keyData);
    if (key) opts.key = key;
    const headers = (opts.headers ??= {}) as Record<string, string>;
    if (user.impersonateUser) headers['Impersonate-User'] = user.impersonateUser;
    this.optional ??= this.loadOptionalAuthenticators();
    const auth = [...this.always, ...(await this.optional)].find((a) => a.isAuthProvider(user));
    if (auth) await auth.applyAuthentication(user, opts);
    if (user.token) headers.Authorization = `Bearer ${user.token}`;
    if (user.username) opts.auth = `${user.username}:${user.password}`;
  }
}
