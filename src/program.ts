/**
 * The `ferry` command line. Each command group lives in its own module under src/commands and
 * registers itself here; this file only wires them and turns errors into exit codes.
 */
import { Command, CommanderError } from 'commander';
import { FerryError, ExitCode } from './errors.js';
import { registerImageCommands } from './commands/image.js';
import { registerGuestCommands } from './commands/guest.js';
import { registerDaemonCommands } from './commands/daemon.js';
import { registerInstallCommands } from './commands/install.js';

const VERSION = '0.1.0';

export function buildProgram(): Command {
  const program = new Command('ferry')
    .description('Linux Nix builds for macOS: a daemon that builds, boots and serves its own Linux guest')
    .version(VERSION)
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerImageCommands(program);
  registerGuestCommands(program);
  registerDaemonCommands(program);
  registerInstallCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
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


