/**
 * The supervisor's state machine with fake boot/stop: on-demand boot shared by concurrent
 * sessions, swap waiting for open sessions while holding new ones, rollback when the new image
 * does not come up, the idle timer (and its cancellation by a new session), and crash → stopped
 * → backoff before the next boot. The real boots are in test/e2e/daemon.test.ts; here only the
 * decisions, which are too timing-dependent to pin down with a real VM.
 *
 * Time is vitest's fake clock (timers and Date): the idle timer and the 1 s / 2 s backoffs run
 * in no real time, and the times the assertions compare are exact instead of a scheduler's.
 */
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Logger } from 'pino';
import { Supervisor } from '../../src/daemon/supervisor.js';
import type { SupervisorDeps } from '../../src/daemon/supervisor-deps.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import type { ExitStatus, RunningVm } from '../../src/vm/backend.js';
import type { BootedGuest } from '../../src/vm/instance/boot.js';
import type { StopGuestResult } from '../../src/vm/instance/stop.js';

const image = (id: string) => ({ id, manifestPath: `/images/${id}.json` }) as ImageManifest;
const A = image('aaaa');
const B = image('bbbb');
const C = image('cccc');

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: Error) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Lets `ms` of fake time pass, running the timers due and the promise callbacks they start. */
const tick = (ms = 0) => vi.advanceTimersByTimeAsync(ms);

/**
 * Awaits `promise` while fake time runs on to each next timer (a boot after a crash waits for its
 * backoff on one). Throws instead of hanging if the promise still waits after 100 timers.
 */
async function withTime<T>(promise: Promise<T>): Promise<T> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (let timers = 0; !settled; timers++) {
    if (timers === 100) throw new Error('still waiting after 100 timers');
    await vi.advanceTimersToNextTimerAsync();
  }
  return promise;
}

/** A fake guest per boot; boots resolve when the test says so (or at once with `autoBoot`). */
class FakeVms {
  readonly boots: Array<{ image: string; at: number; done: ReturnType<typeof deferred<BootedGuest>>; exit: ReturnType<typeof deferred<ExitStatus>> }> = [];
  readonly stops: Array<{ hard: boolean; at: number }> = [];
  readonly saved: Array<[string, string | undefined]> = [];
  closed = 0;
  idleMs = 0;
  /** Image ids whose boot fails. */
  readonly failing = new Set<string>();
  autoBoot = true;
  /** What a session without an image waits for (the reloader's build, in the daemon). */
  imageReady: () => Promise<void> = () => Promise.reject(new Error('no image in this test'));
  #port = 40000;

  deps(): SupervisorDeps {
    return {
      boot: (manifest) => {
        const done = deferred<BootedGuest>();
        const exit = deferred<ExitStatus>();
        const port = ++this.#port;
        this.boots.push({ image: manifest.id, at: Date.now(), done, exit });
        const guest = {
          vm: { exited: exit.promise, pid: port } as unknown as RunningVm,
          endpoint: { host: '127.0.0.1', port, readyLine: 'FERRY-READY' },
          record: { backend: 'qemu', readyMs: 5, imageId: manifest.id } as unknown as BootedGuest['record'],
        } as BootedGuest;
        if (this.failing.has(manifest.id)) done.reject(new Error(`guest 'ferry' did not become ready: FERRY-FAILED (${manifest.id})`));
        else if (this.autoBoot) done.resolve(guest);
        // Otherwise the test resolves it with `finishBoot`.
        (done as unknown as { guest: BootedGuest }).guest = guest;
        return done.promise;
      },
      stop: async ({ hard }): Promise<StopGuestResult> => {
        this.stops.push({ hard, at: Date.now() });
        // A real stop ends the hypervisor: the exit the supervisor watches follows.
        const last = this.boots.at(-1);
        last?.exit.resolve({ code: 0, signal: null });
        return { how: hard ? 'killed' : 'guest', ms: 1 };
      },
      guestHostKey: () => 'ssh-ed25519 AAAAfake',
      saveImages: async (current, previous) => {
        this.saved.push([current.id, previous?.id]);
      },
      closeConnections: async () => {
        this.closed += 1;
      },
      imageReady: () => this.imageReady(),
      idleTimeoutMs: () => this.idleMs,
      logger: pino({ level: 'silent' }) as Logger,
    };
  }

