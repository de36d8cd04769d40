/**
 * What the controller knows of the API: pods keyed by UID, namespaces by name. Events are
 * fenced: an event older than what the cache holds for the same UID is dropped, and a
 * deleted UID stays deleted (a tombstone), so a late or replayed event cannot bring back
 * a pod or take an entry from the pod that reused its IP. Pure: no I/O.
 */
import type { NamespaceView, PodView } from '../core/enrollment.js';

export type EventType = 'ADDED' | 'MODIFIED' | 'DELETED';

/** Tombstones kept (oldest forgotten first): a UID is never reused, so this only bounds memory. */
const MAX_TOMBSTONES = 50_000;

export class PodCache {
  private readonly pods = new Map<string, PodView>();
  private readonly tombstones = new Map<string, bigint>();
  /** Events dropped as stale (older than the cached version, or for a deleted UID). */
  stale = 0;

  get size(): number {
    return this.pods.size;
  }

  values(): IterableIterator<PodView> {
    return this.pods.values();
  }

  get(uid: string): PodView | undefined {
    return this.pods.get(uid);
  }

  /** True once a DELETED event buried the UID. */
  isDeleted(uid: string): boolean {
    return this.tombstones.has(uid);
  }

  /** Applies one watch event; true when the cache changed. */
  apply(type: EventType, pod: PodView): boolean {
    const dead = this.tombstones.get(pod.uid);
    if (dead !== undefined) {
      this.stale++;
      return false;
    }
    const cur = this.pods.get(pod.uid);
    if (cur && pod.resourceVersion < cur.resourceVersion) {
      this.stale++;
      return false;
    }
    if (type === 'DELETED') {
      this.pods.delete(pod.uid);
      this.bury(pod.uid, pod.resourceVersion);
      return cur !== undefined;
    }
    this.pods.set(pod.uid, keepLastIp(pod, cur));
    return true;
  }

  /**
   * A full list: the cache becomes exactly the list (a pod missing from it is gone). A
   * missing pod is not buried: a bad list (the circuit breaker's case) must not keep it
   * out once a good list shows it again.
   */
  replace(pods: readonly PodView[], keep: ReadonlySet<string> = new Set()): void {
    const next = new Map<string, PodView>();
    for (const pod of pods) {
      if (this.tombstones.has(pod.uid)) continue;
      next.set(pod.uid, keepLastIp(pod, this.pods.get(pod.uid)));
    }
    // Objects the list held but we could not parse keep their last good version.
    for (const uid of keep) {
      const cur = this.pods.get(uid);
      if (cur && !next.has(uid)) next.set(uid, cur);
    }
    this.pods.clear();
    for (const [uid, pod] of next) this.pods.set(uid, pod);
  }

  private bury(uid: string, rv: bigint): void {
    this.tombstones.set(uid, rv);
    if (this.tombstones.size > MAX_TOMBSTONES) this.tombstones.delete(this.tombstones.keys().next().value!);
  }
}

/** A status update without IPs (a terminal pod's status is often emptied) keeps the last known IPs. */
function keepLastIp(pod: PodView, cur: PodView | undefined): PodView {
  return pod.ips.length === 0 && cur && cur.ips.length > 0 ? { ...pod, ips: cur.ips } : pod;
}

export class NamespaceCache {
  private readonly byName = new Map<string, NamespaceView & { resourceVersion: bigint }>();

  get map(): ReadonlyMap<string, NamespaceView> {
    return this.byName;
  }

  apply(type: EventType, ns: NamespaceView, resourceVersion: bigint): boolean {
    const cur = this.byName.get(ns.name);
    if (cur && resourceVersion < cur.resourceVersion) return false;
    if (type === 'DELETED') return this.byName.delete(ns.name);
    this.byName.set(ns.name, { ...ns, resourceVersion });
    return true;
  }

  replace(list: readonly { ns: NamespaceView; resourceVersion: bigint }[]): void {
    this.byName.clear();
    for (const { ns, resourceVersion } of list) this.byName.set(ns.name, { ...ns, resourceVersion });
  }
}
