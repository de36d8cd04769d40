/** The DNS Service read (src/kube/dns.ts): its addresses, and a failed read keeping the last. */
import { describe, expect, it } from 'vitest';
import { DNS_REFRESH_MS, DnsServiceReader, serviceAddresses, type KubeTransport } from '../../src/kube/index.js';
import { createLogger } from '../../src/log.js';

function transport(answers: (() => unknown)[]): KubeTransport & { paths: string[] } {
  const paths: string[] = [];
  return {
    server: 'https://api',
    paths,
    async request(_method, path) {
      paths.push(path);
      return answers.shift()!();
    },
    stream() {
      throw new Error('no watches here');
    },
  };
}

const svc = (spec: Record<string, unknown>) => ({ kind: 'Service', spec });

describe('the DNS Service’s addresses', () => {
  it('reads clusterIPs, else clusterIP; a headless Service has none', () => {
    expect(serviceAddresses(svc({ clusterIP: '10.96.0.10', clusterIPs: ['10.96.0.10', 'FD00:96::A'] }))).toEqual(['10.96.0.10', 'fd00:96::a']);
    expect(serviceAddresses(svc({ clusterIP: '10.96.0.10' }))).toEqual(['10.96.0.10']);
    expect(serviceAddresses(svc({ clusterIP: 'None', clusterIPs: ['None'] }))).toEqual([]);
  });

  it.each([
    [svc({ clusterIPs: ['10.96.0.300'] }), /not an IP address/],
    [svc({ clusterIPs: [7] }), /not an IP address/],
    [{ kind: 'Service' }, /no spec/],
    [null, /no spec/],
  ])('rejects %j with a clear error', (raw, msg) => {
    expect(() => serviceAddresses(raw)).toThrow(msg);
  });

  it('a failed read keeps the last good addresses, and says so', async () => {
    const lines: string[] = [];
    const api = transport([
      () => svc({ clusterIPs: ['10.96.0.10'] }),
      () => {
        throw new Error('connection refused');
      },
      () => svc({ clusterIPs: ['bogus'] }),
      () => svc({ clusterIPs: ['10.96.0.11'] }),
    ]);
    const r = new DnsServiceReader(
      api,
      { namespace: 'kube-system', name: 'kube-dns' },
      createLogger('info', (l) => lines.push(l)),
    );
    expect(r.servers).toEqual([]);
    let t = 1_000_000;
    await r.refresh(t);
    expect(r.servers).toEqual(['10.96.0.10']);
    await r.refresh(t + DNS_REFRESH_MS - 1); // not due: no request
    expect(api.paths).toHaveLength(1);
    await r.refresh((t += DNS_REFRESH_MS));
    expect(r.servers).toEqual(['10.96.0.10']);
    // After a failure the wait doubles: a read 30 s later is not due, 60 s later it is.
    await r.refresh(t + DNS_REFRESH_MS);
    expect(api.paths).toHaveLength(2);
    await r.refresh((t += 2 * DNS_REFRESH_MS));
    expect(r.servers).toEqual(['10.96.0.10']);
    await r.refresh((t += 4 * DNS_REFRESH_MS));
    expect(r.servers).toEqual(['10.96.0.11']);
    expect(api.paths).toEqual(Array(4).fill('/api/v1/namespaces/kube-system/services/kube-dns'));
    expect(lines.filter((l) => l.includes('cannot read the DNS Service'))).toHaveLength(2);
    expect(lines.join('')).toContain('connection refused');
  });
});
