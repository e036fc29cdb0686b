/**
 * The daemon's SSH server: what the host's nix-daemon (and `ferry ssh`) connect to. It listens
 * on a loopback address only (127.0.0.1, or ::1 with `[daemon] listen`), proves itself with a
 * persistent host key (so the key Nix pinned stays valid), lets in only the public keys install
 * wrote, and hands every session to forwarding. Whatever login name the client uses, sessions
 * run as the guest's builder user. Before login it is as strict as OpenSSH's sshd: a grace time
 * (LoginGraceTime), a number of failed attempts (MaxAuthTries) and a cap on connections waiting
 * to log in (MaxStartups, with its random early drop).
 */
import { EventEmitter } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import type { Algorithms, Connection, PublicKeyAuthContext } from 'ssh2';
import { DEFAULTS } from '../config/defaults.js';
import { formatMaxStartups, LOOPBACK_ADDRESSES } from '../config/schema.js';
import type { MaxStartups } from '../config/types.js';
import { ExitCode, FerryError } from '../errors.js';
import { coalesceWrites } from './coalesce-writes.js';
import { decideAuth, parseAllowedKeys, type AllowedKey } from './authorized-keys.js';
import { forwardSession, type GuestChannelSource } from './forward.js';
import { frontAddress } from './ssh-alias.js';
import { logSession, silentLogger, type FrontLogger, type SessionMeter, type SessionRecord, type SessionSink } from './session-log.js';

export const DEFAULT_FRONT_PORT = 31322;
/** The default address; the front listens on loopback addresses only: builds must not be reachable from the network. */
export const FRONT_HOST = '127.0.0.1';

/**
 * The ciphers the front offers. An OpenSSH client picks its own first choice the server offers,
 * and it prefers chacha20-poly1305, which ssh2 runs about half as fast as AES-GCM (OpenSSL, with
 * the AES instructions every Mac has); measured with bench/forward.ts: 512 MiB upload 3.2 s with
 * chacha20 vs 1.7 s with aes128-gcm. Every OpenSSH since 6.2 (2013) speaks AES-GCM.
 */
export const FRONT_CIPHERS = ['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com'] as const;

/**
 * What the front offers: OpenSSH's own defaults as far as ssh2 1.17 has them. No NIST-curve or
 * finite-field key exchange (ssh2 has neither post-quantum hybrid, sntrup761x25519 nor
 * mlkem768x25519), only encrypt-then-MAC MACs (unused with the AEAD ciphers above, but
 * negotiated all the same), no compression. ssh2 adds the strict-kex marker (Terrapin) itself.
 * chacha20-poly1305 is left out on purpose: see FRONT_CIPHERS.
 * test/unit/ssh-audit.test.ts runs ssh-audit against the front.
 */
export const FRONT_ALGORITHMS: Algorithms = {
  kex: ['curve25519-sha256', 'curve25519-sha256@libssh.org'],
  cipher: [...FRONT_CIPHERS],
  hmac: ['hmac-sha2-256-etm@openssh.com', 'hmac-sha2-512-etm@openssh.com'],
  compress: ['none'],
};

export interface SshFrontOptions {
  /** A loopback address: 127.0.0.1 (the default) or ::1; anything else is refused. */
  readonly host?: string;
  /** Default 31322; 0 picks a free port (tests). */
  readonly port?: number;
  /** The front's host key (OpenSSH private key, from `ferryKeys`: the same across restarts, so the key Nix pins stays valid). */
  readonly hostKey: string;
  /** OpenSSH public key lines allowed to log in. */
  readonly authorizedKeys: readonly string[];
  /** Where sessions go (a GuestPool). */
  readonly guest: GuestChannelSource;
  readonly logger?: FrontLogger;
  /** Receives every finished session's record (also logged). */
  readonly onSession?: SessionSink;
  /** What a session is told when the guest runs out of disk (see ForwardOptions.diskFullNote). */
  readonly diskFullNote?: () => string;
  /** Where ssh-ng sessions are connected (see ForwardOptions.nixDaemonSocket). */
  readonly nixDaemonSocket?: string;
  /** Close a connection not logged in after this long; 0 = never. Default 120 s (OpenSSH's LoginGraceTime). */
  readonly loginGraceTimeMs?: number;
  /** Close a connection at its this-many-th failed login attempt. Default 6 (OpenSSH's MaxAuthTries). */
  readonly maxAuthTries?: number;
  /** How many connections may wait to log in at once. Default 10:30:100 (OpenSSH's MaxStartups). */
  readonly maxStartups?: MaxStartups;
}

/**
 * Whether to refuse a new connection while `waiting` others have not logged in: OpenSSH's
 * `should_drop_connection` (sshd.c), with `random` in [0, 1).
 */
export function shouldDropConnection(waiting: number, limit: MaxStartups, random: () => number = Math.random): boolean {
  if (waiting < limit.start) return false;
  if (waiting >= limit.full || limit.rate === 100) return true;
  const percent = limit.rate + Math.floor(((100 - limit.rate) * (waiting - limit.start)) / (limit.full - limit.start));
  return Math.floor(random() * 100) < percent;
}

