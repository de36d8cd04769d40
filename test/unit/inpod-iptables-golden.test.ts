/**
 * Golden files of the in-pod iptables capture: the iptables-restore input of a pod netns
 * (IPv4 and IPv6, DNS capture on and off) and of the host (probe SNAT and guard), and the
 * commands install and remove run, recorded through a fake CommandRunner. Any difference
 * fails; regenerate on purpose with
 * `UPDATE_GOLDEN=1 npx vitest run test/unit/inpod-iptables-golden.test.ts` and review the diff.
 * Beside them, the adopt/drift/repair logic on iptables-save text.
 */
import { existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { InpodIptables, leftBaseChains, uninstallInpodIptablesHost } from '../../src/capture/inpod/iptables.js';
import {
  chainDrift,
  checkPodIps,
  HOST_CHAIN_NAMES,
  hostChains,
  POD_CHAIN_NAMES,
  parseSave,
  podChains,
  removalInput,
  restoreInput,
  type Family,
} from '../../src/capture/inpod/iptables-rules.js';
import type { CommandRunner, RunOptions } from '../../src/host/runner.js';
import { createLogger } from '../../src/log.js';

const GOLDEN = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'golden', 'inpod-iptables');
const silent = createLogger('error', () => {});

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

const empty = parseSave('');

/** A save as the kernel would echo it after `input` was restored into an empty netns. */
function saveAfter(input: string): string {
  const out: string[] = [];
  for (const block of input
    .trim()
    .split('COMMIT')
    .filter((b) => b.trim())) {
    const lines = block.trim().split('\n');
    const table = lines[0]!;
    const chains = lines.filter((l) => l.startsWith(':'));
    const base = lines.filter((l) => l.startsWith('-I ')).map((l) => `-A ${l.slice(3)}`);
    const rules = lines.filter((l) => l.startsWith('-A '));
    out.push(table, ...chains, ...base, ...rules, 'COMMIT');
  }
  return out.join('\n') + '\n';
}

describe('pod netns rules', () => {
  for (const f of [4, 6] as Family[]) {
    for (const dns of [true, false]) {
      const name = `pod-ipv${f}-dns-${dns ? 'on' : 'off'}`;
      it(`${name}: golden restore input`, () => {
        const input = restoreInput(podChains(f, { dnsCapture: dns }), POD_CHAIN_NAMES, empty);
        checkGolden(name, input!);
      });
    }
  }

  it('uses Istio’s chain names, marks and ports, and REDIRECT (not TPROXY)', () => {
    const text = podChains(4, { dnsCapture: true })
      .flatMap((c) => c.rules.map((r) => `${c.table} ${c.chain} ${r}`))
      .join('\n');
    expect(text).toContain('nat ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001');
    expect(text).toContain('nat ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006');
    expect(text).toContain('--to-ports 15053');
    expect(text).toContain('nat ISTIO_PRERT -s 169.254.7.127/32 -p tcp -m tcp -j ACCEPT');
    expect(text).toContain('mangle ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff');
    expect(text).not.toContain('TPROXY');
    // The probe exemption comes before the inbound redirect, and only for the probe source.
    const pre = podChains(6, { dnsCapture: false }).find((c) => c.table === 'nat' && c.chain === 'ISTIO_PRERT')!.rules;
    expect(pre[0]).toBe('-s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -m tcp -j ACCEPT');
    expect(pre[1]).toContain('REDIRECT --to-ports 15006');
  });

  it('the pod’s annotations: bypass-inbound-capture drops the inbound redirect only; reroute-virtual-interfaces sends each interface’s TCP to 15001, first', () => {
    const pre = (o: Parameters<typeof podChains>[1]) => podChains(4, o).find((c) => c.table === 'nat' && c.chain === 'ISTIO_PRERT')!.rules;
    const plain = pre({ dnsCapture: true });
    const bypass = pre({ dnsCapture: true, bypassInbound: true });
    expect(plain.some((r) => r.includes('--to-ports 15006'))).toBe(true);
    expect(bypass.some((r) => r.includes('15006'))).toBe(false);
    expect(bypass).toEqual(plain.filter((r) => !r.includes('15006')));
    // The rest of the pod's rules are the same (its outbound is still captured).
    const rest = (o: Parameters<typeof podChains>[1]) => podChains(6, o).filter((c) => !(c.table === 'nat' && c.chain === 'ISTIO_PRERT'));
    expect(rest({ dnsCapture: false, bypassInbound: true })).toEqual(rest({ dnsCapture: false }));
    const reroute = pre({ dnsCapture: false, rerouteInterfaces: ['tap0', 'tap1'] });
    expect(reroute.slice(0, 2)).toEqual(['-i tap0 -p tcp -j REDIRECT --to-ports 15001', '-i tap1 -p tcp -j REDIRECT --to-ports 15001']);
  });

  it('DNS capture off: no rule names 53 or 15053, no raw chains', () => {
    const chains = podChains(4, { dnsCapture: false });
    expect(chains.some((c) => c.table === 'raw')).toBe(false);
    expect(chains.flatMap((c) => c.rules).some((r) => /\b53\b|15053/.test(r))).toBe(false);
  });
});

