/**
 * The in-pod capture `run --ztunnel-mode inpod` uses (docs/inpod.md): the capture mode
 * resolved as for the node topology (`--mode`), then for ebpf the delivery probe decides.
 * A kernel whose bpf_sk_assign refuses ztunnel's SO_REUSEPORT listeners (before 6.5) gets
 * the iptables in-pod capture, with one log line saying why.
 */
import type { SelectedMode } from '../../core/modes.js';
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

/** Builds and initialises the in-pod capture for `mode`; an ebpf kernel that cannot run it falls back to iptables. */
export async function startInPodCapture(mode: SelectedMode, opts: InPodCaptureOptions): Promise<InPodCapture> {
  if (mode === 'ebpf') {
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
