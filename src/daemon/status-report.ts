/**
 * The status report (`GET /status`, `ferry status`): assembled from the daemon's parts each time
 * it is asked, so it never holds a copy that could go stale.
 */
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import type { HealthStatus } from './health-check.js';
import type { ReloadState } from './reload.js';
import type { SessionRecord } from './session-log.js';
import type { MeasuredUsage } from './state-disk-watch.js';
import type { DaemonStatus } from './status.js';
import type { Supervisor } from './supervisor.js';

export const DAEMON_VERSION = '0.1.0';
const RECENT_SESSIONS = 20;

/** Finished sessions: how many there were, and the last few. */
export class SessionHistory {
  total = 0;
  readonly #recent: SessionRecord[] = [];

  add(record: SessionRecord): void {
    this.total += 1;
    this.#recent.push(record);
    if (this.#recent.length > RECENT_SESSIONS) this.#recent.shift();
  }

  newestFirst(): SessionRecord[] {
    return this.#recent.slice().reverse();
  }
}

export interface StatusSources {
  readonly paths: FerryPaths;
  readonly startedAt: Date;
  /** The SSH front's address as `host:port` (`[::1]:port` for IPv6). */
  readonly listen: string;
  config(): FerryConfig;
  readonly reload: ReloadState;
  readonly supervisor: Pick<Supervisor, 'status'>;
  /** The guest's health check (health-check.ts). */
  health(): HealthStatus;
  openSessions(): number;
  readonly sessions: SessionHistory;
  /** The state disk's last measured use (state-disk-watch.ts). */
  stateDisk(): MeasuredUsage | undefined;
}

export function statusReport(sources: StatusSources): DaemonStatus {
  const { paths, startedAt, reload, sessions } = sources;
  const { guest } = sources.config();
  return {
    daemon: {
      pid: process.pid,
      version: DAEMON_VERSION,
      startedAt: startedAt.toISOString(),
      uptimeMs: Date.now() - startedAt.getTime(),
      listen: sources.listen,
      configFile: paths.configFile,
      logFile: paths.daemonLog,
      configError: reload.configError,
      buildError: reload.buildError,
      buildingSince: reload.buildingSince,
      lastReloadAt: reload.lastReloadAt,
    },
    guest: { ...sources.supervisor.status(), health: sources.health(), system: guest.system, extraSystems: guest.extraSystems, interpreter: guest.interpreter },
    stateDisk: sources.stateDisk(),
    sessions: { open: sources.openSessions(), total: sessions.total },
    recentSessions: sessions.newestFirst(),
  };
}