  finishBoot(index: number): void {
    const boot = this.boots[index]!;
    boot.done.resolve((boot.done as unknown as { guest: BootedGuest }).guest);
  }

  crash(index: number): void {
    this.boots[index]!.exit.resolve({ code: null, signal: 'SIGKILL' });
  }
}

describe('Supervisor', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('boots on demand once for concurrent sessions, and they all get the same guest', async () => {
    const vms = new FakeVms();
    vms.autoBoot = false;
    const supervisor = new Supervisor(vms.deps(), A);
    expect(supervisor.state).toBe('stopped');
    const sessions = [supervisor.ensureRunning(), supervisor.ensureRunning(), supervisor.ensureRunning()];
    await tick();
    expect(supervisor.state).toBe('booting');
    expect(vms.boots).toHaveLength(1);
    vms.finishBoot(0);
    const targets = await Promise.all(sessions);
    expect(new Set(targets.map((t) => t.port)).size).toBe(1);
    expect(targets[0]).toEqual({ host: '127.0.0.1', port: 40001, hostKey: 'ssh-ed25519 AAAAfake' });
    expect(supervisor.state).toBe('running');
    expect(supervisor.status()).toMatchObject({ state: 'running', boots: 1, image: 'aaaa', backend: 'qemu' });
    await supervisor.ensureRunning();
    expect(vms.boots).toHaveLength(1);
  });

  it('a failed boot leaves it stopped with the error; the next session boots again', async () => {
    const vms = new FakeVms();
    vms.failing.add('aaaa');
    const supervisor = new Supervisor(vms.deps(), A);
    await expect(supervisor.ensureRunning()).rejects.toThrow(/FERRY-FAILED/);
    expect(supervisor.state).toBe('stopped');
    expect(supervisor.status().lastError).toMatch(/^boot failed: .*FERRY-FAILED/);
    vms.failing.clear();
    await withTime(supervisor.ensureRunning());
    expect(supervisor.state).toBe('running');
    expect(supervisor.status().lastError).toBeUndefined();
    expect(vms.boots).toHaveLength(2);
    // A broken image is not booted once per connection attempt: the retry waited for the backoff.
    expect(vms.boots[1].at - vms.boots[0].at).toBeGreaterThanOrEqual(950);
  });

  it('a swap waits for open sessions to end, holds new sessions meanwhile, then runs the new image', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    const build = await supervisor.admit(); // a build is running on the guest

    const swap = supervisor.swapTo(B);
    await tick(20);
    expect(supervisor.status().pendingImage).toBe('bbbb');
    expect(vms.stops).toHaveLength(0); // the build in flight is not broken
    expect(supervisor.state).toBe('running');

    let held = false;
    const newSession = supervisor.ensureRunning().then((target) => {
      held = true;
      return target;
    });
    await tick(20);
    expect(held).toBe(false); // a new session waits for the swap instead of landing on the old guest

    // A second change while waiting: the newest image wins.
    expect(await supervisor.swapTo(C)).toEqual({ outcome: 'superseded', imageId: 'cccc' });

    build.release();
    expect(await swap).toEqual({ outcome: 'applied', imageId: 'cccc' });
    expect(vms.closed).toBe(1);
    expect(vms.stops).toEqual([expect.objectContaining({ hard: false })]);
    expect(vms.boots.map((b) => b.image)).toEqual(['aaaa', 'cccc']);
    expect(vms.saved).toEqual([['cccc', 'aaaa']]);
    const target = await newSession;
    expect(target.port).toBe(40002); // the new guest
    expect(supervisor.status()).toMatchObject({ state: 'running', image: 'cccc', previousImage: 'aaaa', lastSwap: { outcome: 'applied', imageId: 'cccc' } });
    expect(supervisor.status().pendingImage).toBeUndefined();
  });

  it('rolls back to the previous image when the new one does not come up', async () => {
    const vms = new FakeVms();
    vms.failing.add('bbbb');
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    const result = await supervisor.swapTo(B);
    expect(result.outcome).toBe('rolled-back');
    expect(result.error).toMatch(/FERRY-FAILED \(bbbb\)/);
    expect(vms.boots.map((b) => b.image)).toEqual(['aaaa', 'bbbb', 'aaaa']);
    expect(supervisor.state).toBe('running');
    expect(supervisor.status()).toMatchObject({ image: 'aaaa', lastSwap: { outcome: 'rolled-back', imageId: 'bbbb' } });
    expect(vms.saved).toEqual([]); // the broken image is never recorded as current
    expect((await supervisor.ensureRunning()).port).toBe(40003);
  });

  it('a swap while the guest is stopped takes effect at the next boot; the same image is no change', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    expect(await supervisor.swapTo(A)).toEqual({ outcome: 'unchanged', imageId: 'aaaa' });
    expect(await supervisor.swapTo(B)).toEqual({ outcome: 'applied-next-boot', imageId: 'bbbb' });
    expect(vms.boots).toHaveLength(0);
    await supervisor.ensureRunning();
    expect(vms.boots.map((b) => b.image)).toEqual(['bbbb']);
  });

  it('without an image, sessions wait for the build and boot what it gives; a failed build is their error', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps());
    const build = deferred<void>();
    let asked = 0;
    vms.imageReady = () => {
      asked += 1;
      return build.promise;
    };
    supervisor.sessionsChanged(2); // both sessions count as open while they wait
    const sessions = [supervisor.ensureRunning(), supervisor.ensureRunning()];
    await tick(20);
    expect(asked).toBe(2);
    expect(vms.boots).toHaveLength(0);
    expect(supervisor.status()).toMatchObject({ state: 'stopped', image: undefined });
    // The first build's images: no guest ran, so nothing waits for the open sessions to end.
    await supervisor.useImages(B, A);
    build.resolve();
    const targets = await Promise.all(sessions);
    expect(targets.map((t) => t.port)).toEqual([40001, 40001]);
    expect(vms.boots.map((b) => b.image)).toEqual(['bbbb']);
    expect(vms.saved).toEqual([['bbbb', 'aaaa']]);
    expect(supervisor.status()).toMatchObject({ image: 'bbbb', previousImage: 'aaaa', lastSwap: undefined });
    await expect(supervisor.useImages(C, B)).rejects.toThrow(/internal/);

    const failing = new Supervisor(new FakeVms().deps());
    await expect(failing.ensureRunning()).rejects.toThrow('no image in this test');
    expect(failing.state).toBe('stopped');
    failing.sessionsChanged(1);
    // A change of ferry.toml that builds: a swap with no guest ever run is the image for the next boot, at once.
    expect(await failing.swapTo(C)).toEqual({ outcome: 'applied-next-boot', imageId: 'cccc' });
    expect((await failing.ensureRunning()).port).toBe(40001);
  });

  it('stops the guest after the idle timeout without sessions; a new session cancels the timer', async () => {
    const vms = new FakeVms();
    vms.idleMs = 150;
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    supervisor.sessionsChanged(1);
    await tick(250);
    expect(supervisor.state).toBe('running'); // never while a session is open

    supervisor.sessionsChanged(0);
    await tick(80);
    supervisor.sessionsChanged(1); // a session before the timeout: the timer is cancelled
    await tick(250);
    expect(supervisor.state).toBe('running');
    expect(vms.stops).toHaveLength(0);

    const lastEnded = Date.now();
    supervisor.sessionsChanged(0);
    await tick(300);
    expect(supervisor.state).toBe('stopped');
    expect(vms.stops).toHaveLength(1);
    expect(vms.stops[0]!.hard).toBe(false);
    expect(vms.stops[0]!.at - lastEnded).toBeGreaterThanOrEqual(140);
    expect(supervisor.status().crashes).toBe(0); // an idle stop is not a crash

    await supervisor.ensureRunning(); // and the next session boots it again
    expect(vms.boots).toHaveLength(2);
  });

  it('idle timeout 0 means never', async () => {
    const vms = new FakeVms();
    vms.idleMs = 0;
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    supervisor.sessionsChanged(1);
    supervisor.sessionsChanged(0);
    await tick(200);
    expect(supervisor.state).toBe('running');
  });

  it('a crash leaves it stopped, cleans up, and the next boot waits 1 s, then 2 s after a second crash', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();

    vms.crash(0);
    await tick(10);
    expect(supervisor.state).toBe('stopped');
    expect(supervisor.status()).toMatchObject({ crashes: 1, lastError: expect.stringMatching(/exited unexpectedly.*SIGKILL/) });
    expect(vms.stops).toEqual([expect.objectContaining({ hard: true })]); // run files of the dead process removed
    const crashedAt = Date.now();

    await withTime(supervisor.ensureRunning());
    expect(vms.boots).toHaveLength(2);
    expect(vms.boots[1]!.at - crashedAt).toBeGreaterThanOrEqual(950);
    expect(vms.boots[1]!.at - crashedAt).toBeLessThan(1800);

    vms.crash(1);
    await tick(10);
    const secondCrash = Date.now();
    await withTime(supervisor.ensureRunning());
    expect(supervisor.status().crashes).toBe(2);
    expect(vms.boots[2]!.at - secondCrash).toBeGreaterThanOrEqual(1950);
  });

  it('a stop that ends the guest is not counted as a crash', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    await supervisor.stop({ reason: 'test' });
    await tick(10);
    expect(supervisor.state).toBe('stopped');
    expect(supervisor.status().crashes).toBe(0);
    const started = Date.now();
    await withTime(supervisor.ensureRunning());
    expect(Date.now() - started).toBeLessThan(500); // no backoff
  });

  it('a swap does not wait for sessions that themselves wait for a boot (they were deadlocked: seen in the soak)', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    vms.crash(0);
    await tick(10);
    vms.autoBoot = false;
    // Four builds arrive while the guest is down: open in the front, waiting for the boot.
    supervisor.sessionsChanged(4);
    const waiting = [1, 2, 3, 4].map(() => supervisor.admit());
    await tick(1500);
    expect(vms.boots).toHaveLength(2);
    const swap = supervisor.swapTo(B);
    vms.autoBoot = true;
    vms.finishBoot(1);
    expect(await withTime(swap)).toEqual({ outcome: 'applied', imageId: 'bbbb' });
    const admitted = await withTime(Promise.all(waiting));
    expect(new Set(admitted.map((a) => a.target.port))).toEqual(new Set([40003])); // all on the new image's guest
    expect(vms.boots.map((b) => b.image)).toEqual(['aaaa', 'aaaa', 'bbbb']);
  });

  it('a guest that stopped answering is stopped hard and booted again at once, and counted', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    await withTime(supervisor.restartUnresponsive('the guest did not answer for 50 s'));
    await withTime(supervisor.ensureRunning());
    expect(vms.stops).toEqual([expect.objectContaining({ hard: true })]);
    expect(vms.boots).toHaveLength(2);
    expect(supervisor.status()).toMatchObject({ state: 'running', unresponsiveRestarts: 1, crashes: 0 });
  });

  it('after shutdown nothing boots, not even a boot that was waiting out its backoff', async () => {
    const vms = new FakeVms();
    const supervisor = new Supervisor(vms.deps(), A);
    await supervisor.ensureRunning();
    vms.crash(0);
    await tick(10);
    const waiting = supervisor.ensureRunning(); // waits 1 s of backoff
    const failed = expect(waiting).rejects.toThrow(/shutting down/);
    await tick(100);
    await supervisor.shutdown();
    await tick(2000);
    await failed;
    expect(vms.boots).toHaveLength(1);
    expect(supervisor.state).toBe('stopped');
  });
});
