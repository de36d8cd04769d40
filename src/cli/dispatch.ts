/**
 * The one command dispatcher of our entry points (`ambient-redirect`, and the harness's
 * `ambient-redirect-harness`): usage, help, unknown commands, and the exit codes (2 for a
 * bad command line, 1 for a command that failed).
 */
import { ConfigError } from '../config.js';
import { errorMessage } from './errors.js';

export interface Command {
  summary: string;
  usage: string;
  run: (argv: string[]) => Promise<number>;
}

export interface Program {
  /** The executable's name, as users type it. */
  name: string;
  /** What the program is for: the usage text's paragraph. */
  about: string;
  commands: Record<string, Command>;
  /** Said after the list of commands. */
  footer?: string;
  /** An extra line for an unknown command (e.g. where it lives instead), or ''. */
  unknownHint?: (name: string) => string;
}

export function usageOf(p: Program): string {
  const list = Object.entries(p.commands)
    .map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
    .join('\n');
  return `usage: ${p.name} <command> [flags]\n\n${p.about}\n\ncommands:\n${list}\n\n\`${p.name} <command> --help\` describes a command.${p.footer ? ` ${p.footer}` : ''}\n`;
}

/** Runs the command argv names; resolves to the process's exit code. */
export async function dispatch(p: Program, argv: string[]): Promise<number> {
  const usage = usageOf(p);
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(usage);
    return name ? 0 : 2;
  }
  const cmd = p.commands[name];
  if (!cmd) {
    process.stderr.write(`${p.name}: unknown command "${name}"\n${p.unknownHint?.(name) ?? ''}${usage}`);
    return 2;
  }
  try {
    return await cmd.run(rest);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${p.name} ${name}: ${err.message}\n`);
      return 2;
    }
    process.stderr.write(`${p.name} ${name}: ${errorMessage(err)}\n`);
    return 1;
  }
}
