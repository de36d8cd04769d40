/**
 * The CNI fuzz run (docs/cni.md, "The plugin's contract"): a bounded number of generated
 * invocations, each run against the built plugin and its ASan+UBSan build, with the agent
 * absent, a hostile agent (random codes, garbage, truncated or late answers, hang-ups) or
 * the real handler behind the real socket server. Inputs: CNI_COMMAND and the other CNI_*
 * variables, CNI_ARGS with duplicates and junk, stdin configs built from valid ones then
 * mutated (bytes flipped, cut, not UTF-8, deep nesting, huge), and hostile namespace-list
 * paths (a FIFO, /dev/zero, a folder, a 6 MB file). Every run is checked against the
 * contract for its input (test/build/cni-contract.ts); a crash is a signal, a sanitizer
 * report or a hang. Prints `cni fuzz: N inputs, C crashes, V contract violations`.
 * CNI_FUZZ_INPUTS and CNI_FUZZ_SEED change the count and the seed.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { NamespaceView } from '../../src/core/enrollment.js';
import { CniHandler, type CniMembership } from '../../src/cni/handler.js';
import { decodeReply, encodeReply, frameLength } from '../../src/cni/protocol.js';
import { serveCni, type CniServer } from '../../src/cni/server.js';
import { systemRunner } from '../../src/host/runner.js';
import { DEFAULT_PLUGIN } from '../../harness/sim/runtime.js';
import { Gen } from '../model/generate.js';
import { contractViolations, crashOf, runRaw, type RawRun } from './cni-contract.js';
import { quietLog } from '../unit/kube-harness.js';

const ASAN_PLUGIN = fileURLToPath(new URL('../../build/test/ambient-redirect-cni-asan', import.meta.url));
const INPUTS = Number(process.env.CNI_FUZZ_INPUTS ?? 250);
const SEED = Number(process.env.CNI_FUZZ_SEED ?? 20261130);
const CONCURRENCY = 4;
const SANITIZER_ENV = {
  ASAN_OPTIONS: 'exitcode=99:detect_leaks=0:abort_on_error=0',
  UBSAN_OPTIONS: 'halt_on_error=1:exitcode=98:print_stacktrace=1',
};

let dir = '';
const paths = {
  list: () => join(dir, 'ns'),
  fifo: () => join(dir, 'fifo'),
  big: () => join(dir, 'big'),
  none: () => join(dir, 'none.sock'),
  hostile: () => join(dir, 'hostile.sock'),
  real: () => join(dir, 'run', 'real.sock'),
};

// --- the agents -----------------------------------------------------------------------------

/** What the hostile agent answers next connection (set per input; runs of one input are serial). */
type Hostile = { kind: 'reply'; frame: Buffer } | { kind: 'hangup' } | { kind: 'silent' };
const hostileByConn: Hostile[] = [];
let hostile: Server;

const ambient: NamespaceView = { name: 'shop', labels: { 'istio.io/dataplane-mode': 'ambient' } };
const plain: NamespaceView = { name: 'plain', labels: {} };
const fakeMembership: CniMembership = {
  hasSynced: () => true,
  namespace: (n) => (n === 'shop' ? ambient : n === 'plain' ? plain : undefined),
  namespacesLive: () => true,
  fetchNamespace: async (n) => (n === 'shop' ? ambient : n === 'plain' ? plain : null),
  cachedPod: () => undefined,
  podDeleted: () => false,
  fetchPod: async () => null,
  enrollmentContext: () => ({ nodeName: 'n', reserved: new Set<string>() }),
  provisionPod: () => {},
  releaseSandbox: () => false,
  announcedSandboxes: () => ['c-stale'],
  programmedNow: () => new Set<string>(),
  onProgrammed: () => {},
  onChange: () => {},
};
let real: CniServer;

// --- the generator ----------------------------------------------------------------------------

const NS = ['shop', 'plain', 'other', '', 'shop\nplain', 'x'.repeat(300), 'sh;op', 'ünï', 'shop '];

function cniArgs(g: Gen): string {
  const terms: string[] = [];
  const n = g.int(6);
  for (let i = 0; i < n; i++) {
    terms.push(
      g.pick([
        () => `K8S_POD_NAMESPACE=${g.pick(NS)}`,
        () => `K8S_POD_NAME=${g.pick(['web-0', '', 'a=b', 'x'.repeat(g.int(400))])}`,
        () => `K8S_POD_UID=${g.pick(['u1', '', 'uid-web-0'])}`,
        () => 'IgnoreUnknown=1',
        () => g.pick(['junk', '=', '==', ';', 'K8S_POD_NAMESPACE', '=shop', 'K8S_POD_NAMESPACE==shop']),
      ])(),
    );
  }
  return terms.join(g.pick([';', ';', ';;', ' ;']));
}

