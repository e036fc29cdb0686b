/**
 * What `GET /status` on the control socket returns: built by the daemon, read by `ferry status`
 * and by anything scripting `ferry status --json`. One type for both sides.
 */
import type { Interpreter, ExtraSystem, GuestSystem } from '../config/types.js';
import type { HealthStatus } from './health-check.js';
import type { SessionRecord } from './session-log.js';
import type { MeasuredUsage } from './state-disk-watch.js';
import type { Supervisor } from './supervisor.js';

export interface DaemonStatus {
  daemon: {
    pid: number;
    version: string;
    startedAt: string;
    uptimeMs: number;
    /** host:port of the SSH front. */
    listen: string;
    configFile: string;
    logFile: string;
    /** Why the last change of ferry.toml was refused (the guest keeps its previous config). */
    configError?: string;
    /** Why the last image build failed (the guest keeps its previous image; without one, sessions get this error). */
    buildError?: string;
    /** While an image is being built: since when (sessions without an image wait for it). */
    buildingSince?: string;
    lastReloadAt?: string;
  };
  guest: ReturnType<Supervisor['status']> & {
    /** Whether the running guest answers (health-check.ts), and the restarts when it did not. */
    health: HealthStatus;
    system: GuestSystem;
    extraSystems: readonly ExtraSystem[];
    interpreter: Interpreter;
  };
  /** The state disk's use, last measured (live from the guest, or its superblock when stopped). */
  stateDisk?: MeasuredUsage;
  sessions: { open: number; total: number };
  /** Newest first; in JSON, `startedAt` is an ISO date string. */
  recentSessions: Array<Omit<SessionRecord, 'startedAt'> & { startedAt: string | Date }>;
}
