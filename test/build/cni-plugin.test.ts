/**
 * The C plugin itself (build/ambient-redirect-cni), without root: VERSION, the relay to a
 * socket served here, and what it does when the agent cannot be asked (fail closed for an
 * ambient namespace or an unreadable list, pass-through otherwise, DEL always succeeds),
 * the 1.1 verbs, and the contract points the fuzzer found broken (docs/cni.md).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { systemRunner } from '../../src/host/runner.js';
import { parseCniArgs } from '../../src/cni/request.js';
import { contractViolations, runRaw } from './cni-contract.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRequest, encodeReply, frameLength } from '../../src/cni/protocol.js';
import { runPlugin, DEFAULT_PLUGIN } from '../../harness/sim/runtime.js';
import { createServer, type Server } from 'node:net';

let dir = '';
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ar-plugin-'));
  writeFileSync(join(dir, 'ns'), 'shop\nmesh-b\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PREV = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/var/run/netns/x' }], ips: [{ address: '10.0.0.5/32', interface: 0 }] };
const env = (cmd: string, ns = 'shop') => ({
  CNI_COMMAND: cmd,
  CNI_CONTAINERID: 'c1',
  CNI_NETNS: '/var/run/netns/x',
  CNI_IFNAME: 'eth0',
  CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: `K8S_POD_NAMESPACE=${ns};K8S_POD_NAME=p`,
});
const conf = (over: Record<string, unknown> = {}) =>
  JSON.stringify({
    cniVersion: '1.0.0',
    name: 'net',
    type: 'ambient-redirect-cni',
    socketPath: join(dir, 'none.sock'),
    namespacesFile: join(dir, 'ns'),
    timeoutMs: 500,
    prevResult: PREV,
    ...over,
  });

describe('the plugin binary', () => {
  it('answers VERSION by itself, 1.1.0 included', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.1.0"}');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
  });

  it('STATUS and GC (CNI 1.1) without the agent: STATUS succeeds while the list can be read, else error 50; GC succeeds', async () => {
    const st = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' }, conf({ cniVersion: '1.1.0', prevResult: undefined }));
    expect([st.code, st.stdout]).toEqual([0, '']);
    const down = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'STATUS' }, conf({ cniVersion: '1.1.0', namespacesFile: join(dir, 'missing') }));
    expect(down.code).toBe(1);
    expect(JSON.parse(down.stdout)).toMatchObject({ cniVersion: '1.1.0', code: 50 });
    const gc = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'GC' }, conf({ cniVersion: '1.1.0', 'cni.dev/valid-attachments': [] }));
    expect([gc.code, gc.stdout]).toEqual([0, '']);
  });

  it('a cniVersion it does not support: error 1 (DEL still succeeds)', async () => {
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD'), conf({ cniVersion: '2.0.0' }));
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ cniVersion: '1.1.0', code: 1, msg: expect.stringMatching(/cniVersion 2\.0\.0 is not supported/) });
    expect((await runPlugin(DEFAULT_PLUGIN, env('DEL'), conf({ cniVersion: '2.0.0' }))).code).toBe(0);
  });

  it('DEL succeeds on every bad setting, a long timeoutMs included', async () => {
    const long = conf({ timeoutMs: 0 }).replace('"timeoutMs":0', `"timeoutMs":${'9'.repeat(40)}`);
    const r = await runPlugin(DEFAULT_PLUGIN, env('DEL'), long);
    expect([r.code, r.stdout]).toEqual([0, '']);
    for (const over of [
      { timeoutMs: 1e21 },
      { timeoutMs: 123456789012345 },
      { timeoutMs: 'soon' },
      { timeoutMs: 0 },
      { socketPath: 7 },
      { namespacesFile: '' },
    ]) {
      const r = await runPlugin(DEFAULT_PLUGIN, env('DEL'), conf(over));
      expect([JSON.stringify(over), r.code, r.stdout]).toEqual([JSON.stringify(over), 0, '']);
    }
  });

  it('prevResult that is not an object is a decode error, null is none (never echoed)', async () => {
    for (const bad of ['"x"', '5', '[1]', 'true']) {
      const stdin = `{"cniVersion":"1.0.0","namespacesFile":"${join(dir, 'ns')}","socketPath":"${join(dir, 'none.sock')}","prevResult":${bad}}`;
      const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), stdin);
      expect([bad, r.code, JSON.parse(r.stdout).code]).toEqual([bad, 1, 6]);
    }
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ prevResult: null, cniVersion: '0.4.0' }));
    expect([r.code, r.stdout]).toEqual([0, '{"cniVersion":"0.4.0"}\n']);
  });

  it('passes prevResult through byte for byte', async () => {
    const prev = '{ "cniVersion":"1.0.0",\n "ips":[ {"address":"10.0.0.5/32"} ], "mtu": 1.5e3 }';
    const stdin = `{"cniVersion":"1.0.0","namespacesFile":"${join(dir, 'ns')}","socketPath":"${join(dir, 'none.sock')}","prevResult":${prev}}`;
    const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), stdin);
    expect([r.code, r.stdout]).toEqual([0, `${prev}\n`]);
  });

  it('every error output is valid JSON in UTF-8, even from bytes that are not UTF-8', async () => {
    // A socket path with a byte that is not UTF-8 used to come back raw in "details".
    const stdin = Buffer.concat([
      Buffer.from(`{"cniVersion":"1.0.0","namespacesFile":"${join(dir, 'ns')}","socketPath":"/nonexistent/`),
      Buffer.from([0xff, 0xfe]),
      Buffer.from('.sock"}'),
    ]);
    const r = await runRaw(DEFAULT_PLUGIN, env('ADD'), stdin);
    expect(contractViolations('ADD', r)).toEqual([]);
    expect(r.code).toBe(1);
    const withAccent = await runRaw(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ namespacesFile: join(dir, 'café-missing') }));
    expect(contractViolations('ADD', withAccent)).toEqual([]);
    expect(JSON.parse(withAccent.stdout.toString()).msg).toContain('café-missing');
  });

  it('CNI_ARGS duplicates are read as the agent reads them: the last one wins, empty is none', async () => {
    for (const [args, code] of [
      ['K8S_POD_NAMESPACE=plain;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=p', 1],
      ['K8S_POD_NAMESPACE=shop;K8S_POD_NAMESPACE=plain;K8S_POD_NAME=p', 0],
      ['K8S_POD_NAMESPACE=shop;K8S_POD_NAMESPACE=;K8S_POD_NAME=p', 0],
    ] as const) {
      const agentSees = parseCniArgs(args).K8S_POD_NAMESPACE;
      const r = await runPlugin(DEFAULT_PLUGIN, { ...env('ADD'), CNI_ARGS: args }, conf());
      expect([args, r.code]).toEqual([args, agentSees === 'shop' ? 1 : 0]);
      expect(r.code).toBe(code);
    }
  });

  it('a namespace list that is a FIFO or a device: failing closed at once, not hanging', async () => {
    const fifo = join(dir, 'fifo');
    await systemRunner.run(['mkfifo', fifo]);
    for (const file of [fifo, '/dev/zero', '/dev/null', dir]) {
      const r = await runRaw(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ namespacesFile: file }), 5_000);
      expect([file, r.timedOut, r.code]).toEqual([file, false, 1]);
      expect(JSON.parse(r.stdout.toString())).toMatchObject({ code: 11, msg: expect.stringMatching(/not a regular file/) });
    }
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
    let reply: { code: number; stdout: string } = { code: 0, stdout: '{"from":"agent"}\n' };
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
          setTimeout(() => s.end(encodeReply(reply)), delayMs);
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

    it('an agent error code is never taken modulo 256 into success', async () => {
      for (const code of [256, 512, 1, 11, 0xffffffff]) {
        reply = { code, stdout: '{"cniVersion":"1.0.0","code":11,"msg":"no"}\n' };
        const r = await runPlugin(DEFAULT_PLUGIN, env('ADD', 'plain'), conf({ socketPath: sock() }));
        expect([code, r.code]).toEqual([code, 1]);
        expect(JSON.parse(r.stdout).msg).toBe('no');
      }
      reply = { code: 0, stdout: '{"from":"agent"}\n' };
    });

    it('a broken answer (an error that is not a CNI error object) counts as no agent: the list decides', async () => {
      reply = { code: 1, stdout: 'panic: oops' };
      const r = await runPlugin(DEFAULT_PLUGIN, env('ADD'), conf({ socketPath: sock() }));
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ code: 11, details: expect.stringMatching(/a broken answer/) });
      reply = { code: 0, stdout: '{"from":"agent"}\n' };
    });

    it('STATUS and GC go to the agent; their success prints nothing', async () => {
      reply = { code: 0, stdout: '' };
      const st = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'STATUS' }, conf({ socketPath: sock(), cniVersion: '1.1.0' }));
      expect([st.code, st.stdout, seen!.env.CNI_COMMAND]).toEqual([0, '', 'STATUS']);
      const gc = await runPlugin(DEFAULT_PLUGIN, { CNI_COMMAND: 'GC' }, conf({ socketPath: sock(), cniVersion: '1.1.0' }));
      expect([gc.code, gc.stdout, seen!.env.CNI_COMMAND]).toEqual([0, '', 'GC']);
      reply = { code: 0, stdout: '{"from":"agent"}\n' };
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