function envOf(g: Gen, command: string): Record<string, string> {
  const env: Record<string, string> = { CNI_COMMAND: command };
  if (g.chance(0.85)) env.CNI_CONTAINERID = g.pick(['c1', 'c-stale', '', 'x'.repeat(200)]);
  if (g.chance(0.85)) env.CNI_NETNS = g.pick(['/var/run/netns/x', '', '/proc/self/ns/net']);
  if (g.chance(0.8)) env.CNI_IFNAME = 'eth0';
  if (g.chance(0.8)) env.CNI_PATH = '/opt/cni/bin';
  if (g.chance(0.9)) env.CNI_ARGS = cniArgs(g);
  if (g.chance(0.05)) env.CNI_EXTRA = 'é'.repeat(g.int(2000));
  return env;
}

const PREVS = [
  '{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.0.0.5/32","interface":0}]}',
  '{ "cniVersion" : "0.4.0" ,\n "ips" : [ { "version":"4", "address":"10.1.2.3/24", "gateway":"10.1.2.1" } ], "dns":{} }',
  '{"ips":[{"address":"fd00::a/128"}],"note":"caf\\u00e9 \\ud83d\\ude00","n":-1.5e-3}',
  '{"ips":[{"address":"not an ip"}]}',
  '{"ips":5}',
  '{}',
  'null',
  '"x"',
  '[1,2]',
  '12',
];

/** A config and, when known, the raw prevResult it carries (for the byte-for-byte check). */
function config(g: Gen, socket: string): { text: string; prev: string | null; version: string | null } {
  const members: string[] = [];
  let version: string | null = null;
  if (g.chance(0.9)) {
    const v = g.pick(['"1.0.0"', '"1.1.0"', '"0.4.0"', '"0.3.1"', '"0.3.0"', '"2.0.0"', '""', '5', 'null', '"1.0.0\\u0000"', '"ü"']);
    members.push(`"cniVersion":${v}`);
    version = v;
  }
  members.push('"name":"k8s-pod-network"', '"type":"ambient-redirect-cni"');
  if (g.chance(0.95))
    members.push(`"socketPath":${g.pick([JSON.stringify(socket), JSON.stringify(socket), '""', '7', JSON.stringify('/x'.repeat(80)), '"\\/tmp\\/x"'])}`);
  members.push(
    `"namespacesFile":${g.pick([
      JSON.stringify(paths.list()),
      JSON.stringify(paths.list()),
      JSON.stringify(paths.list()),
      JSON.stringify(join(dir, 'missing')),
      JSON.stringify(paths.fifo()),
      '"/dev/zero"',
      '"/dev/null"',
      '"/dev/urandom"',
      JSON.stringify(dir),
      JSON.stringify(paths.big()),
      '""',
      'false',
    ])}`,
  );
  if (g.chance(0.8)) members.push(`"timeoutMs":${g.pick(['200', '300', '50', '1', '0', '-1', '1e21', '123456789012345', '"x"', '1.5', '600001'])}`);
  let prev: string | null = null;
  if (g.chance(0.85)) {
    prev = g.pick(PREVS);
    members.push(`"prevResult":${prev}`);
  }
  if (g.chance(0.2)) members.push(`"cni.dev/valid-attachments":${g.pick(['[]', '[{"containerID":"c1","ifname":"eth0"}]', '[{"ifname":1}]', '{}', '7'])}`);
  if (g.chance(0.1)) members.push(`"prev\\u0052esult":${g.pick(PREVS)}`);
  if (g.chance(0.1)) members.push(`"prevResult":${g.pick(PREVS)}`);
  // Shuffle the members: the scanners must not care about order.
  for (let i = members.length - 1; i > 0; i--) {
    const j = g.int(i + 1);
    [members[i], members[j]] = [members[j]!, members[i]!];
  }
  const ws = () => g.pick(['', '', ' ', '\n', '\t', '\r\n']);
  return { text: `${ws()}{${members.map((m) => `${ws()}${m}`).join(`,${ws()}`)}}${ws()}`, prev, version };
}

