/**
 * A runner that starts nothing, for tests of commands that cannot run on the test machine
 * (hyperkit, vfkit, launchctl, a `nix` with the binary cache): it records each command with
 * what it was given and hands back fake children that the test ends with `exit()`.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { runChecked } from './process-error.js';
import type { ChildHandle, ExitStatus, ProcessErrorOptions, RunOptions, RunResult, Runner } from './types.js';

export interface RecordedCommand {
  kind: 'spawn' | 'run';
  file: string;
  args: string[];
  /** What `run` was given (cwd, env, input …); absent for `spawn`. */
  options?: RunOptions;
}

/** What a test's `onRun` answers: the exit code and output at least. */
export type RecordedAnswer = Pick<RunResult, 'exitCode' | 'signal' | 'stdout' | 'stderr' | 'timedOut'> & Partial<RunResult>;

/**
 * `installed` lists the binaries `which` finds (as /usr/local/bin/NAME); `onRun` answers each
 * `run` (default: exit 0, no output). A `stdout` option gets the answer's stdout written to it,
 * as the real runner would.
 */
export class RecordingRunner implements Runner {
  readonly commands: RecordedCommand[] = [];
  readonly children: FakeChild[] = [];
  private nextPid = 90_000;

  constructor(
    private readonly installed: readonly string[] = [],
    private readonly onRun: (file: string, args: string[], options: RunOptions) => RecordedAnswer = () => ({
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

  async run(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
    this.commands.push({ kind: 'run', file, args: [...args], options });
    const answer = this.onRun(file, [...args], options);
    const sink = options.stdout;
    if (sink === undefined) return answer;
    if ('file' in sink) writeFileSync(sink.file, answer.stdout);
    else await new Promise<void>((resolve, reject) => sink.end(answer.stdout, () => resolve()).once('error', reject));
    return { ...answer, stdout: '' };
  }

  check(file: string, args: readonly string[], options: RunOptions & ProcessErrorOptions = {}): Promise<RunResult> {
    return runChecked(this, file, args, options);
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
