/**
 * endConnections (src/capture/inpod/end-connections.ts) with a fake netns: what it ends,
 * what it counts and logs, and that a kernel that cannot end a socket (EOPNOTSUPP), or any
 * other failure, is a warning and never an error of the install. The kernel side is
 * test/kernel/inpod-e2e.test.ts and inpod-iptables.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { endConnections, type SocketOps } from '../../src/capture/inpod/end-connections.js';
import { TcpState } from '../../src/capture/inpod/stranded.js';
import { NetlinkError, type NlTcpSocket } from '../../src/host/netlink.js';
import { createLogger } from '../../src/log.js';

const sock = (sport: number, over: Partial<NlTcpSocket> = {}): NlTcpSocket => ({
  family: 2,
  state: TcpState.ESTABLISHED,
  src: '198.18.0.10',
  sport,
  dst: '203.0.113.5',
  dport: 443,
  mark: 0,
  id: Buffer.alloc(48, sport & 0xff),
  ...over,
});

function run(ops: Partial<SocketOps>, pick: (s: NlTcpSocket) => boolean = () => true) {
  const lines: { level: string; msg: string; [k: string]: unknown }[] = [];
  const log = createLogger('debug', (l) => lines.push(JSON.parse(l)));
  const destroyed: number[] = [];
  const full: SocketOps = {
    inAgentNetns: () => false,
    sockets: () => [],
    destroy: (s) => {
      destroyed.push(s.sport);
      return true;
    },
    ...ops,
  };
  const ended = endConnections(log, { pod: 'shop/cart' }, pick, full);
  return { ended, lines: lines.map(({ level, msg, connections, reason }) => ({ level, msg, connections, reason })), destroyed };
}

describe('endConnections', () => {
  it('ends what the choice takes, counts what went (a socket gone already is not counted) and logs the count', () => {
    const r = run(
      {
        sockets: () => [sock(41000), sock(41001), sock(41002), sock(41003, { state: TcpState.TIME_WAIT })],
        destroy: (s) => s.sport !== 41001,
      },
      (s) => s.sport !== 41002,
    );
    expect(r.ended).toBe(1);
    expect(r.lines).toEqual([{ level: 'info', msg: 'in-pod capture: ended the connections from before it', connections: 1, reason: undefined }]);
  });

  it('logs nothing when nothing went', () => {
    expect(run({ sockets: () => [sock(41000)] }, () => false).lines).toEqual([]);
  });

  it('a kernel without CONFIG_INET_DIAG_DESTROY (EOPNOTSUPP): a warning that says so, nothing thrown', () => {
    const r = run({
      sockets: () => [sock(41000)],
      destroy: () => {
        throw new NetlinkError('request 21', 95);
      },
    });
    expect(r.ended).toBe(0);
    expect(r.lines).toEqual([
      {
        level: 'warn',
        msg: 'in-pod capture: the connections from before it are left to time out',
        connections: undefined,
        reason: 'this kernel cannot end a socket (no CONFIG_INET_DIAG_DESTROY)',
      },
    ]);
  });

  it('any other failure (the dump refused): a warning with the error, nothing thrown', () => {
    const r = run({
      sockets: () => {
        throw new NetlinkError('socket', 1);
      },
    });
    expect(r.lines).toEqual([
      {
        level: 'warn',
        msg: 'in-pod capture: the connections from before it are left to time out',
        connections: undefined,
        reason: expect.stringContaining('EPERM'),
      },
    ]);
  });

  it('refuses the agent’s own netns: nothing read, nothing ended', () => {
    let read = false;
    const r = run({
      inAgentNetns: () => true,
      sockets: () => {
        read = true;
        return [sock(41000)];
      },
    });
    expect({ read, destroyed: r.destroyed, ended: r.ended }).toEqual({ read: false, destroyed: [], ended: 0 });
    expect(r.lines.map((l) => l.msg)).toEqual(['in-pod capture: not ending connections in the agent’s own netns']);
  });

  it('the default (the kernel): the test process’s own netns is the agent’s, so it refuses', () => {
    const lines: string[] = [];
    expect(
      endConnections(
        createLogger('debug', (l) => lines.push(l)),
        {},
        () => true,
      ),
    ).toBe(0);
    expect(lines.join('')).toContain('not ending connections in the agent’s own netns');
  });
});
