/** `ambient-redirect demo`: the data path end to end on a simulated node of this machine. */
import { rmSync } from 'node:fs';
import { parseFlags } from '../config.js';
import { createSimNode, type SimNode } from '../sim/node.js';
import { pinRootFor, renderTable, runStaticScenario, verdict } from '../sim/scenario.js';
import { ConfigError } from '../config.js';

const FLAGS = {
  pods: { env: 'DEMO_PODS', help: 'pods on the simulated node', default: '4' },
  connections: { env: 'DEMO_CONNECTIONS', help: 'connections per pod', default: '3' },
};

export const demoUsage = `usage: ambient-redirect demo [--pods N] [--connections N]

Builds a simulated node out of network namespaces (a node, N pods, a ztunnel stand-in, an
outside server), runs the controller in it with every other pod enrolled, sends traffic
from every pod and prints who saw each connection. Tears everything down at the end, and
on Ctrl-C. Needs root on Linux (network namespaces, BPF).
`;

export async function demoCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(demoUsage);
    return 0;
  }
  const pods = Number(values.pods ?? FLAGS.pods.default);
  const connections = Number(values.connections ?? FLAGS.connections.default);
  if (!Number.isInteger(pods) || pods < 1 || pods > 200) throw new ConfigError(`--pods: "${values.pods}" is not an integer in 1..200`);
  if (!Number.isInteger(connections) || connections < 1 || connections > 100) throw new ConfigError(`--connections: "${values.connections}" is not an integer in 1..100`);
  if (process.getuid?.() !== 0) {
    process.stderr.write('ambient-redirect demo: needs root (it creates network namespaces and loads BPF programs)\n');
    return 1;
  }

  const say = (line: string) => process.stdout.write(`- ${line}\n`);
  say(`building a simulated node with ${pods} pods`);
  const sim: SimNode = await createSimNode({ pods });
  const interrupted = new Promise<never>((_, reject) => {
    const onSignal = (sig: string) => reject(new Error(`interrupted by ${sig}`));
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  try {
    const enrolled = sim.pods.filter((p) => p.index % 2 === 0).map((p) => p.index);
    const result = await Promise.race([runStaticScenario(sim, { enrolled, connections, pinRoot: pinRootFor(sim), progress: say }), interrupted]);
    process.stdout.write(`\n${renderTable(result.reports)}\n\n`);
    process.stdout.write(result.uninstall.split('\n').filter(Boolean).map((l) => `  uninstall: ${l}\n`).join(''));
    const v = verdict(result.reports);
    process.stdout.write(v.ok ? '\nverdict: PASS — enrolled pods reached only ztunnel, with their original destination; the others went direct\n' : `\nverdict: FAIL\n${v.problems.map((p) => `  ${p}\n`).join('')}`);
    return v.ok ? 0 : 1;
  } finally {
    say('tearing down the simulated node');
    await sim.teardown();
    // An interrupted scenario may still be unwinding: its pins go with the node.
    rmSync(pinRootFor(sim), { recursive: true, force: true });
  }
}
