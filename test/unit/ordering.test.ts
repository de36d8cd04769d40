/**
 * The ordering check's pure core (src/core/ordering.ts) on listings shaped as the
 * kernel gives them, the parser of the rtnetlink filter dump, and how findings reach readiness
 * and the ambient_redirect_foreign_programs gauge.
 */
import { describe, expect, it } from 'vitest';
import { parseFilterDump } from '../../src/bpf/hooks.js';
import { describeFinding, deviceBypass, programsAhead, type HookListing, type TcFilterEntry } from '../../src/core/ordering.js';
import { AgentMetrics } from '../../src/metrics/registry.js';
import { Readiness } from '../../src/metrics/readiness.js';

const OURS = { handle: 0xa4b1, priority: 1, progId: 50 };
const AT = { where: 'pod' as const, device: 'veth1', direction: 'ingress' as const };
const head = (pref: number, kind = 'bpf'): TcFilterEntry => ({ pref, kind, chain: 0, handle: null, progId: null, progName: null });
const bpf = (pref: number, handle: string, progId: number, progName: string | null = null, chain = 0): TcFilterEntry => ({
  pref,
  kind: 'bpf',
  chain,
  handle,
  progId,
  progName,
});
const ours = (progId = 50) => [head(1), bpf(1, '0xa4b1', progId, 'out_redir_peer')];

describe('programsAhead', () => {
  const cases: { name: string; hook: HookListing; ours?: typeof OURS; want: string[] }[] = [
    { name: 'ours alone', hook: { tcx: [], tc: ours() }, want: [] },
    { name: 'ours alone, no tcx in the kernel', hook: { tcx: null, tc: ours() }, want: [] },
    { name: 'a filter after ours', hook: { tcx: [], tc: [...ours(), head(5, 'u32'), { ...head(5, 'u32'), handle: '800:' }] }, want: [] },
    { name: 'a filter in another chain (only a goto reaches it)', hook: { tcx: [], tc: [...ours(), bpf(1, '0x2', 7, null, 3)] }, want: [] },
    {
      name: 'a tcx program (runs before every clsact filter)',
      hook: { tcx: [{ id: 9, name: 'cil_from_cont' }], tc: ours() },
      want: ['tcx: tcx program 9 cil_from_cont runs before ours on veth1 ingress'],
    },
    {
      name: 'another filter at our priority, listed before ours',
      hook: { tcx: [], tc: [head(1), bpf(1, '0x1', 7, 'cil_from_container'), bpf(1, '0xa4b1', 50)] },
      want: ['tc-same-priority: tc bpf filter pref 1 handle 0x1 program 7 cil_from_container shares our priority on veth1 ingress and may run first'],
    },
    {
      // Attached before ours: it runs after ours (test/kernel/cni-coexist.test.ts shows it
      // with packets), sees what ours passes, and is no bypass.
      name: 'another filter at our priority, listed after ours',
      hook: { tcx: [], tc: [...ours(), bpf(1, '0x1', 7)] },
      want: [],
    },
    {
      name: 'another filter at our priority while ours is missing',
      hook: { tcx: [], tc: [head(1), bpf(1, '0x1', 7)] },
      want: [
        'missing: our filter (pref 1 handle 0xa4b1) is not there on veth1 ingress',
        'tc-same-priority: tc bpf filter pref 1 handle 0x1 program 7 shares our priority on veth1 ingress and may run first',
      ],
    },
    {
      name: 'a filter at a lower priority than ours (ours at an older build’s 9393)',
      hook: { tcx: [], tc: [head(1), bpf(1, '0x1', 7), head(9393), bpf(9393, '0xa4b1', 50)] },
      ours: { ...OURS, priority: 9393 },
      want: ['tc-lower-priority: tc bpf filter pref 1 handle 0x1 program 7 runs before ours on veth1 ingress'],
    },
    { name: 'ours missing', hook: { tcx: [], tc: [] }, want: ['missing: our filter (pref 1 handle 0xa4b1) is not there on veth1 ingress'] },
    {
      name: 'our place holding another program',
      hook: { tcx: [], tc: ours(51) },
      want: ['missing: tc bpf filter pref 1 handle 0xa4b1 program 51 out_redir_peer holds another program than ours (50) on veth1 ingress'],
    },
  ];
  for (const c of cases) {
    it(c.name, () => {
      expect(programsAhead(AT, c.hook, c.ours ?? OURS).map((f) => `${f.kind}: ${describeFinding(f)}`)).toEqual(c.want);
    });
  }

  it('names ztunnel’s hook as such', () => {
    const [f] = programsAhead({ where: 'ztunnel', device: 'eth0', direction: 'ingress' }, { tcx: [{ id: 3, name: null }], tc: ours() }, OURS);
    expect(describeFinding(f!)).toBe("tcx program 3 runs before ours on ztunnel's eth0 ingress");
  });
});

describe('deviceBypass', () => {
  it('flags netkit, trusts veth, and does not guess about other kinds', () => {
    expect(deviceBypass('netkit')).toMatch(/netkit/);
    expect(deviceBypass('veth')).toBeNull();
    expect(deviceBypass(null)).toBeNull();
  });
});

