/**
 * `ferry up`, `ferry down`, `ferry console`, `ferry exec`, `ferry ssh`: the guest by hand,
 * without the daemon (which will later sit between the CLI and the guest).
 */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { execa } from 'execa';
import { loadConfig } from '../config/load.js';
import { resolvePaths, type FerryPaths } from '../config/paths.js';
import { ExitCode, FerryError } from '../errors.js';
import { buildImage } from '../image/build.js';
import { ensureStateDisk } from '../image/state-disk.js';
import { ferryKeys } from '../keys/ferry-keys.js';
import { createProgress, formatDurationMs, writerProgress } from '../ui/progress.js';
import type { StopHow } from '../vm/backend.js';
import { FileTail } from '../vm/console.js';
import { bootGuest } from '../vm/instance/boot.js';
import { removeGuestRecord, requireRunning, runningGuest, type GuestRecord } from '../vm/instance/record.js';
import { shellQuote, sshArgv } from '../vm/instance/ssh.js';
import { stopRecordedGuest } from '../vm/instance/stop.js';
import { daemonIsRunning } from '../daemon/control-client.js';
import { BUILDER_ALIAS } from '../daemon/ssh-alias.js';

export function registerGuestCommands(program: Command): void {
  program
    .command('up')
    .description('build the image if needed, boot the guest and wait until it serves SSH')
    .option('-c, --config <file>', 'the config file (default: $FERRY_CONFIG or the platform default)')
    .option('--foreground', 'stay attached: show the console, and power the guest off on Ctrl-C')
    .option('--json', 'print the running guest (pid, ssh port, timings) as JSON on stdout')
    .action(async (opts: { config?: string; foreground?: boolean; json?: boolean }) => {
      const paths = resolvePaths({ configFile: opts.config });
      const already = await runningGuest(paths);
      if (already) {
        report(already, opts.json, 'already running');
        return;
      }
      // --config or FERRY_CONFIG: a file the user named must exist (not: boot with the defaults).
      const config = await loadConfig(paths.configFile, { mustExist: paths.configFileNamedBy });
      const progress = createProgress({ quiet: opts.json });
      const manifest = await buildImage({
        config,
        paths,
        keys: ferryKeys(paths),
        ...writerProgress(progress),
      });
      const disk = await ensureStateDisk(paths.stateDisk, config.guest.stateDiskSizeBytes);
      if (disk.action !== 'unchanged') progress.step(`state disk ${disk.action}: ${paths.stateDisk}`);
      progress.step(`booting image ${manifest.id}`);
      progress.done();
      const booted = await bootGuest({
        manifest,
        config,
        paths,
        detached: !opts.foreground,
        onConsoleLine: opts.foreground ? (line) => process.stderr.write(`${line}\n`) : undefined,
      });
      const sshMs = await firstSsh(paths, 60_000);
      const record = { ...booted.record, sshMs: booted.record.readyMs + sshMs };
      report(record, opts.json, 'running');
      if (!opts.foreground) {
        // The hypervisor runs on in its own session; this process only holds a QMP connection
        // and a console tail, which must not keep `ferry up` from returning.
        await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
        process.exit(ExitCode.Ok);
      }
      const unsubscribe = booted.vm.console.onLine((line) => process.stderr.write(`${line}\n`));
      let stopping = false;
      const stop = (): void => {
        if (stopping) return;
        stopping = true;
        process.stderr.write('ferry: powering the guest off…\n');
        void booted.vm.stop().catch((error: Error) => process.stderr.write(`ferry: ${error.message}\n`));
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
      const status = await booted.vm.exited;
      unsubscribe();
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      await removeGuestRecord(paths); // the run files went with the hypervisor
      if (!stopping) throw new FerryError(`the guest stopped by itself (${status.signal ? `signal ${status.signal}` : `exit code ${status.code}`})`, { hint: `see ${paths.consoleLog}` });
    });

  program
    .command('down')
    .description('power the guest off cleanly (the state disk is left clean); --hard kills it')
    .option('--hard', 'kill the hypervisor without asking the guest (the journal recovers the state disk)')
    .option('--timeout <seconds>', 'how long the guest may take to power off before it is killed', '30')
    .action(async (opts: { hard?: boolean; timeout: string }) => {
      const seconds = Number(opts.timeout);
      if (!Number.isFinite(seconds) || seconds <= 0) throw new FerryError(`--timeout: expected seconds > 0, got ${JSON.stringify(opts.timeout)}`, { exitCode: ExitCode.Usage });
      const result = await stopRecordedGuest(resolvePaths(), { hard: opts.hard, timeoutMs: seconds * 1000 });
      const words: Record<StopHow | 'not-running', string> = {
        'not-running': 'the guest was not running',
        guest: 'the guest powered off',
        backend: 'the guest powered off (asked through the hypervisor: its control command did not answer)',
        'hard-stop': 'the guest did not power off; the hypervisor was ended',
        terminated: 'the guest did not power off; the hypervisor was terminated',
        killed: 'the hypervisor was killed',
        'already-exited': 'the guest had already stopped',
      };
      process.stdout.write(`${words[result.how]}${result.how === 'not-running' ? '' : ` (${formatDurationMs(result.ms)})`}\n`);
    });

  program
    .command('console')
    .description("print the guest's console log (this boot); -f follows it")
    .option('-f, --follow', 'keep printing new lines until the guest stops or Ctrl-C')
    .action(async (opts: { follow?: boolean }) => {
      const paths = resolvePaths();
      if (!existsSync(paths.consoleLog)) throw new FerryError(`no console log at ${paths.consoleLog}`, { exitCode: ExitCode.NoInput, hint: 'start the guest with `ferry up`' });
      if (!opts.follow) {
        process.stdout.write(await readFile(paths.consoleLog));
        return;
      }
      const tail = new FileTail(paths.consoleLog, (text) => process.stdout.write(text));
      tail.start();
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        const timer = setInterval(() => {
          void runningGuest(paths).then((record) => {
            if (!record) {
              clearInterval(timer);
              resolve();
            }
          });
        }, 1000);
      });
      await tail.stop();
    });

  program
    .command('exec')
    .description('run a command in the guest as the builder (OpenSSH, through the daemon when it runs); exits with its status')
    .argument('<command...>', 'the command and its arguments (put -- before it)')
    .action(async (command: string[]) => {
      const paths = resolvePaths();
      const argv = await viaDaemonOrGuest(paths, command, false);
      const result = await execa(sshBinary(), argv, { stdio: 'inherit', reject: false });
      process.exit(exitCodeOf(result));
    });

  program
    .command('ssh')
    .description('an interactive shell in the guest as the builder (OpenSSH, with a generated ssh_config)')
    .action(async () => {
      const paths = resolvePaths();
      const argv = await viaDaemonOrGuest(paths, [], process.stdin.isTTY);
      const result = await execa(sshBinary(), argv, { stdio: 'inherit', reject: false });
      process.exit(exitCodeOf(result));
    });
}

