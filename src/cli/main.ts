#!/usr/bin/env node
/** The `ambient-redirect` command. */
import { cniCommand, cniUsage } from '../cni/cli.js';
import { dispatch } from './dispatch.js';
import { runCommand, runUsage } from './run.js';
import { statusCommand, statusUsage } from './status.js';
import { uninstallCommand, uninstallUsage } from './uninstall.js';

/** Commands of the harness entry (harness/main.ts), named so that a mistyped one is pointed there. */
const HARNESS_COMMANDS = new Set(['demo', 'bench']);

dispatch(
  {
    name: 'ambient-redirect',
    about: "Captures the traffic of enrolled pods and hands it to the node's ztunnel.",
    commands: {
      run: { summary: 'run the node agent', usage: runUsage, run: runCommand },
      status: { summary: "this node's data path, read from the kernel only", usage: statusUsage, run: statusCommand },
      uninstall: { summary: 'remove everything we installed on this node', usage: uninstallUsage, run: uninstallCommand },
      cni: { summary: 'install or uninstall the chained CNI plugin on this node', usage: cniUsage, run: cniCommand },
    },
    footer: 'The demo and the benchmarks\nare not part of the agent: `ambient-redirect-harness demo|bench` (dist/harness/main.js).',
    unknownHint: (name) => (HARNESS_COMMANDS.has(name) ? `"${name}" is in the harness: ambient-redirect-harness ${name}\n` : ''),
  },
  process.argv.slice(2),
).then((code) => {
  process.exitCode = code;
});