describe('host rules', () => {
  for (const f of [4, 6] as Family[]) {
    it(`host-ipv${f}: golden restore input`, () => {
      checkGolden(`host-ipv${f}`, restoreInput(hostChains(f), HOST_CHAIN_NAMES, empty)!);
    });
  }

  it('SNATs only host sockets’ TCP to the probe set, and drops the probe source arriving from any link', () => {
    const [snat, guard] = hostChains(4);
    expect(snat!.rules).toEqual(['-p tcp -m owner --socket-exists -m set --match-set istio-inpod-probes-v4 dst -j SNAT --to-source 169.254.7.127']);
    expect(guard!.table).toBe('raw');
    expect(guard!.base).toBe('PREROUTING');
    expect(guard!.rules).toEqual(['-s 169.254.7.127/32 -j DROP']);
  });
});

describe('adopt, drift and repair on iptables-save text', () => {
  const want = podChains(4, { dnsCapture: true });
  const installed = saveAfter(restoreInput(want, POD_CHAIN_NAMES, empty)!);

  it('installed as wanted: no drift, nothing to restore (adopted unchanged)', () => {
    expect(chainDrift(want, POD_CHAIN_NAMES, parseSave(installed))).toEqual([]);
    expect(restoreInput(want, POD_CHAIN_NAMES, parseSave(installed))).toBeNull();
  });

  it('a deleted rule is drift, and the repair rewrites that chain only', () => {
    const cut = installed
      .split('\n')
      .filter((l) => !l.includes('--to-ports 15001'))
      .join('\n');
    expect(chainDrift(want, POD_CHAIN_NAMES, parseSave(cut))).toEqual(['nat/ISTIO_OUTPUT differs']);
    expect(restoreInput(want, POD_CHAIN_NAMES, parseSave(cut))).toBe(
      [
        '*nat',
        ':ISTIO_OUTPUT - [0:0]',
        ...want.find((c) => c.table === 'nat' && c.chain === 'ISTIO_OUTPUT')!.rules.map((r) => `-A ISTIO_OUTPUT ${r}`),
        'COMMIT',
        '',
      ].join('\n'),
    );
  });

  it('a lost jump, or one behind another rule, is drift and is put back first', () => {
    const [head, nat] = installed.split('*nat\n');
    const noJump = `${head}*nat\n${nat!.replace('-A OUTPUT -j ISTIO_OUTPUT\n', '')}`;
    expect(chainDrift(want, POD_CHAIN_NAMES, parseSave(noJump))).toContain('nat/OUTPUT does not jump to ISTIO_OUTPUT once, first');
    const behind = installed.replace(/(\*nat\n(?::[^\n]*\n)*)/, '$1-A OUTPUT -j ACCEPT\n');
    expect(chainDrift(want, POD_CHAIN_NAMES, parseSave(behind))).toContain('nat/OUTPUT does not jump to ISTIO_OUTPUT once, first');
    expect(restoreInput(want, POD_CHAIN_NAMES, parseSave(behind))).toBe('*nat\n-D OUTPUT -j ISTIO_OUTPUT\n-I OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n');
  });

  it('DNS capture turned off: the raw chains are drift and the repair removes them', () => {
    const off = podChains(4, { dnsCapture: false });
    expect(chainDrift(off, POD_CHAIN_NAMES, parseSave(installed))).toEqual(
      expect.arrayContaining(['raw/ISTIO_PRERT should not be there', 'nat/ISTIO_OUTPUT differs']),
    );
    const input = restoreInput(off, POD_CHAIN_NAMES, parseSave(installed))!;
    expect(input).toContain(
      '*raw\n-D PREROUTING -j ISTIO_PRERT\n-D OUTPUT -j ISTIO_OUTPUT\n-F ISTIO_PRERT\n-X ISTIO_PRERT\n-F ISTIO_OUTPUT\n-X ISTIO_OUTPUT\nCOMMIT',
    );
  });

  it('removal takes our chains and jumps and leaves someone else’s rules', () => {
    const withOther = installed.replace(/(\*nat\n(?::[^\n]*\n)*)/, '$1:KUBE-X - [0:0]\n-A OUTPUT -j KUBE-X\n');
    const input = removalInput(POD_CHAIN_NAMES, parseSave(withOther))!;
    expect(input).not.toContain('KUBE-X');
    expect(input).toContain('-D OUTPUT -j ISTIO_OUTPUT');
    expect(input).toContain('-X ISTIO_PRERT');
    expect(removalInput(POD_CHAIN_NAMES, parseSave('*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n'))).toBeNull();
  });
});

