/** `ambient-redirect uninstall`: removes what we installed on this node, and nothing else. */
import { HOST_PROC_FLAG, PIN_ROOT_FLAG, resolveFlags, usageOf } from '../lib/flags.js';
import { systemRunner } from '../host/runner.js';
import { createLogger } from '../log.js';
import { uninstallAll } from '../capture/factory.js';

const FLAGS = { ...PIN_ROOT_FLAG, ...HOST_PROC_FLAG };

export const uninstallUsage = `usage: ambient-redirect uninstall [--pin-root DIR] [--host-proc DIR] [--json]

Removes our TC filters from every link of this network namespace, clsact qdiscs that are
empty afterwards, ztunnel-side rules, iptables mode's chains, rules, routes, tunnels and
ipsets, and our pins under <pin-root>/ambient-redirect/v1/; puts back the rp_filter values
either mode recorded changing, where they still read what we wrote. Run it in the node's network
namespace (on a node: the host's). The in-pod capture (inpod mode) is removed from every
pod's network namespace that holds it: the eBPF one from the pods its pinned records name,
the iptables one from each netns of the processes under --host-proc that carries its policy
rule; then its host half (probe SNAT chains and sets).

Every step runs even when another fails. A step left out on purpose (deleting empty nft
tables when nft is not installed) is logged and does not change the exit status.
Exit status: 0 when nothing of ours is left, 1 when a step failed (each is logged on
stderr, naming what may still be there), 2 for a bad flag.

flags (environment equivalents in brackets):
${usageOf(FLAGS)}
  --json             print what was removed, skipped and failed as one JSON object
`;

export async function uninstallCommand(argv: string[]): Promise<number> {
  const f = resolveFlags(argv, FLAGS, process.env, ['json']);
  const values = { json: f.flag('json') };
  if (f.help) {
    process.stdout.write(uninstallUsage);
    return 0;
  }
  const pinRoot = f.get('pin-root')!;
  const r = await uninstallAll({ pinRoot, hostProc: f.get('host-proc')!, runner: systemRunner });
  const log = createLogger('info');
  for (const s of r.skipped) log.info('uninstall: skipped a step', s);
  for (const f of r.failed) log.error('uninstall: a step failed; what it removes may still be there', f);
  if (values.json) process.stdout.write(JSON.stringify({ removed: r.removed, skipped: r.skipped, failed: r.failed }) + '\n');
  else if (r.removed.length) process.stdout.write(r.removed.map((l) => `${l}\n`).join(''));
  else if (r.failed.length === 0) process.stdout.write('nothing of ours was installed\n');
  return r.failed.length === 0 ? 0 : 1;
}
