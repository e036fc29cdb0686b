/**
 * The one way a VM is stopped, whoever stops it (the daemon, `ferry down`, a failed boot): ask,
 * wait, then insist — Lima's "ask, wait, then kill", with one rung more, because ferry's guest
 * can be asked directly:
 *
 *   1. the guest's control command (`poweroff` over SSH)         → 'guest'
 *   2. the backend's own stop (QMP system_powerdown, vfkit REST
 *      `Stop`, hyperkit's ACPI power button)                      → 'backend'
 *   3. the backend's hard stop (QMP quit, vfkit `HardStop`)       → 'hard-stop'
 *   4. SIGTERM                                                    → 'terminated'
 *   5. SIGKILL                                                    → 'killed'
 *
 * Each polite step waits for the process to exit before the next; a step that could not even ask
 * (no connection) moves on after a short grace instead.
 */
import type { StopHow, StopOptions } from './backend.js';

export interface StopRungs {
  /** Step 1, when the layer above lent it (ferry's guest); rejects if the guest could not be asked. */
  powerOffGuest?: () => Promise<void>;
  /** Step 2. */
  requestStop: () => Promise<void>;
  /** Step 3, where the backend has one. */
  hardStop?: () => Promise<void>;
  signal: (name: NodeJS.Signals) => void;
  /** Resolves true if the process exited within `ms`, false otherwise. */
  waitExit: (ms: number) => Promise<boolean>;
}

const DEFAULT_STOP_TIMEOUT_MS = 30_000;
/** After the guest was asked, the backend's request is a second chance, not a second full wait. */
const BACKEND_AFTER_GUEST_MS = 10_000;
/** A request that failed may still have reached the guest (ssh drops as the guest goes down). */
const FAILED_REQUEST_GRACE_MS = 5_000;
const HARD_STOP_GRACE_MS = 3_000;
const TERM_GRACE_MS = 3_000;
const KILL_GRACE_MS = 10_000;

export async function runStopLadder(rungs: StopRungs, options: StopOptions = {}): Promise<StopHow> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
  const polite = async (ask: () => Promise<void>, waitMs: number): Promise<boolean> => {
    const asked = await ask().then(
      () => true,
      () => false,
    );
    return rungs.waitExit(asked ? waitMs : Math.min(waitMs, FAILED_REQUEST_GRACE_MS));
  };
  if (!options.hard) {
    if (rungs.powerOffGuest && (await polite(rungs.powerOffGuest, timeoutMs))) return 'guest';
    const backendWait = rungs.powerOffGuest ? Math.min(timeoutMs, BACKEND_AFTER_GUEST_MS) : timeoutMs;
    if (await polite(rungs.requestStop, backendWait)) return 'backend';
    if (rungs.hardStop && (await polite(rungs.hardStop, HARD_STOP_GRACE_MS))) return 'hard-stop';
    rungs.signal('SIGTERM');
    if (await rungs.waitExit(TERM_GRACE_MS)) return 'terminated';
  }
  rungs.signal('SIGKILL');
  if (await rungs.waitExit(KILL_GRACE_MS)) return 'killed';
  throw new Error(`the hypervisor did not exit within ${KILL_GRACE_MS / 1000} s of SIGKILL`);
}