describe('bad input', () => {
  it('a pod address that is not an IP, or is the probe source, is a clear error', () => {
    expect(() => checkPodIps(['10.0.0.1', 'nonsense'], 'pod a/b')).toThrow('pod a/b: not an IP address: "nonsense"');
    expect(() => checkPodIps(['169.254.7.127'], 'pod a/b')).toThrow('is the probe source address');
    expect(checkPodIps(['10.0.0.1', 'fd00::1'], 'pod a/b')).toEqual(['10.0.0.1', 'fd00::1']);
  });

  it('install before init, a bad fd, or a closed fd is an error naming the pod', async () => {
    const runner = new RecordingRunner();
    const c = new InpodIptables({ runner, log: silent, backend: 'nft' });
    const pod = { uid: 'u1', namespace: 'shop', name: 'cart', ips: ['10.244.1.7'], fd: -1 };
    await expect(c.install(pod)).rejects.toThrow('shop/cart: netns fd must be a non-negative integer, got -1');
    await expect(c.install({ ...pod, fd: 999_999 })).rejects.toThrow('shop/cart: netns fd 999999 is not open');
    const devNull = openSync('/dev/null', 'r');
    await expect(c.install({ ...pod, fd: devNull })).rejects.toThrow(`shop/cart: fd ${devNull} is not a network namespace`);
    await expect(c.install({ ...pod, fd: openSync('/proc/self/ns/net', 'r') })).rejects.toThrow('not initialised (init() first)');
  });
});

/** Answers reads with an empty netns's state, records everything. */
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
    const a = this.answer(argv);
    if (a !== undefined) return a;
    if (argv.includes('-j')) return '[]';
    if (argv.at(-2) === 'list' && argv.at(-1) === '-n') return 'istio-inpod-probes-v4\nistio-inpod-probes-v6\n';
    if (argv.includes('disable_ipv6') || argv.at(-1) === 'net.ipv6.conf.lo.disable_ipv6') return '0\n';
    return '';
  }
}