function mutate(g: Gen, text: string): Buffer {
  const b = Buffer.from(text);
  switch (g.int(9)) {
    case 0:
      return b.subarray(0, g.int(b.length + 1)); // cut anywhere
    case 1: {
      const c = Buffer.from(b);
      for (let k = 0; k < 1 + g.int(4); k++) c[g.int(c.length)] = g.int(256);
      return c;
    }
    case 2: {
      const at = g.int(b.length + 1);
      return Buffer.concat([
        b.subarray(0, at),
        Buffer.from(g.pick(['\xff', '\u0000', '"', '\\', '{', '}', ']', ',', ':', 'tru', '1e', '-', '\\u12', '\\x']), 'latin1'),
        b.subarray(at),
      ]);
    }
    case 3: {
      const depth = g.pick([10, 63, 64, 65, 200, 5000]);
      return Buffer.from(`{"cniVersion":"1.0.0","prevResult":${'['.repeat(depth)}${']'.repeat(depth)}}`);
    }
    case 4:
      return g.bytes(g.int(300));
    case 5:
      return Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), b]); // a BOM
    case 6:
      return Buffer.concat([b, Buffer.from(g.pick(['{}', ' x', '\u0000', ',']))]);
    case 7: // a lone surrogate escape, overlong UTF-8, a raw control character in a string
      return Buffer.from(text.replace('"k8s-pod-network"', g.pick(['"\\ud800"', '"\xc0\xaf"', '"a\u0001b"', '"\xed\xa0\x80"'])), 'latin1');
    default:
      return Buffer.from(`{"cniVersion":"1.0.0","prevResult":{"big":"${'a'.repeat(g.pick([1 << 19, (1 << 20) + 10]))}"}}`);
  }
}

function hostileAnswer(g: Gen): Hostile {
  switch (g.int(8)) {
    case 0:
      return { kind: 'hangup' };
    case 1:
      return { kind: 'silent' }; // the plugin's timeoutMs runs out
    case 2: {
      const f = encodeReply({ code: 0, stdout: '{"cniVersion":"1.0.0"}\n' });
      return { kind: 'reply', frame: f.subarray(0, g.int(f.length)) };
    }
    case 3: {
      const f = Buffer.alloc(8);
      f.writeUInt32BE(g.pick([0, 3, 5 << 20, 0xffffffff]));
      return { kind: 'reply', frame: f };
    }
    default: {
      const code = g.pick([0, 1, 11, 256, 512, 0xffffffff, 7]);
      const stdout = g.pick<string | Buffer>([
        '',
        '{"cniVersion":"1.0.0","code":11,"msg":"no"}\n',
        '{"cniVersion":"1.0.0"}\n',
        'garbage',
        Buffer.from([0x7b, 0xff, 0x7d]),
        '{"code":"11","msg":5}',
        '   ',
        '{"code":11,"msg":"x","details":"\\ud800"}',
      ]);
      return { kind: 'reply', frame: encodeReply({ code, stdout }) };
    }
  }
}

// --- the run ---------------------------------------------------------------------------------

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ar-cni-fuzz-'));
  writeFileSync(paths.list(), 'shop\nmesh-b\n\n');
  await systemRunner.run(['mkfifo', paths.fifo()]);
  writeFileSync(paths.big(), '');
  truncateSync(paths.big(), 6 << 20);
  mkdirSync(join(dir, 'run'));
  hostile = createServer((s) => {
    const what = hostileByConn.shift() ?? { kind: 'hangup' };
    let buf = Buffer.alloc(0);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      let n = 0;
      try {
        n = frameLength(buf);
      } catch {
        s.destroy();
        return;
      }
      if (!n) return;
      if (what.kind === 'hangup') s.destroy();
      else if (what.kind === 'reply') s.end(what.frame);
      // silent: keeps the connection open; the plugin gives up, then it is closed with it
    });
  });
  await new Promise<void>((r) => hostile.listen(paths.hostile(), r));
  const handler = new CniHandler(fakeMembership, { addTimeoutMs: 200, log: quietLog });
  real = await serveCni(paths.real(), (req) => handler.handle(req), quietLog, { requestTimeoutMs: 2_000 });
});

