/**
 * A handle on a process this process did not start (a hypervisor `ferry up` left running, found
 * again through its record), shaped like a spawned child so the VM code treats both alike.
 */
import { readFileSync } from 'node:fs';
import type { ChildHandle, ExitStatus } from './runner.js';

/** How often an unrelated process is checked for having exited (it cannot be waited on). */
const POLL_MS = 100;

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else — still alive.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** An exited child of this very process that was not reaped yet still answers kill(0) (Linux /proc). */
export function isZombie(pid: number): boolean {
  try {
    return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** The running process `pid`: `exited` resolves once it is gone (its exit status is not knowable). */
export function existingProcess(pid: number): ChildHandle {
  let signal: string | null = null;
  const exited = new Promise<ExitStatus>((resolve) => {
    const timer = setInterval(() => {
      if (isProcessAlive(pid) && !isZombie(pid)) return;
      clearInterval(timer);
      resolve({ code: null, signal });
    }, POLL_MS);
  });
  return {
    pid,
    exited,
    kill: (name = 'SIGTERM') => {
      try {
        process.kill(pid, name);
        signal = name;
        return true;
      } catch {
        return false;
      }
    },
    output: () => '',
  };
}
