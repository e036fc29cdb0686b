/**
 * The guest's health check: while a guest runs, the daemon asks it for its clock (root's forced
 * control command `time`, the same one the clock check uses — no other way into the guest) every
 * few seconds. A guest that answers is healthy, and its clock is put right when it is off (a
 * hypervisor that was paused or throttled leaves the guest behind; see `ClockWatch` for the host
 * sleeping). A guest that has not answered for `unresponsiveAfterMs` while its hypervisor still
 * runs is wedged — qemu's vCPUs stopped, a kernel that hangs: what users of nixpkgs' VZ builder
 * report as "the host spins, nothing answers" (nixpkgs#557576) — and is restarted.
 *
 * The threshold is the decision between "frozen for a while" and "wedged": a hypervisor frozen for
 * 30 s comes back on its own, so it is only reported (and its clock set: bench/soak.ts saw it 5 s
 * behind after that); one that stays silent for 45 s is restarted. With a probe every 10 s and a
 * 10 s timeout, a wedge is found within 45 + 10 + 2 s (53 s in the soak). Time the daemon itself
 * did not run (the host slept: the timer fired late) is not held against the guest.
 *
 * The clock: under tcg on a loaded host the guest's clock was seen losing 2-7 s every 20 s, so
 * setting it at each answer, not only after a host sleep, is what keeps builds' timestamps right.
 * Cost: one root login to the guest every 10 s while it runs (two when the clock is set).
 */
import type { Logger } from 'pino';
import type { GuestTarget, Supervisor } from './supervisor.js';

export type HealthState = 'unknown' | 'ok' | 'not-answering';

export interface HealthStatus {
  /** `unknown` while no guest runs or before its first check; `not-answering` after a failed check. */
  state: HealthState;
  lastCheckAt?: string;
  /** The last time the guest answered (its boot counts as an answer). */
  lastAnswerAt?: string;
  /** Checks failed in a row, and the last one's error. */
  failures: number;
  lastError?: string;
  /** The guest clock's offset at the last answer (s, guest minus host), before it was set. */
  clockOffsetS?: number;
  /** Guests restarted because they stopped answering, and the last such restart. */
  restarts: number;
  lastRestart?: { at: string; reason: string };
}

export interface HealthTiming {
  intervalMs: number;
  /** The wait before checking again after a failed check. */
  retryMs: number;
  timeoutMs: number;
  unresponsiveAfterMs: number;
}

export const HEALTH_TIMING: HealthTiming = { intervalMs: 10_000, retryMs: 2_000, timeoutMs: 10_000, unresponsiveAfterMs: 45_000 };

export interface HealthCheckOptions {
  supervisor: Pick<Supervisor, 'runningTarget' | 'boots' | 'restartUnresponsive'>;
  /** Asks the guest for its clock and sets it when off; resolves with the offset found (s). */
  probe(target: GuestTarget, timeoutMs: number): Promise<number>;
  log: Logger;
  timing?: Partial<HealthTiming>;
}

export class HealthCheck {
  readonly #options: HealthCheckOptions;
  readonly #timing: HealthTiming;
  #status: HealthStatus = { state: 'unknown', failures: 0, restarts: 0 };
  /** The guest (by boot count) the status is about, and when it last answered (ms). */
  #guest = -1;
  #lastAnswer = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: HealthCheckOptions) {
    this.#options = options;
    this.#timing = { ...HEALTH_TIMING, ...options.timing };
    this.#schedule(this.#timing.intervalMs);
  }

  status(): HealthStatus {
    return { ...this.#status };
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    const due = Date.now() + ms;
    this.#timer = setTimeout(() => void this.#tick(due), ms);
    this.#timer.unref();
  }

  async #tick(due: number): Promise<void> {
    const { supervisor, log } = this.#options;
    const target = supervisor.runningTarget;
    if (!target) {
      this.#guest = -1;
      this.#status = { state: 'unknown', failures: 0, restarts: this.#status.restarts, lastRestart: this.#status.lastRestart };
      return this.#schedule(this.#timing.intervalMs);
    }
    const now = Date.now();
    if (supervisor.boots !== this.#guest) {
      // A guest just booted: its FERRY-READY was its first answer.
      this.#guest = supervisor.boots;
      this.#lastAnswer = now;
      this.#status = { state: 'unknown', failures: 0, restarts: this.#status.restarts, lastRestart: this.#status.lastRestart };
    }
    // The timer came late: the daemon was not running (the host slept). The guest is judged on
    // the time the daemon saw, not on the time neither of them ran.
    if (now - due > this.#timing.retryMs) this.#lastAnswer += now - due;
    const guest = this.#guest;
    try {
      const offset = await this.#options.probe(target, this.#timing.timeoutMs);
      if (guest !== this.#guest) return this.#schedule(this.#timing.intervalMs);
      if (this.#status.state === 'not-answering') log.info({ silentMs: Date.now() - this.#lastAnswer, clockOffsetS: Math.round(offset) }, 'the guest answers again');
      this.#lastAnswer = Date.now();
      this.#status = { ...this.#status, state: 'ok', lastCheckAt: new Date().toISOString(), lastAnswerAt: new Date().toISOString(), failures: 0, lastError: undefined, clockOffsetS: Math.round(offset) };
      this.#schedule(this.#timing.intervalMs);
    } catch (error) {
      if (guest !== this.#guest) return this.#schedule(this.#timing.intervalMs);
      const message = (error as Error).message;
      const silentMs = Date.now() - this.#lastAnswer;
      this.#status = { ...this.#status, state: 'not-answering', lastCheckAt: new Date().toISOString(), failures: this.#status.failures + 1, lastError: message };
      if (this.#status.failures >= 2 && silentMs >= this.#timing.unresponsiveAfterMs) {
        const reason = `the guest did not answer for ${Math.round(silentMs / 1000)} s while its hypervisor ran (health check: ${message}); restarted it`;
        log.error({ silentMs, failures: this.#status.failures }, reason);
        this.#status = { ...this.#status, restarts: this.#status.restarts + 1, lastRestart: { at: new Date().toISOString(), reason } };
        await supervisor.restartUnresponsive(reason).catch((restartError: unknown) => log.error({ err: restartError }, 'restarting the guest that did not answer failed'));
        return this.#schedule(this.#timing.intervalMs);
      }
      log.warn({ silentMs, failures: this.#status.failures, error: message }, 'the guest did not answer its health check');
      this.#schedule(this.#timing.retryMs);
    }
  }
}
