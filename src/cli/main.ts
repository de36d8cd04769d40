#!/usr/bin/env node
/** The `ambient-redirect` command. */
import { ConfigError } from '../config.js';
import { cniCommand, cniUsage } from '../cni/cli.js';
import { errorMessage } from './errors.js';
import { runCommand, runUsage } from './run.js';
import { statusCommand, statusUsage } from './status.js';
import { uninstallCommand, uninstallUsage } from './uninstall.js';

const commands: Record<string, { summary: string; usage: string; run: (argv: string[]) => Promise<number> }> = {
  run: { summary: 'run the node agent', usage: runUsage, run: runCommand },
  status: { summary: "this node's data path, read from the kernel only", usage: statusUsage, run: statusCommand },
  uninstall: { summary: 'remove everything we installed on this node', usage: uninstallUsage, run: uninstallCommand },
  cni: { summary: 'install or uninstall the chained CNI plugin on this node', usage: cniUsage, run: cniCommand },
};

/** Commands of the harness entry (harness/main.ts), named so that a mistyped one is pointed there. */
const HARNESS_COMMANDS = new Set(['demo', 'bench']);

const usage = `usage: ambient-redirect <command> [flags]

Captures the traffic of enrolled pods and hands it to the node's ztunnel.

commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

\`ambient-redirect <command> --help\` describes a command. The demo and the benchmarks
are not part of the agent: \`ambient-redirect-harness demo|bench\` (dist/harness/main.js).
`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage);
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    const moved = HARNESS_COMMANDS.has(name) ? `"${name}" is in the harness: ambient-redirect-harness ${name}\n` : '';
    process.stderr.write(`ambient-redirect: unknown command "${name}"\n${moved}${usage}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ambient-redirect ${name}: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`ambient-redirect ${name}: ${errorMessage(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
