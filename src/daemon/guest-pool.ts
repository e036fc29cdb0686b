/**
 * SSH connections from the daemon to the guest's sshd, shared by all forwarded sessions.
 *
 * One connection carries many sessions (channels). OpenSSH refuses a channel beyond its
 * MaxSessions (default 10) with "open failed"; then the pool marks that connection full and
 * opens another. Extra connections that fall idle are closed again; the first one stays, so the
 * next session does not pay for a handshake.
 *
 * Besides sessions, a lease can be a channel to a unix socket in the guest: the
 * front connects ssh-ng's `nix-daemon --stdio` straight to the guest's nix-daemon that way.
 *
 * Connecting is lazy: the first session calls `target()`, which is where the supervisor boots the
 * guest, so that session simply waits until the guest is up.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import ssh2 from 'ssh2';
import type { ClientChannel, ParsedKey, PseudoTtyOptions } from 'ssh2';
import { coalesceWrites } from './coalesce-writes.js';
import { silentLogger, type FrontLogger } from './session-log.js';

const { Client } = ssh2;
type Client = InstanceType<typeof Client>;

export interface GuestTarget {
  readonly host: string;
  readonly port: number;
  /** The guest sshd's host key as an OpenSSH public key line; any other key is refused. */
  readonly hostKey: string;
}

export interface GuestPoolOptions {
  /** Where the guest's sshd is; may boot the guest first (sessions wait for it). */
  readonly target: () => Promise<GuestTarget>;
  /** The guest client key (OpenSSH private key). */
  readonly privateKey: string | Buffer;
  /** The guest user every session runs as. */
  readonly username?: string;
  /** Close an extra connection after it has carried no session for this long. */
  readonly idleExtraMs?: number;
  /**
   * Give up a handshake with the guest's sshd after this long (`[daemon] ssh-timeout`; asked at
   * each new connection, so a changed config applies to the next one). Default 20 s.
   */
  readonly handshakeTimeoutMs?: () => number;
  /** SSH keepalives, so a guest that vanished without closing TCP is noticed. */
  readonly keepaliveIntervalMs?: number;
  readonly logger?: FrontLogger;
}

export type GuestChannelRequest = GuestSessionRequest | GuestSocketRequest;

export interface GuestSocketRequest {
  readonly kind: 'socket';
  /** A unix socket's path in the guest. */
  readonly socketPath: string;
}

export interface GuestSessionRequest {
  readonly kind: 'exec' | 'shell';
  /** For exec. */
  readonly command?: string;
  /** Allocate a pseudo-terminal with these settings. */
  readonly pty?: PseudoTtyOptions;
  readonly env?: Readonly<Record<string, string>>;
}

export interface GuestLease {
  readonly channel: ClientChannel;
  /** Which pool connection carries it (1, 2, …), for logs and tests. */
  readonly connectionId: number;
  /** Why the connection under this channel went away, once it has. */
  lostReason(): Error | undefined;
}

/** OpenSSH's answer when a connection already has MaxSessions sessions. */
export function isSessionLimitError(error: unknown): boolean {
  return error instanceof Error && /Channel open failure: open failed/.test(error.message);
}

class GuestConnection {
  readonly client: Client = new Client();
  /** Sessions open or being opened on this connection. */
  sessions = 0;
  /** The guest refused a channel for MaxSessions; cleared when one of its sessions ends. */
  full = false;
  closed = false;
  lost: Error | undefined;
  idleTimer: NodeJS.Timeout | undefined;
  ready: Promise<void> = Promise.resolve();

  constructor(readonly id: number) {}
}

/** Events: 'connection-closed' (id, error?). */
export class GuestPool extends EventEmitter {
  readonly #options: Required<Omit<GuestPoolOptions, 'logger'>> & { logger: FrontLogger };
  readonly #connections: GuestConnection[] = [];
  #nextId = 1;
  #closing = false;

