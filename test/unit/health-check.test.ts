/**
 * The health check's decisions and the clock watch's retry, on vitest's fake clock (the real
 * guest — QMP `stop`, a frozen qemu, a host sleep — is test/e2e/soak.test.ts): a guest that stops
 * answering is restarted within 60 s, not before 45 s of silence; one frozen for 30 s is kept; time
 * the daemon itself did not run (a timer that fired late) is not held against the guest; a clock
 * check that failed is not counted as done.
 */
import { pino, type Logger } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ClockWatch } from '../../src/daemon/guest-control.js';
import { HealthCheck } from '../../src/daemon/health-check.js';
import type { GuestTarget } from '../../src/daemon/supervisor.js';

const log = pino({ level: 'silent' }) as Logger;
const target: GuestTarget = { host: '127.0.0.1', port: 2222, hostKey: 'ssh-ed25519 AAAA' };

/** A guest that answers unless `silentUntil` (fake ms) is ahead; a probe to a silent guest times out. */
class FakeGuest {
  silentFrom = Number.POSITIVE_INFINITY;
  silentUntil = Number.POSITIVE_INFINITY;
  offset = 0;
  restarts: number[] = [];
  boots = 1;
  running = true;
  readonly supervisor = {
    get runningTarget() {
      return fake.running ? target : undefined;
    },
    get boots() {
      return fake.boots;
    },
    restartUnresponsive: async (reason: string) => {
      fake.restarts.push(Date.now());
      fake.reason = reason;
      fake.boots += 1;
    },
  };
  reason = '';
  probe = (_target: GuestTarget, timeoutMs: number): Promise<number> =>
    new Promise((resolve, reject) => {
      const now = Date.now();
      if (now < this.silentFrom || now >= this.silentUntil) return resolve(this.offset);
      // Answers as soon as it is back, if that is within the timeout.
      const back = this.silentUntil - now;
      if (back < timeoutMs) setTimeout(() => resolve(this.offset), back + 500);
      else setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
    });
}
let fake: FakeGuest;

describe('HealthCheck', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    fake = new FakeGuest();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('restarts a guest that stopped answering within 60 s, not before 45 s, and says so in its status', async () => {
    const health = new HealthCheck({ supervisor: fake.supervisor, probe: fake.probe, log });
    await vi.advanceTimersByTimeAsync(25_000);
    expect(health.status()).toMatchObject({ state: 'ok', failures: 0, restarts: 0 });
    const wedgedAt = Date.now();
    fake.silentFrom = wedgedAt;
    await vi.advanceTimersByTimeAsync(44_000);
    expect(fake.restarts).toEqual([]);
    expect(health.status()).toMatchObject({ state: 'not-answering', lastError: expect.stringMatching(/timed out/) });
    await vi.advanceTimersByTimeAsync(16_000);
    expect(fake.restarts).toHaveLength(1);
    expect(fake.restarts[0]! - wedgedAt).toBeGreaterThanOrEqual(45_000);
    expect(fake.restarts[0]! - wedgedAt).toBeLessThanOrEqual(60_000);
    expect(fake.reason).toMatch(/did not answer for \d+ s while its hypervisor ran/);
    expect(health.status()).toMatchObject({ restarts: 1, lastRestart: { reason: fake.reason } });
    health.close();
  });

  it('keeps a guest frozen for 30 s, and reports the clock it had', async () => {
    const health = new HealthCheck({ supervisor: fake.supervisor, probe: fake.probe, log });
    await vi.advanceTimersByTimeAsync(10_500);
    fake.silentFrom = Date.now();
    fake.silentUntil = Date.now() + 30_000;
    fake.offset = -30;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(fake.restarts).toEqual([]);
    expect(health.status()).toMatchObject({ state: 'ok', clockOffsetS: -30 });
    health.close();
  });

  it('does not count time the daemon did not run (the host slept) against the guest', async () => {
    const health = new HealthCheck({ supervisor: fake.supervisor, probe: fake.probe, log });
    await vi.advanceTimersByTimeAsync(10_500);
    // The whole host stops for 60 s: no timer runs, then every one fires late; the guest needs a moment.
    fake.silentFrom = Date.now();
    fake.silentUntil = Date.now() + 60_000 + 12_000;
    vi.setSystemTime(Date.now() + 60_000);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(fake.restarts).toEqual([]);
    expect(health.status().state).toBe('ok');
    health.close();
  });

  it('starts afresh with each guest, and says nothing while none runs', async () => {
    const health = new HealthCheck({ supervisor: fake.supervisor, probe: fake.probe, log });
    fake.running = false;
    await vi.advanceTimersByTimeAsync(30_000);
    expect(health.status()).toMatchObject({ state: 'unknown', failures: 0 });
    fake.running = true;
    fake.boots = 2;
    await vi.advanceTimersByTimeAsync(10_000);
    expect(health.status().state).toBe('ok');
    health.close();
  });
});

describe('ClockWatch', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('a check that failed is not counted as done; one that succeeded is; sessions arriving together share one', async () => {
    const clock = new ClockWatch(5_000);
    expect(clock.due).toBe(true);
    let calls = 0;
    const failing = () => {
      calls += 1;
      return Promise.reject(new Error('timed out after 10000 ms'));
    };
    await expect(Promise.all([clock.check(failing), clock.check(failing)])).rejects.toThrow(/timed out/);
    expect(calls).toBe(2); // one check, tried twice, shared by both sessions
    expect(clock.due).toBe(true);
    await clock.check(async () => {});
    expect(clock.due).toBe(false);
    clock.close();
  });

  it('a sleep makes it due, and a check that started before the sleep does not count', async () => {
    const clock = new ClockWatch(5_000);
    clock.reset();
    await vi.advanceTimersByTimeAsync(6_000);
    expect(clock.due).toBe(false);
    const startedBefore = Date.now();
    vi.setSystemTime(Date.now() + 60_000); // the host slept
    await vi.advanceTimersByTimeAsync(5_000);
    expect(clock.due).toBe(true);
    clock.checked(startedBefore);
    expect(clock.due).toBe(true);
    clock.checked(Date.now());
    expect(clock.due).toBe(false);
    clock.close();
  });
});
