/**
 * Test doubles at the controller's ports: a capture mode over an in-memory map (records
 * every delete), a node whose routes cover a pool of pod IPs, and a Kubernetes transport
 * driven in-process (the churn test pushes watch lines itself; no HTTP).
 */
import type { PodInfo, ZtunnelInfo } from '../../src/bpf/codec.js';
import { diffPods, type Desired } from '../../src/core/desired.js';
import type { HostNet, Link } from '../../src/host/netinfo.js';
import type { KubeTransport, WatchHandle } from '../../src/kube/http.js';
import type { Logger } from '../../src/log.js';
import type { ActualState, ApplyResult, RedirectMode } from '../../src/capture/mode.js';

export class FakeMode implements RedirectMode {
  readonly name = 'ebpf' as const;
  readonly pods = new Map<string, PodInfo>();
  ztunnel: ZtunnelInfo | null = null;
  hooks = new Set<number>();
  /** Called with each IP before its entry is deleted. */
  onDelete: (ip: string) => void = () => {};
  async init(): Promise<void> {}
  async actual(): Promise<ActualState> {
    return { pods: new Map(this.pods), ztunnel: this.ztunnel, hooks: new Set(this.hooks) };
  }
  async apply(desired: Desired, actual: ActualState): Promise<ApplyResult> {
    const d = diffPods(desired.pods, actual.pods);
    for (const [ip, v] of d.upserts) this.pods.set(ip, v);
    for (const ip of d.deletes) {
      this.onDelete(ip);
      this.pods.delete(ip);
    }
    this.ztunnel = desired.ztunnel;
    const attached = [...desired.hooks].filter((h) => !this.hooks.has(h)).length;
    const detached = [...this.hooks].filter((h) => !desired.hooks.has(h)).length;
    this.hooks = new Set(desired.hooks);
    return { upserted: d.upserts.size, deleted: d.deletes.length, attached, detached };
  }
  close(): void {}
}

/** A node with one veth per routable IP (ifindex 100 + i). */
export function fakeNet(routable: readonly string[]): HostNet {
  const links = new Map<number, Link>();
  const hostRoutes = new Map<string, string>();
  routable.forEach((ip, i) => {
    const link: Link = { ifindex: 100 + i, name: `veth${i}`, mac: `02:00:00:00:00:${(i + 16).toString(16)}` };
    links.set(link.ifindex, link);
    hostRoutes.set(ip, link.name);
  });
  return { links, hostRoutes, netnsById: new Map() };
}

export const fakeZtunnel = async (ip: string, net: HostNet) => {
  const l = [...net.links.values()][0]!;
  void ip;
  return { hostLink: l, peer: l, netns: 'zt' };
};

export const quietLog: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export function recordingLog(): Logger & { lines: { level: string; msg: string; fields: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
  const at =
    (level: string) =>
    (msg: string, fields: Record<string, unknown> = {}) =>
      void lines.push({ level, msg, fields });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

/**
 * A transport whose lists come from `list(path)` and whose watches are pushed by the
 * test with `emit(path, line)`; every watch of a path gets the line.
 */
export class InProcessTransport implements KubeTransport {
  readonly server = 'in-process';
  private readonly streams = new Map<string, Set<(l: unknown) => void>>();
  lists = 0;
  constructor(private readonly list: (path: string) => { items: unknown[]; resourceVersion: string }) {}
  async request(method: string, path: string): Promise<unknown> {
    if (method === 'PATCH') return {};
    this.lists++;
    const l = this.list(path);
    return { items: structuredClone(l.items), metadata: { resourceVersion: l.resourceVersion } };
  }
  stream(path: string, _q: Record<string, string>, onLine: (obj: unknown) => void, onEnd: (err: null) => void): WatchHandle {
    let set = this.streams.get(path);
    if (!set) this.streams.set(path, (set = new Set()));
    set.add(onLine);
    return {
      abort: () => {
        set.delete(onLine);
        onEnd(null);
      },
    };
  }
  emit(path: string, line: unknown): void {
    for (const s of this.streams.get(path) ?? []) s(structuredClone(line));
  }
  watching(path: string): boolean {
    return (this.streams.get(path)?.size ?? 0) > 0;
  }
}
