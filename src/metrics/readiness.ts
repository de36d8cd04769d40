/**
 * Readiness of the agent: ready only once the first full sync has been programmed, while
 * the data path is attached and ztunnel is known, and while the last pass found nothing
 * running before our programs (docs/operations.md, /readyz). Pure state with setters `run`
 * calls after each pass: it says what the data path was when last verified.
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
  /** null: the agent does not install the CNI plugin. */
  private cniEntry: { installed: boolean; reason: string } | null = null;
  private findings: string[] = [];
  private failed: string | null = null;
  private ztunnelProblem: string | null = null;
  private ztunnelMissing: string | null = null;

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
    this.ztunnelMissing = null;
    this.ztunnelProblem = known ? null : problem;
  }

  /** inpod mode: a ztunnel is connected over ZDS (true), or why none is (the /readyz reason). */
  setZtunnelConnected(connected: boolean, missing: string): void {
    this.ztunnel = connected;
    this.ztunnelProblem = null;
    this.ztunnelMissing = connected ? null : missing;
  }

  /** With --cni-install: our entry is (not) in the runtime's CNI config list (src/cni/gate.ts). */
  setCniInstalled(installed: boolean, reason = ''): void {
    this.cniEntry = { installed, reason };
  }

  /** The last pass's ordering findings, in words (empty: nothing runs before ours). */
  setFindings(findings: readonly string[]): void {
    this.findings = [...findings];
  }

  /** The last pass failed (its error), or null once one succeeds. */
  setPassFailed(error: string | null): void {
    this.failed = error;
  }

  state(): ReadinessState {
    const missing: string[] = [];
    if (!this.synced) missing.push('first full sync not programmed yet');
    if (!this.attached) missing.push('data path not attached');
    if (!this.ztunnel)
      missing.push(this.ztunnelProblem ? `ztunnel refused: ${this.ztunnelProblem}` : (this.ztunnelMissing ?? 'ztunnel not known on this node'));
    if (this.cniEntry && !this.cniEntry.installed)
      missing.push(`CNI plugin not in the runtime's config list${this.cniEntry.reason ? `: ${this.cniEntry.reason}` : ''}`);
    if (this.failed !== null) missing.push(`last reconcile pass failed: ${this.failed}`);
    for (const f of this.findings) missing.push(`data path bypassed: ${f}`);
    return { ready: missing.length === 0, missing };
  }
}
