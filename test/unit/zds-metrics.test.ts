/** inpod mode's metrics and readiness reason (src/metrics): the ZDS series read at scrape time, the reason when no ztunnel is connected. */
import { describe, expect, it } from 'vitest';
import { AgentMetrics, Readiness } from '../../src/metrics/index.js';

describe('inpod metrics', () => {
  it('the ZDS series come from the server at scrape time', async () => {
    const m = new AgentMetrics();
    m.setZtunnelMode('inpod');
    let conns = [{ phase: 'ready', podsSent: 3 }];
    const counters = {
      connectionsAccepted: 4,
      connectionsRefused: 1,
      requests: { add: 5, keep: 1, del: 2, snapshot_sent: 3 },
      acksOk: 9,
      ackErrors: 1,
      ackTimeouts: 2,
      helloTimeouts: 1,
      malformed: 3,
    };
    m.setZdsSource(() => ({ connections: conns, counters }));
    m.observeZdsSnapshot(0.02);
    let text = await m.metrics();
    expect(text).toContain('ambient_redirect_ztunnel_mode{mode="inpod"} 1');
    expect(text).toContain('ambient_redirect_zds_connections{phase="ready"} 1');
    expect(text).toContain('ambient_redirect_zds_connections{phase="hello"} 0');
    expect(text).toContain('ambient_redirect_zds_connections_total{outcome="refused"} 1');
    expect(text).toContain('ambient_redirect_zds_requests_total{type="add"} 5');
    expect(text).toContain('ambient_redirect_zds_requests_total{type="keep"} 1');
    expect(text).toContain('ambient_redirect_zds_acks_total{outcome="error"} 1');
    expect(text).toContain('ambient_redirect_zds_acks_total{outcome="timeout"} 2');
    expect(text).toContain('ambient_redirect_zds_bad_peer_total{reason="malformed"} 3');
    expect(text).toContain('ambient_redirect_zds_snapshot_duration_seconds_count 1');
    conns = [];
    text = await m.metrics();
    expect(text).toContain('ambient_redirect_zds_connections{phase="ready"} 0');
  });

  it('node mode shows no ZDS series values', async () => {
    const m = new AgentMetrics();
    m.setZtunnelMode('node');
    const text = await m.metrics();
    expect(text).toContain('ambient_redirect_ztunnel_mode{mode="node"} 1');
    expect(text).not.toMatch(/ambient_redirect_zds_requests_total\{/);
  });

  it('readiness says why no ztunnel serves the pods, and is ready once one is connected', () => {
    const r = new Readiness();
    r.markSynced();
    r.setDataPathAttached(true);
    r.setZtunnelConnected(false, 'no ztunnel connected to the ZDS socket /s');
    expect(r.state()).toEqual({ ready: false, missing: ['no ztunnel connected to the ZDS socket /s'] });
    r.setZtunnelConnected(true, 'unused');
    expect(r.state()).toEqual({ ready: true, missing: [] });
  });
});
