/** `ambient-redirect status`: what is pinned, read from the kernel only. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as codec from '../bpf/codec.js';
import { BpfMap } from '../bpf/object.js';
import { pinDir } from '../bpf/pins.js';
import { parseFlags } from '../config.js';

const FLAGS = { 'pin-root': { env: 'PIN_ROOT', help: 'bpffs mount holding our pins', default: '/sys/fs/bpf' } };

export const statusUsage = `usage: ambient-redirect status [--pin-root DIR] [--json]

Shows the pinned maps: ztunnel's slot and the enrolled pods. Reads the kernel only, so it
works while \`run\` is stopped and the API server is down.
`;

export interface Status {
  pinDir: string;
  installed: boolean;
  ztunnel: codec.ZtunnelInfo | null;
  pods: { ip: string; ifindex: number; flags: number }[];
}

export function readStatus(pinRoot: string): Status {
  const dir = pinDir(pinRoot);
  const podsPin = join(dir, 'pods');
  if (!existsSync(podsPin)) return { pinDir: dir, installed: false, ztunnel: null, pods: [] };
  const pods = BpfMap.openPinned(podsPin, 'pods', { keySize: codec.ADDR_KEY_SIZE, valueSize: codec.POD_INFO_SIZE, maxEntries: 0 });
  const zt = BpfMap.openPinned(join(dir, 'ztunnel'), 'ztunnel', { keySize: 4, valueSize: codec.ZTUNNEL_INFO_SIZE, maxEntries: 1 });
  try {
    const slot = zt.lookup(codec.encodeSlot(codec.ZTUNNEL_SLOT));
    const ztunnel = slot ? codec.decodeZtunnelInfo(slot) : null;
    return {
      pinDir: dir,
      installed: true,
      ztunnel: ztunnel && ztunnel.flags & codec.ZtunnelFlags.PRESENT ? ztunnel : null,
      pods: pods
        .entries()
        .map(([k, v]) => ({ ip: codec.decodeAddrKey(k), ...codec.decodePodInfo(v) }))
        .map(({ ip, ifindex, flags }) => ({ ip, ifindex, flags }))
        .sort((a, b) => a.ip.localeCompare(b.ip)),
    };
  } finally {
    pods.close();
    zt.close();
  }
}

export async function statusCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, FLAGS, { json: { type: 'boolean' } });
  if (values.help) {
    process.stdout.write(statusUsage);
    return 0;
  }
  const s = readStatus((values['pin-root'] as string | undefined) ?? process.env.PIN_ROOT ?? '/sys/fs/bpf');
  if (values.json) {
    process.stdout.write(JSON.stringify(s, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) + '\n');
    return 0;
  }
  if (!s.installed) {
    process.stdout.write(`not installed: nothing pinned under ${s.pinDir}\n`);
    return 0;
  }
  process.stdout.write(`pins: ${s.pinDir}\n`);
  process.stdout.write(s.ztunnel ? `ztunnel: host veth ifindex ${s.ztunnel.ifindex}, eth0 ${s.ztunnel.mac}\n` : 'ztunnel: absent (enrolled pods fail closed)\n');
  process.stdout.write(`enrolled pods: ${s.pods.length}\n`);
  for (const p of s.pods) process.stdout.write(`  ${p.ip.padEnd(40)} host veth ifindex ${p.ifindex}\n`);
  return 0;
}
