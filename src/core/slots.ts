/**
 * The counters array's slots (bpf/include/maps.h): one per pod veth, the one place that
 * decides which. A veth gets a slot when the first pods entry names it and gives it back
 * when the last one goes; every address of a pod (a dual-stack pod has two) carries its
 * veth's slot, so they share the veth's counts as they always did.
 *
 * Plain data, no kernel: the caller (src/capture/ebpf/ebpf.ts) zeroes each fresh slot's
 * counters before any entry names it, so a new pod never inherits another's counts, and
 * deletes the entries of the veths given back. A slot given back by one assign() is handed
 * out again only from the next one on: the entries naming it are deleted at the end of the
 * apply that gave it back, after the new entries are written.
 *
 * Slot 0 (COUNTERS_NO_SLOT) is never handed out: the programs count there what no slot
 * names. Slots are 1..capacity.
 */

/** A veth's slot as the pinned pods map records it (an agent restart rebuilds from these). */
export interface SlotRecord {
  ifindex: number;
  slot: number;
}

export interface SlotChanges {
  /** Every wanted veth (ifindex) → its slot; a veth beyond the capacity has none. */
  slots: ReadonlyMap<number, number>;
  /** Veths that got a slot in this call: zero those slots' counters before writing entries. */
  fresh: SlotRecord[];
  /** Veths that gave theirs back in this call. */
  freed: SlotRecord[];
}

export class SlotAllocator {
  private readonly byVeth = new Map<number, number>();
  /** Slots given back, oldest first (reused in that order: the longest out of use first). */
  private readonly queue: number[] = [];
  private head = 0;
  /** Given back by the last assign(): queued at the start of the next. */
  private held: number[] = [];
  /** The lowest slot never handed out. */
  private next = 1;

  /**
   * `records`: the slots the pinned pods map holds (adoption). The first record of a veth
   * and of a slot wins; a record out of range, or whose veth or slot is already taken, is
   * ignored: that entry gets its veth's slot again when next written.
   */
  constructor(
    readonly capacity: number,
    records: Iterable<SlotRecord> = [],
  ) {
    const taken = new Set<number>();
    for (const { ifindex, slot } of records) {
      if (ifindex <= 0 || slot < 1 || slot > capacity || taken.has(slot) || this.byVeth.has(ifindex)) continue;
      taken.add(slot);
      this.byVeth.set(ifindex, slot);
      if (slot >= this.next) this.next = slot + 1;
    }
    for (let s = 1; s < this.next; s++) if (!taken.has(s)) this.queue.push(s);
  }

  /** The slot of a veth, or undefined. */
  slotOf(ifindex: number): number | undefined {
    return this.byVeth.get(ifindex);
  }

  /** Slots handed out now. */
  get size(): number {
    return this.byVeth.size;
  }

  /** Gives every veth of `wanted` (ifindex > 0) a slot, keeping the ones it has; takes back the others'. */
  assign(wanted: Iterable<number>): SlotChanges {
    for (const s of this.held) this.queue.push(s);
    this.held = [];
    const want = new Set<number>();
    for (const i of wanted) if (i > 0) want.add(i);
    const freed: SlotRecord[] = [];
    for (const [ifindex, slot] of this.byVeth) {
      if (want.has(ifindex)) continue;
      this.byVeth.delete(ifindex);
      this.held.push(slot);
      freed.push({ ifindex, slot });
    }
    const fresh = this.give(want);
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    return { slots: this.byVeth, fresh, freed };
  }

  /**
   * Gives each veth of `wanted` (ifindex > 0) that has none a slot, taking back nobody's:
   * the CNI fast path, which knows one pod, not the whole node (the next assign() decides
   * what goes).
   */
  add(wanted: Iterable<number>): SlotChanges {
    const want = [...wanted].filter((i) => i > 0);
    return { slots: this.byVeth, fresh: this.give(want), freed: [] };
  }

  private give(want: Iterable<number>): SlotRecord[] {
    const fresh: SlotRecord[] = [];
    for (const ifindex of want) {
      if (this.byVeth.has(ifindex)) continue;
      const slot = this.take();
      if (slot === 0) continue;
      this.byVeth.set(ifindex, slot);
      fresh.push({ ifindex, slot });
    }
    return fresh;
  }

  /** A free slot, or 0 when all are out. */
  private take(): number {
    if (this.head < this.queue.length) return this.queue[this.head++]!;
    if (this.next <= this.capacity) return this.next++;
    return 0;
  }
}