describe('recorded commands', () => {
  // A real netns fd of this process: the fd check reads /proc/<pid>/fd/<fd>.
  const fd = openSync('/proc/self/ns/net', 'r');

  it('install (host netns by name, DNS on) and remove: golden', async () => {
    const runner = new RecordingRunner();
    const c = new InpodIptables({ runner, log: silent, backend: 'nft', dnsCapture: true, hostNetns: 'node', agentPid: process.pid });
    await c.init();
    const pod = { uid: 'u1', namespace: 'shop', name: 'cart', ips: ['10.244.1.7', 'fd00:10:244:1::7'], fd };
    await c.install(pod);
    await c.remove(pod);
    const text = runner.log.join('\n').replaceAll(`/proc/${process.pid}/fd/${fd}`, '/proc/AGENT/fd/NETNS') + '\n';
    checkGolden('install-remove', text);
  });

  it('remove: the base chains iptables-nft made for our jumps go where the table stays (the pod’s own rules in it); not one with other rules or a DROP policy', () => {
    const was = parseSave(
      [
        '*nat',
        ':PREROUTING ACCEPT [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        ':POSTROUTING ACCEPT [0:0]',
        ':ISTIO_PRERT - [0:0]',
        ':ISTIO_OUTPUT - [0:0]',
        '-A PREROUTING -j ISTIO_PRERT',
        '-A OUTPUT -j ISTIO_OUTPUT',
        '-A POSTROUTING -s 10.250.0.0/24 -o eth0 -j MASQUERADE',
        'COMMIT',
        '*mangle',
        ':PREROUTING DROP [0:0]',
        ':OUTPUT ACCEPT [0:0]',
        ':ISTIO_PRERT - [0:0]',
        ':ISTIO_OUTPUT - [0:0]',
        '-A PREROUTING -j ISTIO_PRERT',
        '-A OUTPUT -j ISTIO_OUTPUT',
        '-A OUTPUT -j MARK --set-mark 0x1',
        'COMMIT',
        '',
      ].join('\n'),
    );
    const after = [
      '*nat',
      ':PREROUTING ACCEPT [0:0]',
      ':OUTPUT ACCEPT [0:0]',
      ':POSTROUTING ACCEPT [0:0]',
      '-A POSTROUTING -s 10.250.0.0/24 -o eth0 -j MASQUERADE',
      'COMMIT',
      '*mangle',
      ':PREROUTING DROP [0:0]',
      ':OUTPUT ACCEPT [0:0]',
      '-A OUTPUT -j MARK --set-mark 0x1',
      'COMMIT',
      '',
    ].join('\n');
    expect(leftBaseChains(was, after, POD_CHAIN_NAMES, ['nat', 'mangle'])).toEqual([
      ['nat', 'PREROUTING'],
      ['nat', 'OUTPUT'],
    ]);
  });

  it('uninstall of the host half on a host holding it: golden', async () => {
    const hostSave: Record<string, string> = {
      'iptables-nft-save': saveAfter(restoreInput(hostChains(4), HOST_CHAIN_NAMES, empty)!),
      'ip6tables-nft-save': saveAfter(restoreInput(hostChains(6), HOST_CHAIN_NAMES, empty)!),
    };
    const removed = new Set<string>();
    const runner = new RecordingRunner((argv) => {
      const cmd = argv.slice(4).join(' ');
      if (cmd === 'ipset list -n') return 'istio-inpod-probes-v4\nistio-inpod-probes-v6\nKUBE-SET\n';
      const restore = argv.find((a) => a.endsWith('-nft-restore'));
      if (restore) removed.add(restore.replace('-restore', '-save'));
      if (hostSave[cmd] !== undefined)
        return removed.has(cmd) ? '*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n*raw\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n' : hostSave[cmd];
      if (argv.includes('iptables-legacy-save') || argv.includes('ip6tables-legacy-save')) return '';
      return undefined;
    });
    const report = await uninstallInpodIptablesHost(runner, 'node');
    expect(report.failed).toEqual([]);
    checkGolden('uninstall-host', runner.log.join('\n') + '\n');
  });
});
