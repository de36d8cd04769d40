/**
 * Which iptables the node uses (nft or legacy) and the save/restore commands of each: the
 * iptables mode writes its chains with the backend that already holds the node's rules.
 */
import type { CommandRunner } from '../../host/runner.js';
import { isMissingTool } from '../cleanup.js';
import { FAMILIES, type Family } from './rules.js';

export type BackendKind = 'nft' | 'legacy';

export interface Backend {
  kind: BackendKind;
  reason: string;
}

export const saveCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-save`];
export const restoreCmd = (b: BackendKind, f: Family) => [`${f === 4 ? 'iptables' : 'ip6tables'}-${b}-restore`, '--noflush'];

async function countRules(runner: CommandRunner, b: BackendKind): Promise<number | null> {
  let n = 0;
  for (const f of FAMILIES) {
    try {
      n += (await runner.run(saveCmd(b, f))).split('\n').filter((l) => l.startsWith('-A ')).length;
    } catch (err) {
      if (isMissingTool(err)) return null;
      // A legacy save on a kernel without the legacy tables: nothing there.
    }
  }
  return n;
}

/**
 * The backend the node already uses: the one holding more rules (kube-proxy's, the
 * CNI's); on a tie, the one the `iptables` command points at.
 */
export async function detectBackend(runner: CommandRunner): Promise<Backend> {
  const [nft, legacy] = await Promise.all([countRules(runner, 'nft'), countRules(runner, 'legacy')]);
  if (nft === null && legacy === null) throw new Error('neither iptables-nft nor iptables-legacy is installed');
  if (nft === null) return { kind: 'legacy', reason: 'only iptables-legacy is installed' };
  if (legacy === null) return { kind: 'nft', reason: 'only iptables-nft is installed' };
  if (nft !== legacy) {
    const kind = nft > legacy ? 'nft' : 'legacy';
    return { kind, reason: `the node's rules are there (nft ${nft}, legacy ${legacy})` };
  }
  const version = await runner.run(['iptables', '--version']).catch(() => '');
  const kind: BackendKind = /legacy/.test(version) ? 'legacy' : 'nft';
  return { kind, reason: `no rules in either; \`iptables\` is ${version.trim() || 'unknown'}` };
}

/** The backends installed here (uninstall looks in each for our chains). */
export async function backendsPresent(runner: CommandRunner): Promise<BackendKind[]> {
  const out: BackendKind[] = [];
  for (const b of ['nft', 'legacy'] as const) {
    try {
      await runner.run(saveCmd(b, 4));
      out.push(b);
    } catch (err) {
      if (!isMissingTool(err)) out.push(b);
    }
  }
  return out;
}
