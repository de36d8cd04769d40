/** `ambient-redirect uninstall`: removes what we installed on this node, and nothing else. */
import { parseFlags } from '../config.js';
import { systemRunner } from '../host/runner.js';
import { uninstallAll } from '../redirect/factory.js';

const FLAGS = { 'pin-root': { env: 'PIN_ROOT', help: 'bpffs mount holding our pins', default: '/sys/fs/bpf' } };

export const uninstallUsage = `usage: ambient-redirect uninstall [--pin-root DIR] [--json]

Removes our TC filters from every link of this network namespace, clsact qdiscs that are
empty afterwards, and our pins under <pin-root>/ambient-redirect/v1/. Run it in the
node's network namespace (on a node: the host's).
`;

export async function uninstallCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, FLAGS, { json: { type: 'boolean' } });
  if (values.help) {
    process.stdout.write(uninstallUsage);
    return 0;
  }
  const pinRoot = (values['pin-root'] as string | undefined) ?? process.env.PIN_ROOT ?? '/sys/fs/bpf';
  const removed = await uninstallAll({ pinRoot, runner: systemRunner });
  if (values.json) process.stdout.write(JSON.stringify({ removed }) + '\n');
  else process.stdout.write(removed.length ? removed.map((l) => `${l}\n`).join('') : 'nothing of ours was installed\n');
  return 0;
}
