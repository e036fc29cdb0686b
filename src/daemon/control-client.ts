/** The CLI's side of the control socket. */
import { request } from 'node:http';
import { existsSync } from 'node:fs';
import { ExitCode, FerryError } from '../errors.js';

export class DaemonNotRunning extends FerryError {
  constructor(socketPath: string) {
    super(`the ferry daemon is not running (no answer on ${socketPath})`, {
      exitCode: ExitCode.Unavailable,
      hint: 'start it with `ferry daemon` (or install the service with `ferry install`)',
    });
  }
}

export async function callDaemon<T>(socketPath: string, method: 'GET' | 'POST', path: string, timeoutMs = 600_000): Promise<T> {
  if (!existsSync(socketPath)) throw new DaemonNotRunning(socketPath);
  return new Promise<T>((resolve, reject) => {
    const req = request({ socketPath, method, path, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => {
        let parsed: unknown;
        try {
          parsed = JSON.parse(body);
        } catch {
          return reject(new FerryError(`the daemon answered something that is not JSON: ${body.slice(0, 200)}`));
        }
        if (res.statusCode !== 200) return reject(new FerryError(`the daemon says: ${(parsed as { error?: string }).error ?? body}`));
        resolve(parsed as T);
      });
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNREFUSED' || error.code === 'ENOENT') reject(new DaemonNotRunning(socketPath));
      else reject(new FerryError(`cannot talk to the daemon on ${socketPath}: ${error.message}`));
    });
    req.end();
  });
}

export async function daemonIsRunning(socketPath: string): Promise<boolean> {
  try {
    await callDaemon(socketPath, 'GET', '/status', 3000);
    return true;
  } catch {
    return false;
  }
}
