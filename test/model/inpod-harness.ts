/**
 * The in-pod data-path tests' kernel side (harness/inpod/harness.ts, shared with the kernel
 * matrix's in-VM runner) and how its outcome is judged against the model (test/model/inpod.ts).
 */
import { expectedBytes, type InpodVerdict, LOOP_MARK } from './inpod.js';
import type { InpodOutcome } from '../../harness/inpod/harness.js';

export { INPOD_LOOKUP, INPOD_OBJECT, INPOD_PROGRAMS, InpodHarness, type InpodOutcome, type InpodProgram } from '../../harness/inpod/harness.js';

/** The kernel's outcome against the model's verdict: what differs, or null. */
export function inpodDisagreement(model: InpodVerdict, k: InpodOutcome, frame: Buffer, inMark: number): string | null {
  const problems: string[] = [];
  // Under BPF_PROG_RUN bpf_sk_assign fails (EOPNOTSUPP: not at TC ingress), so a deliver
  // is a drop there; test/kernel/inpod-e2e.test.ts sees the real delivery.
  const want = model.verdict === 'deliver' ? 'drop' : model.verdict;
  if (k.verdict !== want) problems.push(`verdict: model ${model.verdict} (${model.row}), kernel ${k.verdict}`);
  const mark = model.mark ?? (model.verdict === 'loop' ? LOOP_MARK : inMark);
  if (k.verdict !== 'drop' && k.mark !== mark) problems.push(`mark: model 0x${mark.toString(16)}, kernel 0x${k.mark.toString(16)}`);
  if (k.verdict !== 'drop') {
    const expected = expectedBytes(frame, model);
    if (!k.dataOut.equals(expected)) problems.push(`bytes: expected ${expected.toString('hex')}, kernel ${k.dataOut.toString('hex')}`);
  }
  return problems.length ? problems.join('; ') : null;
}
