/**
 * A veth's counters as the programs keep them: its slot from veth_slots, that slot of the
 * counters array, summed over CPUs (zero when the veth has no slot: its frames count in
 * slot 0, no pod's).
 */
import * as codec from '../../src/bpf/codec.js';
import { openPinnedMap } from '../../src/bpf/maps.js';

export function vethCounters(pinDirPath: string, ifindex: number): codec.PodCounters {
  const slots = openPinnedMap(pinDirPath, 'veth_slots');
  const counters = openPinnedMap(pinDirPath, 'counters');
  try {
    const slot = slots.lookup(codec.encodeU32Key(ifindex));
    const v = slot ? counters.lookup(codec.encodeU32Key(codec.decodeVethSlot(slot))) : null;
    return v ? codec.decodePodCountersPerCpu(v) : codec.zeroCounters();
  } finally {
    slots.close();
    counters.close();
  }
}
