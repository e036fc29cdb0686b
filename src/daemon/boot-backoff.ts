/**
 * The supervisor's backoff: after crashes or failed boots in quick succession, wait 1 s, 2 s,
 * 4 s … (at most 60 s) before booting again, so a broken image is not booted once per connection
 * attempt. A guest that ran for a minute before it failed starts the count again, and so does
 * five minutes without a failure.
 */
import type { Logger } from 'pino';

export class BootBackoff {
  #failuresInARow = 0;
  #lastFailureAt = 0;
  #bootedAt = 0;

  constructor(private readonly logger: Logger) {}

  /** A guest came up. */
  booted(): void {
    this.#bootedAt = Date.now();
  }

  /** A boot failed, a guest crashed or stopped answering. */
  failed(): void {
    if (this.#bootedAt && Date.now() - this.#bootedAt > 60_000) this.#failuresInARow = 0;
    this.#failuresInARow += 1;
    this.#lastFailureAt = Date.now();
  }

  /** A boot that failed: no guest ran. */
  bootFailed(): void {
    this.failed();
    this.#bootedAt = 0;
  }

  /** Resolves when the next boot may start. */
  async wait(): Promise<void> {
    if (this.#failuresInARow === 0 || Date.now() - this.#lastFailureAt > 5 * 60_000) return;
    const delay = Math.min(60_000, 1000 * 2 ** Math.min(this.#failuresInARow - 1, 6));
    const wait = this.#lastFailureAt + delay - Date.now();
    if (wait > 0) {
      this.logger.info({ waitMs: wait, failuresInARow: this.#failuresInARow }, 'waiting before booting the guest again');
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
}
