/**
 * Changes to root's files when ferry runs as a user. A per-user install is the user's in every
 * part (HOME, the state dir, the LaunchAgent's gui/UID domain, file ownership) except the Nix
 * wiring under /etc, which is root's. So ferry itself never runs under sudo; only those few
 * changes do, each one command with an argv (no shell) that the plan prints first:
 *
 *   write    the content to a temp file the user owns, then `sudo install -m MODE TEMP DEST`
 *   remove   `sudo rm -f DEST`
 *   mkdir    `sudo mkdir -m MODE DIR`, rmdir `sudo rmdir DIR`
 *
 * sudo asks for the password once and caches it for the rest of the run. When ferry already runs
 * as root (CI, a `--system` install, or a `--root` staging tree) nothing is escalated and the
 * file system is written directly.
 */
import { chmodSync, mkdirSync, mkdtempSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ExitCode, FerryError } from '../errors.js';
import { ProcessError, type Runner } from '../process/runner.js';
import { writeFileAtomicSync } from '../atomic-file.js';
import { underRoot } from './layout.js';

/** Where install and uninstall say what they change, one line at a time. */
export type Report = (line: string) => void;

/**
 * Root's directories that install writes into: /etc (the Nix wiring) and /Library (a --system
 * LaunchDaemon). Only these — not all of /var, say, where macOS keeps the user's own TMPDIR.
 */
export const SYSTEM_DIRS = ['/etc', '/Library'] as const;

/** Long enough for the user to type a password at sudo's prompt. */
const SUDO_TIMEOUT_MS = 10 * 60_000;

export const octalMode = (mode: number) => (mode & 0o7777).toString(8).padStart(4, '0');

export interface SystemWritesOptions {
  runner: Runner;
  /** The file system root prefix ('/' normally). */
  root: string;
  /** True when ferry runs as a user (not root): changes under SYSTEM_DIRS go through sudo. */
  escalate: boolean;
  dryRun: boolean;
  report: Report;
  /** A `--root` staging tree: say that commands are recorded, not run. */
  recordOnly?: boolean;
}

export class SystemWrites {
  /** Every sudo argv issued (or, in a dry run, planned), in order. */
  readonly commands: string[][] = [];
  private announced = false;

  constructor(private readonly options: SystemWritesOptions) {}

  /** Is `file` root's, with ferry running as a user? Then its changes go through sudo. */
  escalated(file: string): boolean {
    if (!this.options.escalate) return false;
    return SYSTEM_DIRS.some((dir) => {
      const base = underRoot(this.options.root, dir);
      return file === base || file.startsWith(`${base}${path.sep}`);
    });
  }

  /**
   * Reports a change to `file`; before the first one to root's files, says once that sudo may
   * ask for a password (so the prompt does not come out of nowhere).
   */
  say(file: string, line: string): void {
    if (this.escalated(file)) this.announce();
    this.options.report(line);
  }

  private announce(): void {
    if (this.announced || this.options.dryRun) return;
    this.options.report("the next changes are root's files: ferry runs them through sudo, which may ask for your password once");
    this.announced = true;
  }

  /** The sudo command that would install `file`, as shown in the plan (TEMP: the user's temp copy). */
  installArgv(temp: string, file: string, mode: number): string[] {
    return ['sudo', 'install', '-m', octalMode(mode), temp, file];
  }

  /** Writes `data` to `file` with exactly `mode`, atomically; through sudo when `file` is root's. */
  async writeFile(file: string, data: Buffer, mode: number): Promise<void> {
    if (!this.escalated(file)) {
      if (this.options.dryRun) return;
      // Synced before and after its rename (atomic-file.ts): an install record or ferry.toml is
      // trusted after a power loss only if it reached the disk.
      guardFs(file, () => writeFileAtomicSync(file, data, mode));
      return;
    }
    if (this.options.dryRun) {
      await this.sudo(this.installArgv('TEMP', file, mode));
      return;
    }
    // A private directory (0700) in the user's temp dir: nobody else can swap the file sudo copies.
    const stage = mkdtempSync(path.join(os.tmpdir(), 'ferry-sudo-'));
    try {
      const temp = path.join(stage, path.basename(file));
      writeFileSync(temp, data, { mode: 0o600 });
      // install(1) copies the bytes and sets the mode; the new file is root's, as /etc files are.
      await this.sudo(this.installArgv(temp, file, mode));
    } finally {
      rmSync(stage, { recursive: true, force: true });
    }
  }

  async removeFile(file: string): Promise<void> {
    if (!this.escalated(file)) {
      if (!this.options.dryRun) guardFs(file, () => rmSync(file, { force: true }));
      return;
    }
    await this.sudo(['sudo', 'rm', '-f', file]);
  }

  async makeDir(dir: string, mode: number): Promise<void> {
    if (!this.escalated(dir)) {
      if (!this.options.dryRun) guardFs(dir, () => mkdirSync(dir, { mode }));
      return;
    }
    await this.sudo(['sudo', 'mkdir', '-m', octalMode(mode), dir]);
  }

  async removeDir(dir: string): Promise<void> {
    if (!this.escalated(dir)) {
      if (!this.options.dryRun) guardFs(dir, () => rmdirSync(dir));
      return;
    }
    await this.sudo(['sudo', 'rmdir', dir]);
  }

  /**
   * Runs a command that needs root (restarting the host's nix-daemon): through sudo when ferry
   * runs as a user, as it is otherwise. A dry run prints it.
   */
  async runAsRoot(argv: string[]): Promise<void> {
    await this.sudo(this.options.escalate ? ['sudo', ...argv] : argv);
  }

  /** Runs (or, in a dry run, prints) one command as root; a failure names the command and sudo's words. */
  private async sudo(argv: string[]): Promise<void> {
    this.commands.push(argv);
    const shown = argv.join(' ');
    const { report, dryRun, runner, recordOnly } = this.options;
    if (dryRun) {
      report(`  as root: ${shown}`);
      return;
    }
    if (argv[0] === 'sudo') this.announce();
    const result = await runner.run(argv[0], argv.slice(1), { timeoutMs: SUDO_TIMEOUT_MS });
    report(`${recordOnly ? 'record (not run, --root)' : 'ran'}: ${shown}`);
    if (result.exitCode !== 0) {
      throw new ProcessError(argv[0], argv.slice(1), result, {
        label: `\`${shown}\``,
        timeoutMs: SUDO_TIMEOUT_MS,
        exitCode: ExitCode.CantCreate,
        hint: 'sudo must be able to ask for your password (run ferry from a terminal); `ferry install --dry-run` lists every command it runs as root',
      });
    }
  }
}

/** Turns EACCES and friends into an error that names the file and what to do. */
export function guardFs<T>(file: string, work: () => T): T {
  try {
    return work();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
      throw new FerryError(`cannot write ${file}: ${code === 'EROFS' ? 'read-only file system' : 'permission denied'}`, {
        exitCode: ExitCode.CantCreate,
        hint: 'run ferry as the user the install is for (not with sudo): it asks sudo itself for the files under /etc; `ferry install --dry-run` lists the changes',
        cause: error,
      });
    }
    throw error;
  }
}
