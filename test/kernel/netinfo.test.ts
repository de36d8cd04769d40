/**
 * src/host/netinfo.ts reads the node over rtnetlink (src/host/netlink.ts) instead of four
 * `ip -j` processes per pass. Oracle: `ip -j` itself, parsed as before, in a netns this
 * test builds (veths to a second netns with an id, host routes of both families, routes
 * that are not host routes, a veth whose peer is in the same netns), read from inside it by a child.
 */
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { newPrefix } from '../../harness/sim/names.js';
import { parseHostRoutes, parseLinks, parseNetns } from '../../src/host/netinfo.js';
import { kernelDescribe } from '../support/gate.js';

kernelDescribe('node links and routes over rtnetlink', 'builds network namespaces', () => {
  const prefix = newPrefix();
  const node = `${prefix}-nlnode`;
  const peer = `${prefix}-nlpeer`;
  const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8' });
  const inNode = (...args: string[]) => ip('-n', node, ...args);

  beforeAll(() => {
    ip('netns', 'add', node);
    ip('netns', 'add', peer);
    inNode('link', 'set', 'lo', 'up');
    for (let i = 0; i < 3; i++) {
      inNode('link', 'add', `veth${i}`, 'type', 'veth', 'peer', 'name', `eth${i}`, 'netns', peer);
      inNode('link', 'set', `veth${i}`, 'up');
      inNode('route', 'add', `10.244.0.${10 + i}/32`, 'dev', `veth${i}`);
      inNode('-6', 'route', 'add', `fd00:10:244::${(10 + i).toString(16)}/128`, 'dev', `veth${i}`);
    }
    // A veth pair inside the netns: a peer, but not in another netns.
    inNode('link', 'add', 'dummy0', 'type', 'veth', 'peer', 'name', 'dummy1');
    inNode('link', 'set', 'dummy1', 'up');
    inNode('link', 'set', 'dummy0', 'up');
    inNode('addr', 'add', '192.0.2.1/24', 'dev', 'dummy0');
    inNode('route', 'add', 'default', 'via', '192.0.2.254');
    inNode('route', 'add', 'blackhole', '198.51.100.7/32');
    inNode('-6', 'route', 'add', '2001:db8:0:1::/64', 'dev', 'dummy0');
    inNode('-6', 'route', 'add', '2001:db8::1:0:0:5/128', 'dev', 'dummy0');
    // An id for the peer netns, as the kernel gives one when a veth crosses over.
    try {
      inNode('netns', 'set', peer, 'auto');
    } catch {
      // already assigned
    }
  });

  afterAll(() => {
    for (const ns of [node, peer]) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // gone
      }
    }
  });

  it('links, host routes and netns ids equal what `ip -j` prints, read from inside the netns', () => {
    const script = `import('${process.cwd()}/dist/src/host/netinfo.js').then(async (m) => { const n = await m.readHostNet(); process.stdout.write(JSON.stringify({ links: [...n.links.values()], routes: [...n.hostRoutes], netns: [...n.netnsById] })); })`;
    const got = JSON.parse(execFileSync('ip', ['netns', 'exec', node, process.execPath, '-e', script], { encoding: 'utf8' })) as {
      links: unknown[];
      routes: [string, string][];
      netns: [number, string][];
    };
    const want = {
      links: [...parseLinks(inNode('-j', '-d', 'link', 'show')).values()],
      routes: [
        ...parseHostRoutes(inNode('-j', '-4', 'route', 'show', 'table', 'main')),
        ...parseHostRoutes(inNode('-j', '-6', 'route', 'show', 'table', 'main')),
      ],
      netns: [...parseNetns(execFileSync('ip', ['netns', 'exec', node, 'ip', '-j', 'netns', 'list'], { encoding: 'utf8' }))],
    };
    expect(got.links).toEqual(want.links);
    expect(new Map(got.routes)).toEqual(new Map(want.routes));
    expect(new Map(got.netns)).toEqual(new Map(want.netns));
    // What the comparison stands on: veths with peers in another netns, both families' host routes.
    expect(want.links.filter((l) => (l as { peerNetnsId?: number }).peerNetnsId !== undefined)).toHaveLength(3);
    expect(new Map(want.routes).get('fd00:10:244::c')).toBe('veth2');
    expect(new Map(want.routes).get('10.244.0.11')).toBe('veth1');
    expect(new Map(want.routes).get('2001:db8::1:0:0:5')).toBe('dummy0');
    expect(new Map(want.routes).has('198.51.100.7')).toBe(false);
    expect(new Map(got.netns).get(Number([...new Map(got.netns).keys()][0]))).toBe(peer);
  });
});
