/** What the supervisor (supervisor.ts) is given: the guest's boot and stop, and the daemon's parts it asks. */
import type { Logger } from 'pino';
import type { ImageManifest } from '../image/manifest.js';
import type { BootedGuest } from '../vm/instance/boot.js';
import type { StopGuestResult } from '../vm/instance/stop.js';

export interface SupervisorDeps {
  boot(manifest: ImageManifest): Promise<BootedGuest>;
  stop(options: { hard: boolean }): Promise<StopGuestResult>;
  /** The guest sshd's public host key (OpenSSH line), to pin it. */
  guestHostKey(): string;
  /** Persist which image runs and which ran before (for rollback across daemon restarts). */
  saveImages(current: ImageManifest, previous: ImageManifest | undefined): Promise<void>;
  /** Drop pooled connections to the guest (before a swap). */
  closeConnections(): Promise<void>;
  /**
   * There is no image to boot: resolves once the build under way (or one started for this call)
   * has given the supervisor one; rejects with why it did not.
   */
  imageReady(): Promise<void>;
  idleTimeoutMs(): number;
  logger: Logger;
}
