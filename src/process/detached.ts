/**
 * A runner whose long-running processes outlive ferry: the hypervisor of `ferry up` (without
 * --foreground) is started in its own session with its output in a file, so it keeps running
 * after ferry exits and its errors (a taken port) can still be read.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createExecaRunner, type ChildHandle, type ExitStatus, type Runner } from './runner.js';

const OUTPUT_TAIL_BYTES = 8192;

export function createDetachedRunner(outputFile: string): Runner {
  const base = createExecaRunner();
  return {
    ...base,
    spawn(file, args, options = {}): ChildHandle {
      const fd = openSync(outputFile, 'w');
      const child = spawn(file, [...args], { detached: true, stdio: ['ignore', fd, fd], env: options.env ?? process.env });
      closeSync(fd);
      const exited = new Promise<ExitStatus & { error?: string }>((resolve) => {
        child.once('error', (error) => resolve({ code: null, signal: null, error: error.message }));
        child.once('exit', (code, signal) => resolve({ code, signal }));
      });
      child.unref();
      return {
        pid: child.pid,
        exited,
        kill: (signal = 'SIGTERM') => child.kill(signal),
        output: () => {
          try {
            return readFileSync(outputFile, 'utf8').slice(-OUTPUT_TAIL_BYTES);
          } catch {
            return '';
          }
        },
      };
    },
  };
}
