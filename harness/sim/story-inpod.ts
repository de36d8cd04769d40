/**
 * The demo's story in the in-pod topology (today's Istio, ztunnel >= 1.23): the agent runs
 * `run --ztunnel-mode inpod --mode <mode>` on the simulated node (inpod-node.ts) and
 * installs its in-pod capture in each enrolled pod's netns before it sends the pod to
 * ztunnel over ZDS; the in-pod ztunnel stand-in (ztunnel-inpod.ts) opens its listeners
 * inside each netns it is given. A captured connection counts only when the stand-in's
 * listener *in that pod's netns* (the pod's UID, as ZDS names it) accepted it on 15001 with
 * the outside server as its original destination; the netns it holds for each pod is
 * compared, by inode, with the pod's own.
 */
import { statSync } from 'node:fs';
import type { SelectedMode } from '../../src/core/modes.js';
import type { LogEvent } from './controller.js';
import { startInpodNode, type InpodNode } from './inpod-node.js';
import type { SimNode } from './node.js';
import { type Actor, NODE_NAME, type Recorded, sleep, type StoryWorld } from './story.js';
import type { StandInEvent, ZtunnelInpod } from './ztunnel-inpod.js';

type Accepted = Extract<StandInEvent, { event: 'accepted' }>;
const plain = (addr: string) => addr.replace(/^::ffff:/, '');

export async function inpodWorld(sim: SimNode, mode: SelectedMode): Promise<StoryWorld> {
  const node: InpodNode = await startInpodNode(sim, { mode, nodeName: NODE_NAME });
  /** Every stand-in's events, in order (the story's records). */
  const events: StandInEvent[] = [];
  const accepted: Accepted[] = [];
  let ztunnel: ZtunnelInpod | undefined;
  let capturePicked: string | undefined;
  const log: LogEvent[] = [];
  let logged = 0;
  /** Takes in the running agent's new lines (each agent's events start at 0). */
  const collect = () => {
    const ev = node.agent?.events ?? [];
    log.push(...ev.slice(logged));
    logged = ev.length;
  };

  const startZtunnel = async () => {
    const z = node.startZtunnel((e) => {
      events.push(e);
      if (e.event === 'accepted') accepted.push(e);
    });
    ztunnel = z;
    const end = Date.now() + 20_000;
    while (!z.ready && Date.now() < end) await sleep(20);
    if (!z.ready) throw new Error('the in-pod ztunnel stand-in got no snapshot from the agent within 20 s');
  };
  const inode = (a: Actor) => statSync(`/var/run/netns/${a.pod.ns}`).ino;
  /** Events up to here were shown by an earlier check. */
  let shown = 0;

  return {
    topology: 'inpod',
    capturedHeader: 'via ztunnel in the pod',
    kube: node.kube.api,

    async start() {
      logged = 0;
      const agent = await node.startAgent();
      capturePicked = String(agent.events.find((e) => e.msg === 'in-pod capture ready')?.capture ?? 'not logged');
      await startZtunnel();
    },

    outbound(a: Actor, dst: string): Recorded {
      const mine = accepted.filter((e) => e.uid === a.uid);
      const captured = mine.filter((e) => e.port === 15001 && plain(e.origDst) === dst).length;
      // Inbound connections to the pod (15006) are the probe step's, not this pod's outbound.
      return { captured, stray: mine.filter((e) => e.port !== 15006).length - captured };
    },

    inbound: (a, dst) => accepted.filter((e) => e.uid === a.uid && e.port === 15006 && plain(e.origDst) === dst).length,

    async restartAgent(signal) {
      const z = ztunnel!;
      const from = events.length;
      const snapshots = z.stats.snapshots;
      collect();
      await node.stopAgent('SIGKILL');
      await sleep(3_000, signal);
      logged = 0;
      await node.startAgent();
      // ztunnel reconnects (backing off as it does) and gets the new agent's snapshot.
      const end = Date.now() + 30_000;
      while (z.stats.snapshots === snapshots && Date.now() < end) await sleep(50, signal);
      const problems: string[] = [];
      if (z.stats.snapshots === snapshots) problems.push('ztunnel got no snapshot from the restarted agent within 30 s');
      for (const e of events.slice(from)) {
        if (e.event === 'del') problems.push(`around the restart ztunnel was told to let go of ${e.uid}`);
        if (e.event === 'snapshot' && e.dropped.length) problems.push(`the restarted agent's snapshot dropped ${e.dropped.join(', ')}`);
      }
      return problems;
    },

    async ztunnelAway() {
      ztunnel?.close();
      ztunnel = undefined;
    },

    async ztunnelBack() {
      await startZtunnel();
    },

    async check(enrolled) {
      // ZDS connections ztunnel lost since the last step, and why (an agent restart shows one).
      const lost = events.slice(shown).flatMap((e) => (e.event === 'disconnected' ? [e.reason] : []));
      shown = events.length;
      const lostLine = lost.length ? [`ztunnel lost its ZDS connection ${lost.length} time(s) (${lost.join('; ')}) and kept its pods`] : [];
      if (!ztunnel) return { facts: ['no ztunnel: nothing holds the pods'], problems: [] };
      const held = ztunnel.held().sort((x, y) => `${x.info.namespace}/${x.info.name}`.localeCompare(`${y.info.namespace}/${y.info.name}`));
      const problems: string[] = [];
      const facts: string[] = [];
      for (const a of enrolled) {
        const h = held.find((x) => x.uid === a.uid);
        if (!h) problems.push(`${a.name} is enrolled but ztunnel does not hold it`);
        else if (h.netnsInode !== inode(a)) problems.push(`ztunnel holds ${a.name} with netns inode ${h.netnsInode}, not its pod's (${inode(a)})`);
      }
      for (const h of held)
        if (!enrolled.some((a) => a.uid === h.uid)) problems.push(`ztunnel holds ${h.info.namespace}/${h.info.name}, which is not enrolled`);
      facts.push(
        `ztunnel holds ${held.length ? held.map((h) => `${h.info.namespace}/${h.info.name}`).join(', ') : 'no pod'}${held.length ? ` (listeners ${held[0]!.ports.join('/')} inside each pod's own netns)` : ''}; this ztunnel so far: ${ztunnel.stats.connections} ZDS connection(s), ${ztunnel.stats.snapshots} snapshot(s)`,
      );
      return { facts: [...lostLine, ...facts], problems };
    },

    async capture() {
      if (!node.agent) return [`the agent's in-pod capture (asked: --mode ${mode}): ${capturePicked ?? '?'}`];
      const status = await node.status();
      // The capture, ztunnel's connection, and each enrolled pod's netns, capture and ack.
      const all = status.trimEnd().split('\n');
      const pods = all.findIndex((l) => l.startsWith('enrolled pods:'));
      const lines = [...all.filter((l) => /^(in-pod capture|ztunnels connected):/.test(l)), ...(pods >= 0 ? all.slice(pods) : [])];
      return [`the agent's in-pod capture (asked: --mode ${mode}; its log says: ${capturePicked}); \`status\` says:`, ...lines.map((l) => `  ${l}`)];
    },

    async finish() {
      collect();
      const code = await node.stopAgent('SIGTERM');
      if (code !== 0) throw new Error(`the agent exited with ${code} on SIGTERM`);
      return node.uninstall();
    },

    cleanup: () => {
      collect();
      return node.stop();
    },

    agentLog() {
      collect();
      return [...log];
    },
  };
}
