/**
 * Golden files of what iptables mode writes: every command (argv and stdin) it runs on a
 * fresh node, recorded through a fake CommandRunner, for IPv4 and IPv6, Geneve and VXLAN,
 * no ztunnel (fail closed), and uninstall. Any difference fails; regenerate on purpose
 * with `UPDATE_GOLDEN=1 npx vitest run test/unit/iptables-golden.test.ts` and review the diff.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { PodFlags } from '../../src/bpf/codec.js';
import type { Desired } from '../../src/core/desired.js';
import { CommandError, type CommandRunner, type RunOptions } from '../../src/host/runner.js';
import { createLogger } from '../../src/log.js';
import { IptablesRedirect } from '../../src/capture/iptables/iptables.js';
import { chainRestoreInput } from '../../src/capture/iptables/restore.js';
import { uninstallIptables } from '../../src/capture/iptables/uninstall.js';
import { buildPlan, parseSave } from '../../src/capture/iptables/rules.js';
import { createRedirectMode } from '../../src/capture/factory.js';
import type { Tunnel } from '../../src/capture/select.js';

/** A /proc/sys of a node with loose defaults: nothing to open, no write (test/unit/rpfilter.test.ts has the strict node). */
const PROC_SYS = mkdtempSync(join(tmpdir(), 'iptables-golden-sys-'));
for (const dev of ['all', 'default']) {
  mkdirSync(join(PROC_SYS, 'net/ipv4/conf', dev), { recursive: true });
  writeFileSync(join(PROC_SYS, 'net/ipv4/conf', dev, 'rp_filter'), '0\n');
}
afterAll(() => rmSync(PROC_SYS, { recursive: true, force: true }));

const GOLDEN = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden', 'iptables');
const silent = createLogger('error', () => {});

/** Answers reads with a fresh node's state (or `canned`), records everything. */
class RecordingRunner implements CommandRunner {
  readonly log: string[] = [];
  constructor(private readonly answer: (argv: readonly string[]) => string | undefined = () => undefined) {}
  async run(argv: readonly string[], opts: RunOptions = {}): Promise<string> {
    this.log.push(`$ ${argv.join(' ')}`);
    if (opts.input !== undefined)
      this.log.push(
        ...opts.input
          .trimEnd()
          .split('\n')
          .map((l) => `  | ${l}`),
      );
    const canned = this.answer(argv);
    if (canned !== undefined) return canned;
    const cmd = argv.join(' ');
    if (cmd === 'iptables --version') return 'iptables v1.8.9 (nf_tables)\n';
    if (/ -j /.test(` ${cmd} `) || cmd.includes(' -j ')) return '[]';
    return '';
  }
}

function checkGolden(name: string, text: string): void {
  const path = join(GOLDEN, `${name}.txt`);
  if (process.env.UPDATE_GOLDEN === '1') {
    mkdirSync(GOLDEN, { recursive: true });
    writeFileSync(path, text);
    return;
  }
  if (!existsSync(path)) throw new Error(`golden file ${path} is missing: run with UPDATE_GOLDEN=1 and review it`);
  expect(text).toBe(readFileSync(path, 'utf8'));
}

interface Case {
  name: string;
  tunnel: Tunnel;
  pods: string[];
  ztunnel: { ip: string; host: string } | null;
}

const V4 = { pods: ['10.244.1.7', '10.244.1.9'], ztunnel: { ip: '10.244.1.3', host: '10.0.0.5' } };
const V6 = { pods: ['fd00:10:244:1::7', 'fd00:10:244:1::9'], ztunnel: { ip: 'fd00:10:244:1::3', host: 'fd00:10::5' } };

const CASES: Case[] = [
  { name: 'ipv4-geneve', tunnel: 'geneve', ...V4 },
  { name: 'ipv4-vxlan', tunnel: 'vxlan', ...V4 },
  { name: 'ipv6-geneve', tunnel: 'geneve', ...V6 },
  { name: 'ipv6-vxlan', tunnel: 'vxlan', ...V6 },
  { name: 'no-ztunnel-fail-closed', tunnel: 'vxlan', pods: [...V4.pods, ...V6.pods], ztunnel: null },
];

