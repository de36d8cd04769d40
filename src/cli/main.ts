#!/usr/bin/env node
/** The `ambient-redirect` command. */
import { ConfigError } from '../config.js';
import { benchCommand, benchUsage } from './bench.js';
import { cniCommand, cniUsage } from '../cni/cli.js';
import { demoCommand, demoUsage } from './demo.js';
import { errorMessage } from './errors.js';
import { runCommand, runUsage } from './run.js';
import { statusCommand, statusUsage } from './status.js';
import { uninstallCommand, uninstallUsage } from './uninstall.js';

const commands: Record<string, { summary: string; usage: string; run: (argv: string[]) => Promise<number> }> = {
  run: { summary: 'run the node agent', usage: runUsage, run: runCommand },
  status: { summary: "this node's data path, read from the kernel only", usage: statusUsage, run: statusCommand },
  uninstall: { summary: 'remove everything we installed on this node', usage: uninstallUsage, run: uninstallCommand },
  demo: { summary: 'the whole story on a simulated node of this machine (root)', usage: demoUsage, run: demoCommand },
  cni: { summary: 'install or uninstall the chained CNI plugin on this node', usage: cniUsage, run: cniCommand },
  bench: { summary: 'data-path, traffic and control-path benchmarks, side by side (root)', usage: benchUsage, run: benchCommand },
};

const usage = `usage: ambient-redirect <command> [flags]

Captures the traffic of enrolled pods and hands it to the node's ztunnel.

commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

\`ambient-redirect <command> --help\` describes a command.
`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage);
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`ambient-redirect: unknown command "${name}"\n${usage}`);
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
