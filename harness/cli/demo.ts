/** `ambient-redirect-harness demo`: the whole story on a simulated node of this machine. */
import { rmSync } from 'node:fs';
import { ConfigError, resolveFlags } from '../../src/lib/flags.js';
import { createSimNode, type SimNode } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { runStory } from '../sim/story.js';

const FLAGS = {
  mode: { env: 'DEMO_MODE', help: 'capture mode: ebpf | iptables', default: 'ebpf' },
  pods: { env: 'DEMO_PODS', help: 'pods on the simulated node (3..12)', default: '4' },
  rounds: { env: 'DEMO_ROUNDS', help: 'connections per pod per step', default: '3' },
};

export const demoUsage = `usage: ambient-redirect-harness demo [--mode ebpf|iptables] [--pods N] [--rounds N]

Builds a simulated node out of network namespaces on this machine (a node, N pods, a
ztunnel stand-in, an outside server), a Kubernetes API double, and runs the controller in
it as a real process. Then the story: pods start, a namespace is enrolled, a pod opts out,
the controller is killed and restarted under traffic, ztunnel goes away (enrolled pods
fail closed) and comes back. At each step every pod opens connections to the outside
server, and a table shows where they went: through ztunnel, direct, or dropped. Ends with
a verdict (exit 0 when every step held), uninstalls and tears everything down, also on
Ctrl-C. Needs root on Linux.
`;

function intFlag(name: string, raw: unknown, min: number, max: number): number {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`--${name}: "${String(raw)}" is not an integer in ${min}..${max}`);
  return n;
}

export async function demoCommand(argv: string[]): Promise<number> {
  const f = resolveFlags(argv, FLAGS);
  if (f.help) {
    process.stdout.write(demoUsage);
    return 0;
  }
  const mode = f.get('mode');
  if (mode !== 'ebpf' && mode !== 'iptables') throw new ConfigError(`--mode: "${String(mode)}" is not one of ebpf, iptables`);
  const pods = intFlag('pods', f.get('pods'), 3, 12);
  const rounds = intFlag('rounds', f.get('rounds'), 1, 50);
  if (process.getuid?.() !== 0) {
    process.stderr.write('ambient-redirect demo: needs root (it creates network namespaces and loads BPF programs)\n');
    return 1;
  }

  const print = (text: string) => process.stdout.write(text);
  print(`- building a simulated node with ${pods} pods\n`);
  const sim: SimNode = await createSimNode({ pods });
  print(`- network namespaces ${sim.prefix}-*, pins under ${pinRootFor(sim)}\n`);
  let interrupted: string | null = null;
  const abort = new AbortController();
  const onSignal = (sig: string) => {
    interrupted = sig;
    abort.abort(new Error(`interrupted by ${sig}`));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // On Ctrl-C the story stops at its next connection and cleans up (controller,
    // uninstall, API double) while the namespaces still exist; then they go.
    const result = await runStory(sim, { mode, rounds, print, live: process.stdout.isTTY === true, signal: abort.signal });
    print('\n');
    for (const s of result.steps) print(`  ${s.ok ? 'ok  ' : 'FAIL'}  ${s.title}\n`);
    print(
      result.ok
        ? `\nverdict: PASS (${mode} mode) — enrolled pods went only through ztunnel, failed closed without it, and never around it; the others went direct\n`
        : `\nverdict: FAIL (${mode} mode)\n${result.steps
            .flatMap((s) => s.problems)
            .map((p) => `  ${p}\n`)
            .join('')}`,
    );
    return result.ok ? 0 : 1;
  } catch (err) {
    if (!interrupted) throw err;
    print(`\n- interrupted (${interrupted})\n`);
    return 130;
  } finally {
    print('- tearing down the simulated node\n');
    await sim.teardown();
    rmSync(pinRootFor(sim), { recursive: true, force: true });
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
