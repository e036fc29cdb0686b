/**
 * A launchd stand-in: loads a launchd.plist and runs its job as launchd runs an agent, and answers
 * the launchctl subcommands ferry issues. No launchd runs here, so the e2e test plays its part —
 * strictly: a key it does not implement, or a plist launchd would refuse, ends in an error rather
 * than a job that runs differently from the one a Mac would run.
 *
 * Written from launchd's own documentation and source:
 * - launchd.plist(5), macOS: https://keith.github.io/xcode-man-pages/launchd.plist.5.html —
 *   Label (required), Program / ProgramArguments ("maps to the second argument of execvp(3)"),
 *   EnvironmentVariables, WorkingDirectory, StandardOutPath / StandardErrorPath, KeepAlive,
 *   RunAtLoad, ThrottleInterval ("by default, jobs will not be spawned more than once every 10
 *   seconds"), ExitTimeOut (SIGTERM, then SIGKILL), AbandonProcessGroup ("When a job dies, launchd
 *   kills any remaining processes with the same process group ID as the job").
 * - launchd's source (apple-oss-distributions/launchd, src/core.c): LAUNCHD_MIN_JOB_RUN_TIME 10,
 *   LAUNCHD_DEFAULT_EXIT_TIMEOUT 20, job_reap()'s killpg(…, SIGTERM) of the job's process group,
 *   and the job made a session (and process group) leader before exec.
 * - launchctl(1), macOS 26.4: https://man.freebsd.org/cgi/man.cgi?manpath=macOS+26.4&query=launchctl&sektion=1
 *   — targets `system/[service-name]`, `user/<uid>/[service-name]`, `gui/<uid>/[service-name]`;
 *   `bootstrap | bootout domain-target [service-path …] | service-target`, `kickstart [-kp]
 *   service-target` ("-k: If the service is already running, kill the running instance before
 *   restarting the service"), `print domain-target | service-target`.
 * The environment of an agent: launchd's default PATH, HOME, USER, LOGNAME and SHELL from the
 * user's passwd entry, TMPDIR the per-user temporary directory (confstr _CS_DARWIN_USER_TEMP_DIR),
 * then the plist's EnvironmentVariables. A Mac adds XPC_SERVICE_NAME and XPC_FLAGS too; ferry reads
 * neither, and the issue asks for exactly the six, so they are left out.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import plist, { type PlistObject, type PlistValue } from 'plist';

/** launchd's PATH for jobs whose plist sets none: <paths.h>'s _PATH_STDPATH (`launchctl config user path` changes it). */
export const LAUNCHD_DEFAULT_PATH = '/usr/bin:/bin:/usr/sbin:/sbin';
/** launchd.plist(5): ThrottleInterval's default; core.c's LAUNCHD_MIN_JOB_RUN_TIME. */
export const DEFAULT_THROTTLE_S = 10;
/** core.c's LAUNCHD_DEFAULT_EXIT_TIMEOUT: SIGTERM, then SIGKILL this many seconds later. */
export const DEFAULT_EXIT_TIMEOUT_S = 20;
const PROCESS_TYPES = ['Background', 'Standard', 'Adaptive', 'Interactive'];

export interface LaunchdJob {
  label: string;
  programArguments: string[];
  environmentVariables: Record<string, string>;
  workingDirectory: string;
  standardOutPath?: string;
  standardErrorPath?: string;
  keepAlive: boolean;
  runAtLoad: boolean;
  throttleIntervalS: number;
  exitTimeOutS: number;
  abandonProcessGroup: boolean;
}

/** A plist launchd would refuse, or one that needs a key this stand-in does not implement. */
export class PlistRefused extends Error {}

/**
 * The job a plist describes. Keys and types as launchd.plist(5) gives them; ProcessType is
 * accepted (it only sets resource policy, which nothing here could imitate) and every other key
 * the man page lists (Sockets, MachServices, StartInterval, UserName, KeepAlive as a dictionary …)
 * is refused, since running the job without it would not be running what launchd runs.
 */
