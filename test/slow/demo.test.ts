/**
 * `ambient-redirect demo`, as a newcomer runs it, in both capture modes: every step of the
 * story holds, the verdict passes, exit 0, and nothing is left behind; Ctrl-C mid-run
 * tears everything down too.
 */
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { expect, it } from 'vitest';
import { startProcess, systemRunner } from '../../src/host/runner.js';
import { kernelDescribe } from '../support/gate.js';

async function leftovers(prefix: string): Promise<string[]> {
  const found: string[] = [];
  if ((await systemRunner.run(['ip', 'netns', 'list'])).includes(prefix)) found.push('netns');
  if ((await systemRunner.run(['ip', '-o', 'link', 'show'])).includes(prefix)) found.push('links');
  if (existsSync(`/sys/fs/bpf/${prefix}`)) found.push('pins');
  if (readdirSync(tmpdir()).some((d) => d.startsWith(`ar-kube-${prefix}-`))) found.push('API double files');
  return found;
}

kernelDescribe('demo command', 'the demo builds network namespaces and loads BPF', () => {
  for (const mode of ['ebpf', 'iptables'] as const) {
    it(`tells the whole story in ${mode} mode: every step holds, PASS, nothing left behind`, async () => {
      const out = await systemRunner.run([process.execPath, 'dist/harness/main.js', 'demo', '--mode', mode, '--pods', '3', '--rounds', '1'], {
        timeoutMs: 180_000,
      });
      const prefix = /network namespaces (\w+)-\*/.exec(out)?.[1];
      expect(prefix).toBeDefined();
      expect(out).toMatch(/pods start[\s\S]*label namespace "shop"[\s\S]*opts out[\s\S]*killed \(SIGKILL\)[\s\S]*ztunnel goes away[\s\S]*ztunnel comes back/);
      expect(out).not.toMatch(/^ {2}FAIL/m);
      expect(out).toContain(`verdict: PASS (${mode} mode)`);
      // The fail-closed step: enrolled pods dropped, never direct.
      const failClosed = out.slice(out.indexOf('ztunnel goes away'), out.indexOf('ztunnel comes back'));
      expect(failClosed).toMatch(/web-0\s+shop\s+yes\s+0\s+0\s+1/);
      expect(await leftovers(prefix!)).toEqual([]);
    }, 200_000);
  }

  it('tears everything down on Ctrl-C (SIGINT) mid-run', async () => {
    const child = startProcess([process.execPath, 'dist/harness/main.js', 'demo', '--pods', '3', '--rounds', '2']);
    let out = '';
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo never reached its second step: ${out}`)), 60_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('label namespace')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const prefix = /network namespaces (\w+)-\*/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(await leftovers(prefix!)).toContain('netns');
    child.kill('SIGINT');
    const code = await exited;
    expect(code).toBe(130);
    expect(out).toContain('tearing down');
    expect(await leftovers(prefix!)).toEqual([]);
  }, 90_000);
});