  constructor(options: GuestPoolOptions) {
    super();
    this.#options = {
      username: 'builder',
      idleExtraMs: 10_000,
      handshakeTimeoutMs: () => 20_000,
      keepaliveIntervalMs: 10_000,
      logger: silentLogger,
      ...options,
    };
  }

  /** Live connections (connecting or ready). */
  get connectionCount(): number {
    return this.#connections.length;
  }

  /** Sessions open or being opened over all connections. */
  get sessionCount(): number {
    return this.#connections.reduce((sum, c) => sum + c.sessions, 0);
  }

  /**
   * Open a channel on the guest: a session that starts `request`, or a channel to a unix socket
   * in the guest (OpenSSH's direct-streamlocal, connected by the builder's own sshd process, so
   * the peer the socket sees is the builder). A socket channel is no session: no process starts
   * for it, and MaxSessions does not count it.
   */
  open(request: GuestChannelRequest): Promise<GuestLease> {
    if (request.kind === 'socket') return this.#lease((client) => startSocketChannel(client, request.socketPath), { sessionLimited: false });
    return this.#lease((client) => startChannel(client, request), { sessionLimited: true });
  }

  async #lease(start: (client: Client) => Promise<ClientChannel>, { sessionLimited }: { sessionLimited: boolean }): Promise<GuestLease> {
    this.#closing = false;
    // Each round either opens the channel or marks a connection full; a fresh connection that
    // is full at once means the guest refuses every session, so the rounds are bounded.
    for (let round = 0; round < 64; round++) {
      const connection = this.#pick();
      connection.sessions++;
      clearTimeout(connection.idleTimer);
      try {
        await connection.ready;
        const channel = await start(connection.client);
        channel.once('close', () => this.#release(connection));
        return { channel, connectionId: connection.id, lostReason: () => connection.lost };
      } catch (error) {
        connection.sessions--;
        // OpenSSH says "open failed" for any refused channel: only for a session is it MaxSessions.
        if (sessionLimited && isSessionLimitError(error) && !connection.closed) {
          connection.full = true;
          this.#options.logger.debug({ connection: connection.id }, 'guest refused a session (MaxSessions); using another connection');
          continue;
        }
        this.#scheduleIdleClose(connection);
        throw error;
      }
    }
    throw new Error('the guest refused a session on every connection (MaxSessions reached on all of them)');
  }

  /** Close every connection; sessions still open on them end as "the guest went away". */
  async close(): Promise<void> {
    this.#closing = true;
    const all = [...this.#connections];
    await Promise.all(
      all.map(
        (connection) =>
          new Promise<void>((resolve) => {
            if (connection.closed) return resolve();
            connection.client.once('close', () => resolve());
            connection.client.end();
          }),
      ),
    );
  }

  #pick(): GuestConnection {
    const usable = this.#connections.find((c) => !c.closed && !c.full);
    return usable ?? this.#connect();
  }

  #connect(): GuestConnection {
    const connection = new GuestConnection(this.#nextId++);
    this.#connections.push(connection);
    const { client } = connection;
    client.on('error', (error) => {
      connection.lost ??= error;
    });
    client.on('close', () => {
      connection.closed = true;
      connection.lost ??= new Error('the connection to the guest closed');
      clearTimeout(connection.idleTimer);
      const index = this.#connections.indexOf(connection);
      if (index >= 0) this.#connections.splice(index, 1);
      this.#options.logger.debug({ connection: connection.id, error: connection.lost.message }, 'guest connection closed');
      this.emit('connection-closed', connection.id, connection.lost);
    });
    connection.ready = this.#handshake(connection);
    // Sessions await `ready`; this only keeps an unobserved failure from being "unhandled".
    connection.ready.catch(() => {});
    return connection;
  }

  async #handshake(connection: GuestConnection): Promise<void> {
    const { client } = connection;
    let target: GuestTarget;
    try {
      target = await this.#options.target();
    } catch (error) {
      connection.closed = true;
      const index = this.#connections.indexOf(connection);
      if (index >= 0) this.#connections.splice(index, 1);
      throw error;
    }
    const expected = parseHostKey(target.hostKey);
    const timeoutMs = this.#options.handshakeTimeoutMs();
    let hostKeyRefused = false;
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error) => {
        client.off('ready', onReady);
        if (hostKeyRefused) {
          reject(new Error(`the guest at ${target.host}:${target.port} presented a host key other than the expected ${expected.type} key`, { cause: error }));
        } else if ((error as Error & { level?: string }).level === 'client-timeout') {
          reject(new Error(`the guest's sshd at ${target.host}:${target.port} did not finish the SSH handshake within ${timeoutMs / 1000} s ([daemon] ssh-timeout)`, { cause: error }));
        } else {
          reject(new Error(`cannot log in to the guest at ${target.host}:${target.port}: ${error.message}`, { cause: error }));
        }
      };
      const onReady = () => {
        client.off('error', onError);
        resolve();
      };
      client.once('error', onError);
      client.once('ready', onReady);
      client.connect({
        host: target.host,
        port: target.port,
        sock: coalesceWrites(net.connect({ host: target.host, port: target.port })),
        username: this.#options.username,
        privateKey: this.#options.privateKey,
        readyTimeout: timeoutMs,
        keepaliveInterval: this.#options.keepaliveIntervalMs,
        keepaliveCountMax: 3,
        hostVerifier: (key: Buffer) => {
          const ok = key.equals(expected.getPublicSSH());
          if (!ok) hostKeyRefused = true;
          return ok;
        },
      });
    });
    this.#options.logger.debug({ connection: connection.id, host: target.host, port: target.port }, 'connected to the guest');
  }

  #release(connection: GuestConnection): void {
    connection.sessions--;
    connection.full = false;
    this.#scheduleIdleClose(connection);
  }

  /** Extra connections go once idle; the first live one stays for the next session. */
  #scheduleIdleClose(connection: GuestConnection): void {
    if (connection.sessions > 0 || connection.closed || this.#closing) return;
    if (this.#connections[0] === connection) return;
    clearTimeout(connection.idleTimer);
    connection.idleTimer = setTimeout(() => {
      if (connection.sessions === 0 && !connection.closed) connection.client.end();
    }, this.#options.idleExtraMs);
    connection.idleTimer.unref();
  }
}

function parseHostKey(line: string): ParsedKey {
  const parsed = ssh2.utils.parseKey(line);
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (key instanceof Error || key === undefined) {
    throw new Error(`the guest host key is not an OpenSSH public key line: ${line.slice(0, 60)}`);
  }
  return key;
}

/** Whether `error` is the guest refusing one channel (the connection itself is fine). */
export function isChannelOpenFailure(error: unknown): boolean {
  return error instanceof Error && /Channel open failure/.test(error.message);
}

function startSocketChannel(client: Client, socketPath: string): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    try {
      client.openssh_forwardOutStreamLocal(socketPath, (error, channel) => (error ? reject(error) : resolve(channel)));
    } catch (error) {
      reject(error instanceof Error ? error : new Error(String(error)));
    }
  });
}

function startChannel(client: Client, request: GuestSessionRequest): Promise<ClientChannel> {
  return new Promise((resolve, reject) => {
    const done = (error: Error | undefined, channel: ClientChannel) => (error ? reject(error) : resolve(channel));
    const env = request.env === undefined ? undefined : { ...request.env };
    try {
      if (request.kind === 'exec') {
        client.exec(request.command ?? '', { env, pty: request.pty ?? false }, done);
      } else {
        client.shell(request.pty ?? false, { env }, done);
      }
    } catch (error) {
      // ssh2 throws "Not connected" synchronously when the socket already went away.
      reject(error instanceof Error ? error : new Error(String(error)));
    }
  });
}
