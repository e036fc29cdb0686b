/** `ferry install`, `ferry uninstall`, `ferry doctor`: the host wiring (launchd/systemd, Nix). */
import { Command, Option } from 'commander';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { platformOverride as readPlatformOverride } from '../config/host.js';
import { ExitCode, FerryError } from '../errors.js';
import { doctor, renderChecks } from '../install/doctor.js';
import { install } from '../install/install.js';
import { writeServiceFiles } from '../install/service-files.js';
import { uninstall } from '../install/uninstall.js';
import { createProgress } from '../ui/progress.js';

/**
 * FERRY_PLATFORM (tests only): lay out files as on another OS (config/host.ts reads it, for the
 * whole program). Never runs that OS's commands for real without --root.
 */
function platformOverride(): NodeJS.Platform | undefined {
  return readPlatformOverride()?.platform;
}

/** Asks "make these changes?" on the terminal; anything but yes ends the command with nothing changed. */
async function confirm(): Promise<void> {
  const rl = createInterface({ input: process.stdin, output: process.stdout });
  const answer = await rl.question('make these changes? [y/N] ');
  rl.close();
  if (!/^y(es)?$/i.test(answer.trim())) throw new FerryError('nothing changed', { exitCode: ExitCode.Failure });
}

const rootOption = () => new Option('--root <dir>', 'treat DIR as the file system root (staging, tests); launchctl/systemctl are only printed').hideHelp();

export function registerInstallCommands(program: Command): void {
  program
    .command('install')
    .description('keys, ferry.toml, the image, the launchd agent (systemd unit on Linux) and the Nix wiring; prints every change')
    .option('--system', 'a system-wide LaunchDaemon / system unit instead of a per-user one (run as root)')
    .option('--port <port>', 'the SSH port of the daemon (written to ferry.toml; a running daemon is restarted to take it)', (value) => Number(value))
    .option('--dry-run', 'print the plan and change nothing')
    .option('-y, --yes', 'do not ask before changing files')
    .option('--no-build', 'do not build the image now (the daemon builds it when it starts)')
    .addOption(rootOption())
    .addHelpText(
      'after',
      '\nRun it as yourself, not with sudo: only the changes under /etc (the Nix wiring) go through sudo, each\n' +
        'shown in the plan as the command it runs (`sudo install -m 0644 TEMP /etc/nix/machines`). `--system`\n' +
        'installs for the whole machine and runs as root (`sudo ferry install --system`).\n' +
        'A second run changes nothing. `ferry uninstall` undoes exactly what install recorded.',
    )
    .action(async (opts: { system?: boolean; port?: number; dryRun?: boolean; yes?: boolean; build: boolean; root?: string }) => {
      const common = { system: opts.system, root: opts.root, platform: platformOverride(), port: opts.port, build: opts.build };
      if (!opts.dryRun && !opts.yes && process.stdin.isTTY && process.stdout.isTTY) {
        const plan = await install({ ...common, dryRun: true });
        if (plan.changes === 0) return;
        await confirm();
      }
      await install({ ...common, dryRun: opts.dryRun, progress: createProgress() });
    });

  program
    .command('uninstall')
    .description('stop the service and remove every file install wrote (restoring edited ones byte for byte)')
    .option('--system', 'the system-wide install')
    .option('--purge', 'also the state disk (the guest /nix), images and logs')
    .option('--dry-run', 'print what would be removed and change nothing')
    .option('-y, --yes', 'do not ask before removing files')
    .addOption(rootOption())
    .action(async (opts: { system?: boolean; purge?: boolean; dryRun?: boolean; yes?: boolean; root?: string }) => {
      const common = { system: opts.system, root: opts.root, purge: opts.purge, platform: platformOverride() };
      // As install: on a terminal, the plan first and a question, unless --yes.
      if (!opts.dryRun && !opts.yes && process.stdin.isTTY && process.stdout.isTTY) {
        const plan = await uninstall({ ...common, dryRun: true });
        if (plan.removed.length + plan.restored.length + plan.commands.length === 0) return;
        await confirm();
      }
      await uninstall({ ...common, dryRun: opts.dryRun });
    });

  program
    .command('service-files')
    .description("write the service file (launchd plist or systemd unit) and ssh alias `ferry install` would write, into a directory; nothing else changes (the nix-darwin module's package build runs it)")
    .requiredOption('--out <dir>', 'the directory to write them to')
    .option('--config <file>', 'the ferry.toml the daemon runs with (default: FERRY_CONFIG, then the platform default)')
    .option('--home <dir>', "the home directory of the user the agent runs as (default: $HOME)")
    .option('--system', 'the system-wide LaunchDaemon / system unit')
    .addOption(new Option('--platform <os>', 'lay the files out for this OS').choices(['darwin', 'linux']))
    .option('--json', 'print what was written, with the nix.buildMachines entry, as JSON')
    .addHelpText('after', '\nWrites <label>.plist (or ferry.service), ferry.conf (the ssh alias) and service.json into --out.')
    .action(async (opts: { out: string; config?: string; home?: string; system?: boolean; platform?: 'darwin' | 'linux'; json?: boolean }) => {
      const env = { ...process.env, ...(opts.config ? { FERRY_CONFIG: path.resolve(opts.config) } : {}) };
      const result = await writeServiceFiles({ outDir: path.resolve(opts.out), system: opts.system, platform: opts.platform ?? platformOverride(), env, homeDir: opts.home && path.resolve(opts.home) });
      process.stdout.write(opts.json ? `${JSON.stringify(result, null, 2)}\n` : `wrote ${Object.values(result.files).join(', ')}\n`);
    });

  program
    .command('doctor')
    .description('check each piece: backend, accelerator, Nix, machines line, ssh alias, service, daemon (and --build a real build)')
    .option('--system', 'check the system-wide install')
    .option('--json', 'print the checks as JSON')
    .option('--build', 'also build a tiny derivation through Nix and the guest')
    .addOption(rootOption())
    .addHelpText('after', '\nExit codes: 0 every check passed (warnings allowed), 1 a check failed.')
    .action(async (opts: { system?: boolean; json?: boolean; build?: boolean; root?: string }) => {
      const checks = await doctor({ system: opts.system, root: opts.root, build: opts.build, platform: platformOverride() });
      process.stdout.write(opts.json ? `${JSON.stringify({ ok: checks.every((c) => c.status !== 'fail'), checks }, null, 2)}\n` : renderChecks(checks));
      const failed = checks.filter((c) => c.status === 'fail').length;
      // Thrown, not process.exitCode: main() sets the exit code from what the action throws.
      if (failed > 0) throw new FerryError(`${failed} check(s) failed (see the fixes above)`, { exitCode: ExitCode.Failure });
    });
}
