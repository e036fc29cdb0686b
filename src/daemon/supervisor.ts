/**
 * The supervisor owns the guest's lifecycle: boot on the first session, stop when idle, note a
 * crash and back off before the next boot, and swap to a new image without breaking sessions in
 * flight — rolling back when the new guest does not come up. Until it has an image (the daemon's
 * first build runs, or no build has succeeded yet) sessions wait for one, or fail with why there
 * is none.
 *
 * State changes go through one transition table, so an impossible change is a loud bug, not a
 * silent inconsistency.
 */
import { EventEmitter } from 'node:events';
import type { ImageManifest } from '../image/manifest.js';
import type { GuestEndpoint } from '../vm/backend.js';
import type { BootedGuest } from '../vm/instance/boot.js';
import { BootBackoff } from './boot-backoff.js';
import type { SupervisorDeps } from './supervisor-deps.js';

export type GuestState = 'stopped' | 'booting' | 'running' | 'stopping';

const TRANSITIONS: Readonly<Record<GuestState, readonly GuestState[]>> = {
  stopped: ['booting'],
  booting: ['running', 'stopped'],
  // running → stopped directly when the guest crashes.
  running: ['stopping', 'stopped'],
  stopping: ['stopped'],
};

export interface SwapResult {
  outcome: 'unchanged' | 'applied' | 'applied-next-boot' | 'rolled-back' | 'superseded';
  imageId: string;
  error?: string;
}

export interface GuestTarget {
  host: string;
  port: number;
  hostKey: string;
}

export class Supervisor extends EventEmitter {
  #state: GuestState = 'stopped';
  #since = Date.now();
  /** Undefined until the daemon's first build (or the first that succeeds) gives one. */
  #current: ImageManifest | undefined;
  #previous: ImageManifest | undefined;
  #guest: BootedGuest | undefined;
  #booting: Promise<GuestEndpoint> | undefined;
  #stopping: Promise<void> | undefined;
  /** The front's open sessions (the idle timer); those let onto the guest (a swap waits for them). */
  #openSessions = 0;
  #admitted = 0;
  /** Set by shutdown: nothing boots any more. */
  #closed = false;
  #idleTimer: NodeJS.Timeout | undefined;
  /** While set, new sessions wait: a swap is waiting for sessions to end or is in progress. */
  #swapGate: Promise<void> | undefined;
  #pendingImage: ImageManifest | undefined;
  #crashes = 0;
  readonly #backoff: BootBackoff;
  #lastError: string | undefined;
  #lastSwap: (SwapResult & { at: string }) | undefined;
  #boots = 0;
  /** Guests restarted because they stopped answering (restartUnresponsive). */
  #unresponsive = 0;

  constructor(
    private readonly deps: SupervisorDeps,
    current?: ImageManifest,
    previous?: ImageManifest,
  ) {
    super();
    this.#backoff = new BootBackoff(deps.logger);
    this.#current = current;
    this.#previous = previous;
  }

  get state(): GuestState {
    return this.#state;
  }

  get currentImage(): ImageManifest | undefined {
    return this.#current;
  }

  /** The running guest's sshd, or undefined when it is not running: never boots one. */
  get runningTarget(): GuestTarget | undefined {
    return this.#state === 'running' && this.#guest ? this.#target(this.#guest.endpoint) : undefined;
  }

  /**
   * Lets a session onto the guest (after a swap or boot under way) and counts it until `release`:
   * a swap waits for these. It waited for the front's open sessions, and deadlocked on sessions
   * waiting at its gate for a boot (bench/soak.ts: qemu killed, four builds waiting, a config change).
   */
  async admit(): Promise<{ target: GuestTarget; release: () => void }> {
    const target = await this.ensureRunning();
    this.#admitted += 1;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.#admitted -= 1;
      if (this.#admitted === 0) this.emit('drained');
    };
    return { target, release };
  }

