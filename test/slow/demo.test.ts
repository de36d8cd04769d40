/**
 * `ambient-redirect demo`, as a newcomer runs it: the in-pod story (the default topology)
 * with both in-pod captures, and the node-level story (`--topology node`) with both
 * captures. Every step holds, the verdict passes, exit 0, the capture the agent picked is
 * shown, and nothing is left behind; Ctrl-C mid-run tears everything down too.
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { expect, it } from 'vitest';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { kernelDescribe } from '../support/gate.js';

/** Runs the demo to its end; its exit code and output, whatever the code. */
function runDemo(args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['dist/harness/main.js', 'demo', ...args],
      { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, out: `${stdout}${stderr ? `\n[stderr]\n${stderr}` : ''}` });
      },
    );
  });
}

async function leftovers(prefix: string): Promise<string[]> {
  const found: string[] = [];
  if ((await systemRunner.run(['ip', 'netns', 'list'])).includes(prefix)) found.push('netns');
  if ((await systemRunner.run(['ip', '-o', 'link', 'show'])).includes(prefix)) found.push('links');
  if (existsSync(`/sys/fs/bpf/${prefix}`)) found.push('pins');
  const files = readdirSync(tmpdir());
  if (files.some((d) => d.startsWith(`ar-kube-${prefix}-`))) found.push('API double files');
  if (files.some((d) => d.startsWith(`ar-inpod-${prefix}-`) || d.startsWith(`ar-noproc-${prefix}-`))) found.push('in-pod files');
  return found;
}

const STEPS =
  /pods start[\s\S]*label namespace "shop"[\s\S]*opts out[\s\S]*unlabelled namespace "plain" is labelled[\s\S]*killed \(SIGKILL\)[\s\S]*kubelet-style probe[\s\S]*ztunnel goes away[\s\S]*ztunnel comes back[\s\S]*uninstalling/;

kernelDescribe('demo command', 'the demo builds network namespaces and loads BPF', () => {
  for (const [topology, mode] of [
    ['inpod', 'ebpf'],
    ['inpod', 'iptables'],
    ['node', 'ebpf'],
    ['node', 'iptables'],
  ] as const) {
    it(`tells the whole story, --topology ${topology} --mode ${mode}: every step holds, PASS, nothing left behind`, async () => {
      const { code, out } = await runDemo(['--topology', topology, '--mode', mode, '--pods', '3', '--rounds', '1'], 300_000);
      // The whole output on failure: the tables, the verdict's reasons, the agent's warnings.
      expect(code, out).toBe(0);
      const prefix = /network namespaces (\w+)-\*/.exec(out)?.[1];
      expect(prefix).toBeDefined();
      expect(out).toMatch(STEPS);
      expect(out).not.toMatch(/^ {2}FAIL/m);
      expect(out).toContain(`verdict: PASS (${topology} topology, --mode ${mode})`);
      // The capture the agent picked, in its own words (status; in-pod also its log line).
      expect(out).toMatch(topology === 'inpod' ? new RegExp(`^- {3}in-pod capture: ${mode}$`, 'm') : new RegExp(`^- {3}mode: ${mode}$`, 'm'));
      if (topology === 'inpod') expect(out).toContain(`its log says: ${mode}`);
      const section = (from: string, to: string) => out.slice(out.indexOf(from), out.indexOf(to, out.indexOf(from)));
      // Enrolled: every connection through ztunnel (in-pod: accepted inside the pod's netns).
      const enrolled = section('label namespace "shop"', 'opts out');
      expect(enrolled).toMatch(/web-0\s+shop\s+yes\s+1\s+0\s+0/);
      expect(enrolled).toMatch(/batch-2\s+plain\s+no\s+0\s+1\s+0/);
      if (topology === 'inpod')
        expect(enrolled).toMatch(/ztunnel holds shop\/cart-1, shop\/web-0 \(listeners 15001\/15006\/15008 inside each pod's own netns\)/);
      // The probe: the node's connection at the app, the outside server's through ztunnel.
      const probe = section('kubelet-style probe', 'ztunnel goes away');
      expect(probe).toMatch(/kubelet \(the node\)\s+the app\s+1\s+0\s+0/);
      expect(probe).toMatch(/the outside server\s+ztunnel\s+0\s+1\s+0/);
      // The fail-closed step: enrolled pods dropped, never direct; the opted-out one direct.
      const failClosed = section('ztunnel goes away', 'ztunnel comes back');
      expect(failClosed).toMatch(/web-0\s+shop\s+yes\s+0\s+0\s+1/);
      expect(failClosed).toMatch(/batch-2\s+plain\s+yes\s+0\s+0\s+1/);
      expect(failClosed).toMatch(/cart-1\s+shop\s+no\s+0\s+1\s+0/);
      if (topology === 'inpod') expect(section('ztunnel comes back', 'uninstalling')).toMatch(/ztunnel holds plain\/batch-2, shop\/web-0 .*1 snapshot/);
      expect(out).toMatch(/uninstall: /);
      expect(await leftovers(prefix!)).toEqual([]);
    }, 320_000);
  }

  it('tears everything down on Ctrl-C (SIGINT) mid-run (the in-pod story, the default)', async () => {
    // Its own process group, signalled as a whole: what Ctrl-C in a terminal does (the
    // agent, the servers and every other child get SIGINT too).
    const child = startProcess([process.execPath, 'dist/harness/main.js', 'demo', '--pods', '3', '--rounds', '2'], { detached: true });
    let out = '';
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo never reached its second step: ${out}`)), 90_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('label namespace')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    expect(out).toContain('inpod topology');
    const prefix = /network namespaces (\w+)-\*/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(await leftovers(prefix!)).toEqual(expect.arrayContaining(['netns', 'in-pod files']));
    process.kill(-child.pid!, 'SIGINT');
    const code = await exited;
    expect(code, `${out}\n${err}`).toBe(130);
    expect(out).toContain('tearing down');
    expect(out).not.toContain('cleanup failed');
    expect(await leftovers(prefix!)).toEqual([]);
  }, 120_000);
});
