/**
 * The shape of ferry's one way to run a process: what a command is given (argv arrays only,
 * never a shell), what it gives back, and the `Runner` that starts it — the real one (execa,
 * runner.ts) or the recording one for tools that cannot run on the test machine (recording.ts).
 */
import type { Readable, Writable } from 'node:stream';

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

export interface RunOptions {
  /** Killed (SIGTERM, then SIGKILL a second later) when it runs longer. */
  timeoutMs?: number;
  /** Added to ferry's own environment (an `undefined` value removes the variable). */
  env?: Readonly<Record<string, string | undefined>>;
  cwd?: string;
  /** What the command reads on stdin (default: nothing, stdin is /dev/null). */
  input?: string | Uint8Array | Readable;
  /** Where stdout goes instead of into the result (a file, truncated first, or a stream). */
  stdout?: { file: string } | Writable;
  /** Drop one trailing newline from stdout and stderr (default true); false keeps them exact. */
  stripFinalNewline?: boolean;
}

export interface RunResult {
  exitCode: number | undefined;
  signal: string | undefined;
  /** Empty when `stdout` was sent elsewhere (RunOptions.stdout). */
  stdout: string;
  stderr: string;
  timedOut: boolean;
  /** Set when the command could not be started (e.g. "spawn nix ENOENT"). */
  error?: string;
  /** The errno code when the command could not be started: `ENOENT` (no such program), `EACCES`. */
  errorCode?: string;
  /** The runner's own error, when there is one (the `cause` of a ProcessError). */
  cause?: unknown;
}

/** How a failed command is shown to the user (ProcessError); with `check`, never with `run`. */
export interface ProcessErrorOptions {
  /** What the message calls the command (default: the program's base name), e.g. `launchctl bootstrap`. */
  label?: string;
  /** ferry's exit code for this failure (default ExitCode.Failure). */
  exitCode?: number;
  hint?: string;
}

export interface Runner {
  /** Starts a long-running process (a hypervisor). */
  spawn(file: string, args: readonly string[], options?: { env?: Record<string, string> }): ChildHandle;
  /** Runs a command to completion; never throws for a non-zero exit (or a program that is missing). */
  run(file: string, args: readonly string[], options?: RunOptions): Promise<RunResult>;
  /** Runs a command to completion; anything but exit code 0 throws a ProcessError. */
  check(file: string, args: readonly string[], options?: RunOptions & ProcessErrorOptions): Promise<RunResult>;
  /** The absolute path of an executable found on PATH (or the path itself if it is one). */
  which(binary: string): Promise<string | undefined>;
}
