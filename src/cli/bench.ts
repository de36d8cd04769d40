/** `ambient-redirect bench`: the data path's cost per packet (BPF_PROG_RUN; not a test). */
import { ConfigError, parseFlags } from '../config.js';
import { DEFAULT_BENCH, formatBench, runBench } from '../bench/datapath.js';

const FLAGS = {
  repeat: { env: 'BENCH_REPEAT', help: 'runs per measurement (BPF_PROG_RUN repeat)', default: String(DEFAULT_BENCH.repeat) },
  rounds: { env: 'BENCH_ROUNDS', help: 'interleaved rounds; figures are medians', default: String(DEFAULT_BENCH.rounds) },
  object: { env: 'BENCH_OBJECT', help: 'compiled programs', default: DEFAULT_BENCH.objectPath },
};

export const benchUsage = `usage: ambient-redirect bench [--repeat N] [--rounds N] [--object PATH]

Measures ns/packet of each data-path program with BPF_PROG_RUN, beside an empty TC
program in the same run, with ${DEFAULT_BENCH.sizes.join(', ')} entries in the pods map, and
prints a table with the overhead and the ratios. Interleaved rounds, medians. Root; loads
programs but attaches nothing and pins nothing.
`;

function positiveInt(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 10_000_000) throw new ConfigError(`--${name}: "${value}" is not an integer in 1..10000000`);
  return n;
}

export async function benchCommand(argv: string[]): Promise<number> {
  const { values } = parseFlags(argv, FLAGS);
  if (values.help) {
    process.stdout.write(benchUsage);
    return 0;
  }
  const get = (k: keyof typeof FLAGS) => (values[k] as string | undefined) ?? process.env[FLAGS[k].env] ?? FLAGS[k].default;
  const opts = { ...DEFAULT_BENCH, repeat: positiveInt('repeat', get('repeat')), rounds: positiveInt('rounds', get('rounds')), objectPath: get('object') };
  const rows = runBench(opts, (line) => process.stderr.write(`${line}\n`));
  process.stdout.write(`${formatBench(rows)}\n`);
  return 0;
}
