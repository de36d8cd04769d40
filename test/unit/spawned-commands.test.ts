/**
 * Every command the code, the tests, the demo, the bench and the scripts spawn comes from a
 * Debian package that scripts/setup.sh installs or that a fresh machine already has
 * (test/fixtures/base-image-packages.txt). A new command fails here until it is mapped to
 * its package and that package is provided: a green run on a machine where someone
 * installed it by hand must not hide a missing install step.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

/** Each spawned command's Debian package. */
const PACKAGE: Record<string, string> = {
  ip: 'iproute2',
  tc: 'iproute2',
  ss: 'iproute2',
  bpftool: 'bpftool',
  ipset: 'ipset',
  nft: 'nftables',
  iptables: 'iptables',
  ip6tables: 'iptables',
  'iptables-save': 'iptables',
  'ip6tables-save': 'iptables',
  'iptables-nft-save': 'iptables',
  'iptables-nft-restore': 'iptables',
  'ip6tables-nft-save': 'iptables',
  'ip6tables-nft-restore': 'iptables',
  'iptables-legacy-save': 'iptables',
  'iptables-legacy-restore': 'iptables',
  'ip6tables-legacy-save': 'iptables',
  'ip6tables-legacy-restore': 'iptables',
  sysctl: 'procps',
  ping: 'iputils-ping',
  nsenter: 'util-linux',
  mountpoint: 'util-linux',
  mount: 'mount',
  clang: 'clang',
  'llvm-readelf': 'llvm',
  make: 'make',
  git: 'git',
  'qemu-system-x86_64': 'qemu-system-x86',
  busybox: 'busybox-static',
  cpio: 'cpio',
  xz: 'xz-utils',
  zstd: 'zstd',
  tar: 'tar',
  bash: 'bash',
  sh: 'dash',
  awk: 'mawk',
  sed: 'sed',
  grep: 'grep',
  find: 'findutils',
  env: 'coreutils',
  ls: 'coreutils',
  cp: 'coreutils',
  mv: 'coreutils',
  rm: 'coreutils',
  mkdir: 'coreutils',
  sleep: 'coreutils',
  mktemp: 'coreutils',
  touch: 'coreutils',
  cat: 'coreutils',
  head: 'coreutils',
  tail: 'coreutils',
  sort: 'coreutils',
  tr: 'coreutils',
  uname: 'coreutils',
  id: 'coreutils',
  mkfifo: 'coreutils',
  basename: 'coreutils',
  dirname: 'coreutils',
  readlink: 'coreutils',
  chmod: 'coreutils',
  ln: 'coreutils',
  cut: 'coreutils',
  'apt-get': 'apt',
  'apt-cache': 'apt',
  'dpkg-deb': 'dpkg',
  'dpkg-query': 'dpkg',
  ldd: 'libc-bin',
  ldconfig: 'libc-bin',
};

/** Not from Debian: the machine's own Node.js and npm, and helm from an npm package. */
const NOT_DEBIAN = new Set(['node', 'npm', 'npx', 'helm', 'vitest']);

function files(dir: string, ext: RegExp): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => join(dir, f))
    .filter((f) => ext.test(f) && statSync(f).isFile());
}

/**
 * Commands spawned by TypeScript: the first element of an argv literal handed to a runner,
 * startProcess, inNs or execFile/spawn; the command after `ip netns exec <ns>`; and the
 * iptables-save/restore names built by saveCmd/restoreCmd.
 */
