/**
 * What the daemon remembers about each forwarded session: the command, bytes each way, how long
 * it took and how it ended — one record per session, logged when it closes.
 */

export type SessionExit =
  | { readonly kind: 'status'; readonly code: number }
  | { readonly kind: 'signal'; readonly signal: string; readonly coreDumped: boolean }
  /** The session ended without the guest reporting an exit (guest unreachable or gone). */
  | { readonly kind: 'error'; readonly message: string };

export interface SessionRecord {
  /** Increasing per front, for matching log lines of one session. */
  readonly id: number;
  /** The login name the client gave (the guest always runs the session as its builder user). */
  readonly user: string;
  readonly kind: 'exec' | 'shell';
  /** The exec command; undefined for a shell. */
  readonly command: string | undefined;
  readonly pty: boolean;
  readonly startedAt: Date;
  readonly durationMs: number;
  /** Time spent waiting for the guest (boot, connect, channel open) before the session ran. */
  readonly waitMs: number;
  /** Client → guest (stdin). */
  readonly bytesIn: number;
  /** Guest → client, stdout. */
  readonly bytesOut: number;
  /** Guest → client, stderr. */
  readonly bytesErr: number;
  readonly exit: SessionExit;
  /** How it reached the guest: its command run by the guest's sshd, or connected to the guest's nix-daemon socket (ssh-ng). */
  readonly via: SessionRoute;
}

export type SessionRoute = 'exec' | 'nix-daemon-socket';

/** Receives one record per finished session. */
export type SessionSink = (record: SessionRecord) => void;

/** The subset of a pino logger the front uses, so a plain object works in tests. */
export interface FrontLogger {
  info(object: object, message?: string): void;
  warn(object: object, message?: string): void;
  debug(object: object, message?: string): void;
}

export const silentLogger: FrontLogger = { info() {}, warn() {}, debug() {} };

/** Counts a session's bytes and times it, then turns into its record. */
export class SessionMeter {
  bytesIn = 0;
  bytesOut = 0;
  bytesErr = 0;
  readonly #started = performance.now();
  readonly startedAt = new Date();
  via: SessionRoute = 'exec';
  #ready: number | undefined;

  constructor(
    readonly id: number,
    readonly user: string,
    readonly kind: 'exec' | 'shell',
    readonly command: string | undefined,
    readonly pty: boolean,
  ) {}

  /** The guest side is open; what came before was waiting. */
  markReady(): void {
    this.#ready ??= performance.now();
  }

  finish(exit: SessionExit): SessionRecord {
    const now = performance.now();
    return {
      id: this.id,
      user: this.user,
      kind: this.kind,
      command: this.command,
      pty: this.pty,
      startedAt: this.startedAt,
      durationMs: Math.round(now - this.#started),
      waitMs: Math.round((this.#ready ?? now) - this.#started),
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      bytesErr: this.bytesErr,
      exit,
      via: this.via,
    };
  }
}

/** One log line per session, with the fields as structured data. */
export function logSession(logger: FrontLogger, record: SessionRecord): void {
  const ended =
    record.exit.kind === 'status' ? `exit ${record.exit.code}` : record.exit.kind === 'signal' ? `signal ${record.exit.signal}` : `failed: ${record.exit.message}`;
  const what = (record.command ?? (record.pty ? 'interactive shell' : 'shell')) + (record.via === 'nix-daemon-socket' ? ", to the guest's nix-daemon socket" : '');
  const fields = { session: record };
  if (record.exit.kind === 'error') logger.warn(fields, `session ${record.id} (${what}) ${ended}`);
  else logger.info(fields, `session ${record.id} (${what}) ${ended} after ${record.durationMs} ms`);
}