/** A client connection until it logs in: its grace timer, counted against max-startups. */
interface Unauthenticated {
  readonly socket: net.Socket;
  readonly timer: NodeJS.Timeout | undefined;
  /** Set once this connection's refusal is logged (grace time, max-auth-tries), so it is logged once. */
  refusalLogged: boolean;
}

/**
 * Events:
 * - 'session-start' (meter: SessionMeter) — a command or shell started;
 * - 'session-end' (record: SessionRecord) — it ended;
 * - 'sessions' (count: number) — the number of open sessions changed;
 * - 'idle' () — the number of open sessions went to zero.
 */
export class SshFront extends EventEmitter {
  readonly #options: SshFrontOptions & { readonly host: string; readonly port: number };
  readonly #server: InstanceType<typeof ssh2.Server>;
  /** The TCP listener: ours, so each client socket gets coalesced writes before ssh2 takes it. */
  readonly #listener: net.Server;
  readonly #logger: FrontLogger;
  readonly #connections = new Set<Connection>();
  readonly #limits: { readonly graceMs: number; readonly maxAuthTries: number; readonly maxStartups: MaxStartups };
  /** Connections not logged in yet, by "ip port" (what ssh2 reports for the socket it took). */
  readonly #unauthenticated = new Map<string, Unauthenticated>();
  /** Connections refused since the last time fewer than max-startups' start waited. */
  #dropped = 0;
  #allowed: AllowedKey[];
  #openSessions = 0;
  #nextSessionId = 1;
  #port: number | undefined;

