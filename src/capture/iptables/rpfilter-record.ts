/**
 * Where the iptables mode keeps its rp_filter records (src/host/rpfilter.ts decides what
 * they hold): a chain of comment-only rules of ours in the node's IPv4 mangle table,
 *
 *   -A ztunnel-RPFILTER -m comment --comment "rp_filter dev=veth3a2b ifindex=12 was=1 wrote=0"
 *   -A ztunnel-RPFILTER -m comment --comment "rp_filter dev=all was=1 wrote=0"
 *
 * No chain jumps to it, so it matches no packet. Why there (docs/operations.md "Sysctls"):
 * it lives exactly as long as the values it records (both are the kernel's, gone on a
 * reboot, when a file on the host would outlive them and name values that no longer hold),
 * it survives agent restarts, it needs no BPF (which the nodes that fall back to this mode
 * may refuse) nor a host path in the chart, and `uninstall` already reads iptables-save.
 */
import type { CommandRunner } from '../../host/runner.js';
import type { RpFilterRecord } from '../../host/rpfilter.js';
import { type BackendKind, restoreCmd, saveCmd } from './backend.js';
import { parseSave } from './rules.js';

export const RP_CHAIN = { table: 'mangle', chain: 'ztunnel-RPFILTER' } as const;

/** Device names we record: what the kernel allows, minus what would need quoting in a comment. */
export const RECORDABLE_DEV = /^[A-Za-z0-9_.:@+=-]{1,15}$/;

const RECORD = /^-m comment --comment "?rp_filter dev=(\S+?)(?: ifindex=(\d+))? was=([012]) wrote=([012])"?$/;

/** The records in a parsed IPv4 iptables-save; rules of the chain that are not records are ignored. */
export function parseRpFilterRecords(save: ReturnType<typeof parseSave>): RpFilterRecord[] {
  const out: RpFilterRecord[] = [];
  for (const rule of save.get(RP_CHAIN.table)?.rules.get(RP_CHAIN.chain) ?? []) {
    const m = RECORD.exec(rule);
    if (!m) continue;
    out.push({ dev: m[1]!, ...(m[2] !== undefined && { ifindex: Number(m[2]) }), was: Number(m[3]), wrote: Number(m[4]) });
  }
  return out;
}

export function recordRule(r: RpFilterRecord): string {
  if (!RECORDABLE_DEV.test(r.dev)) throw new Error(`"${r.dev}" is not a device name we record`);
  return `-m comment --comment "rp_filter dev=${r.dev}${r.ifindex !== undefined ? ` ifindex=${r.ifindex}` : ''} was=${r.was} wrote=${r.wrote}"`;
}

/** iptables-restore input (--noflush) that makes the chain hold exactly `records`; none: the chain goes. */
export function recordsRestoreInput(records: readonly RpFilterRecord[], chainExists: boolean): string | null {
  const { table, chain } = RP_CHAIN;
  if (records.length === 0) return chainExists ? `*${table}\n-F ${chain}\n-X ${chain}\nCOMMIT\n` : null;
  return [`*${table}`, `:${chain} - [0:0]`, ...records.map((r) => `-A ${chain} ${recordRule(r)}`), 'COMMIT'].join('\n') + '\n';
}

export async function readRpFilterRecords(runner: CommandRunner, backend: BackendKind): Promise<{ records: RpFilterRecord[]; chainExists: boolean }> {
  const save = parseSave(await runner.run(saveCmd(backend, 4)));
  return { records: parseRpFilterRecords(save), chainExists: !!save.get(RP_CHAIN.table)?.chains.has(RP_CHAIN.chain) };
}

export async function writeRpFilterRecords(
  runner: CommandRunner,
  backend: BackendKind,
  records: readonly RpFilterRecord[],
  chainExists: boolean,
): Promise<void> {
  const input = recordsRestoreInput(records, chainExists);
  if (input) await runner.run(restoreCmd(backend, 4), { input });
}