afterAll(async () => {
  await real?.close();
  await new Promise<void>((r) => (hostile ? hostile.close(() => r()) : r()));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Input {
  command: string;
  env: Record<string, string>;
  stdin: Buffer;
  agent: 'none' | 'hostile' | 'real';
  hostile: Hostile | null;
  /** The raw prevResult when the config is unmutated, valid, and the agent honest. */
  prev: string | null;
  version: string | null;
}

function generate(g: Gen): Input {
  const command = g.pick(['ADD', 'ADD', 'ADD', 'DEL', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION', '', 'add', 'FOO', 'ADD\u00e9', 'X'.repeat(300)]);
  const agent = g.pick(['none', 'none', 'hostile', 'real'] as const);
  const socket = agent === 'none' ? paths.none() : agent === 'hostile' ? paths.hostile() : paths.real();
  const c = config(g, socket);
  const mutated = g.chance(0.35);
  const stdin = mutated ? mutate(g, c.text) : Buffer.from(c.text);
  let h = agent === 'hostile' ? hostileAnswer(g) : null;
  // A silent agent costs the plugin its whole timeoutMs: only with a short one.
  if (h?.kind === 'silent' && !/"timeoutMs":(200|300|50|1)[,}\s]/.test(c.text)) h = { kind: 'hangup' };
  return {
    command,
    env: envOf(g, command),
    stdin,
    agent,
    hostile: h,
    prev: mutated || agent === 'hostile' ? null : c.prev,
    version: mutated ? null : c.version,
  };
}

/** Contract points that depend on the input (beyond contractViolations). */
function inputViolations(input: Input, r: RawRun): string[] {
  const v: string[] = [];
  if (input.command !== 'ADD' || r.code !== 0 || input.prev === null || !input.prev.startsWith('{')) return v;
  // A valid config whose prevResult passes: it comes back byte for byte (duplicates and
  // escaped keys aside, where the config carries more than one candidate).
  const text = input.stdin.toString();
  const count = text.split('"prevResult"').length - 1;
  if (count === 1 && !text.includes('prev\\u0052esult') && !r.stdout.equals(Buffer.from(`${input.prev}\n`)))
    v.push('prevResult not passed through byte for byte');
  return v;
}

it('the plugin keeps the CNI contract for every generated input, under ASan and UBSan too', async () => {
  expect(existsSync(DEFAULT_PLUGIN), `${DEFAULT_PLUGIN}: run make build`).toBe(true);
  expect(existsSync(ASAN_PLUGIN), `${ASAN_PLUGIN}: the sanitizer build is missing (scripts/setup.sh installs libclang-rt-14-dev; then make build)`).toBe(true);
  const g = new Gen(SEED);
  const inputs = Array.from({ length: INPUTS }, () => generate(g));
  const builds = [
    { name: 'hardened', plugin: DEFAULT_PLUGIN, extra: {} },
    { name: 'asan+ubsan', plugin: ASAN_PLUGIN, extra: SANITIZER_ENV },
  ];
  const crashes: string[] = [];
  const violations: string[] = [];
  let runs = 0;
  let slowest = { ms: 0, what: '' };
  const t0 = performance.now();
  // Inputs with the hostile agent run one at a time (its answer is per connection);
  // the rest run CONCURRENCY at a time.
  const queue = inputs.map((input, i) => ({ input, i }));
  const hostileLock = { busy: Promise.resolve() };
  const runOne = async (input: Input, i: number) => {
    for (const b of builds) {
      if (input.hostile) hostileByConn.push(input.hostile);
      const r = await runRaw(b.plugin, input.env, input.stdin, 15_000, b.extra);
      runs++;
      slowest = r.ms > slowest.ms ? { ms: r.ms, what: `#${i} ${b.name} agent=${input.agent} ${input.hostile?.kind ?? ''}` } : slowest;
      if (input.hostile) hostileByConn.length = 0;
      const what = `#${i} ${b.name} ${JSON.stringify(input.command).slice(0, 20)} agent=${input.agent} stdin=${JSON.stringify(input.stdin.subarray(0, 120).toString('latin1'))}`;
      const crash = crashOf(r);
      if (crash) crashes.push(`${what}: ${crash}`);
      for (const v of [...contractViolations(input.command, r, input.stdin), ...inputViolations(input, r)])
        violations.push(`${what}: ${v} (exit ${r.code}, stdout ${JSON.stringify(r.stdout.subarray(0, 160).toString('latin1'))})`);
    }
  };
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let item = queue.shift(); item; item = queue.shift()) {
        const { input, i } = item;
        if (input.hostile) {
          const prev = hostileLock.busy;
          let release!: () => void;
          hostileLock.busy = new Promise<void>((r) => (release = r));
          await prev;
          try {
            await runOne(input, i);
          } finally {
            release();
          }
        } else await runOne(input, i);
      }
    }),
  );
  const seconds = (performance.now() - t0) / 1000;
  console.log(`cni fuzz: ${runs} inputs, ${crashes.length} crashes, ${violations.length} contract violations`);
  console.log(`  (${INPUTS} generated inputs, seed ${SEED}, each run by the hardened build and the ASan+UBSan build, in ${seconds.toFixed(1)} s)`);
  console.log(`  slowest run ${Math.round(slowest.ms)} ms: ${slowest.what}`);
  for (const c of crashes.slice(0, 10)) console.log(`  crash: ${c}`);
  for (const v of violations.slice(0, 20)) console.log(`  violation: ${v}`);
  expect(crashes).toEqual([]);
  expect(violations).toEqual([]);
}, 120_000);

// decodeReply is what the agent double's frames must satisfy; keep the generator honest.
it('the hostile agent’s well-formed frames decode', () => {
  const g = new Gen(SEED);
  for (let i = 0; i < 50; i++) {
    const h = hostileAnswer(g);
    if (h.kind === 'reply' && h.frame.length >= 8 && h.frame.readUInt32BE(0) === h.frame.length - 4) expect(() => decodeReply(h.frame)).not.toThrow();
  }
});