  constructor(options: SshFrontOptions) {
    super();
    const host = options.host ?? FRONT_HOST;
    if (!(LOOPBACK_ADDRESSES as readonly string[]).includes(host)) {
      throw new FerryError(`the SSH front listens on a loopback address only (${LOOPBACK_ADDRESSES.join(' or ')}), not on ${host}`, {
        exitCode: ExitCode.Config,
        hint: 'the front accepts build sessions; it must not be reachable from other machines',
      });
    }
    const port = options.port ?? DEFAULT_FRONT_PORT;
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new FerryError(`SSH front port ${port} is not a TCP port number (0–65535)`, { exitCode: ExitCode.Config });
    }
    this.#options = { ...options, port, host };
    this.#logger = options.logger ?? silentLogger;
    this.#allowed = parseAllowedKeys(options.authorizedKeys, 'SSH front authorized keys');
    this.#limits = {
      graceMs: options.loginGraceTimeMs ?? DEFAULTS.loginGraceTimeMs,
      maxAuthTries: options.maxAuthTries ?? DEFAULTS.maxAuthTries,
      maxStartups: options.maxStartups ?? DEFAULTS.maxStartups,
    };
    this.#server = new ssh2.Server({ hostKeys: [options.hostKey], ident: 'ferry', algorithms: FRONT_ALGORITHMS }, (connection, info) =>
      this.#accept(connection, info.ip, `${info.ip} ${info.port}`),
    );
    this.#listener = net.createServer((socket) => this.#admit(socket));
  }

  /** Sessions running now (waiting for the guest counts as running). */
  get openSessions(): number {
    return this.#openSessions;
  }

  /** The port listened on, once listening. */
  get port(): number | undefined {
    return this.#port;
  }

  /** Replace the allowed keys (after `ferry install` wrote new ones); running sessions stay. */
  setAuthorizedKeys(lines: readonly string[]): void {
    this.#allowed = parseAllowedKeys(lines, 'SSH front authorized keys');
  }

  listen(): Promise<{ host: string; port: number }> {
    const { host } = this.#options;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException) => {
        const inUse = error.code === 'EADDRINUSE';
        reject(
          new FerryError(`cannot listen on ${frontAddress(host, this.#options.port)}: ${inUse ? 'the port is in use' : error.message}`, {
            exitCode: ExitCode.Unavailable,
            // Said once: the message says what, the hint what to do (`ss -ltnp` / `lsof -i` name the holder).
            hint: inUse ? 'is another ferry daemon (another state dir) running? Else set [daemon] port in ferry.toml to a free one' : undefined,
            cause: error,
          }),
        );
      };
      this.#listener.once('error', onError);
      this.#listener.listen(this.#options.port, host, () => {
        this.#listener.off('error', onError);
        this.#port = (this.#listener.address() as AddressInfo).port;
        this.#logger.info({ host, port: this.#port }, `SSH front listening on ${frontAddress(host, this.#port)}`);
        resolve({ host, port: this.#port });
      });
    });
  }

  /** Stop listening and drop every client connection. */
  close(): Promise<void> {
    for (const connection of this.#connections) connection.end();
    for (const { socket } of this.#unauthenticated.values()) socket.destroy();
    return new Promise((resolve) => this.#listener.close(() => resolve()));
  }

  /** A new TCP connection: refused past max-startups, else timed by login-grace-time and handed to ssh2. */
  #admit(socket: net.Socket): void {
    socket.on('error', () => {}); // ssh2 reports errors on connections it took; a refused one has nothing to say
    const { maxStartups, graceMs } = this.#limits;
    const waiting = this.#unauthenticated.size;
    if (shouldDropConnection(waiting, maxStartups)) {
      // Logged when the refusing starts and when it ends, not per connection: a flood must not flood the log.
      if (this.#dropped++ === 0) {
        this.#logger.warn({ waiting, maxStartups: formatMaxStartups(maxStartups) }, `refusing new connections: ${waiting} are waiting to log in (max-startups)`);
      }
      socket.end('ferry: too many connections waiting to log in (max-startups)\r\n', () => socket.destroy());
      return;
    }
    const key = `${socket.remoteAddress} ${socket.remotePort}`;
    const timer =
      graceMs > 0
        ? setTimeout(() => {
            const entry = this.#unauthenticated.get(key);
            if (entry === undefined) return;
            entry.refusalLogged = true;
            this.#logger.info({ ip: socket.remoteAddress, graceMs }, `connection closed: not logged in within ${graceMs / 1000} s (login-grace-time)`);
            socket.destroy();
          }, graceMs)
        : undefined;
    this.#unauthenticated.set(key, { socket, timer, refusalLogged: false });
    socket.once('close', () => this.#loggedInOrGone(key));
    this.#server.injectSocket(coalesceWrites(socket));
  }

  /** The connection under `key` no longer waits to log in: it did, or it closed. */
  #loggedInOrGone(key: string): void {
    const entry = this.#unauthenticated.get(key);
    if (entry === undefined) return;
    clearTimeout(entry.timer);
    this.#unauthenticated.delete(key);
    if (this.#dropped > 0 && this.#unauthenticated.size < this.#limits.maxStartups.start) {
      this.#logger.info({ dropped: this.#dropped }, `accepting new connections again, after refusing ${this.#dropped} (max-startups)`);
      this.#dropped = 0;
    }
  }

  #accept(connection: Connection, ip: string, key: string): void {
    this.#connections.add(connection);
    let user = '';
    let attempts = 0;
    let failures = 0;
    let lastRefusal: { user: string; method: string; reason: string } | undefined;
    // Taken now: the socket's own close handler (it runs first) forgets it.
    const pending = this.#unauthenticated.get(key);
    connection.on('close', () => {
      this.#connections.delete(connection);
      // One line per refused connection, however many keys it tried.
      if (lastRefusal !== undefined && pending?.refusalLogged !== true) this.#logger.info({ ip, ...lastRefusal, failures }, 'login refused');
      this.#loggedInOrGone(key);
    });
    connection.on('error', (error) => this.#logger.debug({ ip, error: error.message }, 'client connection error'));
    connection.on('authentication', (ctx) => {
      attempts++;
      const decision = decideAuth(this.#allowed, ctx.method, ctx.method === 'publickey' ? (ctx as PublicKeyAuthContext) : undefined);
      if (!decision.accept) {
        // As OpenSSH: a client's first "none" (asking which methods there are) is no failure.
        if (ctx.method !== 'none' || attempts > 1) {
          failures++;
          lastRefusal = { user: ctx.username, method: ctx.method, reason: decision.reason };
          this.#logger.debug({ ip, ...lastRefusal, failures }, 'login attempt refused');
        }
        if (failures >= this.#limits.maxAuthTries) {
          if (pending !== undefined) pending.refusalLogged = true;
          this.#logger.info({ ip, ...lastRefusal, failures }, `login refused: ${failures} failed attempts, connection closed (max-auth-tries)`);
          connection.end();
          return;
        }
        return ctx.reject(['publickey']);
      }
      user = ctx.username;
      ctx.accept();
    });
    connection.on('ready', () => {
      lastRefusal = undefined;
      this.#loggedInOrGone(key);
      connection.on('session', (accept) => {
        const session = accept();
        const id = this.#nextSessionId++;
        this.#changeSessions(+1);
        void forwardSession(session, {
          pool: this.#options.guest,
          id,
          user,
          onStart: (meter: SessionMeter) => this.emit('session-start', meter),
          diskFullNote: this.#options.diskFullNote,
          nixDaemonSocket: this.#options.nixDaemonSocket,
          logger: this.#logger,
        }).then((record) => {
          if (record !== undefined) this.#recordSession(record);
          this.#changeSessions(-1);
        });
      });
    });
  }

  #recordSession(record: SessionRecord): void {
    logSession(this.#logger, record);
    try {
      this.#options.onSession?.(record);
    } finally {
      this.emit('session-end', record);
    }
  }

  #changeSessions(delta: number): void {
    this.#openSessions += delta;
    this.emit('sessions', this.#openSessions);
    if (this.#openSessions === 0) this.emit('idle');
  }
}
