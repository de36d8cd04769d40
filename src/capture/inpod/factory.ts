/**
 * The in-pod capture `run --ztunnel-mode inpod` uses (docs/inpod.md). `--mode ebpf` asks
 * for the eBPF capture: the delivery probe then decides, and a kernel whose bpf_sk_assign
 * refuses ztunnel's SO_REUSEPORT listeners (before 6.5) gets the iptables one, with one log
 * line saying why. `--mode auto` and `--mode iptables` get Istio's iptables rules: the eBPF
 * capture loses a new connection whose 4-tuple meets a TIME_WAIT of ztunnel's in the pod
 * (docs/datapath.md, "TIME_WAIT: the known limit"), which the benchmark's connections/s
 * workload hits at once, so it is not chosen unasked.
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

/** Builds and initialises the in-pod capture `--mode` asks for; an ebpf kernel that cannot run it falls back to iptables. */
export async function startInPodCapture(requested: RequestedMode, opts: InPodCaptureOptions): Promise<InPodCapture> {
  if (requested === 'auto')
    opts.log.info('in-pod capture: iptables (auto); the eBPF in-pod capture is opt-in (--mode ebpf) until its TIME_WAIT limit is solved', {
      doc: 'docs/datapath.md, "TIME_WAIT: the known limit"',
    });
  if (requested === 'ebpf') {
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