  /**
   * The guest's sshd, booting it first if needed. With `admitted` (a session already let on by
   * `admit`, opening its connection) a swap waiting for sessions to end does not hold it back.
   */
  async ensureRunning(options: { admitted?: boolean } = {}): Promise<GuestTarget> {
    for (;;) {
      if (this.#closed) throw new Error('the daemon is shutting down');
      if (this.#swapGate && !options.admitted) {
        await this.#swapGate;
        continue;
      }
      if (this.#current === undefined) {
        await this.deps.imageReady();
        // Resolved without an image would loop here for ever: a bug, said loudly.
        if (this.#current === undefined) throw new Error('internal: the image build ended without giving the supervisor an image');
        continue;
      }
      if (this.#state === 'running' && this.#guest) return this.#target(this.#guest.endpoint);
      if (this.#state === 'stopping') {
        await this.#stopping;
        continue;
      }
      if (this.#state === 'booting') {
        await this.#booting;
        continue;
      }
      await this.#backoff.wait();
      const image = this.#current;
      if (this.#state !== 'stopped' || (this.#swapGate && !options.admitted) || image === undefined) continue;
      await this.#boot(image);
    }
  }

  /** The front's count of open sessions changed. */
  sessionsChanged(open: number): void {
    this.#openSessions = open;
    if (open > 0) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
    } else {
      this.#armIdleTimer();
      this.emit('idle');
    }
  }

  /**
   * The daemon shuts down: the guest is stopped and nothing boots any more (a boot waiting out its
   * backoff once booted after the daemon "stopped", and kept it alive with an orphan hypervisor).
   */
  async shutdown(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    await this.stop({ reason: 'daemon shutdown' });
  }

  /** Stops the guest (clean unless `hard`). */
  async stop(options: { hard?: boolean; reason?: string } = {}): Promise<void> {
    if (this.#state === 'booting') await this.#booting?.catch(() => {});
    if (this.#state === 'stopping') return this.#stopping;
    if (this.#state !== 'running') return;
    this.#transition('stopping');
    this.deps.logger.info({ hard: options.hard ?? false, reason: options.reason ?? 'requested' }, 'stopping the guest');
    this.#stopping = (async () => {
      try {
        const result = await this.deps.stop({ hard: options.hard ?? false });
        this.deps.logger.info({ how: result.how, ms: result.ms }, 'guest stopped');
      } catch (error) {
        this.#lastError = `stop failed: ${(error as Error).message}`;
        this.deps.logger.error({ err: error }, 'stopping the guest failed');
      } finally {
        this.#guest = undefined;
        this.#transition('stopped');
        this.#stopping = undefined;
      }
    })();
    return this.#stopping;
  }

  /**
   * The images to boot while the supervisor has none (no guest ran): the daemon's first build and
   * what ran before it (for rollback), or what ran before when that build failed.
   */
  async useImages(current: ImageManifest, previous: ImageManifest | undefined): Promise<void> {
    if (this.#current !== undefined) throw new Error('internal: useImages while the supervisor has an image; swap to it instead');
    await this.#adopt(current, previous);
  }

  /**
   * The guest stopped answering while its hypervisor runs (health-check.ts): stopped hard (each
   * polite rung would wait in vain) and booted again at once. Counts for the backoff, as a crash.
   */
  async restartUnresponsive(reason: string): Promise<void> {
    if (this.#state !== 'running' || this.#swapGate) return;
    this.#unresponsive += 1;
    this.#backoff.failed();
    await this.stop({ hard: true, reason });
    this.#lastError = reason;
    void this.ensureRunning().catch(() => {}); // a failed boot is logged and kept in lastError by #boot
  }

  /** How many guests this supervisor booted: tells one guest from the next. */
  get boots(): number {
    return this.#boots;
  }

  /** Boots the guest now (if it is not running). */
  async start(): Promise<void> {
    await this.ensureRunning();
  }

  /**
   * Runs `manifest` instead of the current image: waits until no session is open (holding new
   * ones back meanwhile), stops the guest, boots the new image and checks it gets ready; if it
   * does not, boots the previous image again.
   */
  async swapTo(manifest: ImageManifest): Promise<SwapResult> {
    if (this.#current === undefined) {
      // No guest ever ran: nothing to wait for or swap out (open sessions wait for this image).
      await this.useImages(manifest, this.#previous);
      return this.#recordSwap({ outcome: 'applied-next-boot', imageId: manifest.id });
    }
    if (manifest.id === this.#current.id && !this.#pendingImage) return this.#recordSwap({ outcome: 'unchanged', imageId: manifest.id });
    if (this.#pendingImage) {
      // A swap is already waiting: the newest image wins; the waiting swap picks it up.
      this.#pendingImage = manifest;
      return { outcome: 'superseded', imageId: manifest.id };
    }
    this.#pendingImage = manifest;
    let release!: () => void;
    this.#swapGate = new Promise<void>((resolve) => (release = resolve));
    try {
      if (this.#admitted > 0) {
        this.deps.logger.info({ sessions: this.#admitted, image: manifest.id }, 'new image ready; waiting for open sessions to end before swapping');
        await new Promise<void>((resolve) => {
          const check = () => {
            if (this.#admitted === 0) {
              this.off('drained', check);
              resolve();
            }
          };
          this.on('drained', check);
        });
      }
      if (this.#state === 'booting') await this.#booting?.catch(() => {});
      const target = this.#pendingImage;
      const old = this.#current;
      if (target.id === old.id) return this.#recordSwap({ outcome: 'unchanged', imageId: target.id });
      if (this.#state !== 'running') {
        await this.#adopt(target, old);
        this.deps.logger.info({ image: target.id }, 'new image will be used at the next boot');
        return this.#recordSwap({ outcome: 'applied-next-boot', imageId: target.id });
      }
      await this.deps.closeConnections();
      await this.stop({ reason: `swap to image ${target.id}` });
      try {
        await this.#boot(target);
        await this.#adopt(target, old);
        this.deps.logger.info({ image: target.id, previous: old.id }, 'swapped to the new image');
        return this.#recordSwap({ outcome: 'applied', imageId: target.id });
      } catch (error) {
        const message = (error as Error).message;
        this.deps.logger.error({ image: target.id, err: error }, `the new image did not come up; rolling back to ${old.id}`);
        if (this.#state === 'running') await this.stop({ hard: true, reason: 'rollback' });
        await this.#boot(old).catch((bootError) => {
          this.deps.logger.error({ err: bootError }, 'the previous image did not come up either');
        });
        return this.#recordSwap({ outcome: 'rolled-back', imageId: target.id, error: message });
      }
    } finally {
      this.#pendingImage = undefined;
      this.#swapGate = undefined;
      release();
    }
  }

  status() {
    const guest = this.#guest;
    return {
      state: this.#state,
      since: new Date(this.#since).toISOString(),
      uptimeMs: this.#state === 'running' ? Date.now() - this.#since : 0,
      image: this.#current?.id,
      previousImage: this.#previous?.id,
      pendingImage: this.#pendingImage?.id,
      backend: guest?.record.backend,
      address: guest ? `${guest.endpoint.host}:${guest.endpoint.port}` : undefined,
      readyMs: guest?.record.readyMs,
      boots: this.#boots,
      crashes: this.#crashes,
      unresponsiveRestarts: this.#unresponsive,
      lastError: this.#lastError,
      lastSwap: this.#lastSwap,
    };
  }

  async #boot(manifest: ImageManifest): Promise<void> {
    if (this.#closed) throw new Error('the daemon is shutting down');
    this.#transition('booting');
    this.deps.logger.info({ image: manifest.id }, 'booting the guest');
    const booting = (async () => {
      const guest = await this.deps.boot(manifest);
      this.#guest = guest;
      this.#boots += 1;
      this.#backoff.booted();
      this.#lastError = undefined;
      this.#transition('running');
      this.deps.logger.info({ image: manifest.id, readyMs: guest.record.readyMs, address: `${guest.endpoint.host}:${guest.endpoint.port}` }, 'guest ready');
      this.#watchExit(guest);
      this.#armIdleTimer();
      return guest.endpoint;
    })();
    this.#booting = booting;
    try {
      await booting;
    } catch (error) {
      this.#lastError = `boot failed: ${(error as Error).message}`;
      this.#backoff.bootFailed();
      this.deps.logger.error({ err: error, image: manifest.id }, 'the guest did not boot');
      this.#guest = undefined;
      this.#transition('stopped');
      throw error;
    } finally {
      this.#booting = undefined;
    }
  }

  #watchExit(guest: BootedGuest): void {
    void guest.vm.exited.then((status) => {
      if (this.#guest !== guest || this.#state !== 'running') return;
      this.#crashes += 1;
      this.#backoff.failed();
      this.#lastError = `the guest exited unexpectedly (exit code ${status.code ?? '-'}, signal ${status.signal ?? '-'})`;
      this.deps.logger.error({ status, crashes: this.#crashes }, 'the guest crashed; it restarts with the next session');
      this.#guest = undefined;
      clearTimeout(this.#idleTimer);
      this.#transition('stopped');
      // Run files (pid, lock) of the dead process are removed by a hard stop, which finds nothing to kill.
      void this.deps.stop({ hard: true }).catch(() => {});
    });
  }

  #armIdleTimer(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    const timeout = this.deps.idleTimeoutMs();
    if (timeout <= 0 || this.#openSessions > 0 || this.#state !== 'running') return;
    this.#idleTimer = setTimeout(() => {
      if (this.#openSessions === 0 && this.#state === 'running' && !this.#swapGate) {
        void this.stop({ reason: `idle for ${Math.round(timeout / 1000)} s` });
      }
    }, timeout);
    this.#idleTimer.unref();
  }

  async #adopt(image: ImageManifest, previous: ImageManifest | undefined): Promise<void> {
    this.#previous = previous;
    this.#current = image;
    await this.deps.saveImages(image, previous);
  }

  #recordSwap(result: SwapResult): SwapResult {
    if (result.outcome !== 'unchanged') this.#lastSwap = { ...result, at: new Date().toISOString() };
    this.emit('swap', result);
    return result;
  }

  #target(endpoint: GuestEndpoint): GuestTarget {
    return { host: endpoint.host, port: endpoint.port, hostKey: this.deps.guestHostKey() };
  }

  #transition(next: GuestState): void {
    if (!TRANSITIONS[this.#state].includes(next)) {
      throw new Error(`internal: guest state cannot go from ${this.#state} to ${next}`);
    }
    this.deps.logger.debug({ from: this.#state, to: next }, 'guest state');
    this.#state = next;
    this.#since = Date.now();
    this.emit('state', next);
  }
}
