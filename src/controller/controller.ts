/**
 * The reconcile loop: read membership and the node, compute the desired state, read the
 * actual state from the kernel, apply the difference. Level-triggered and idempotent: a
 * pass repairs whatever the previous one, or someone else, left.
 */
import { desiredState, type ZtunnelPlacement } from './desired.js';
import { placeZtunnelByIp, ZtunnelNotFound } from './ztunnel.js';
import { readHostNet } from '../host/netinfo.js';
import type { CommandRunner } from '../host/runner.js';
import type { Logger } from '../log.js';
import type { ApplyResult, RedirectMode } from '../redirect/mode.js';

/** Who is enrolled. Static for now; the Kubernetes source implements the same port. */
export interface Membership {
  enrolled(): Promise<string[]>;
}

export function staticMembership(ips: readonly string[]): Membership {
  const frozen = [...ips];
  return { enrolled: async () => frozen };
}

export interface ControllerDeps {
  mode: RedirectMode;
  membership: Membership;
  ztunnelIp: string;
  runner: CommandRunner;
  log: Logger;
}

export interface PassReport extends ApplyResult {
  enrolled: number;
  programmed: number;
  unplaced: string[];
  ztunnel: boolean;
}

export class Controller {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> = Promise.resolve();
  private stopped = true;

  constructor(private readonly deps: ControllerDeps) {}

  async reconcile(): Promise<PassReport> {
    const { mode, membership, runner, log } = this.deps;
    const [enrolled, net] = await Promise.all([membership.enrolled(), readHostNet(runner)]);
    let zt: ZtunnelPlacement | null = null;
    try {
      zt = await placeZtunnelByIp(this.deps.ztunnelIp, net, runner);
    } catch (err) {
      if (!(err instanceof ZtunnelNotFound)) throw err;
      log.warn('ztunnel not found: enrolled pods fail closed', { reason: err.message });
    }
    const desired = desiredState(enrolled, net, zt);
    const actual = await mode.actual(net.links.keys());
    const result = await mode.apply(desired, actual);
    for (const ip of desired.unplaced) log.warn('enrolled pod has no host route yet', { ip });
    return { ...result, enrolled: enrolled.length, programmed: desired.pods.size, unplaced: desired.unplaced, ztunnel: zt !== null };
  }

  /** Reconciles now, then every intervalMs (with +-10% jitter) until stop(). */
  start(intervalMs: number, onPass: (r: PassReport) => void, onError: (e: unknown) => void): void {
    this.stopped = false;
    const pass = async (): Promise<void> => {
      try {
        onPass(await this.reconcile());
      } catch (err) {
        onError(err);
      }
      if (this.stopped) return;
      this.timer = setTimeout(() => {
        this.current = pass();
      }, intervalMs * (0.9 + Math.random() * 0.2));
    };
    this.current = pass();
  }

  /** Stops after the pass under way, if any; the data path stays as it is. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.current;
  }
}
