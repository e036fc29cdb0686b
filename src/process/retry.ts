/**
 * A tool's passing failures, tried again a few times: apt's lock held by another apt (an
 * unattended upgrade, a second ferry), a mirror that cut a download or could not be reached for
 * a moment. Anything else — a package that does not exist, a bad argument — fails at once, with
 * what the tool said.
 */
import type { Runner, RunOptions, RunResult } from './types.js';

/** What apt, dpkg and mmdebstrap (which runs apt) say when waiting or trying again can help. */
export const PASSING_FAILURE =
  /Could not get lock|Unable to lock directory|Unable to acquire the dpkg frontend lock|is another process using it|Temporary failure resolving|Could not resolve|Connection failed|Connection timed out|Could not connect to|Connection reset|Hash Sum mismatch|File has unexpected size|Undetermined Error|Failed to fetch/i;

export interface RetryOptions extends RunOptions {
  /** Tries in all (default 3). */
  readonly attempts?: number;
  /** The wait before each retry (default 2 s, then 5 s, then 10 s). */
  readonly delaysMs?: readonly number[];
  /** Told of each retry, with what the failed try said (its last line). */
  readonly onRetry?: (attempt: number, said: string) => void;
}

/** `runner.run`, again after a pause while the failure is a passing one and tries are left. */
export async function runRetrying(runner: Runner, file: string, args: readonly string[], options: RetryOptions = {}): Promise<RunResult> {
  const { attempts = 3, delaysMs = [2_000, 5_000, 10_000], onRetry, ...runOptions } = options;
  for (let attempt = 1; ; attempt++) {
    const result = await runner.run(file, args, runOptions);
    const said = `${result.stderr}\n${result.stdout}`;
    if (result.exitCode === 0 || attempt >= attempts || !PASSING_FAILURE.test(said)) return result;
    onRetry?.(attempt, lastLine(result.stderr) ?? lastLine(result.stdout) ?? `exit ${result.exitCode}`);
    await new Promise((resolve) => setTimeout(resolve, delaysMs[Math.min(attempt - 1, delaysMs.length - 1)]));
  }
}

function lastLine(text: string): string | undefined {
  return text.trim().split('\n').filter(Boolean).at(-1);
}
