/**
 * The cluster's DNS servers as the API gives them: the addresses of the DNS Service
 * (kube-system/kube-dns by default). ebpf mode lets UDP port 53 pass uncaptured only to
 * and from these (docs/datapath.md O15/I16), so a failed read keeps the last good answer
 * rather than emptying the set.
 */
import type { KubeTransport } from './http.js';
import { canonicalIp } from './parse.js';
import type { Logger } from '../log.js';

export interface ServiceRef {
  namespace: string;
  name: string;
}

/** The cluster IPs of a Service object (spec.clusterIPs, else spec.clusterIP); none for a headless one. */
export function serviceAddresses(raw: unknown): string[] {
  const spec = (raw as { spec?: { clusterIP?: unknown; clusterIPs?: unknown } } | null)?.spec;
  if (!spec || typeof spec !== 'object') throw new Error('the Service has no spec');
  const list: unknown[] = Array.isArray(spec.clusterIPs) ? spec.clusterIPs : spec.clusterIP !== undefined ? [spec.clusterIP] : [];
  const out: string[] = [];
  for (const ip of list) {
    if (ip === 'None' || ip === '') continue;
    const c = typeof ip === 'string' ? canonicalIp(ip) : null;
    if (!c) throw new Error(`the Service's cluster IP ${JSON.stringify(ip).slice(0, 64)} is not an IP address`);
    out.push(c);
  }
  return out;
}

/** How often the Service is read while reads succeed: it changes rarely, if ever. */
export const DNS_REFRESH_MS = 30_000;
/** While reads fail (an API outage), the wait doubles up to this: the watches' own retries come first. */
export const DNS_REFRESH_MAX_MS = 240_000;

export class DnsServiceReader {
  private last: string[] = [];
  private failures = 0;
  private nextAt = 0;

  constructor(
    private readonly api: KubeTransport,
    readonly ref: ServiceRef,
    private readonly log: Logger,
  ) {}

  /** The addresses of the last successful read (empty before one). */
  get servers(): readonly string[] {
    return this.last;
  }

  /**
   * Reads the Service again when it is due (every DNS_REFRESH_MS; after failures, at a
   * doubling interval up to DNS_REFRESH_MAX_MS); on failure logs and keeps what it had.
   */
  async refresh(now = Date.now()): Promise<void> {
    if (now < this.nextAt) return;
    const path = `/api/v1/namespaces/${this.ref.namespace}/services/${this.ref.name}`;
    try {
      const ips = serviceAddresses(await this.api.request('GET', path));
      if (ips.join() !== this.last.join()) this.log.info('cluster DNS servers', { service: `${this.ref.namespace}/${this.ref.name}`, addresses: ips });
      this.last = ips;
      this.failures = 0;
      this.nextAt = now + DNS_REFRESH_MS;
    } catch (err) {
      this.failures++;
      this.nextAt = now + Math.min(DNS_REFRESH_MS * 2 ** this.failures, DNS_REFRESH_MAX_MS);
      this.log.warn('cannot read the DNS Service: keeping the last addresses', {
        service: `${this.ref.namespace}/${this.ref.name}`,
        addresses: this.last,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }
}
