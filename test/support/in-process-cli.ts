/**
 * Runs the CLI as a user does — program.ts's main — in this process, with an environment of its
 * own: process.env is replaced for the run and restored after, stdout and stderr are captured.
 * Cheaper than a child process, and a failure shows the code's own stack.
 */
import { vi } from 'vitest';
import { main } from '../../src/program.js';

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** `ferry ARGS…` with exactly `env` as the environment. */
export async function runCli(args: string[], env: Record<string, string | undefined>): Promise<CliRun> {
  const saved = process.env;
  const run: CliRun = { code: -1, stdout: '', stderr: '' };
  process.env = Object.fromEntries(Object.entries(env).filter((entry): entry is [string, string] => entry[1] !== undefined));
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((run.stdout += String(chunk)), true));
  const err = vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((run.stderr += String(chunk)), true));
  try {
    run.code = await main(['node', 'ferry', ...args]);
  } finally {
    out.mockRestore();
    err.mockRestore();
    process.env = saved;
  }
  return run;
}
