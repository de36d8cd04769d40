/**
 * What ebpf mode sets up inside ztunnel's netns besides its program (docs/datapath.md,
 * "ztunnel side"): policy routing that turns our marks into local delivery and, where
 * sockets are not assigned by BPF, TPROXY rules that pick the listener by mark. All of
 * it sits in our own chain and table, so it can be checked and removed by name.
 */
import { constants } from '../../bpf/layout.generated.js';
import type { CommandRunner } from '../../host/runner.js';

export type { Delivery } from '../../core/modes.js';
import type { Delivery } from '../../core/modes.js';

/** Route table in ztunnel's netns holding `local default dev lo`. */
export const ZT_ROUTE_TABLE = 134;
export const ZT_CHAIN = 'AMBIENT-REDIRECT';
const MARK_LOCAL = `0x${constants.ZT_MARK_LOCAL.toString(16)}`;
const MARK_MASK = `0x${constants.ZT_MARK_MASK.toString(16)}`;

const TPROXY_PORTS: [mark: number, proto: 'tcp' | 'udp', port: number][] = [
  [constants.ZT_MARK_OUTBOUND, 'tcp', constants.ZTUNNEL_PORT_OUTBOUND],
  [constants.ZT_MARK_INBOUND, 'tcp', constants.ZTUNNEL_PORT_INBOUND],
  [constants.ZT_MARK_HBONE, 'tcp', constants.ZTUNNEL_PORT_HBONE],
  [constants.ZT_MARK_DNS, 'udp', constants.ZTUNNEL_PORT_DNS],
  [constants.ZT_MARK_DNS, 'tcp', constants.ZTUNNEL_PORT_DNS],
];

const families = [
  { ip: '-4', tables: 'iptables', any: '0.0.0.0' },
  { ip: '-6', tables: 'ip6tables', any: '::' },
] as const;

/**
 * The TPROXY rules of our chain, one argv tail per rule. With `tproxy` delivery they take
 * every marked packet; with `sk_assign` only what zt_assign left to them (ZT_MARK_TPROXY:
 * a SYN meeting a TIME_WAIT socket, which TPROXY retires and BPF cannot).
 */
export function tproxyRules(any: string, delivery: Delivery): string[][] {
  const extra = delivery === 'sk_assign' ? constants.ZT_MARK_TPROXY : 0;
  const mask = `0x${(constants.ZT_MARK_MASK | extra).toString(16)}`;
  return TPROXY_PORTS.map(([mark, proto, port]) => [
    '-p',
    proto,
    '-m',
    'mark',
    '--mark',
    `0x${(mark | extra).toString(16)}/${mask}`,
    '-j',
    'TPROXY',
    '--on-port',
    String(port),
    '--on-ip',
    any,
    '--tproxy-mark',
    `0x${mark.toString(16)}/${MARK_MASK}`,
  ]);
}

async function ok(runner: CommandRunner, argv: string[]): Promise<boolean> {
  return runner.run(argv).then(
    () => true,
    () => false,
  );
}

/** Makes ztunnel's netns deliver our marks locally; idempotent. */
export async function configureZtunnelNetns(netns: string, delivery: Delivery, runner: CommandRunner): Promise<void> {
  for (const f of families) {
    const rules = await runner.run(['ip', '-n', netns, f.ip, 'rule', 'show', 'table', String(ZT_ROUTE_TABLE)]);
    if (!rules.includes(`fwmark ${MARK_LOCAL}/${MARK_LOCAL}`)) {
      await runner.run(['ip', '-n', netns, f.ip, 'rule', 'add', 'fwmark', `${MARK_LOCAL}/${MARK_LOCAL}`, 'lookup', String(ZT_ROUTE_TABLE)]);
    }
    await runner.run(['ip', '-n', netns, f.ip, 'route', 'replace', 'local', 'default', 'dev', 'lo', 'table', String(ZT_ROUTE_TABLE)]);

    const ipt = ['ip', 'netns', 'exec', netns, f.tables, '-w', '-t', 'mangle'];
    if (!(await ok(runner, [...ipt, '-L', ZT_CHAIN, '-n']))) await runner.run([...ipt, '-N', ZT_CHAIN]);
    // Rule by rule, never a flush: a restarted controller leaves no gap in delivery. The
    // other delivery's rules go (a restart that switched delivery).
    const other: Delivery = delivery === 'tproxy' ? 'sk_assign' : 'tproxy';
    for (const rule of tproxyRules(f.any, delivery)) {
      if (!(await ok(runner, [...ipt, '-C', ZT_CHAIN, ...rule]))) await runner.run([...ipt, '-A', ZT_CHAIN, ...rule]);
    }
    for (const rule of tproxyRules(f.any, other)) {
      while (await ok(runner, [...ipt, '-D', ZT_CHAIN, ...rule]));
    }
    if (!(await ok(runner, [...ipt, '-C', 'PREROUTING', '-j', ZT_CHAIN]))) await runner.run([...ipt, '-A', 'PREROUTING', '-j', ZT_CHAIN]);
  }
}

/** Removes what configureZtunnelNetns added; a part already gone is no error. */
export async function unconfigureZtunnelNetns(netns: string, runner: CommandRunner): Promise<string[]> {
  const removed: string[] = [];
  for (const f of families) {
    while (await ok(runner, ['ip', '-n', netns, f.ip, 'rule', 'del', 'fwmark', `${MARK_LOCAL}/${MARK_LOCAL}`, 'lookup', String(ZT_ROUTE_TABLE)])) {
      removed.push(`${f.ip} rule fwmark ${MARK_LOCAL} lookup ${ZT_ROUTE_TABLE} in ${netns}`);
    }
    if (await ok(runner, ['ip', '-n', netns, f.ip, 'route', 'del', 'local', 'default', 'dev', 'lo', 'table', String(ZT_ROUTE_TABLE)])) {
      removed.push(`${f.ip} route table ${ZT_ROUTE_TABLE} in ${netns}`);
    }
    const ipt = ['ip', 'netns', 'exec', netns, f.tables, '-w', '-t', 'mangle'];
    while (await ok(runner, [...ipt, '-D', 'PREROUTING', '-j', ZT_CHAIN])) removed.push(`${f.tables} PREROUTING jump in ${netns}`);
    if ((await ok(runner, [...ipt, '-F', ZT_CHAIN])) && (await ok(runner, [...ipt, '-X', ZT_CHAIN]))) removed.push(`${f.tables} chain ${ZT_CHAIN} in ${netns}`);
  }
  return removed;
}
