/**
 * Every process ferry starts goes through a `Runner`, so tests can record the commands issued
 * for tools that do not exist on the test machine (hyperkit, vfkit, launchctl) and the real
 * thing (execa) runs everywhere else.
 */
import { constants as fsConstants } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

/** How a process ended: its exit code, or the signal that ended it. */
export interface ExitStatus {
  code: number | null;
  signal: string | null;
}

export interface ChildHandle {
  /** Undefined only when the process could not be started at all (see `exited`). */
  readonly pid: number | undefined;
  readonly exited: Promise<ExitStatus & { error?: string }>;
  kill(signal?: NodeJS.Signals): boolean;
  /** The last few KiB of the process's stdout and stderr, for error messages. */
  output(): string;
}

export interface RunResult {
  exitCode: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Set when the command could not be started (e.g. ENOENT). */
  error?: string;
}

export interface Runner {
  /** Starts a long-running process (a hypervisor). */
  spawn(file: string, args: readonly string[], options?: { env?: Record<string, string> }): ChildHandle;
  /** Runs a command to completion; never throws for a non-zero exit. */
  run(file: string, args: readonly string[], options?: { timeoutMs?: number }): Promise<RunResult>;
  /** The absolute path of an executable found on PATH (or the path itself if it is one). */
  which(binary: string): Promise<string | undefined>;
}

const OUTPUT_TAIL_BYTES = 8192;

/** The real runner: execa, with children killed if ferry itself exits. */
export function createExecaRunner(): Runner {
  return {
    spawn(file, args, options = {}) {
      let tail = '';
      const child = execa(file, [...args], {
        reject: false,
        stdin: 'ignore',
        buffer: false,
        env: options.env,
        cleanup: true,
      });
      const keep = (chunk: Buffer): void => {
        tail = (tail + chunk.toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
      };
      child.stdout?.on('data', keep);
      child.stderr?.on('data', keep);
      const exited = child.then((result) => ({
        code: result.exitCode ?? null,
        signal: result.signal ?? null,
        error: result.failed && result.exitCode === undefined && !result.signal ? result.shortMessage : undefined,
      }));
      return {
        pid: child.pid,
        exited,
        kill: (signal = 'SIGTERM') => child.kill(signal),
        output: () => tail,
      };
    },

    async run(file, args, options = {}) {
      const result = await execa(file, [...args], {
        reject: false,
        stdin: 'ignore',
        timeout: options.timeoutMs,
        forceKillAfterDelay: 1000,
      });
      return {
        exitCode: result.exitCode,
        signal: result.signal,
        stdout: String(result.stdout ?? ''),
        stderr: String(result.stderr ?? ''),
        timedOut: result.timedOut,
        error: result.failed && result.exitCode === undefined && !result.signal ? result.shortMessage : undefined,
      };
    },

    which: findOnPath,
  };
}

export async function findOnPath(binary: string, searchPath = process.env.PATH ?? ''): Promise<string | undefined> {
  const candidates = binary.includes('/')
    ? [binary]
    : searchPath.split(path.delimiter).filter(Boolean).map((dir) => path.join(dir, binary));
  for (const candidate of candidates) {
    try {
      await access(candidate, fsConstants.X_OK);
      return path.resolve(candidate);
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

export interface RecordedCommand {
  kind: 'spawn' | 'run';
  file: string;
  args: string[];
}

/**
 * A runner that starts nothing: it records each command and hands back fake children that the
 * test ends with `exit()`. `installed` lists the binaries `which` finds (as /usr/local/bin/NAME).
 */
export class RecordingRunner implements Runner {
  readonly commands: RecordedCommand[] = [];
  readonly children: FakeChild[] = [];
  private nextPid = 90_000;

  constructor(
    private readonly installed: readonly string[] = [],
    private readonly onRun: (file: string, args: string[]) => RunResult = () => ({
      exitCode: 0,
      signal: undefined,
      stdout: '',
      stderr: '',
      timedOut: false,
    }),
  ) {}

  spawn(file: string, args: readonly string[]): ChildHandle {
    this.commands.push({ kind: 'spawn', file, args: [...args] });
    const child = new FakeChild(this.nextPid++);
    this.children.push(child);
    return child;
  }

  async run(file: string, args: readonly string[]): Promise<RunResult> {
    this.commands.push({ kind: 'run', file, args: [...args] });
    return this.onRun(file, [...args]);
  }

  async which(binary: string): Promise<string | undefined> {
    const name = path.basename(binary);
    return this.installed.includes(name) ? `/usr/local/bin/${name}` : undefined;
  }
}

export class FakeChild implements ChildHandle {
  readonly signals: string[] = [];
  readonly exited: Promise<ExitStatus>;
  private resolveExit!: (status: ExitStatus) => void;
  private done = false;

  constructor(readonly pid: number) {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    this.signals.push(signal);
    if (signal === 'SIGKILL') this.exit({ code: null, signal: 'SIGKILL' });
    return !this.done;
  }

  exit(status: ExitStatus): void {
    if (this.done) return;
    this.done = true;
    this.resolveExit(status);
  }

  output(): string {
    return '';
  }
}
