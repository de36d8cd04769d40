/**
 * Readiness of the agent: ready only once the first full sync has been programmed, while
 * the data path is attached and ztunnel is known. Pure state with setters `run` calls.
 */
export interface ReadinessState {
  ready: boolean;
  /** What is missing, in words (the /readyz body). */
  missing: string[];
}

export class Readiness {
  private synced = false;
  private attached = false;
  private ztunnel = false;
  private ztunnelProblem: string | null = null;

  /** The first pass on a fully synced membership was applied (latched). */
  markSynced(): void {
    this.synced = true;
  }

  /** The capture mode's data path is loaded and attached (mode.init() and a pass done). */
  setDataPathAttached(attached: boolean): void {
    this.attached = attached;
  }

  /** The last pass placed ztunnel (PassReport.ztunnel); `problem`: why discovery took none. */
  setZtunnelKnown(known: boolean, problem: string | null = null): void {
    this.ztunnel = known;
    this.ztunnelProblem = known ? null : problem;
  }

  state(): ReadinessState {
    const missing: string[] = [];
    if (!this.synced) missing.push('first full sync not programmed yet');
    if (!this.attached) missing.push('data path not attached');
    if (!this.ztunnel) missing.push(this.ztunnelProblem ? `ztunnel refused: ${this.ztunnelProblem}` : 'ztunnel not known on this node');
    return { ready: missing.length === 0, missing };
  }
}
