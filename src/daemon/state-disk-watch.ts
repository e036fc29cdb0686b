/**
 * The state disk's use for `ferry status` (and doctor, through it): measured, not guessed. While
 * the guest runs, its root control command `df` reports the live figures (the superblock on the
 * host lags behind a mounted filesystem); when it is stopped, the superblock is exact and is read
 * on the host. Measured at start, at each boot and stop, and after a session when the figures are
 * older than half a minute; the status report shows the last measurement with its time.
 */
import type { Logger } from 'pino';
import { humanBytes } from '../format.js';
import { readFilesystemUsage, type StateDiskUsage } from '../image/state-disk-usage.js';
import { runControlCommand } from './guest-control.js';
import type { GuestTarget } from './supervisor.js';

/** How stale the figures may get while sessions come and go (each boot and stop measures anyway). */
const SESSION_REFRESH_MS = 30_000;

export type MeasuredUsage = StateDiskUsage & { readonly measuredAt: string };

export interface StateDiskWatchDeps {
  readonly stateDisk: string;
  /** The running guest's sshd, or undefined: never boots one. */
  runningTarget(): GuestTarget | undefined;
  readonly privateKey: string | Buffer;
  readonly log: Logger;
}

/** `stat -f -c '%S %b %f %a'`: block size, blocks, free blocks, blocks free to non-root. */
export function parseStatfs(text: string): Omit<StateDiskUsage, 'source'> | undefined {
  const numbers = text.trim().split(/\s+/).map(Number);
  if (numbers.length !== 4 || !numbers.every((n) => Number.isSafeInteger(n) && n >= 0)) return undefined;
  const [block, blocks, free, available] = numbers as [number, number, number, number];
  return { sizeBytes: blocks * block, usedBytes: (blocks - free) * block, freeBytes: free * block, availableBytes: available * block };
}

export class StateDiskWatch {
  #last: MeasuredUsage | undefined;
  #measuring: Promise<void> | undefined;
  #again = false;

  constructor(private readonly deps: StateDiskWatchDeps) {}

  get last(): MeasuredUsage | undefined {
    return this.#last;
  }

  /**
   * After a session: measures again only when the last figures are older than `SESSION_REFRESH_MS`,
   * so many short builds cost one root login to the guest every so often, not one each.
   */
  refreshAfterSession(): Promise<void> {
    const age = this.#last ? Date.now() - Date.parse(this.#last.measuredAt) : Infinity;
    return age < SESSION_REFRESH_MS ? Promise.resolve() : this.refresh();
  }

  /** Measures again (one at a time; a request during a measurement runs once more after it). */
  refresh(): Promise<void> {
    if (this.#measuring) {
      this.#again = true;
      return this.#measuring;
    }
    this.#measuring = this.#measure().finally(() => {
      this.#measuring = undefined;
      if (this.#again) {
        this.#again = false;
        void this.refresh();
      }
    });
    return this.#measuring;
  }

  async #measure(): Promise<void> {
    const target = this.deps.runningTarget();
    try {
      const usage = target ? await this.#fromGuest(target) : await readFilesystemUsage(this.deps.stateDisk).then((found) => found && { ...found, source: 'superblock' as const });
      if (usage) this.#last = { ...usage, measuredAt: new Date().toISOString() };
    } catch (error) {
      // A guest that just stopped, or a disk not made yet: the last figures stay, marked by their time.
      this.deps.log.debug({ err: error }, 'could not measure the state disk');
    }
  }

  async #fromGuest(target: GuestTarget): Promise<StateDiskUsage | undefined> {
    const parsed = parseStatfs(await runControlCommand(target, this.deps.privateKey, 'df', 5_000));
    return parsed && { ...parsed, source: 'guest' };
  }
}

/** The watch the daemon keeps: measured now, and again each time the guest has booted or stopped. */
export function watchStateDisk(deps: StateDiskWatchDeps, supervisor: { on(event: 'state', listener: (state: string) => void): unknown }): StateDiskWatch {
  const watch = new StateDiskWatch(deps);
  void watch.refresh();
  supervisor.on('state', (state) => {
    if (state === 'running' || state === 'stopped') void watch.refresh();
  });
  return watch;
}

/** The line a session gets when the guest says "No space left on device". */
export function diskFullNote(stateDisk: string, sizeBytes: number, configFile: string): string {
  return `the guest's state disk ${stateDisk} (${humanBytes(sizeBytes)}) is full: the guest's Nix collects garbage when it runs low, but this build needs more room than there is; raise guest.state-disk-size in ${configFile} (the disk grows at the next boot)`;
}