function desired(c: Case): Desired {
  const pods = new Map(c.pods.map((ip, i) => [ip, { ifindex: 10 + i, mac: '00:00:00:00:00:00', flags: PodFlags.ENROLLED }]));
  const placement = c.ztunnel
    ? { hostLink: { ifindex: 5, name: 'vethzt', mac: '0a:58:0a:f4:01:01' }, peer: { ifindex: 2, name: 'eth0', mac: '0a:58:0a:f4:01:03' }, netns: 'cni-ztunnel' }
    : null;
  return { pods, ztunnel: null, ztunnelPlacement: placement, hooks: new Set(), unplaced: [] };
}

function caseRunner(c: Case): RecordingRunner {
  return new RecordingRunner((argv) => {
    const cmd = argv.join(' ');
    if (c.ztunnel && cmd === 'ip -n cni-ztunnel -j addr show dev eth0') {
      return JSON.stringify([{ ifname: 'eth0', addr_info: [{ local: c.ztunnel.ip, prefixlen: c.ztunnel.ip.includes(':') ? 128 : 32 }] }]);
    }
    // The pods' host veths: the anti-spoofing rules name them.
    if (cmd === 'ip -j -d addr show') return JSON.stringify(c.pods.map((_, i) => ({ ifindex: 10 + i, ifname: `veth${i}` })));
    if (c.ztunnel && cmd === `ip -j route get ${c.ztunnel.ip}`) return JSON.stringify([{ dst: c.ztunnel.ip, dev: 'vethzt', prefsrc: c.ztunnel.host }]);
    return undefined;
  });
}

async function record(c: Case): Promise<string> {
  const runner = caseRunner(c);
  const mode = new IptablesRedirect({ runner, log: silent, tunnel: c.tunnel, backend: 'nft', procSys: PROC_SYS });
  await mode.init();
  await mode.apply(desired(c), await mode.actual());
  return runner.log.join('\n') + '\n';
}

/** A node holding iptables mode's state, and someone else's beside it. */
const INSTALLED: Record<string, string> = {
  'ip -j -d addr show': JSON.stringify([
    { ifname: 'istioout', ifalias: 'ambient-redirect ztunnel-netns=cni-ztunnel', linkinfo: { info_kind: 'vxlan' } },
    { ifname: 'istioin', ifalias: 'ambient-redirect ztunnel-netns=cni-ztunnel', linkinfo: { info_kind: 'vxlan' } },
    // Someone else's device with one of our names but not our alias: left alone.
    { ifname: 'eth0' },
  ]),
  'ip -n cni-ztunnel -j -d addr show': JSON.stringify([{ ifname: 'pistioout' }, { ifname: 'pistioin' }, { ifname: 'eth0' }]),
  'ip -j netns list': JSON.stringify([{ name: 'cni-ztunnel' }, { name: 'other' }]),
  'iptables-nft-save': [
    '*mangle',
    ':PREROUTING ACCEPT [0:0]',
    ':ztunnel-PREROUTING - [0:0]',
    ':KUBE-KEEP - [0:0]',
    '-A PREROUTING -j ztunnel-PREROUTING',
    '-A PREROUTING -j KUBE-KEEP',
    '-A ztunnel-PREROUTING -j RETURN',
    'COMMIT',
    '',
  ].join('\n'),
  'ip -4 -j rule show': JSON.stringify([
    { priority: 0, table: 'local' },
    { priority: 101, fwmark: '0x100', fwmask: '0x100', table: '101', protocol: '211' },
    { priority: 101, fwmark: '0x100', fwmask: '0x100', table: '101' }, // not ours: no protocol 211
  ]),
  'ip -4 -j route show table all proto 211': JSON.stringify([{ dst: 'default', gateway: '192.168.127.2', dev: 'istioout', table: '101' }]),
  'ipset list -n': 'ztunnel-pods-ips\nztunnel-pods-ips-v6\nsomeone-elses\n',
};

