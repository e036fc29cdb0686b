/**
 * The `ferry` command line. Each command group lives in its own module under src/commands and
 * registers itself here; this file only wires them and turns errors into exit codes.
 */
import { Command, CommanderError } from 'commander';
import { FerryError, ExitCode } from './errors.js';

const VERSION = '0.1.0';

type Register = (program: Command) => void;

/**
 * Command groups, loaded on demand: `ferry image mkfs` should not pay for loading ssh2, pino and
 * the VM code (a few hundred milliseconds and tens of megabytes). Help loads them all.
 */
const GROUPS: ReadonlyArray<{ commands: readonly string[]; load: () => Promise<Register> }> = [
  { commands: ['image'], load: async () => (await import('./commands/image.js')).registerImageCommands },
  { commands: ['up', 'down', 'console', 'exec', 'ssh'], load: async () => (await import('./commands/guest-by-hand.js')).registerGuestCommands },
  { commands: ['daemon', 'status', 'start', 'stop', 'restart', 'rebuild', 'logs'], load: async () => (await import('./commands/daemon.js')).registerDaemonCommands },
  { commands: ['install', 'uninstall', 'doctor', 'service-files'], load: async () => (await import('./commands/install.js')).registerInstallCommands },
];

export async function buildProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command('ferry')
    .description('Linux Nix builds for macOS: a daemon that builds, boots and serves its own Linux guest')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  const first = argv[2];
  const wanted = GROUPS.filter((group) => group.commands.includes(first ?? ''));
  for (const group of wanted.length > 0 ? wanted : GROUPS) (await group.load())(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = await buildProgram(argv);
  try {
    await program.parseAsync(argv);
    return ExitCode.Ok;
  } catch (error) {
    return reportError(error);
  }
}

function reportError(error: unknown): number {
  if (error instanceof CommanderError) {
    // commander already printed the message (or the help/version text).
    if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return ExitCode.Ok;
    if (error.code === 'commander.help') return ExitCode.Ok;
    return ExitCode.Usage;
  }
  if (error instanceof FerryError) {
    process.stderr.write(`ferry: ${error.message}\n`);
    if (error.hint) process.stderr.write(`hint: ${error.hint}\n`);
    return error.exitCode;
  }
  process.stderr.write(`ferry: internal error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  return ExitCode.Software;
}


