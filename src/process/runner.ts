/**
 * Every process ferry starts goes through a `Runner` (types.ts): argv arrays only, never a
 * shell. This is the real one (execa, children killed if ferry itself exits); tests of tools
 * that do not exist on the test machine (hyperkit, vfkit, launchctl) use RecordingRunner.
 */
import { constants as fsConstants } from 'node:fs';
import { access } from 'node:fs/promises';
import path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { execa, type Result } from 'execa';
import { runChecked } from './process-error.js';
import type { Runner, RunOptions, RunResult } from './types.js';

export type { ChildHandle, ExitStatus, ProcessErrorOptions, Runner, RunOptions, RunResult } from './types.js';
export { ProcessError, runChecked } from './process-error.js';
export { FakeChild, RecordingRunner, type RecordedAnswer, type RecordedCommand } from './recording.js';

const OUTPUT_TAIL_BYTES = 8192;
/** What `run` keeps of a command's output (`nix-store --dump-db` of a big closure is tens of MB). */
const MAX_BUFFER = 1 << 30;

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

    run: runWithExeca,

    check(file, args, options = {}) {
      return runChecked(this, file, args, options);
    },

    which: findOnPath,
  };
}

async function runWithExeca(file: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const { input, stdout } = options;
  const streamed = stdout !== undefined && !('file' in stdout) ? stdout : undefined;
  const child = execa(file, [...args], {
    reject: false,
    cwd: options.cwd,
    env: options.env as Record<string, string> | undefined,
    timeout: options.timeoutMs,
    forceKillAfterDelay: 1000,
    maxBuffer: MAX_BUFFER,
    stripFinalNewline: options.stripFinalNewline ?? true,
    ...(input instanceof Readable ? { stdin: 'pipe' as const } : input !== undefined ? { input } : { stdin: 'ignore' as const }),
    ...(stdout === undefined ? {} : 'file' in stdout ? { stdout: { file: stdout.file } } : { stdout: 'pipe' as const, buffer: { stdout: false } }),
  });
  if (input instanceof Readable && child.stdin) {
    // The command may exit before it read everything (EPIPE): its exit status tells what happened,
    // and the stream is destroyed, so whatever writes into it (another command) is not left blocked.
    child.stdin.on('error', () => {});
    child.stdin.once('close', () => input.destroy());
    input.pipe(child.stdin);
  }
  if (streamed && child.stdout) {
    const out = child.stdout;
    out.pipe(streamed);
    // Nobody reads any more (the next command in a pipe exited): the command gets EPIPE, as in a shell pipe.
    streamed.once('close', () => out.destroy());
  }
  const result: Result = await child;
  if (streamed) await ended(streamed);
  const ran = fromExeca(result);
  return stdout === undefined ? ran : { ...ran, stdout: '' };
}

/** Resolves once everything written to `stream` is flushed (or the stream is gone). */
function ended(stream: Writable): Promise<void> {
  if (stream.writableFinished || stream.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    stream.once('finish', () => resolve());
    stream.once('close', () => resolve());
    stream.once('error', () => resolve());
  });
}

function fromExeca(result: Result): RunResult {
  const notStarted = result.failed && result.exitCode === undefined && !result.signal && !result.timedOut;
  return {
    exitCode: result.exitCode,
    signal: result.signal,
    stdout: typeof result.stdout === 'string' ? result.stdout : '',
    stderr: typeof result.stderr === 'string' ? result.stderr : '',
    timedOut: result.timedOut,
    error: notStarted ? result.shortMessage : undefined,
    errorCode: notStarted ? (result as { code?: string }).code : undefined,
    cause: result.failed ? result : undefined,
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