/**
 * OpenSSH arguments: through the daemon's SSH front when the daemon runs (it boots the guest on
 * demand), else straight to a guest started with `ferry up`.
 */
async function viaDaemonOrGuest(paths: FerryPaths, command: readonly string[], tty: boolean): Promise<string[]> {
  if (await daemonIsRunning(paths.controlSocket)) {
    const argv = ['-F', paths.builderSshConfig];
    if (tty) argv.push('-t');
    argv.push(BUILDER_ALIAS);
    if (command.length) argv.push('--', command.map(shellQuote).join(' '));
    return argv;
  }
  requireRunning(await runningGuest(paths));
  return sshArgv(paths, command, { tty });
}

function sshBinary(): string {
  return process.env.FERRY_SSH ?? 'ssh';
}

function exitCodeOf(result: { exitCode?: number; signal?: string; failed: boolean; code?: string }): number {
  if (result.code === 'ENOENT') {
    process.stderr.write('ferry: OpenSSH (ssh) is not installed or not on PATH\n');
    return ExitCode.Unavailable;
  }
  if (result.exitCode !== undefined) return result.exitCode;
  return 128 + 15;
}

/** Retries a trivial command until the guest's sshd lets the builder in; returns the ms it took. */
async function firstSsh(paths: FerryPaths, timeoutMs: number): Promise<number> {
  const started = performance.now();
  let last = '';
  while (performance.now() - started < timeoutMs) {
    const result = await execa(sshBinary(), sshArgv(paths, ['true']), { reject: false, stdin: 'ignore', timeout: 15_000 });
    if (result.exitCode === 0) return Math.round(performance.now() - started);
    last = String(result.stderr).trim();
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new FerryError(`the guest printed FERRY-READY but ssh as builder failed for ${timeoutMs / 1000} s: ${last}`, {
    hint: `the guest is still running: look at \`ferry console\`, then \`ferry down\``,
  });
}

function report(record: GuestRecord & { sshMs?: number }, json: boolean | undefined, state: string): void {
  if (json) {
    process.stdout.write(`${JSON.stringify({ state, ...record }, null, 2)}\n`);
    return;
  }
  const timing = record.sshMs !== undefined ? ` — FERRY-READY after ${formatDurationMs(record.readyMs)}, first ssh after ${formatDurationMs(record.sshMs)}` : '';
  process.stdout.write(`guest ${state}: ${record.sshHost}:${record.sshPort} (pid ${record.pid}, ${record.backend})${timing}\n  ferry ssh | ferry exec -- CMD | ferry down\n`);
}