/** One rtattr (4-byte aligned). */
function rta(type: number, value: Buffer): Buffer {
  const len = 4 + value.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  value.copy(b, 4);
  return b;
}
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
/** An RTM_NEWTFILTER message as the kernel sends it in a dump. */
function filterMsg(pref: number, handle: number, kind: string, progId: number | null, chain = 0): Buffer {
  const tcmsg = Buffer.alloc(20);
  tcmsg.writeUInt32LE(handle, 8);
  tcmsg.writeUInt32LE(((pref << 16) | 0x0300) >>> 0, 16); // ETH_P_ALL, big-endian, in the low half
  const body = Buffer.concat([
    tcmsg,
    rta(1, Buffer.from(kind + '\0')),
    rta(11, u32(chain)),
    ...(progId === null ? [] : [rta(2 | 0x8000, Buffer.concat([rta(7, Buffer.from('x.o:[tc]\0')), rta(11, u32(progId))]))]),
  ]);
  const hdr = Buffer.alloc(16);
  hdr.writeUInt32LE(16 + body.length, 0);
  hdr.writeUInt16LE(44, 4);
  return Buffer.concat([hdr, body]);
}
function errorMsg(errno: number): Buffer {
  const b = Buffer.alloc(36);
  b.writeUInt32LE(36, 0);
  b.writeUInt16LE(2, 4);
  b.writeInt32LE(-errno, 16);
  return b;
}
const DONE = (() => {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(20, 0);
  b.writeUInt16LE(3, 4);
  return b;
})();

describe('parseFilterDump', () => {
  it('reads a dump as tc shows it: the line opening each priority, then its filters with handle and program', () => {
    const msgs = [filterMsg(1, 0, 'bpf', null), filterMsg(1, 1, 'bpf', 167), filterMsg(1, 0xa4b1, 'bpf', 50), filterMsg(5, 0x800, 'u32', null, 2), DONE];
    const names = new Map([[167, 'foreign_pass']]);
    expect(parseFilterDump(msgs, 'veth1 ingress', (id) => names.get(id) ?? null)).toEqual([
      head(1),
      bpf(1, '0x1', 167, 'foreign_pass'),
      bpf(1, '0xa4b1', 50),
      { pref: 5, kind: 'u32', chain: 2, handle: null, progId: null, progName: null },
    ]);
  });

  it('a hook without clsact, or a device that is gone, has nothing; other errors throw', () => {
    expect(parseFilterDump([errorMsg(22)], 'x')).toEqual([]);
    expect(parseFilterDump([errorMsg(19)], 'x')).toEqual([]);
    expect(() => parseFilterDump([errorMsg(1)], 'veth1 ingress')).toThrow(/RTM_GETTFILTER\(veth1 ingress\): EPERM/);
  });
});

describe('readiness and the gauge follow the last pass', () => {
  it('a finding makes /readyz fail with it; a failed pass too; both clear', () => {
    const r = new Readiness();
    r.markSynced();
    r.setDataPathAttached(true);
    r.setZtunnelKnown(true);
    expect(r.state().ready).toBe(true);
    r.setFindings(['tcx program 9 runs before ours on veth1 ingress']);
    expect(r.state()).toEqual({ ready: false, missing: ['data path bypassed: tcx program 9 runs before ours on veth1 ingress'] });
    r.setFindings([]);
    r.setPassFailed('bpf_tc_attach(ifindex 4 ingress): EINVAL');
    expect(r.state()).toEqual({ ready: false, missing: ['last reconcile pass failed: bpf_tc_attach(ifindex 4 ingress): EINVAL'] });
    r.setPassFailed(null);
    expect(r.state().ready).toBe(true);
  });

  it('ambient_redirect_foreign_programs counts the last pass’s findings by hook and kind, 0 included', async () => {
    const m = new AgentMetrics();
    const pass = { enrolled: 1, programmed: 1, upserted: 0, attached: 0 };
    const value = async (hook: string, kind: string) => {
      const line = (await m.metrics()).split('\n').find((l) => l.startsWith(`ambient_redirect_foreign_programs{hook="${hook}",kind="${kind}"}`));
      return line === undefined ? undefined : Number(line.split(' ').pop());
    };
    m.observePass(
      {
        ...pass,
        findings: [
          { where: 'pod', direction: 'egress', kind: 'tcx' },
          { where: 'pod', direction: 'egress', kind: 'tcx' },
          { where: 'ztunnel', direction: 'ingress', kind: 'tc-same-priority' },
        ],
      },
      0.01,
    );
    expect(await value('pod-egress', 'tcx')).toBe(2);
    expect(await value('ztunnel-ingress', 'tc-same-priority')).toBe(1);
    expect(await value('pod-ingress', 'tcx')).toBe(0);
    m.observePass({ ...pass, findings: [] }, 0.01);
    expect(await value('pod-egress', 'tcx')).toBe(0);
    expect(await value('ztunnel-ingress', 'tc-same-priority')).toBe(0);
    // The XDP hook's kind is reported too, 0 included.
    expect(await value('pod-ingress', 'xdp')).toBe(0);
    m.observePass({ ...pass, findings: [{ where: 'pod', direction: 'ingress', kind: 'xdp' }] }, 0.01);
    expect(await value('pod-ingress', 'xdp')).toBe(1);
  });

  it('an XDP program not ours (or ours missing with --hook xdp) is named with the device’s XDP hook', () => {
    const program = 'native XDP program 7 foo (not ours) runs before our TC programs';
    expect(describeFinding({ where: 'pod', device: 'veth1', direction: 'ingress', kind: 'xdp', program })).toBe(`${program} on veth1 XDP`);
    expect(describeFinding({ where: 'ztunnel', device: 'eth0', direction: 'ingress', kind: 'xdp', program })).toBe(`${program} on ztunnel's eth0 XDP`);
  });
});
