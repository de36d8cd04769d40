/** `ambient-redirect demo`, as a newcomer runs it: a table, a verdict, exit 0, nothing left. */
import { existsSync } from 'node:fs';
import { expect, it } from 'vitest';
import { systemRunner } from '../../src/host/runner.js';
import { kernelDescribe } from './gate.js';

kernelDescribe('demo command', 'the demo builds network namespaces and loads BPF', () => {
  it('prints the per-pod table and a passing verdict, and leaves nothing behind', async () => {
    const out = await systemRunner.run([process.execPath, 'dist/cli/main.js', 'demo', '--pods', '3', '--connections', '2'], { timeoutMs: 60_000 });
    const prefix = /controller in (\w+)-node/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(out).toMatch(/pod0\s+198\.18\.0\.10\s+yes\s+2\/2\s+2 \(198\.19\.0\.2:8080\)\s+0/);
    expect(out).toMatch(/pod1\s+198\.18\.0\.11\s+no\s+2\/2\s+0\s+2/);
    expect(out).toContain('verdict: PASS');
    expect(await systemRunner.run(['ip', 'netns', 'list'])).not.toContain(prefix!);
    expect(existsSync(`/sys/fs/bpf/${prefix}`)).toBe(false);
  });
});

kernelDescribe('demo interrupted', 'the demo builds network namespaces and loads BPF', () => {
  it('tears everything down on Ctrl-C (SIGINT) mid-run', async () => {
    const { startProcess } = await import('../../src/host/runner.js');
    const child = startProcess([process.execPath, 'dist/cli/main.js', 'demo', '--pods', '2', '--connections', '50']);
    let out = '';
    const exited = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`demo never started sending: ${out}`)), 30_000);
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('sending')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill('SIGINT');
    const code = await exited;
    const prefix = /controller in (\w+)-node/.exec(out)?.[1];
    expect(prefix).toBeDefined();
    expect(code).not.toBe(0);
    expect(out).toContain('tearing down');
    expect(await systemRunner.run(['ip', 'netns', 'list'])).not.toContain(prefix!);
    expect(existsSync(`/sys/fs/bpf/${prefix}`)).toBe(false);
  });
});
