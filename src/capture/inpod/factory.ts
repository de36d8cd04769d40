/**
 * The in-pod capture `run --ztunnel-mode inpod` uses (docs/inpod.md). `auto` and `ebpf` ask
 * for the eBPF capture: the delivery probe then decides, and a kernel whose bpf_sk_assign
 * refuses ztunnel's SO_REUSEPORT listeners (before 6.5) gets Istio's iptables rules, with one
 * log line saying why. `iptables` gets those rules without a probe.
 */
import type { RequestedMode } from '../../core/modes.js';
import type { CommandRunner } from '../../host/runner.js';
import type { Logger } from '../../log.js';
import type { InPodCapture } from '../inpod.js';
import { createEbpfInPodCapture, InpodUnsupportedError } from './ebpf.js';
import { InpodIptables } from './iptables.js';

export interface InPodCaptureOptions {
  /** The in-pod object (build/inpod.bpf.o). */
  objectPath: string;
  pinRoot: string;
  dnsCapture: boolean;
  runner: CommandRunner;
  log: Logger;
}

/** Builds and initialises the in-pod capture `--mode` asks for; a kernel that cannot run the eBPF one gets iptables. */
export async function startInPodCapture(requested: RequestedMode, opts: InPodCaptureOptions): Promise<InPodCapture> {
  if (requested !== 'iptables') {
    const ebpf = createEbpfInPodCapture({
      objectPath: opts.objectPath,
      pinRoot: opts.pinRoot,
      dnsCapture: opts.dnsCapture,
      runner: opts.runner,
      log: opts.log,
    });
    try {
      await ebpf.init();
      return ebpf;
    } catch (err) {
      ebpf.close();
      if (!(err instanceof InpodUnsupportedError)) throw err;
      opts.log.warn('in-pod capture: falling back to iptables', { reason: err.message });
    }
  }
  const iptables = new InpodIptables({ runner: opts.runner, log: opts.log, dnsCapture: opts.dnsCapture });
  await iptables.init();
  return iptables;
}
