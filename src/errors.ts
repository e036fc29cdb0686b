/**
 * Errors a user is meant to read. The CLI prints `message` (and `hint`, if any) without a stack
 * trace and exits with `exitCode`; anything else is a bug and gets a stack trace.
 */
export class FerryError extends Error {
  readonly exitCode: number;
  readonly hint?: string;

  constructor(message: string, options: { exitCode?: number; hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'FerryError';
    this.exitCode = options.exitCode ?? ExitCode.Failure;
    this.hint = options.hint;
  }
}

/** Exit codes, following sysexits(3) where one fits, so scripts can tell failures apart. */
export const ExitCode = {
  Ok: 0,
  Failure: 1,
  Usage: 64,
  DataError: 65,
  NoInput: 66,
  Unavailable: 69,
  Software: 70,
  CantCreate: 73,
  IoError: 74,
  TempFail: 75,
  Config: 78,
} as const;