describe('iptables mode golden files', () => {
  for (const c of CASES) {
    it(`writes the ${c.name} rules`, async () => {
      checkGolden(c.name, await record(c));
    });
  }

  it('gets the DNS servers from the mode factory (run passes them there)', async () => {
    const c = CASES[1]!;
    const runner = caseRunner(c);
    const mode = createRedirectMode('iptables', {
      objectPath: 'unused',
      pinRoot: '/nonexistent',
      runner,
      log: silent,
      tunnel: 'vxlan',
      iptablesBackend: 'nft',
      facts: { release: '6.18.0', probes: null, geneve: false },
      dnsServers: () => ['10.96.0.10'],
      procSys: PROC_SYS,
    });
    await mode.init();
    await mode.apply(desired(c), await mode.actual());
    expect(runner.log.join('\n')).toMatch(/-d 10\.96\.0\.10\/32 .*--dport 53/);
  });

  it('removes exactly what it finds of its own on uninstall', async () => {
    const installed = INSTALLED;
    const runner = new RecordingRunner((argv) => installed[argv.join(' ')]);
    const { removed, failed, skipped } = await uninstallIptables(runner);
    expect(failed).toEqual([]);
    expect(skipped).toEqual([]);
    checkGolden('uninstall', runner.log.join('\n') + '\n\n# reported\n' + removed.join('\n') + '\n');
    expect(removed).toContain('destroyed ipset ztunnel-pods-ips');
    expect(runner.log.join('\n')).not.toMatch(/someone-elses|KUBE-KEEP -F|link del eth0/);
  });

  it('skips deleting empty nft tables when nft is not installed, and removes everything else', async () => {
    // After our chains are removed, the mangle table iptables-restore created is empty.
    const emptied = (nft: 'present' | 'missing') => {
      let saves = 0;
      return new RecordingRunner((argv) => {
        const cmd = argv.join(' ');
        if (argv[0] === 'nft' && nft === 'missing') throw new CommandError(argv, null, 'spawn nft ENOENT');
        // The first save is read for rp_filter records, the second for our chains.
        if (cmd === 'iptables-nft-save' && saves++ > 2) return '*mangle\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n';
        return INSTALLED[cmd];
      });
    };
    const withNft = await uninstallIptables(emptied('present'));
    expect(withNft.removed).toContain('deleted the empty ip mangle table');
    const r = await uninstallIptables(emptied('missing'));
    expect(r.failed).toEqual([]);
    expect(r.skipped).toEqual([
      { step: 'delete the empty nft tables we created', reason: 'nft is not installed; the empty tables filter nothing and are left' },
    ]);
    // Everything but the cosmetic table deletion still happened.
    expect(r.removed).toEqual(withNft.removed.filter((l) => !l.startsWith('deleted the empty')));
    expect(r.removed).toContain('destroyed ipset ztunnel-pods-ips');
  });

  it('runs every step when one fails, and reports the failed one', async () => {
    const runner = new RecordingRunner((argv) => {
      if (argv.join(' ').startsWith('ip -4 -j rule show')) throw new CommandError(argv, 1, 'RTNETLINK answers: Operation not permitted');
      return INSTALLED[argv.join(' ')];
    });
    const r = await uninstallIptables(runner);
    expect(r.failed).toEqual([{ step: 'remove our IPv4 ip rules and routes', error: expect.stringContaining('Operation not permitted') }]);
    // Steps after the failed one ran: the tunnels and the ipsets are gone.
    expect(r.removed).toEqual(
      expect.arrayContaining(['deleted istioout', 'deleted istioin', 'destroyed ipset ztunnel-pods-ips', 'destroyed ipset ztunnel-pods-ips-v6']),
    );
  });

  it('is a no-op on a node that already holds the plan (idempotent iptables input)', () => {
    const plan = buildPlan({
      tunnel: 'vxlan',
      pods: V4.pods.map((ip, i) => ({ ip, dev: `veth${i}` })),
      ztunnel: { netns: 'zt', hostVeth: 'vethzt', eth: 'eth0', ips: [V4.ztunnel.ip], hostIps: { 4: V4.ztunnel.host } },
      dnsCapture: false,
    });
    const chains = plan.node.chains.filter((c) => c.family === 4);
    // What iptables-save prints after our restore: the same rules, one jump per chain.
    const byTable = new Map<string, string[]>();
    for (const c of chains) {
      const lines = byTable.get(c.table) ?? [];
      lines.push(`:${c.chain} - [0:0]`, `-A ${c.base} -j ${c.chain}`, ...c.rules.map((r) => `-A ${c.chain} ${r}`));
      byTable.set(c.table, lines);
    }
    const save = [...byTable.entries()].map(([t, l]) => [`*${t}`, ...l, 'COMMIT'].join('\n')).join('\n');
    expect(chainRestoreInput(chains, parseSave(save))).toBeNull();
    // A rule edited by someone else makes that chain, and only it, rewritten.
    const drifted = save.replace('-A ztunnel-OUTPUT -m addrtype', '-A ztunnel-OUTPUT -s 10.0.0.5/32 -m addrtype');
    const input = chainRestoreInput(chains, parseSave(drifted))!;
    expect(input.match(/^:/gm)).toHaveLength(1);
    expect(input).toContain(':ztunnel-OUTPUT - [0:0]');
  });
});

