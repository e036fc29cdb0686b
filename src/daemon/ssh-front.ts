/**
 * The daemon's SSH server: what the host's nix-daemon (and `ferry ssh`) connect to. It listens
 * on a loopback address only (127.0.0.1, or ::1 with `[daemon] listen`), proves itself with a
 * persistent host key (so the key Nix pinned stays valid), lets in only the public keys install
 * wrote, and hands every session to forwarding. Whatever login name the client uses, sessions
 * run as the guest's builder user.
 */
import { EventEmitter } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import type { Connection, PublicKeyAuthContext } from 'ssh2';
import { LOOPBACK_ADDRESSES } from '../config/schema.js';
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
    this.#server = new ssh2.Server({ hostKeys: [options.hostKey], ident: 'ferry', algorithms: { cipher: [...FRONT_CIPHERS] } }, (connection, info) =>
      this.#accept(connection, info.ip),
    );
    this.#listener = net.createServer((socket) => this.#server.injectSocket(coalesceWrites(socket)));
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
          new FerryError(`cannot listen on ${frontAddress(host, this.#options.port)}: ${inUse ? 'the port is in use (is another ferry daemon running?)' : error.message}`, {
            exitCode: ExitCode.Unavailable,
            hint: inUse ? 'another program (another ferry?) uses this port; set [daemon] port in ferry.toml' : undefined,
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
    return new Promise((resolve) => this.#listener.close(() => resolve()));
  }

  #accept(connection: Connection, ip: string): void {
    this.#connections.add(connection);
    let user = '';
    connection.on('close', () => this.#connections.delete(connection));
    connection.on('error', (error) => this.#logger.debug({ ip, error: error.message }, 'client connection error'));
    connection.on('authentication', (ctx) => {
      const decision = decideAuth(this.#allowed, ctx.method, ctx.method === 'publickey' ? (ctx as PublicKeyAuthContext) : undefined);
      if (!decision.accept) {
        if (ctx.method !== 'none') this.#logger.info({ ip, user: ctx.username, method: ctx.method, reason: decision.reason }, 'login refused');
        return ctx.reject(['publickey']);
      }
      user = ctx.username;
      ctx.accept();
    });
    connection.on('ready', () => {
      connection.on('session', (accept) => {
        const session = accept();
        const id = this.#nextSessionId++;
        this.#changeSessions(+1);
        void forwardSession(session, {
          pool: this.#options.guest,
          id,
          user,
          onStart: (meter: SessionMeter) => this.emit('session-start', meter),
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