function tsCommands(text: string): Set<string> {
  const out = new Set<string>();
  const lit = `'([A-Za-z0-9._+-]+)'`;
  const patterns = [
    new RegExp(`(?:\\.run|startProcess|inNs\\([^,()]+,)\\(?\\s*\\[\\s*${lit}`, 'g'),
    new RegExp(`(?:execFileSync|execFile|spawnSync|spawn)\\(\\s*${lit}`, 'g'),
    new RegExp(`'netns',\\s*'exec',\\s*[^,\\]]+,\\s*${lit}`, 'g'),
  ];
  for (const re of patterns) for (const m of text.matchAll(re)) out.add(m[1]!);
  // `${f === 4 ? 'iptables' : 'ip6tables'}-${b}-save` and -restore, b in nft|legacy.
  if (/Cmd = \(b: BackendKind, f: Family\) => \[`\$\{f === 4 \? 'iptables' : 'ip6tables'\}-\$\{b\}-(save|restore)`/.test(text)) {
    for (const t of ['iptables', 'ip6tables']) for (const b of ['nft', 'legacy']) for (const v of ['save', 'restore']) out.add(`${t}-${b}-${v}`);
  }
  return out;
}

const SHELL_WORDS = new Set([
  'if',
  'then',
  'else',
  'elif',
  'fi',
  'for',
  'in',
  'do',
  'done',
  'while',
  'until',
  'case',
  'esac',
  'function',
  'return',
  'exit',
  'local',
  'export',
  'set',
  'shift',
  'read',
  'echo',
  'printf',
  'cd',
  'command',
  'true',
  'false',
  'test',
  'wait',
  'trap',
  'eval',
  'exec',
  'unset',
  'declare',
  'source',
  'break',
  'continue',
  'die',
  '{',
  '}',
  '[',
  '[[',
  ']]',
  '!',
  ':',
  'ulimit',
]);

/**
 * Commands run by a shell script: the first word of each simple command (line starts, after
 * |, &&, ||, ;, inside $(...) also within strings, after `then`/`do`/`else`, after
 * `timeout N`), and what `command -v` checks for; less shell words, assignments, the
 * script's own functions, variables, quoted text and array bodies. Here-documents (what a
 * VM's init runs under busybox) are left out.
 */
function shellCommands(text: string): Set<string> {
  const out = new Set<string>();
  const functions = new Set([...text.matchAll(/^\s*([A-Za-z_][\w-]*)\s*\(\)\s*\{/gm)].map((m) => m[1]!));
  const segments: string[] = [];
  let heredoc: string | null = null;
  let inArray = false;
  for (const raw of text.split('\n')) {
    if (heredoc !== null) {
      if (raw.trim() === heredoc) heredoc = null;
      continue;
    }
    if (inArray) {
      if (raw.includes(')')) inArray = false;
      continue;
    }
    const h = /<<-?\s*'?"?(\w+)'?"?/.exec(raw);
    if (h) heredoc = h[1]!;
    if (/^\s*[A-Za-z_]\w*=\(/.test(raw)) {
      if (!raw.includes(')')) inArray = true;
      continue;
    }
    let line = raw.replace(/(^|\s)#.*$/, '');
    const unquote = (t: string) => t.replace(/"(?:[^"\\]|\\.)*"|'[^']*'/g, '_S_');
    // Command substitutions, innermost first, also inside double quotes; their own quoted
    // text (an awk program) is no command either.
    for (let m = /\$\(([^()]*)\)/.exec(line); m; m = /\$\(([^()]*)\)/.exec(line)) {
      segments.push(unquote(m[1]!));
      line = line.slice(0, m.index) + '_S_' + line.slice(m.index + m[0].length);
    }
    segments.push(unquote(line));
  }
  for (const segment of segments) {
    for (const seg of segment.split(/\|\||&&|[|;]|`|\bthen\b|\bdo\b|\belse\b/)) {
      const words = seg
        .trim()
        .replace(/^[({!]\s*/, '')
        .split(/\s+/)
        .filter(Boolean);
      while (words.length > 1 && (/^[A-Za-z_]\w*=/.test(words[0]!) || ['if', 'elif', 'while', 'until', '!', '{', '('].includes(words[0]!))) words.shift();
      if (words[0] === 'command' && words[1] === '-v' && words[2]) words.splice(0, 3, words[2]);
      if (words[0] === 'timeout') {
        words.shift();
        while (words.length && /^(-|\d)/.test(words[0]!)) words.shift();
      }
      const w = words[0] ?? '';
      if (!w || SHELL_WORDS.has(w) || functions.has(w) || /^[A-Za-z_]\w*=/.test(w)) continue;
      if (/^[a-z][a-z0-9._+-]*$/.test(w) && !w.endsWith('.sh')) out.add(w);
    }
  }
  return out;
}

/** Commands in the Makefile's recipes (tab-indented lines), and their variables' tools. */
function makeCommands(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.startsWith('\t')) continue;
    for (const c of shellCommands(
      line
        .slice(1)
        .replace(/^[@-]+/, '')
        .replace(/\$\(CLANG\)/g, 'clang'),
    ))
      out.add(c);
  }
  return out;
}

function setupPackages(): Set<string> {
  const text = readFileSync('scripts/setup.sh', 'utf8');
  const m = /^packages=\(([^)]*)\)/m.exec(text);
  if (!m) throw new Error('scripts/setup.sh has no packages=(...) list');
  return new Set(m[1]!.replace(/#.*$/gm, '').split(/\s+/).filter(Boolean));
}

function basePackages(): Set<string> {
  return new Set(
    readFileSync('test/fixtures/base-image-packages.txt', 'utf8')
      .split('\n')
      .filter((l) => l && !l.startsWith('#')),
  );
}

function allSpawned(): Map<string, string> {
  const where = new Map<string, string>();
  const note = (cmds: Set<string>, file: string) => {
    for (const c of cmds) if (!where.has(c)) where.set(c, file);
  };
  for (const f of [...files('src', /\.ts$/), ...files('harness', /\.ts$/), ...files('test', /\.ts$/), ...files('tools', /\.ts$/)]) {
    if (f.endsWith('spawned-commands.test.ts')) continue;
    note(tsCommands(readFileSync(f, 'utf8')), f);
  }
  for (const f of [...files('scripts', /\.sh$/), '.ci/run']) note(shellCommands(readFileSync(f, 'utf8')), f);
  note(makeCommands(readFileSync('Makefile', 'utf8')), 'Makefile');
  return where;
}

describe('spawned commands and the set-up', () => {
  const spawned = allSpawned();

  it('finds the commands it is meant to find (the extraction itself works)', () => {
    for (const c of [
      'ip',
      'tc',
      'bpftool',
      'ipset',
      'nft',
      'iptables-nft-restore',
      'sysctl',
      'nsenter',
      'qemu-system-x86_64',
      'clang',
      'cpio',
      'apt-get',
      'dpkg-query',
      'mountpoint',
    ]) {
      expect(spawned.has(c), c).toBe(true);
    }
    expect(tsCommands(`await runner.run(['ip', '-n', ns, 'link']); startProcess(['ip', 'netns', 'exec', pod.ns, 'ping']);`)).toEqual(new Set(['ip', 'ping']));
    expect(shellCommands('set -e\nfoo() { :; }\nX=1 tcpdump -i x | wc -l && foo\ncat <<EOF\nnotacmd here\nEOF\n')).toEqual(new Set(['tcpdump', 'wc', 'cat']));
  });

  it('maps every spawned command to its Debian package', () => {
    const unmapped = [...spawned].filter(([c]) => !(c in PACKAGE) && !NOT_DEBIAN.has(c)).map(([c, f]) => `${c} (${f})`);
    expect(unmapped, 'add each to PACKAGE here, and its package to scripts/setup.sh unless a fresh machine has it').toEqual([]);
  });

  it('installs every package those commands come from, unless a fresh machine has it', () => {
    const setup = setupPackages();
    const base = basePackages();
    const missing = [...spawned.keys()]
      .filter((c) => c in PACKAGE)
      .map((c) => PACKAGE[c]!)
      .filter((p) => !setup.has(p) && !base.has(p));
    expect([...new Set(missing)], 'add these to packages=(...) in scripts/setup.sh').toEqual([]);
  });

  it('maps each command to the package that really ships it, where this machine has both', () => {
    const info = '/var/lib/dpkg/info';
    if (!existsSync(info)) return; // not a Debian machine: nothing to check the table against
    const owners = new Map<string, string[]>();
    for (const f of readdirSync(info).filter((n) => n.endsWith('.list'))) {
      const pkg = f.slice(0, -'.list'.length).split(':')[0]!;
      for (const path of readFileSync(join(info, f), 'utf8').split('\n')) if (path) owners.set(path, [...(owners.get(path) ?? []), pkg]);
    }
    const wrong: string[] = [];
    let checked = 0;
    for (const [cmd, pkg] of Object.entries(PACKAGE)) {
      const path = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { encoding: 'utf8' }).stdout.trim();
      if (!path.startsWith('/')) continue; // not installed here
      const candidates = new Set([path, realpathSync(path), ...['/bin', '/sbin', '/usr/bin', '/usr/sbin'].map((d) => `${d}/${cmd}`)]);
      const found = [...candidates].flatMap((p) => owners.get(p) ?? []);
      if (found.length === 0) continue; // an alternative or put there by hand: no owner to compare
      checked++;
      if (!found.includes(pkg)) wrong.push(`${cmd}: ${pkg} in the table, dpkg says ${[...new Set(found)].join(' / ')}`);
    }
    expect(wrong).toEqual([]);
    expect(checked).toBeGreaterThan(10);
  });
});