describe('iptables plan closes the ways around ztunnel (issue 14)', () => {
  const z = { netns: 'zt', hostVeth: 'vethzt', eth: 'eth0', ips: [V4.ztunnel.ip, V6.ztunnel.ip], hostIps: { 4: V4.ztunnel.host, 6: V6.ztunnel.host } };
  const pods = [...V4.pods, ...V6.pods].map((ip, i) => ({ ip, dev: `veth${i % 2}` }));
  const plan = buildPlan({ tunnel: 'vxlan', pods, ztunnel: z, dnsCapture: false });
  const inputOf = (_f: 4 | 6) => ({ tunnel: 'vxlan' as const, pods, ztunnel: z, dnsCapture: false });
  const rules = (side: 'node' | 'ztunnel', f: 4 | 6, chain: string) =>
    (side === 'node' ? plan.node : plan.ztunnel!).chains.find((c) => c.family === f && c.chain === chain && c.table === 'mangle')!.rules;

  for (const f of [4, 6] as const) {
    const pre = rules('node', f, 'ztunnel-PREROUTING');
    const set = f === 4 ? 'ztunnel-pods-ips' : 'ztunnel-pods-ips-v6';
    const ifset = f === 4 ? 'ztunnel-pods-ifaces' : 'ztunnel-pods-ifaces-v6';
    const zt = f === 4 ? '10.244.1.3/32' : 'fd00:10:244:1::3/128';

    it(`IPv${f}: the tunnel port's RETURN matches only ztunnel's own packets`, () => {
      const tunnelPort = pre.filter((r) => r.includes('--dport 4789'));
      expect(tunnelPort).toEqual([`-s ${zt} -i vethzt -p udp -m udp --dport 4789 -j RETURN`]);
    });

    it(`IPv${f}: pods are bound to their veths before any RETURN that could let them through`, () => {
      const firstSkip = pre.findIndex((r) => r.includes('--dport 4789') || r.includes('connmark'));
      const spoof = [
        `-s ${zt} ! -i vethzt -j DROP`,
        `! -i vethzt -m set --match-set ${set} src -m set ! --match-set ${ifset} src,src -j DROP`,
        `-i veth0 -m set ! --match-set ${ifset} src,src -j DROP`,
        `-i veth1 -m set ! --match-set ${ifset} src,src -j DROP`,
      ];
      for (const r of spoof) {
        expect(pre).toContain(r);
        expect(pre.indexOf(r)).toBeLessThan(firstSkip);
      }
      expect(plan.ifaceSets[f]).toEqual(f === 4 ? ['10.244.1.7,veth0', '10.244.1.9,veth1'] : ['fd00:10:244:1::7,veth0', 'fd00:10:244:1::9,veth1']);
    });

    it(`IPv${f}: TCP is captured (UDP and ICMP by --non-tcp, below), every other protocol from an enrolled pod is dropped`, () => {
      const tail = pre.slice(-3);
      expect(tail).toEqual([
        `-p tcp -m set --match-set ${set} src -j MARK --set-xmark 0x100/0x100`,
        '-m mark --mark 0x100/0x100 -j RETURN',
        `-m set --match-set ${set} src -j DROP`,
      ]);
      // Only ND and MLD to link scope pass uncaptured; nothing else returns before capture without a mark.
      const nd = pre.filter((r) => r.includes('icmpv6-type') && !r.includes('--match-set'));
      expect(nd.every((r) => /^-d (fe80::\/10|ff02::\/16) -p ipv6-icmp -m icmp6 --icmpv6-type (13[0-7]|143) -j RETURN$/.test(r))).toBe(true);
      expect(nd).toHaveLength(f === 6 ? 18 : 0);
    });

    it(`IPv${f}: --non-tcp: UDP and ICMP queries of enrolled pods pass with their connection skipped (pass) or are dropped (drop), both ways; ICMP errors and captured DNS stay captured`, () => {
      const icmp = f === 4 ? 'icmp' : 'ipv6-icmp';
      const verdicts = (p: ReturnType<typeof buildPlan>) =>
        p.node.chains
          .find((c) => c.family === f && c.chain === 'ztunnel-PREROUTING')!
          .rules.filter((r) => /^-p (udp|icmp|ipv6-icmp) -m set --match-set \S+ (src|dst) -j (DROP|MARK --set-xmark 0x220\/0x220)$/.test(r));
      const both = (target: string) =>
        ['src', 'dst'].flatMap((d) => [`-p udp -m set --match-set ${set} ${d} ${target}`, `-p ${icmp} -m set --match-set ${set} ${d} ${target}`]);
      expect(verdicts(plan)).toEqual(both('-j MARK --set-xmark 0x220/0x220'));
      const dropPlan = buildPlan({ ...inputOf(f), nonTcp: 'drop' });
      expect(verdicts(dropPlan)).toEqual(both('-j DROP'));
      // Errors leave before the policy: outbound marked for ztunnel, inbound to the inbound table (ztunnel).
      const pol = pre.indexOf(both('-j MARK --set-xmark 0x220/0x220')[0]!);
      const errors = pre.filter((r) => r.includes(f === 4 ? '--icmp-type' : '--icmpv6-type') && r.includes('--match-set'));
      expect(errors).toHaveLength(f === 4 ? 6 : 8);
      for (const e of errors) expect(pre.indexOf(e)).toBeLessThan(pol);
      // With DNS capture, UDP 53 from a pod is marked for ztunnel before the policy.
      const dnsPlan = buildPlan({ ...inputOf(f), dnsCapture: true }).node.chains.find((c) => c.family === f && c.chain === 'ztunnel-PREROUTING')!.rules;
      const dnsRule = `-p udp -m set --match-set ${set} src -m udp --dport 53 -j MARK --set-xmark 0x100/0x100`;
      expect(dnsPlan.indexOf(dnsRule)).toBeGreaterThan(-1);
      expect(dnsPlan.indexOf(dnsRule)).toBeLessThan(dnsPlan.indexOf(both('-j MARK --set-xmark 0x220/0x220')[0]!));
    });

    it(`IPv${f}: captured packets for the node itself are dropped, not delivered`, () => {
      expect(rules('node', f, 'ztunnel-INPUT')[0]).toBe('-m mark --mark 0x100/0x100 -j DROP');
    });

    it(`IPv${f}: the node's own connections (probes) are conn-skip from their first packet, so the pod's answers skip capture`, () => {
      expect(plan.node.chains.find((c) => c.family === f && c.chain === 'ztunnel-OUTPUT')!.rules).toEqual([
        '-m addrtype --src-type LOCAL -j MARK --set-xmark 0x220/0x220',
        '-m mark --mark 0x220/0x220 -j CONNMARK --save-mark --nfmask 0x220 --ctmask 0x220',
      ]);
    });

    it(`IPv${f}: ztunnel's netns drops what the tunnels bring and no listener takes`, () => {
      const zr = rules('ztunnel', f, 'ztunnel-PREROUTING');
      for (const dev of ['pistioin', 'pistioout']) {
        const mine = zr.filter((r) => r.startsWith(`-i ${dev} `));
        expect(mine.at(-1)).toBe(`-i ${dev} -j DROP`);
        // Only TPROXY to a listener, ICMP errors and (IPv6) the node's own ND come before the drop.
        expect(
          mine
            .slice(0, -1)
            .every((r) =>
              / -j TPROXY | -m icmp6? --icmp(v6)?-type \d+ -j MARK --set-xmark 0x400\/0xfff$| -m mark --mark 0x400\/0xfff -j RETURN$| -p ipv6-icmp -m hl --hl-eq 255 -j RETURN$/.test(
                r,
              ),
            ),
        ).toBe(true);
        expect(mine.some((r) => r.includes('--hl-eq 255'))).toBe(f === 6);
      }
    });
  }

  it('without DNS capture, UDP 53 to the cluster DNS servers (and only to them) skips capture, both ways', () => {
    const input = { tunnel: 'vxlan' as const, pods, ztunnel: z, dnsServers: ['10.96.0.10', 'fd00:96::a', '10.96.0.10', '169.254.20.10'] };
    const pre = (p: ReturnType<typeof buildPlan>, f: 4 | 6) => p.node.chains.find((c) => c.family === f && c.chain === 'ztunnel-PREROUTING')!.rules;
    const off = buildPlan({ ...input, dnsCapture: false });
    const dns4 = pre(off, 4).filter((r) => r.includes('--dport 53'));
    expect(dns4).toEqual([
      '-d 10.96.0.10/32 -p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j MARK --set-xmark 0x220/0x220',
      '-d 169.254.20.10/32 -p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j MARK --set-xmark 0x220/0x220',
    ]);
    expect(pre(off, 6).filter((r) => r.includes('--dport 53'))).toEqual([
      '-d fd00:96::a/128 -p udp -m set --match-set ztunnel-pods-ips-v6 src -m udp --dport 53 -j MARK --set-xmark 0x220/0x220',
    ]);
    // After the binding (a spoofed source never gets the exemption), before the skip RETURN that acts on it.
    const r4 = pre(off, 4);
    expect(r4.indexOf(dns4[0]!)).toBeGreaterThan(r4.indexOf('-i veth1 -m set ! --match-set ztunnel-pods-ifaces src,src -j DROP'));
    expect(r4.indexOf(dns4[1]!)).toBeLessThan(r4.indexOf('-m mark --mark 0x200/0x200 -j RETURN'));
    // With DNS capture all of UDP 53 goes to ztunnel's 15053: no exemption, one capture rule.
    expect(pre(buildPlan({ ...input, dnsCapture: true }), 4).filter((r) => r.includes('--dport 53'))).toEqual([
      '-p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j MARK --set-xmark 0x100/0x100',
    ]);
    // And ztunnel's side takes UDP and TCP 53 to 15053 ahead of the TCP catch-all to 15001.
    const zt = buildPlan({ ...input, dnsCapture: true }).ztunnel!.chains.find((c) => c.family === 4)!.rules;
    expect(zt.slice(0, 3)).toEqual([
      '-i pistioout -p udp -m udp --dport 53 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff',
      '-i pistioout -p tcp -m tcp --dport 53 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff',
      '-i pistioin -p tcp -m tcp --dport 15008 -j TPROXY --on-port 15008 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff',
    ]);
  });

  it('per-pod annotations: dns-capture on or off for one pod against the node, bypass-inbound-capture marks what comes to it, nothing else', () => {
    const annotated = [
      { ip: '10.244.1.7', dev: 'veth0', flags: 1 | 2 | 8 },
      { ip: '10.244.1.9', dev: 'veth1', flags: 1 | 4 },
    ];
    const input = { tunnel: 'vxlan' as const, pods: annotated, ztunnel: z, dnsServers: ['10.96.0.10'] };
    const pre = (p: ReturnType<typeof buildPlan>) => p.node.chains.find((c) => c.family === 4 && c.chain === 'ztunnel-PREROUTING')!.rules;
    const zt = (p: ReturnType<typeof buildPlan>) => p.ztunnel!.chains.find((c) => c.family === 4)!.rules;
    // Node capture off: pod .7 has its own.
    const off = buildPlan({ ...input, dnsCapture: false });
    expect(pre(off)).toContain('-s 10.244.1.7/32 -p udp -m udp --dport 53 -j MARK --set-xmark 0x100/0x100');
    expect(pre(off).indexOf('-s 10.244.1.7/32 -p udp -m udp --dport 53 -j MARK --set-xmark 0x100/0x100')).toBeLessThan(
      pre(off).indexOf('-d 10.96.0.10/32 -p udp -m set --match-set ztunnel-pods-ips src -m udp --dport 53 -j MARK --set-xmark 0x220/0x220'),
    );
    expect(zt(off).slice(0, 2)).toEqual([
      '-i pistioout -s 10.244.1.7/32 -p udp -m udp --dport 53 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff',
      '-i pistioout -s 10.244.1.7/32 -p tcp -m tcp --dport 53 -j TPROXY --on-port 15053 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff',
    ]);
    expect(pre(off).some((r) => r.includes('10.244.1.9/32'))).toBe(false);
    // Node capture on: pod .9 opts out (its servers exempt, other UDP 53 by --non-tcp), its TCP 53 to 15001.
    const on = buildPlan({ ...input, dnsCapture: true, nonTcp: 'drop' });
    expect(pre(on)).toEqual(
      expect.arrayContaining([
        '-s 10.244.1.9/32 -d 10.96.0.10/32 -p udp -m udp --dport 53 -j MARK --set-xmark 0x220/0x220',
        '-s 10.244.1.9/32 -p udp -m udp --dport 53 -m mark ! --mark 0x200/0x200 -j DROP',
      ]),
    );
    expect(zt(on)[0]).toBe('-i pistioout -s 10.244.1.9/32 -p tcp -m tcp --dport 53 -j TPROXY --on-port 15001 --on-ip 127.0.0.1 --tproxy-mark 0x400/0xfff');
    expect(pre(on).some((r) => r.startsWith('-s 10.244.1.7/32'))).toBe(false);
    // bypass-inbound-capture: only pod .7, as a destination, before the skip RETURN.
    const bypass = pre(off).filter((r) => r.includes('--match-set ztunnel-pods-ips dst -j MARK --set-xmark 0x220/0x220') && r.startsWith('-d '));
    expect(bypass).toEqual(['-d 10.244.1.7/32 -m set --match-set ztunnel-pods-ips dst -j MARK --set-xmark 0x220/0x220']);
    // After ztunnel's own marks (what it delivers must not mark the pod's captured connections), followed by a skip RETURN.
    const at = pre(off).indexOf(bypass[0]!);
    expect(at).toBeGreaterThan(pre(off).indexOf('-i vethzt -j MARK --set-xmark 0x220/0x220'));
    expect(pre(off)[at + 1]).toBe('-m mark --mark 0x200/0x200 -j RETURN');
  });

  it('a pod whose veth is gone gets no set entry nor veth rule (its traffic is dropped by the binding)', () => {
    const p = buildPlan({ tunnel: 'vxlan', pods: [{ ip: '10.244.1.7', dev: null }], ztunnel: z, dnsCapture: false });
    expect(p.sets[4]).toEqual(['10.244.1.7']);
    expect(p.ifaceSets[4]).toEqual([]);
    expect(p.node.chains.find((c) => c.family === 4 && c.chain === 'ztunnel-PREROUTING')!.rules.some((r) => /^-i veth\d/.test(r))).toBe(false);
  });
});