export function readJob(file: string): LaunchdJob {
  let parsed: PlistValue;
  try {
    parsed = plist.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new PlistRefused(`${file}: not a property list (${(error as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || Buffer.isBuffer(parsed) || parsed instanceof Date) {
    throw new PlistRefused(`${file}: the top level must be a dictionary`);
  }
  const dict = parsed as PlistObject;
  const refuse = (problem: string) => new PlistRefused(`${file}: ${problem}`);
  const known = ['Label', 'Program', 'ProgramArguments', 'EnvironmentVariables', 'WorkingDirectory', 'StandardOutPath', 'StandardErrorPath', 'KeepAlive', 'RunAtLoad', 'ThrottleInterval', 'ExitTimeOut', 'AbandonProcessGroup', 'ProcessType'];
  const unknown = Object.keys(dict).filter((key) => !known.includes(key));
  if (unknown.length > 0) throw refuse(`${unknown.join(', ')}: not implemented by the launchd stand-in (it runs only ${known.join(', ')})`);

  const string = (key: string): string | undefined => {
    const value = dict[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw refuse(`${key} must be a <string>, got ${describe(value)}`);
    return value;
  };
  const boolean = (key: string): boolean => {
    const value = dict[key];
    if (value === undefined) return false;
    if (typeof value !== 'boolean') throw refuse(`${key} must be a <boolean>${key === 'KeepAlive' ? ' (the dictionary form is not implemented by the stand-in)' : ''}, got ${describe(value)}`);
    return value;
  };
  const integer = (key: string, fallback: number): number => {
    const value = dict[key];
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) throw refuse(`${key} must be a non-negative <integer>, got ${describe(value)}`);
    return value;
  };

  const label = string('Label');
  if (label === undefined || label === '') throw refuse('Label is required (launchd.plist(5): "This required key uniquely identifies the job")');
  const args = dict.ProgramArguments;
  if (args !== undefined && (!Array.isArray(args) || args.length === 0 || args.some((arg) => typeof arg !== 'string'))) {
    throw refuse(`ProgramArguments must be a non-empty <array> of <string>, got ${describe(args)}`);
  }
  const program = string('Program');
  if (program === undefined && args === undefined) throw refuse('one of Program or ProgramArguments is required');
  // launchd.plist(5): without Program, the first element of ProgramArguments is the program.
  const programArguments = args === undefined ? [program!] : (args as string[]);
  if (program !== undefined && program !== programArguments[0]) throw refuse('Program differs from ProgramArguments[0]: not implemented by the stand-in');

  const env = dict.EnvironmentVariables;
  if (env !== undefined && (typeof env !== 'object' || env === null || Array.isArray(env) || Buffer.isBuffer(env) || env instanceof Date || Object.values(env).some((v) => typeof v !== 'string'))) {
    throw refuse(`EnvironmentVariables must be a <dict> of <string>, got ${describe(env)}`);
  }
  const processType = string('ProcessType');
  if (processType !== undefined && !PROCESS_TYPES.includes(processType)) throw refuse(`ProcessType must be one of ${PROCESS_TYPES.join(', ')}, got ${JSON.stringify(processType)}`);
  const workingDirectory = string('WorkingDirectory') ?? '/';
  const standardOutPath = string('StandardOutPath');
  const standardErrorPath = string('StandardErrorPath');
  for (const [key, value] of [['WorkingDirectory', workingDirectory], ['StandardOutPath', standardOutPath], ['StandardErrorPath', standardErrorPath]] as const) {
    if (value !== undefined && !path.isAbsolute(value)) throw refuse(`${key} must be an absolute path, got ${JSON.stringify(value)}`);
  }
  return {
    label,
    programArguments,
    environmentVariables: (env ?? {}) as Record<string, string>,
    workingDirectory,
    standardOutPath,
    standardErrorPath,
    keepAlive: boolean('KeepAlive'),
    runAtLoad: boolean('RunAtLoad'),
    throttleIntervalS: integer('ThrottleInterval', DEFAULT_THROTTLE_S),
    exitTimeOutS: integer('ExitTimeOut', DEFAULT_EXIT_TIMEOUT_S),
    abandonProcessGroup: boolean('AbandonProcessGroup'),
  };
}

function describe(value: PlistValue | undefined): string {
  if (Array.isArray(value)) return `<array> ${JSON.stringify(value)}`;
  if (value === null || value === undefined) return String(value);
  if (Buffer.isBuffer(value)) return '<data>';
  if (value instanceof Date) return '<date>';
  if (typeof value === 'object') return '<dict>';
  return `<${typeof value === 'number' ? (Number.isInteger(value) ? 'integer' : 'real') : typeof value}> ${JSON.stringify(value)}`;
}

/** The login session launchd runs the gui/<uid> domain for. */
export interface LaunchdSession {
  uid: number;
  home: string;
  user: string;
  shell: string;
  /** A Mac's per-user /var/folders/…/T/ (with its trailing slash). */
  tmpdir: string;
}

export interface JobRun {
  pid: number;
  startedAt: number;
  endedAt?: number;
  /** When bootout or kickstart -k sent it SIGTERM. */
  stopRequestedAt?: number;
  exitCode?: number | null;
  signal?: NodeJS.Signals | null;
  /** launchd had to SIGKILL it: it outlived ExitTimeOut after SIGTERM. */
  killedAfterExitTimeOut?: boolean;
  ended: Promise<void>;
}

interface LoadedJob {
  job: LaunchdJob;
  domain: string;
  runs: JobRun[];
  child?: ChildProcess;
  respawn?: NodeJS.Timeout;
  /** bootout or kickstart -k stops it: no KeepAlive respawn for that exit. */
  stopping: boolean;
}

export interface LaunchctlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** One user's launchd: the gui/<uid> domain (and `system`, when that user is root). */
export class LaunchdStandIn {
  private readonly jobs = new Map<string, LoadedJob>();
  /** The runs of jobs booted out, by label, so a test still sees how they ended. */
  private readonly booted = new Map<string, JobRun[]>();
  /** Every launchctl command line it was given, in order. */
  readonly commands: string[][] = [];

  constructor(private readonly session: LaunchdSession) {}

  /** The runs of a loaded (or booted-out) job, oldest first. */
  runs(label: string): JobRun[] {
    return this.jobs.get(label)?.runs ?? this.booted.get(label) ?? [];
  }

  isLoaded(label: string): boolean {
    return this.jobs.has(label);
  }

  /** launchctl ARGS, as launchctl(1) documents them; anything else is refused with usage (exit 64, EX_USAGE). */
  async launchctl(args: readonly string[]): Promise<LaunchctlResult> {
    this.commands.push([...args]);
    const [subcommand, ...rest] = args;
    const usage = (text: string): LaunchctlResult => ({ exitCode: 64, stdout: '', stderr: `Usage: launchctl ${text}\n` });
    switch (subcommand) {
      case 'bootstrap': {
        if (rest.length < 2 || this.domainOf(rest[0]) === undefined || rest[0] !== this.domainOf(rest[0])) return usage('bootstrap <domain-target> <service-path> [<service-path> …]');
        const domain = rest[0];
        const denied = this.deny(domain);
        if (denied) return denied;
        for (const file of rest.slice(1)) {
          if (!path.isAbsolute(file)) return { exitCode: 5, stdout: '', stderr: `Bootstrap failed: 5: Input/output error (stand-in: give the plist's absolute path, not ${file})\n` };
          let job: LaunchdJob;
          try {
            job = readJob(file);
          } catch (error) {
            return { exitCode: 5, stdout: '', stderr: `Bootstrap failed: 5: Input/output error\n${(error as Error).message}\n` };
          }
          // Loaded already: launchd refuses a second bootstrap of the same label.
          if (this.jobs.has(job.label)) return { exitCode: 5, stdout: '', stderr: 'Bootstrap failed: 5: Input/output error\n' };
          const loaded: LoadedJob = { job, domain, runs: this.booted.get(job.label) ?? [], stopping: false };
          this.jobs.set(job.label, loaded);
          if (job.runAtLoad || job.keepAlive) this.start(loaded);
        }
        return { exitCode: 0, stdout: '', stderr: '' };
      }
      case 'bootout': {
        if (rest.length !== 1) return usage('bootout <service-target> (the stand-in does not boot out whole domains or paths)');
        const found = this.service(rest[0]);
        if ('exitCode' in found) return found.exitCode === 64 ? usage('bootout <domain-target> [<service-path> …] | <service-target>') : { exitCode: 3, stdout: '', stderr: 'Boot-out failed: 3: No such process\n' };
        await this.stop(found);
        if (found.respawn) clearTimeout(found.respawn);
        this.jobs.delete(found.job.label);
        this.booted.set(found.job.label, found.runs);
        return { exitCode: 0, stdout: '', stderr: '' };
      }
      case 'kickstart': {
        const flags = rest.filter((arg) => arg.startsWith('-'));
        const targets = rest.filter((arg) => !arg.startsWith('-'));
        const letters = flags.join('').replace(/-/g, '');
        if (targets.length !== 1 || !/^[kp]*$/.test(letters)) return usage('kickstart [-kp] <service-target> (-s, start suspended, is not implemented)');
        const found = this.service(targets[0]);
        if ('exitCode' in found) return found.exitCode === 64 ? usage('kickstart [-kp] <service-target>') : found;
        const running = found.child !== undefined && found.child.exitCode === null && found.child.signalCode === null;
        if (running && !letters.includes('k')) return { exitCode: 0, stdout: '', stderr: '' };
        if (running) await this.stop(found);
        if (found.respawn) clearTimeout(found.respawn);
        found.respawn = undefined;
        this.start(found);
        return { exitCode: 0, stdout: letters.includes('p') ? `${found.child?.pid}\n` : '', stderr: '' };
      }
      case 'print': {
        if (rest.length !== 1) return usage('print <domain-target> | <service-target>');
        if (rest[0] === this.domainOf(rest[0])) return { exitCode: 0, stdout: `${rest[0]} = {\n}\n`, stderr: '' };
        const found = this.service(rest[0]);
        if ('exitCode' in found) return found;
        const pid = found.child?.exitCode === null ? found.child.pid : undefined;
        return { exitCode: 0, stdout: `${found.domain}/${found.job.label} = {\n\tstate = ${pid ? 'running' : 'not running'}\n${pid ? `\tpid = ${pid}\n` : ''}}\n`, stderr: '' };
      }
      default:
        return { exitCode: 64, stdout: '', stderr: `Unrecognized subcommand: ${subcommand ?? '(none)'} (the stand-in implements bootstrap, bootout, kickstart, print)\n` };
    }
  }

  /** SIGKILL whatever still runs and forget every job (test teardown). */
  async shutdown(): Promise<void> {
    for (const loaded of this.jobs.values()) {
      if (loaded.respawn) clearTimeout(loaded.respawn);
      loaded.stopping = true;
      if (loaded.child && loaded.child.exitCode === null && loaded.child.signalCode === null) loaded.child.kill('SIGKILL');
      await loaded.runs.at(-1)?.ended;
    }
    this.jobs.clear();
  }

  /** The domain part of a target: `system`, `gui/<uid>`, `user/<uid>`; undefined when it is none of them. */
  private domainOf(target: string): string | undefined {
    const match = /^(system|(?:gui|user)\/\d+)(?:\/.*)?$/.exec(target);
    return match?.[1];
  }

  /** This session's domains only: gui/<its uid> (and user/<its uid>), `system` for root. */
  private deny(domain: string): LaunchctlResult | undefined {
    if (domain === 'system' ? this.session.uid === 0 : domain.endsWith(`/${this.session.uid}`)) return undefined;
    return { exitCode: 1, stdout: '', stderr: `Bootstrap failed: 1: Operation not permitted (${domain} is not this session's domain, gui/${this.session.uid})\n` };
  }

  private service(target: string): LoadedJob | LaunchctlResult {
    const domain = this.domainOf(target);
    const label = domain === undefined ? '' : target.slice(domain.length + 1);
    if (domain === undefined || label === '') return { exitCode: 64, stdout: '', stderr: '' };
    const loaded = this.jobs.get(label);
    // launchctl's answer for a label not loaded in that domain.
    if (!loaded || loaded.domain !== domain) return { exitCode: 113, stdout: '', stderr: `Could not find service "${label}" in domain for ${domain === 'system' ? 'system' : `uid: ${this.session.uid}`}\n` };
    return loaded;
  }

  /** posix_spawn as launchd does it: a new session, the agent's environment, stdio from the plist. */
  private start(loaded: LoadedJob): void {
    const { job } = loaded;
    loaded.stopping = false;
    const env = {
      PATH: LAUNCHD_DEFAULT_PATH,
      HOME: this.session.home,
      USER: this.session.user,
      LOGNAME: this.session.user,
      SHELL: this.session.shell,
      TMPDIR: this.session.tmpdir,
      ...job.environmentVariables,
    };
    // launchd opens them for appending (creating them) and gives /dev/null for what the plist leaves out.
    const open = (file: string | undefined) => (file === undefined ? 'ignore' : openSync(file, 'a'));
    const stdout = open(job.standardOutPath);
    const stderr = job.standardErrorPath === job.standardOutPath ? stdout : open(job.standardErrorPath);
    const [program, ...args] = job.programArguments;
    // detached: setsid(), so the job leads its own process group, which launchd reaps when it dies.
    const child = spawn(program, args, { argv0: program, cwd: job.workingDirectory, env, stdio: ['ignore', stdout, stderr], detached: true });
    for (const fd of new Set([stdout, stderr])) if (typeof fd === 'number') closeSync(fd);
    let ended!: () => void;
    const run: JobRun = { pid: child.pid ?? -1, startedAt: Date.now(), ended: new Promise((resolve) => (ended = resolve)) };
    loaded.runs.push(run);
    loaded.child = child;
    child.on('error', (error) => {
      run.endedAt = Date.now();
      run.exitCode = null;
      process.stderr.write(`launchd stand-in: ${job.label}: spawn failed: ${error.message}\n`);
      ended();
    });
    child.on('exit', (code, signal) => {
      run.endedAt = Date.now();
      run.exitCode = code;
      run.signal = signal;
      // core.c job_reap(): the rest of the job's process group gets SIGTERM.
      if (!job.abandonProcessGroup && run.pid > 0) {
        try {
          process.kill(-run.pid, 'SIGTERM');
        } catch {
          // ESRCH: nothing left in the group
        }
      }
      ended();
      if (loaded.stopping || !job.keepAlive || this.jobs.get(job.label) !== loaded) return;
      // "not spawned more than once every ThrottleInterval seconds": counted from the last spawn.
      const delay = Math.max(0, run.startedAt + job.throttleIntervalS * 1000 - Date.now());
      loaded.respawn = setTimeout(() => {
        loaded.respawn = undefined;
        if (this.jobs.get(job.label) === loaded && !loaded.stopping) this.start(loaded);
      }, delay);
    });
  }

  /** SIGTERM, then SIGKILL after ExitTimeOut (launchctl bootout, kickstart -k). */
  private async stop(loaded: LoadedJob): Promise<void> {
    loaded.stopping = true;
    const child = loaded.child;
    const run = loaded.runs.at(-1);
    if (!child || !run || run.endedAt !== undefined) return;
    run.stopRequestedAt = Date.now();
    child.kill('SIGTERM');
    const timer = setTimeout(() => {
      run.killedAfterExitTimeOut = true;
      child.kill('SIGKILL');
    }, loaded.job.exitTimeOutS * 1000);
    await run.ended;
    clearTimeout(timer);
  }
}
