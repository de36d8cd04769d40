/** `ambient-redirect-harness demo`: the whole story on a simulated node of this machine. */
import { ConfigError, resolveFlags } from '../../src/lib/flags.js';
import { createSimNode, type SimNode } from '../sim/node.js';
import { pinRootFor } from '../sim/scenario.js';
import { runStory, type StoryWorld, type Topology } from '../sim/story.js';
import { inpodWorld } from '../sim/story-inpod.js';
import { nodeWorld } from '../sim/story-node.js';

const FLAGS = {
  topology: { env: 'DEMO_TOPOLOGY', help: "ztunnel's topology: inpod (ztunnel >= 1.23) | node (1.18-1.22)", default: 'inpod' },
  mode: { env: 'DEMO_MODE', help: 'capture mode asked of the agent: ebpf | iptables', default: 'ebpf' },
  pods: { env: 'DEMO_PODS', help: 'pods on the simulated node (3..12)', default: '4' },
  rounds: { env: 'DEMO_ROUNDS', help: 'connections per pod per step', default: '3' },
};

export const demoUsage = `usage: ambient-redirect-harness demo [--topology inpod|node] [--mode ebpf|iptables] [--pods N] [--rounds N]

Builds a simulated node out of network namespaces on this machine (a node, N pods, an
outside server), a Kubernetes API double, and runs the agent in it as a real process with
a ztunnel stand-in.

--topology inpod (the default; today's ztunnel, 1.23 and later): the agent runs
\`run --ztunnel-mode inpod --mode <mode>\` and serves ZDS; the in-pod ztunnel stand-in
connects to it and opens its listeners (15001, 15006, 15008) inside each pod's netns it
is sent, and the agent's in-pod capture (eBPF, or Istio's iptables rules) hands each
enrolled pod's connections to them. --topology node: the node-level ztunnel of Istio
1.18-1.22 in its own netns, the agent's capture on the pods' host veths.

The story: pods start, a namespace is enrolled, a pod opts out, a pod in an unlabelled
namespace is enrolled by its own label, the agent is killed and restarted under traffic, a
kubelet-style probe from the node reaches an enrolled pod's app uncaptured, ztunnel goes
away (enrolled pods fail closed) and comes back. At each step every pod opens connections
to the outside server, and a table shows where they went, as the servers recorded them:
through ztunnel (in-pod: inside the pod's own netns, with the original destination),
direct, or dropped. The capture the agent picked is shown. Ends with a verdict (exit 0
when every step held), uninstalls and tears everything down, also on Ctrl-C. Needs root
on Linux.

flags (environment equivalents in brackets):
  --topology  [DEMO_TOPOLOGY] inpod | node (default inpod)
  --mode      [DEMO_MODE]     ebpf | iptables (default ebpf)
  --pods      [DEMO_PODS]     pods on the simulated node, 3..12 (default 4)
  --rounds    [DEMO_ROUNDS]   connections per pod per step, 1..50 (default 3)
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
  const topology = f.get('topology');
  if (topology !== 'inpod' && topology !== 'node') throw new ConfigError(`--topology: "${String(topology)}" is not one of inpod, node`);
  const mode = f.get('mode');
  if (mode !== 'ebpf' && mode !== 'iptables') throw new ConfigError(`--mode: "${String(mode)}" is not one of ebpf, iptables`);
  const pods = intFlag('pods', f.get('pods'), 3, 12);
  const rounds = intFlag('rounds', f.get('rounds'), 1, 50);
  if (process.getuid?.() !== 0) {
    process.stderr.write('ambient-redirect demo: needs root (it creates network namespaces and loads BPF programs)\n');
    return 1;
  }

  const print = (text: string) => process.stdout.write(text);
  const what = `${topology} topology, --mode ${mode}`;
  print(`- building a simulated node with ${pods} pods (${what})\n`);
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
    // On Ctrl-C the story stops at its next connection and cleans up (agent, uninstall,
    // ztunnel, API double) while the namespaces still exist; then they go.
    const world: StoryWorld = await (topology === ('inpod' satisfies Topology) ? inpodWorld(sim, mode) : nodeWorld(sim, mode));
    const result = await runStory(sim, world, { rounds, print, live: process.stdout.isTTY === true, signal: abort.signal });
    print('\n');
    for (const s of result.steps) print(`  ${s.ok ? 'ok  ' : 'FAIL'}  ${s.title}\n`);
    print(
      result.ok
        ? `\nverdict: PASS (${what}) — enrolled pods went only through ztunnel${topology === 'inpod' ? ' inside their own netns' : ''}, failed closed without it, and never around it; the others went direct\n`
        : `\nverdict: FAIL (${what})\n${result.steps
            .flatMap((s) => s.problems)
            .map((p) => `  ${p}\n`)
            .join('')}`,
    );
    if (!result.ok) {
      // What the agent itself said went wrong, for whoever reads the failure.
      const warnings = world.agentLog().filter((e) => e.level === 'warn' || e.level === 'error');
      if (warnings.some((e) => e.msg === 'inpod: capture drifted; installing it again'))
        print(
          "\nthe agent found its in-pod capture taken out of a pod behind its back (drift) and put it back: a pod's connections go direct in between. Nothing in the demo does that. On a shared machine another run's `uninstall` without --host-proc takes Istio's in-pod iptables rules out of every netns it finds (docs/design.md, \"The harness\").\n",
        );
      if (warnings.length)
        print(
          `\nthe agent's warnings and errors (last ${Math.min(warnings.length, 30)}):\n${warnings
            .slice(-30)
            .map((e) => `  ${JSON.stringify(e)}\n`)
            .join('')}`,
        );
    }
    return result.ok ? 0 : 1;
  } catch (err) {
    if (!interrupted) throw err;
    print(`\n- interrupted (${interrupted})\n`);
    return 130;
  } finally {
    print('- tearing down the simulated node\n');
    await sim.teardown();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
