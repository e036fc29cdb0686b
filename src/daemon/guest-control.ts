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
 * Also due after `maxAgeMs` without a check, so a slow drift is corrected too. A check counts
 * only if it started after the last sleep seen: one that straddled a sleep proves nothing.
 */
export class ClockWatch {
  #sleptAt = Date.now();
  #lastTick = Date.now();
  /** When the last check that counted started (0: never). */
  #lastCheck = 0;
  /** The check under way, which sessions arriving together share. */
  #checking: Promise<void> | undefined;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly intervalMs = 5_000,
    private readonly maxAgeMs = 10 * 60_000,
  ) {
    this.#timer = setInterval(() => {
      const now = Date.now();
      if (now - this.#lastTick > this.intervalMs * 3) this.#sleptAt = now;
      this.#lastTick = now;
    }, intervalMs);
    this.#timer.unref();
  }

  /** Whether the guest clock should be checked before the next session. */
  get due(): boolean {
    return this.#lastCheck < this.#sleptAt || Date.now() - this.#lastCheck > this.maxAgeMs;
  }

  /** A check that started at `startedAt` (ms) succeeded. */
  checked(startedAt: number): void {
    if (startedAt >= this.#sleptAt) this.#lastCheck = Math.max(this.#lastCheck, startedAt);
  }

  /** A fresh boot sets the clock from the command line. */
  reset(): void {
    this.#lastCheck = Date.now();
  }

  /**
   * Runs `check` unless one is under way (then waits for that one). It is tried `attempts` times;
   * only a check that succeeded counts as done, so a failed one is tried again by the next session
   * (seen here: right after the host resumed, the check timed out once, and when it was counted
   * done anyway the guest stayed 86 s behind for the sessions after it).
   */
  async check(check: () => Promise<void>, attempts = 2): Promise<void> {
    this.#checking ??= (async () => {
      try {
        for (let attempt = 1; ; attempt++) {
          const startedAt = Date.now();
          try {
            await check();
            this.checked(startedAt);
            return;
          } catch (error) {
            if (attempt >= attempts) throw error;
          }
        }
      } finally {
        this.#checking = undefined;
      }
    })();
    return this.#checking;
  }

  close(): void {
    clearInterval(this.#timer);
  }
}

/** Sets the guest clock when it is more than `toleranceS` off. Returns the offset found (s). */
export async function syncGuestClock(target: GuestTarget, privateKey: string | Buffer, options: { toleranceS?: number; timeoutMs?: number } = {}): Promise<number> {
  const guestNow = Number(await runControlCommand(target, privateKey, 'time', options.timeoutMs));
  const hostNow = Date.now() / 1000;
  const offset = guestNow - hostNow;
  if (!Number.isFinite(offset)) throw new Error('the guest reported no time');
  if (Math.abs(offset) > (options.toleranceS ?? 2)) await runControlCommand(target, privateKey, `settime ${Math.round(Date.now() / 1000)}`, options.timeoutMs);
  return offset;
}

/**
 * Where sessions get their guest channel: each is let onto the guest by the supervisor (held while
 * a swap is under way, counted until its channel closes, so a swap waits for it), then — when the
 * clock watch says the host may have slept — the guest's clock is checked and set again, then the
 * pool opens the channel. A clock check that fails twice is logged and the session goes on; the
 * next session checks again.
 */
export function clockCheckedSource(options: {
  supervisor: Pick<Supervisor, 'state' | 'admit' | 'ensureRunning'>;
  pool: GuestChannelSource;
  clock: ClockWatch;
  privateKey: string | Buffer;
  log: Logger;
}): GuestChannelSource {
  const { supervisor, pool, clock, privateKey, log } = options;
  return {
    open: async (request: GuestChannelRequest) => {
      const { release } = await supervisor.admit();
      try {
        if (clock.due) {
          await clock
            .check(async () => {
              const offset = await syncGuestClock(await supervisor.ensureRunning({ admitted: true }), privateKey);
              if (Math.abs(offset) > 2) log.info({ offsetS: Math.round(offset) }, 'set the guest clock (the host slept)');
            })
            .catch((error: unknown) => log.warn({ err: error }, 'could not check the guest clock; the next session tries again'));
        }
        const lease = await pool.open(request);
        lease.channel.once('close', release);
        return lease;
      } catch (error) {
        release();
        throw error;
      }
    },
  };
}
