#!/usr/bin/env node
/**
 * `ambient-redirect-harness`: the commands that need the test harness (a simulated node,
 * the API double, BPF_PROG_RUN). Kept apart from the agent's `ambient-redirect` so that
 * the agent's image holds none of it.
 */
import { ConfigError } from '../src/config.js';
import { errorMessage } from '../src/cli/errors.js';
import { benchCommand, benchUsage } from './cli/bench.js';
import { demoCommand, demoUsage } from './cli/demo.js';

const commands: Record<string, { summary: string; usage: string; run: (argv: string[]) => Promise<number> }> = {
  demo: { summary: 'the whole story on a simulated node of this machine (root)', usage: demoUsage, run: demoCommand },
  bench: { summary: 'data-path, traffic and control-path benchmarks, side by side (root)', usage: benchUsage, run: benchCommand },
};

const usage = `usage: ambient-redirect-harness <command> [flags]

The demo and the benchmarks, on simulated nodes of this machine (not part of the agent).

commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  .join('\n')}

\`ambient-redirect-harness <command> --help\` describes a command.
`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage);
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    process.stderr.write(`ambient-redirect-harness: unknown command "${name}"\n${usage}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ambient-redirect-harness ${name}: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`ambient-redirect-harness ${name}: ${errorMessage(err)}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
