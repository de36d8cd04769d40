/**
 * The kernel facts mode selection needs: the release (`os.release()`), libbpf's feature
 * probes, and whether a Geneve driver exists. Read-only: nothing is created to find out.
 */
import { existsSync, readFileSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { BPF_PROG_TYPE_SCHED_CLS, probeHelper, probeProgType } from '../bpf/ffi.js';
import { probeTcx } from '../bpf/hooks.js';

/** Answers of libbpf's feature probes for SCHED_CLS programs. */
export interface BpfProbes {
  /** BPF_PROG_TYPE_SCHED_CLS loads (4.1). */
  schedCls: boolean;
  /** bpf_redirect (4.4): the outbound program's fallback variant. */
  redirect: boolean;
  /** bpf_sk_lookup_tcp (4.20): the first helper of ebpf mode's floor. */
  skLookupTcp: boolean;
  /** bpf_sk_assign (5.7). */
  skAssign: boolean;
  /** bpf_redirect_peer (5.10). */
  redirectPeer: boolean;
  /** tcx hooks (6.6): a read-only BPF_PROG_QUERY of loopback's (absent: not probed). */
  tcx?: boolean;
}

export interface KernelFacts {
  /** `uname -r`, e.g. "6.18.44-fc-v657" or "4.19.0-27-amd64". */
  release: string;
  /** null when the probes could not run at all (see probeError). */
  probes: BpfProbes | null;
  /** Why the probes could not run (bpf() refused: EPERM, ENOSYS, no libbpf ...). */
  probeError?: string;
  /** The kernel can create Geneve links: true, false, or null when it cannot tell. */
  geneve: boolean | null;
}

/** Helper ids from linux/bpf.h's __BPF_FUNC_MAPPER. */
export const BPF_FUNC = { redirect: 23, sk_lookup_tcp: 84, sk_assign: 124, redirect_peer: 155 } as const;

/** libbpf's probes: each loads a tiny program of the type, or one calling the helper. */
function probeBpf(): BpfProbes {
  const helper = (id: number) => probeHelper(BPF_PROG_TYPE_SCHED_CLS, id);
  return {
    schedCls: probeProgType(BPF_PROG_TYPE_SCHED_CLS),
    redirect: helper(BPF_FUNC.redirect),
    skLookupTcp: helper(BPF_FUNC.sk_lookup_tcp),
    skAssign: helper(BPF_FUNC.sk_assign),
    redirectPeer: helper(BPF_FUNC.redirect_peer),
    tcx: probeTcx(),
  };
}

/** CONFIG_GENEVE from a kernel config text: y, m, or undefined when not set. */
export function configValue(config: string, name: string): string | undefined {
  const m = new RegExp(`^${name}=(\\S+)$`, 'm').exec(config);
  return m?.[1];
}

function readKernelConfig(release: string): string | null {
  try {
    if (existsSync('/proc/config.gz')) return gunzipSync(readFileSync('/proc/config.gz')).toString('utf8');
    const boot = `/boot/config-${release}`;
    if (existsSync(boot)) return readFileSync(boot, 'utf8');
  } catch {
    // Unreadable: we cannot tell.
  }
  return null;
}

/**
 * Geneve is usable when the driver is loaded, built in, or a module the kernel can load.
 * null when the kernel's config is not readable and the driver is not loaded.
 */
export function geneveAvailable(release: string): boolean | null {
  if (existsSync('/sys/module/geneve')) return true;
  const config = readKernelConfig(release);
  if (config === null) return null;
  const v = configValue(config, 'CONFIG_GENEVE');
  if (v === 'y') return true;
  if (v === 'm') return configValue(config, 'CONFIG_MODULES') === 'y' && existsSync('/proc/modules');
  return false;
}

export function gatherKernelFacts(): KernelFacts {
  const release = osRelease();
  const geneve = geneveAvailable(release);
  try {
    return { release, probes: probeBpf(), geneve };
  } catch (err) {
    return { release, probes: null, probeError: err instanceof Error ? err.message : String(err), geneve };
  }
}
