/**
 * The BPF headers (bpf/include/): each one compiles on its own, with the Makefile's flags,
 * as the only include of a translation unit (it includes what it uses, whatever a program
 * included before it), and no name is defined in two places.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const DIR = 'bpf/include';
const HEADERS = readdirSync(DIR)
  .filter((f) => f.endsWith('.h'))
  .sort();
const CFLAGS = execFileSync('make', ['-s', '--no-print-directory', 'print-bpf-cflags'], { encoding: 'utf8' }).trim().split(/\s+/);
const scratch = mkdtempSync(join(tmpdir(), 'ar-bpf-headers-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Compiles a translation unit holding only `#include "<header>"`; '' when it compiles, else clang's errors. */
function compileAlone(header: string, extraInclude?: string): string {
  const r = spawnSync(process.env.CLANG ?? 'clang', [...CFLAGS, ...(extraInclude ? ['-I', extraInclude] : []), '-fsyntax-only', '-x', 'c', '-'], {
    input: `#include "${header}"\n`,
    encoding: 'utf8',
  });
  if (r.error) throw r.error;
  return r.status === 0 ? '' : r.stderr || `clang exited ${r.status}`;
}

/** What a header defines at file level: macros, structs, enums and their constants, functions. */
function definitions(text: string): string[] {
  const out: string[] = [];
  const code = text.replace(/\/\*[\s\S]*?\*\//g, '');
  for (const m of code.matchAll(/^#define\s+(\w+)/gm)) out.push(m[1]!);
  for (const m of code.matchAll(/^(?:struct|enum)\s+(\w+)\s*\{/gm)) out.push(`${code.slice(m.index, m.index + 4) === 'enum' ? 'enum' : 'struct'} ${m[1]}`);
  for (const m of code.matchAll(/^enum\s+\w+\s*\{([\s\S]*?)\};/gm)) for (const c of m[1]!.matchAll(/^\s*(\w+)\s*(?:=|,|$)/gm)) out.push(c[1]!);
  for (const m of code.matchAll(/^static\s+[^;{(]*?\b(\w+)\s*\(/gm)) out.push(`${m[1]}()`);
  return out;
}

describe('the BPF headers', () => {
  it('are there', () => {
    expect(HEADERS).toEqual(expect.arrayContaining(['ambient_redirect.h', 'maps.h', 'parse.h', 'redirect.h', 'ztunnel.h']));
    expect(CFLAGS).toContain('-target');
  });

  for (const h of HEADERS)
    it(`${h} compiles on its own with the Makefile's flags`, () => {
      expect(compileAlone(h)).toBe('');
    });

  it('the check fails for a header that leans on an include it does not make', () => {
    writeFileSync(join(scratch, 'leaning.h'), '#ifndef LEANING_H\n#define LEANING_H\nstruct leaning { __u32 x; };\n#endif\n');
    expect(compileAlone('leaning.h', scratch)).toMatch(/__u32/);
  });

  it('define each name once, in one header', () => {
    const where = new Map<string, string[]>();
    for (const h of HEADERS) for (const name of definitions(readFileSync(join(DIR, h), 'utf8'))) where.set(name, [...(where.get(name) ?? []), h]);
    // The scan finds what it must (else an empty map would pass).
    expect(where.get('struct addr_key')).toEqual(['ambient_redirect.h']);
    expect(where.get('parse_frame()')).toEqual(['parse.h']);
    expect(where.get('FLOW_TCP_SYN')).toEqual(['parse.h']);
    expect(where.get('V_PASS')).toEqual(['redirect.h']);
    expect([...where].filter(([, hs]) => hs.length > 1)).toEqual([]);
  });
});
