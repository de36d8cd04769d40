#!/usr/bin/env node
/**
 * `ambient-redirect-harness`: the commands that need the test harness (a simulated node,
 * the API double, BPF_PROG_RUN). Kept apart from the agent's `ambient-redirect` so that
 * the agent's image holds none of it.
 */
import { dispatch } from '../src/cli/dispatch.js';
import { benchCommand, benchUsage } from './cli/bench.js';
import { demoCommand, demoUsage } from './cli/demo.js';

dispatch(
  {
    name: 'ambient-redirect-harness',
    about: 'The demo and the benchmarks, on simulated nodes of this machine (not part of the agent).',
    commands: {
      demo: { summary: 'the whole story on a simulated node of this machine (root)', usage: demoUsage, run: demoCommand },
      bench: { summary: 'data-path, traffic and control-path benchmarks, side by side (root)', usage: benchUsage, run: benchCommand },
    },
  },
  process.argv.slice(2),
).then((code) => {
  process.exitCode = code;
});
