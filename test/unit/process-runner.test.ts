/**
 * The process runner on real processes (sh, cat, printf): output, exit codes, signals, timeouts,
 * a missing program, env/cwd/input, stdout to a file or a stream (and one command piped into
 * another, as the arm64 preset does), and the one error a failed command becomes.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError, ExitCode } from '../../src/errors.js';
import { outputTail, telltaleLine } from '../../src/process/process-error.js';
import { createExecaRunner, ProcessError, RecordingRunner } from '../../src/process/runner.js';

const runner = createExecaRunner();
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-runner-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('run', () => {
  it('returns output and a non-zero exit without throwing', async () => {
    const result = await runner.run('sh', ['-c', 'echo out; echo err >&2; exit 3']);
    expect(result).toMatchObject({ exitCode: 3, signal: undefined, stdout: 'out', stderr: 'err', timedOut: false });
    expect(result.error).toBeUndefined();
  });

  it('says when the program does not exist', async () => {
    const result = await runner.run('ferry-no-such-program', ['x']);
    expect(result).toMatchObject({ exitCode: undefined, errorCode: 'ENOENT' });
    expect(result.error).toMatch(/ENOENT/);
  });

  it('passes env, cwd and input, and keeps the final newline when asked', async () => {
    const result = await runner.run('sh', ['-c', 'printf "%s %s " "$FERRY_TEST_VAR" "$(pwd)"; cat'], {
      env: { FERRY_TEST_VAR: 'hello' },
      cwd: dir,
      input: 'from stdin\n',
      stripFinalNewline: false,
    });
    expect(result.stdout).toBe(`hello ${dir} from stdin\n`);
  });

  it('reads stdin from a stream and writes stdout to a file', async () => {
    const file = join(dir, 'out.txt');
    const result = await runner.run('cat', [], { input: Readable.from(['a', 'b', 'c']), stdout: { file } });
    expect(result.stdout).toBe('');
    expect(await readFile(file, 'utf8')).toBe('abc');
  });

  it('pipes one command into another through a stream', async () => {
    const pipe = new PassThrough();
    const [producer, consumer] = await Promise.all([
      runner.run('sh', ['-c', 'seq 1 20000'], { stdout: pipe }),
      runner.run('wc', ['-l'], { input: pipe }),
    ]);
    expect(producer.exitCode).toBe(0);
    expect(consumer.stdout.trim()).toBe('20000');
  });

  it('ends the writer of a pipe whose reader exited early, as a shell pipe does', async () => {
    const pipe = new PassThrough();
    const started = Date.now();
    const [producer, consumer] = await Promise.all([
      runner.run('seq', ['1', '100000000'], { stdout: pipe }),
      runner.run('head', ['-n', '1'], { input: pipe }),
    ]);
    expect(consumer).toMatchObject({ exitCode: 0, stdout: '1' });
    expect(producer.exitCode === 0).toBe(false);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('stops a command at its time limit', async () => {
    const started = Date.now();
    const result = await runner.run('sleep', ['10'], { timeoutMs: 200 });
    expect(result.timedOut).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('reports the signal that ended a command', async () => {
    const result = await runner.run('sh', ['-c', 'kill -TERM $$']);
    expect(result).toMatchObject({ exitCode: undefined, signal: 'SIGTERM' });
  });
});

describe('check and ProcessError', () => {
  it('throws one readable line with the command, status, stderr tail and cause', async () => {
    const script = 'for i in $(seq 1 30); do echo "progress $i" >&2; done; echo "E: Unable to locate package nix-bin" >&2; echo "E: mmdebstrap failed" >&2; exit 1';
    const error = (await runner.check('sh', ['-c', script]).catch((e: unknown) => e)) as ProcessError;
    expect(error).toBeInstanceOf(ProcessError);
    expect(error).toBeInstanceOf(FerryError);
    expect(error.message).toBe('sh exited with code 1: E: Unable to locate package nix-bin');
    expect(error.file).toBe('sh');
    expect(error.args).toEqual(['-c', script]);
    expect(error.status).toEqual({ code: 1, signal: null });
    expect(error.timedOut).toBe(false);
    expect(error.stderrTail.split('\n')).toHaveLength(20);
    expect(error.stderrTail.endsWith('E: mmdebstrap failed')).toBe(true);
    expect(error.cause).toBeInstanceOf(Error);
    expect(error.exitCode).toBe(ExitCode.Failure);
    expect(error.commandLine()).toBe(`sh -c '${script}'`);
  });

  it('uses the label, exit code and hint it is given', async () => {
    const error = (await runner
      .check('sh', ['-c', 'echo "Bootstrap failed: 5: Input/output error" >&2; exit 5'], { label: 'launchctl bootstrap', exitCode: ExitCode.Unavailable, hint: 'see the log' })
      .catch((e: unknown) => e)) as ProcessError;
    expect(error.message).toBe('launchctl bootstrap exited with code 5: Bootstrap failed: 5: Input/output error');
    expect(error.exitCode).toBe(ExitCode.Unavailable);
    expect(error.hint).toBe('see the log');
  });

  it('names a missing program, a timeout and a signal', async () => {
    await expect(runner.check('ferry-no-such-program', [])).rejects.toThrow(/^ferry-no-such-program could not be started: it was not found$/);
    await expect(runner.check('sleep', ['10'], { timeoutMs: 200 })).rejects.toMatchObject({
      message: 'sleep did not finish within 200 ms and was stopped',
      timedOut: true,
    });
    await expect(runner.check('sh', ['-c', 'echo dying >&2; kill -KILL $$'])).rejects.toMatchObject({
      message: 'sh was killed by SIGKILL: dying',
      status: { code: null, signal: 'SIGKILL' },
    });
  });

  it('returns the result when the command succeeds, and falls back to stdout for the message', async () => {
    expect((await runner.check('printf', ['ok'])).stdout).toBe('ok');
    await expect(runner.check('sh', ['-c', 'echo only on stdout; exit 2'])).rejects.toThrow('sh exited with code 2: only on stdout');
  });

  it('keeps at most 20 lines and 4 KiB of the tail, and picks the line that says what went wrong', () => {
    const long = Array.from({ length: 10 }, (_, i) => `${i}`.repeat(1000)).join('\r\n');
    const tail = outputTail(long);
    expect(Buffer.byteLength(tail)).toBeLessThanOrEqual(4096);
    expect(tail.endsWith('9'.repeat(1000))).toBe(true);
    expect(tail.startsWith('6')).toBe(true);
    expect(telltaleLine('warning: x\nerror: path is not valid\n  at y')).toBe('error: path is not valid');
    expect(telltaleLine('one\ntwo\n')).toBe('two');
  });
});

describe('RecordingRunner', () => {
  it('records what each run was given, answers with onRun and checks like the real runner', async () => {
    const recording = new RecordingRunner([], (file) => ({ exitCode: file === 'false' ? 1 : 0, signal: undefined, stdout: 'recorded', stderr: file === 'false' ? 'no' : '', timedOut: false }));
    const file = join(dir, 'recorded.txt');
    await recording.run('apt-get', ['download', 'x'], { cwd: dir, stdout: { file } });
    expect(await readFile(file, 'utf8')).toBe('recorded');
    expect(recording.commands).toEqual([{ kind: 'run', file: 'apt-get', args: ['download', 'x'], options: { cwd: dir, stdout: { file } } }]);
    await expect(recording.check('false', [])).rejects.toThrow('false exited with code 1: no');
  });
});
