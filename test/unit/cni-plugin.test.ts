/**
 * The C plugin itself (build/ambient-redirect-cni), without root: VERSION, the relay to a
 * socket served here, and what it does when the agent cannot be asked (fail closed for an
 * ambient namespace or an unreadable list, pass-through otherwise, DEL always succeeds).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRequest, encodeReply, frameLength } from '../../src/cni/protocol.js';
import { runPlugin, DEFAULT_PLUGIN } from '../../src/sim/runtime.js';
import { createServer, type Server } from 'node:net';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-plugin-'));
  writeFileSync(join(dir, 'ns'), 'shop\nmesh-b\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PREV = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: '10.0.0.5/32', interface: 0 }] };
const env = (cmd: string, ns = 'shop') => ({ CNI_COMMAND: cmd, CNI_CONTAINERID: 'c1', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin', CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=p` });
const conf = (over: Record<string, unknown> = {}) =>
  JSON.stringify({ cniVersion: '1.0.0', name: 'net', type: 'ambient-redirect-cni', socketPath: join(dir, 'none.sock'), namespacesFile: join(dir, 'ns'), timeoutMs: 500, prevResult: PREV, ...over });

describe('the plugin binary', () => {
  it('answers VERSION by itself', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).supportedVersions).toContain('1.0.0');
  });

  it('agent unreachable: an ambient namespace fails with code 11 and a clear message', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD'), conf());
    expect(r.code).toBe(1);
    const e = JSON.parse(r.stdout);
    expect(e).toMatchObject({ cniVersion: '1.0.0', code: 11 });
    expect(e.msg).toMatch(/agent unreachable; namespace shop is ambient/);
    expect(e.details).toMatch(/none\.sock: No such file or directory/);
  });

  it('agent unreachable: other namespaces get prevResult back unchanged; CHECK succeeds silently', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), conf());
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual(PREV);
    const c = await runPlugin(DEFAULT_PLUGIN, env('CHECK', 'plain'), conf());
    expect([c.code, c.stdout]).toEqual([0, '']);
  });

  it('agent unreachable and no namespace list: fail closed, with the version of the config', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ cniVersion: '0.4.0', namespacesFile: join(dir, 'missing') }));
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: '0.4.0', code: 11, msg: expect.stringMatching(/namespace list is unreadable/) });
  });

  it('DEL succeeds without the agent, even on garbage', async () => {
    expect((await runPlugin(DEFAULT_PLUGIN, env('DEL'), conf())).code).toBe(0);
    expect((await runPlugin(DEFAULT_PLUGIN, env('DEL'), '{"cniVersion":')).code).toBe(0);
  });

  it.each([
    ['truncated JSON', '{"cniVersion":"1.0.0","prevResult":{"ips":[', 6],
    ['two objects', '{}{}', 6],
    ['a bad timeoutMs', conf({ timeoutMs: 'soon' }), 7],
  ])('%s: a CNI error, not a crash', async (_w, stdin, code) => {
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD'), stdin);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).code).toBe(code);
  });

  describe('with an agent', () => {
    let server: Server;
    const sock = () => join(dir, 'agent.sock');
    let seen: { env: Record<string, string>; stdin: string } | null = null;
    let delayMs = 0;
    beforeAll(async () => {
      server = createServer((s) => {
        let buf = Buffer.alloc(0);
        s.on('error', () => {}); // the plugin gave up before a delayed answer
        s.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          const n = frameLength(buf);
          if (!n) return;
          const req = decodeRequest(buf.subarray(0, n));
          seen = { env: req.env, stdin: req.stdin.toString() };
          setTimeout(() => s.end(encodeReply({ code: 0, stdout: '{"from":"agent"}\n' })), delayMs);
        });
      });
      await new Promise<void>((r) => server.listen(sock(), r));
    });
    afterAll(() => new Promise<void>((r) => server.close(() => r())));

    it('relays the CNI_* environment (only) and stdin verbatim, and returns the agent’s answer', async () => {
      const stdin = conf({ socketPath: sock() });
      const r = await runPlugin(DEFAULT_PLUGIN, { ...env('ADD'), OTHER: 'x' }, stdin);
      expect([r.code, r.stdout]).toEqual([0, '{"from":"agent"}\n']);
      expect(seen!.stdin).toBe(stdin);
      expect(seen!.env).toEqual(env('ADD'));
    });

    it('an agent that does not answer in time: the namespace list decides', async () => {
      delayMs = 2_000;
      const r = await runPlugin(DEFAULT_PLUGIN, env('ADD'), conf({ socketPath: sock(), timeoutMs: 200 }));
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout).details).toMatch(/no answer .* within 200 ms/);
      const p = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ socketPath: sock(), timeoutMs: 200 }));
      expect(p.code).toBe(0);
      delayMs = 0;
    });
  });
});
