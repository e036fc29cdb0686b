/**
 * The one error for a command that failed: what ran (file + args), how it ended (exit code,
 * signal, timeout, or never started), the tail of its stderr and the runner's own error as
 * `cause`. A FerryError, so the CLI prints its one-line message without a stack trace:
 *
 *   mmdebstrap exited with code 1: E: Unable to locate package nix-bin
 *   launchctl bootstrap was killed by SIGKILL
 *   nix-store could not be started: it was not found
 */
import path from 'node:path';
import { FerryError } from '../errors.js';
import type { ExitStatus, ProcessErrorOptions, RunOptions, RunResult, Runner } from './types.js';

/** How much of stderr an error keeps: its last lines, and at most this many bytes of them. */
const TAIL_LINES = 20;
const TAIL_BYTES = 4096;
/** The longest stderr line quoted in the one-line message. */
const MESSAGE_LINE_CHARS = 300;

export class ProcessError extends FerryError {
  readonly file: string;
  readonly args: readonly string[];
  /** The command's own exit code or signal (`code` and `signal` both null: it never started). */
  readonly status: ExitStatus;
  readonly timedOut: boolean;
  /** The last ~20 lines (at most 4 KiB) of its stderr, or of its stdout when stderr was empty. */
  readonly stderrTail: string;
  /** `ENOENT`, `EACCES` … when the program could not be started. */
  readonly errorCode?: string;

  constructor(file: string, args: readonly string[], result: RunResult, options: ProcessErrorOptions & { timeoutMs?: number } = {}) {
    const tail = outputTail(result.stderr.trim() ? result.stderr : result.stdout);
    super(failureMessage(options.label ?? path.basename(file), result, tail, options.timeoutMs), {
      exitCode: options.exitCode,
      hint: options.hint,
      cause: result.cause,
    });
    this.name = 'ProcessError';
    this.file = file;
    this.args = [...args];
    this.status = { code: result.exitCode ?? null, signal: result.signal ?? null };
    this.timedOut = result.timedOut;
    this.stderrTail = tail;
    this.errorCode = result.errorCode;
  }

  /** The command as one line a user can paste (arguments quoted for a POSIX shell where needed). */
  commandLine(): string {
    return [this.file, ...this.args].map(shellWord).join(' ');
  }
}

/** Runs the command through `runner` and throws a ProcessError unless it exited with code 0. */
export async function runChecked(
  runner: Pick<Runner, 'run'>,
  file: string,
  args: readonly string[],
  options: RunOptions & ProcessErrorOptions = {},
): Promise<RunResult> {
  const { label, exitCode, hint, ...runOptions } = options;
  const result = await runner.run(file, args, runOptions);
  if (result.exitCode !== 0) throw new ProcessError(file, args, result, { label, exitCode, hint, timeoutMs: options.timeoutMs });
  return result;
}

/** The last TAIL_LINES lines of `text`, at most TAIL_BYTES of them (cut at a line start where possible). */
export function outputTail(text: string): string {
  const lines = text.replace(/\r\n/g, '\n').trimEnd().split('\n');
  let tail = lines.slice(-TAIL_LINES).join('\n');
  if (Buffer.byteLength(tail) > TAIL_BYTES) {
    tail = Buffer.from(tail).subarray(-TAIL_BYTES).toString('utf8').replace(/^\uFFFD+/, '');
    const newline = tail.indexOf('\n');
    if (newline >= 0 && newline < tail.length - 1) tail = tail.slice(newline + 1);
  }
  return tail;
}

/** Last lines that only say that an earlier line said what went wrong (GNU tar's). */
const SUMMARY_LINE = /due to previous errors$/;

/**
 * The line of the output that says what went wrong: the first that looks like an error
 * (`E: …` from apt and mmdebstrap, `error: …` from Nix, `fatal: …`), else the last one that is
 * not a mere summary.
 */
export function telltaleLine(tail: string): string {
  const lines = tail.split('\n').map((line) => line.trim()).filter(Boolean);
  const line = lines.find((l) => /^(E|error|fatal|ERROR|Error):\s/.test(l)) ?? lines.filter((l) => !SUMMARY_LINE.test(l)).at(-1) ?? lines.at(-1) ?? '';
  return line.length > MESSAGE_LINE_CHARS ? `${line.slice(0, MESSAGE_LINE_CHARS - 1)}…` : line;
}

function failureMessage(label: string, result: RunResult, tail: string, timeoutMs?: number): string {
  const said = telltaleLine(tail);
  const colon = said ? `: ${said}` : '';
  if (result.timedOut) return `${label} did not finish within ${timeoutMs === undefined ? 'its time limit' : seconds(timeoutMs)} and was stopped${colon}`;
  if (result.exitCode === undefined && result.signal === undefined) {
    if (result.errorCode === 'ENOENT') return `${label} could not be started: it was not found`;
    if (result.errorCode === 'EACCES') return `${label} could not be started: it is not executable`;
    return `${label} could not be started: ${result.error ?? 'unknown error'}`;
  }
  if (result.signal !== undefined) return `${label} was killed by ${result.signal}${colon}`;
  return `${label} exited with code ${result.exitCode}${colon}`;
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

export function shellWord(word: string): string {
  return /^[\w@%+=:,./#^-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
