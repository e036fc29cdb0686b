/**
 * The root control command in the guest (a forced command: poweroff, settime, time), run over
 * a short ssh2 connection with the daemon's guest key. Used to put the guest's clock right when
 * the host slept: the guest's clock stops with the VM, so after a sleep it lags behind.
 */
import type { Logger } from 'pino';
import ssh2 from 'ssh2';
import type { GuestChannelSource } from './forward.js';
import type { GuestChannelRequest } from './guest-pool.js';
import { publicKeyWithoutComment } from '../keys/public-key-line.js';
import type { GuestTarget, Supervisor } from './supervisor.js';

export async function runControlCommand(target: GuestTarget, privateKey: string | Buffer, command: string, timeoutMs = 10_000): Promise<string> {
  const client = new ssh2.Client();
  const expected = publicKeyWithoutComment(target.hostKey, "the guest's host key").split(' ')[1];
  return new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      client.end();
      reject(new Error(`the guest's control command "${command}" timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (error: Error) => {
      clearTimeout(timer);
      client.end();
      reject(error);
    };
    client.on('error', fail);
    client.on('ready', () => {
      client.exec(command, (error, channel) => {
        if (error) return fail(error);
        let stdout = '';
        let stderr = '';
        channel.on('data', (data: Buffer) => (stdout += data.toString()));
        channel.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
        channel.on('close', (code: number | null) => {
          clearTimeout(timer);
          client.end();
          if (code === 0) resolve(stdout.trim());
          else reject(new Error(`the guest's control command "${command}" failed (exit ${code}): ${stderr.trim()}`));
        });
      });
    });
    client.connect({
      host: target.host,
      port: target.port,
      username: 'root',
      privateKey,
      readyTimeout: timeoutMs,
      hostVerifier: (key: Buffer) => key.toString('base64') === expected,
    });
  });
}

/**
 * Detects that the host slept: a timer that should fire every `intervalMs` fires much later.
 * Also due after `maxAgeMs` without a check, so a slow drift is corrected too.
 */
export class ClockWatch {
  #dirty = true;
  #lastTick = Date.now();
  #lastCheck = 0;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly intervalMs = 5_000,
    private readonly maxAgeMs = 10 * 60_000,
  ) {
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (now - this.#lastTick > this.intervalMs * 3) this.#dirty = true;
      this.#lastTick = now;
    }, intervalMs);
    this.#timer.unref();
  }

  /** Whether the guest clock should be checked before the next session. */
  get due(): boolean {
    return this.#dirty || Date.now() - this.#lastCheck > this.maxAgeMs;
  }

  checked(): void {
    this.#dirty = false;
    this.#lastCheck = Date.now();
  }

  /** A fresh boot sets the clock from the command line. */
  reset(): void {
    this.checked();
  }

  close(): void {
    clearInterval(this.#timer);
  }
}

/** Sets the guest clock when it is more than `toleranceS` off. Returns the offset found (s). */
export async function syncGuestClock(target: GuestTarget, privateKey: string | Buffer, toleranceS = 2): Promise<number> {
  const guestNow = Number(await runControlCommand(target, privateKey, 'time'));
  const hostNow = Date.now() / 1000;
  const offset = guestNow - hostNow;
  if (!Number.isFinite(offset)) throw new Error('the guest reported no time');
  if (Math.abs(offset) > toleranceS) await runControlCommand(target, privateKey, `settime ${Math.round(Date.now() / 1000)}`);
  return offset;
}

/**
 * Where sessions get their guest channel: the pool, but first — when the guest runs and the clock
 * watch says the host may have slept — the guest's clock is checked and set again.
 */
export function clockCheckedSource(options: {
  supervisor: Pick<Supervisor, 'state' | 'ensureRunning'>;
  pool: GuestChannelSource;
  clock: ClockWatch;
  privateKey: string | Buffer;
  log: Logger;
}): GuestChannelSource {
  const { supervisor, pool, clock, privateKey, log } = options;
  return {
    open: async (request: GuestChannelRequest) => {
      if (supervisor.state === 'running' && clock.due) {
        try {
          const offset = await syncGuestClock(await supervisor.ensureRunning(), privateKey);
          if (Math.abs(offset) > 2) log.info({ offsetS: Math.round(offset) }, 'set the guest clock (the host slept)');
        } catch (error) {
          log.warn({ err: error }, 'could not check the guest clock');
        }
        clock.checked();
      }
      return pool.open(request);
    },
  };
}
