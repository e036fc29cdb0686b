/**
 * A tool's passing failure is tried again, anything else is not (src/process/retry.ts), with
 * the real apt: another process holds the private apt state's lists lock (as a second apt
 * would: a POSIX lock, which is what apt takes) while ferry updates the lists; the update waits
 * it out instead of failing with "Could not get lock". A package that does not exist fails at
 * once.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { DOWNLOAD_FILES } from '../../src/config/paths.js';
import { createExecaRunner } from '../../src/process/runner.js';
import { runRetrying } from '../../src/process/retry.js';

const downloads = mkdtempSync(path.join(os.tmpdir(), 'ferry-apt-retry-'));
afterAll(() => rmSync(downloads, { recursive: true, force: true }));

/** Holds a POSIX (fcntl) lock on `file` for `ms`; resolves once it holds it. */
function holdLock(file: string, ms: number): Promise<{ released: Promise<void> }> {
  const script = `import fcntl, sys, time\nf = open(sys.argv[1], 'a')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(float(sys.argv[2]))\n`;
  const child = spawn('python3', ['-c', script, file, String(ms / 1000)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const released = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve) => child.stdout.once('data', () => resolve({ released })));
}

describe('apt, tried again while another apt holds its lock', () => {
  it('the lists update waits out a held lock and succeeds', async () => {
    const first = await import('../../src/image/presets/apt.js');
    const target = first.aptTarget(downloads, 'bookworm', 'amd64');
    await first.packageInfo(target, 'busybox-static'); // makes the private state (a real apt-get update)
    const lock = path.join(downloads, DOWNLOAD_FILES.aptState('bookworm', 'amd64'), 'state', 'lists', 'lock');
    const holder = await holdLock(lock, 3000);
    // A fresh module: its once-per-process update has not run yet.
    vi.resetModules();
    const fresh = await import('../../src/image/presets/apt.js');
    const started = performance.now();
    await fresh.refreshAptLists(fresh.aptTarget(downloads, 'bookworm', 'amd64'));
    expect(performance.now() - started).toBeGreaterThan(1900); // it waited for the lock, and got it
    await holder.released;
  }, 240_000);

  it('a failure that waiting cannot mend is not tried again', async () => {
    const said: string[] = [];
    const result = await runRetrying(createExecaRunner(), 'apt-cache', ['show', 'no-such-package-ferry-test'], { onRetry: (_, line) => said.push(line) });
    expect(result.exitCode).not.toBe(0);
    expect(said).toEqual([]); // no retry announced, so none made (an upper bound on the time would only measure the machine's load)
  });
});
