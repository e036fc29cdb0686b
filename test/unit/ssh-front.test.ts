/**
 * The SSH front's pieces that need no sshd: who may log in, the per-channel serial writer, the
 * listen-address rule, the persistent host key, the session count / idle event, and the limits
 * before login (driven by in-process ssh2 clients against a guest that cannot be reached).
 */
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { decideAuth, parseAllowedKeys } from '../../src/daemon/authorized-keys.js';
import { forgetResumedChunks, SerialChannelWriter, type WritableChannel } from '../../src/daemon/channel-writer.js';
import { isSessionLimitError } from '../../src/daemon/guest-pool.js';
import type { SessionRecord } from '../../src/daemon/session-log.js';
import type { FrontLogger } from '../../src/daemon/session-log.js';
import { shouldDropConnection, SshFront } from '../../src/daemon/ssh-front.js';

/** Captured before any test fakes timers: waits in real time. */
const realSetTimeout = globalThis.setTimeout;

const pair = (comment: string, type: 'ed25519' | 'rsa' = 'ed25519') =>
  type === 'rsa' ? ssh2.utils.generateKeyPairSync('rsa', { bits: 2048, comment }) : ssh2.utils.generateKeyPairSync('ed25519', { comment });
const parsedPrivate = (text: string) => {
  const key = ssh2.utils.parseKey(text);
  if (key instanceof Error) throw key;
  return Array.isArray(key) ? key[0]! : key;
};

describe('allowed keys and the login decision', () => {
  const mine = pair('host nix-daemon');
  const other = pair('a stranger');
  const rsa = pair('rsa user', 'rsa');
  const allowed = parseAllowedKeys([`# keys install wrote\n\n${mine.public}`, rsa.public]);
  const mineKey = parsedPrivate(mine.private);
  const blob = Buffer.from('session id and request bytes');

  const attempt = (publicLine: string, algo?: string, signer?: ReturnType<typeof parsedPrivate>, hashAlgo?: string) => {
    const key = parsedPrivate(publicLine);
    return {
      key: { algo: algo ?? key.type, data: key.getPublicSSH() },
      blob: signer ? blob : undefined,
      signature: signer ? signer.sign(blob, hashAlgo) : undefined,
      hashAlgo,
    };
  };

  it('parses OpenSSH public key lines, skipping blanks and comments', () => {
    expect(allowed.map((k) => [k.type, k.comment])).toEqual([
      ['ssh-ed25519', 'host nix-daemon'],
      ['ssh-rsa', 'rsa user'],
    ]);
  });

  it('names the bad entry and what was expected', () => {
    expect(() => parseAllowedKeys([mine.public, 'ssh-ed25519 not-base64!'], 'keys.pub')).toThrow(/keys\.pub: entry 2 is not an OpenSSH public key line/);
    expect(() => parseAllowedKeys([mine.private])).toThrow(/entry 1/);
  });

  it('accepts an allowed key that asks first (no signature) and one that signs correctly', () => {
    expect(decideAuth(allowed, 'publickey', attempt(mine.public)).accept).toBe(true);
    expect(decideAuth(allowed, 'publickey', attempt(mine.public, undefined, mineKey)).accept).toBe(true);
  });

  it('accepts RSA keys signing with rsa-sha2-256 and -512 (which ssh2 reports as ssh-rsa with their hash)', () => {
    const signer = parsedPrivate(rsa.private);
    expect(decideAuth(allowed, 'publickey', attempt(rsa.public, 'ssh-rsa', signer, 'sha256')).accept).toBe(true);
    expect(decideAuth(allowed, 'publickey', attempt(rsa.public, 'ssh-rsa', signer, 'sha512')).accept).toBe(true);
  });

  it('refuses an unknown key, a forged signature, a type mismatch, and every other method', () => {
    expect(decideAuth(allowed, 'publickey', attempt(other.public))).toMatchObject({ accept: false, reason: /unknown ssh-ed25519 key/ });
    // The allowed public key, signed by someone else's private key.
    const forged = attempt(mine.public, undefined, parsedPrivate(other.private));
    expect(decideAuth(allowed, 'publickey', forged)).toMatchObject({ accept: false, reason: /bad signature/ });
    const wrongAlgo = attempt(mine.public, 'ssh-rsa');
    // An RSA key signing with ssh-rsa (SHA-1): ssh2 gives no hashAlgo for it.
    expect(decideAuth(allowed, 'publickey', attempt(rsa.public, 'ssh-rsa', parsedPrivate(rsa.private)))).toMatchObject({ accept: false, reason: /SHA-1/ });
    expect(decideAuth(allowed, 'publickey', wrongAlgo).accept).toBe(false);
    for (const method of ['password', 'keyboard-interactive', 'none', 'hostbased']) {
      expect(decideAuth(allowed, method).accept).toBe(false);
    }
    expect(decideAuth([], 'publickey', attempt(mine.public)).accept).toBe(false);
  });
});

/** A channel whose writes complete only when the test says so, recording what overlapped. */
function fakeChannel() {
  const log: string[] = [];
  let inFlight = 0;
  let mostInFlight = 0;
  const pending: (() => void)[] = [];
  const stream = (name: string) => ({
    write(chunk: Buffer, callback: (error?: Error | null) => void) {
      inFlight++;
      mostInFlight = Math.max(mostInFlight, inFlight);
      log.push(`${name}:${chunk.toString()}`);
      pending.push(() => {
        inFlight--;
        callback();
      });
      return true;
    },
  });
  const channel: WritableChannel = { ...stream('out'), stderr: stream('err') };
  const completeOne = () => pending.shift()?.();
  return { channel, log, completeOne, mostInFlight: () => mostInFlight, pendingCount: () => pending.length };
}

describe('SerialChannelWriter', () => {
  it('never starts a write while another one, on either stream, is waiting; keeps the order', async () => {
    const fake = fakeChannel();
    const writer = new SerialChannelWriter(fake.channel);
    writer.write('stdout', Buffer.from('a'));
    writer.write('stderr', Buffer.from('b'));
    writer.write('stdout', Buffer.from('c'));
    writer.write('stderr', Buffer.from('d'));
    expect(fake.log).toEqual(['out:a']); // b waits although it is for the other stream
    while (fake.pendingCount() > 0) fake.completeOne();
    expect(fake.log).toEqual(['out:a', 'err:b', 'out:c', 'err:d']);
    expect(fake.mostInFlight()).toBe(1);
    await writer.whenIdle();
    expect(writer.idle).toBe(true);
  });

  it('asks for a pause above the high-water mark and drains', () => {
    const fake = fakeChannel();
    const writer = new SerialChannelWriter(fake.channel, { highWaterMark: 4 });
    let drains = 0;
    writer.on('drain', () => drains++);
    expect(writer.write('stdout', Buffer.from('12'))).toBe(true); // in flight, not queued
    expect(writer.write('stderr', Buffer.from('34'))).toBe(true);
    expect(writer.write('stdout', Buffer.from('56'))).toBe(false);
    expect(writer.queuedBytes).toBe(4);
    while (fake.pendingCount() > 0) fake.completeOne();
    expect(drains).toBe(1);
  });

  it('runs the after-write hook between writes and stops at the first error', async () => {
    let hooks = 0;
    const failing: WritableChannel = {
      write: (_chunk, callback) => (setImmediate(() => callback(new Error('channel closed'))), true),
      stderr: { write: (_chunk, callback) => (setImmediate(() => callback()), true) },
    };
    const writer = new SerialChannelWriter(failing, { afterEachWrite: () => hooks++ });
    const failed = new Promise<Error>((resolve) => writer.once('error', resolve));
    writer.write('stderr', Buffer.from('x'));
    writer.write('stdout', Buffer.from('y'));
    writer.write('stderr', Buffer.from('z'));
    expect((await failed).message).toBe('channel closed');
    expect(hooks).toBe(1);
    expect(writer.write('stdout', Buffer.from('late'))).toBe(false);
    await writer.whenIdle();
  });

  it('clears ssh2 1.17’s stale waiting slots', () => {
    const channel = { _chunk: Buffer.from('old'), _chunkcb: () => {}, _chunkErr: Buffer.from('old'), _chunkcbErr: () => {} };
    forgetResumedChunks(channel);
    expect(channel).toEqual({ _chunk: undefined, _chunkcb: undefined, _chunkErr: undefined, _chunkcbErr: undefined });
  });
});

describe('SshFront', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-front-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const client = pair('client');
  const unreachable = { open: () => Promise.reject(new Error('no guest in this test')) };

  it('refuses to listen anywhere but 127.0.0.1 and ::1, and bad ports', () => {
    for (const host of ['0.0.0.0', '::', 'localhost', '192.0.2.2', '::ffff:127.0.0.1']) {
      expect(() => new SshFront({ host, hostKey: ensureKeyPair(path.join(dir, 'k'), 'test front').privateKey, authorizedKeys: [], guest: unreachable })).toThrow(
        `the SSH front listens on a loopback address only (127.0.0.1 or ::1), not on ${host}`,
      );
    }
    for (const host of ['127.0.0.1', '::1']) expect(() => new SshFront({ host, port: 0, hostKey: ensureKeyPair(path.join(dir, 'k'), 'test front').privateKey, authorizedKeys: [], guest: unreachable })).not.toThrow();
    expect(() => new SshFront({ port: 70000, hostKey: ensureKeyPair(path.join(dir, 'k'), 'test front').privateKey, authorizedKeys: [], guest: unreachable })).toThrow(/not a TCP port/);
  });

  it('counts sessions, signals idle, and tells the client when the guest is unreachable', async () => {
    const records: SessionRecord[] = [];
    const front = new SshFront({
      port: 0,
      hostKey: ensureKeyPair(path.join(dir, 'front_key'), 'test front').privateKey,
      authorizedKeys: [client.public],
      guest: unreachable,
      onSession: (r) => records.push(r),
    });
    const counts: number[] = [];
    let idles = 0;
    front.on('sessions', (n: number) => counts.push(n));
    front.on('idle', () => idles++);
    const { port } = await front.listen();
    const connection = new ssh2.Client();
    try {
      await new Promise<void>((resolve, reject) => {
        connection.once('ready', resolve).once('error', reject);
        connection.connect({ host: '127.0.0.1', port, username: 'anyone', privateKey: client.private });
      });
      const result = await new Promise<{ code: number; stderr: string }>((resolve, reject) => {
        connection.exec('nix-daemon --stdio', (error, channel) => {
          if (error) return reject(error);
          let stderr = '';
          let code = -1;
          channel.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          channel.on('exit', (c: number) => (code = c));
          channel.on('data', () => {});
          channel.on('close', () => resolve({ code, stderr }));
        });
      });
      expect(result).toEqual({ code: 255, stderr: 'ferry: cannot reach the guest: no guest in this test\n' });
      await new Promise((r) => setTimeout(r, 50));
      expect(counts).toEqual([1, 0]);
      expect(idles).toBe(1);
      expect(front.openSessions).toBe(0);
      expect(records).toMatchObject([{ user: 'anyone', command: 'nix-daemon --stdio', exit: { kind: 'error' } }]);
    } finally {
      connection.end();
      await front.close();
    }
  });

  it('refuses a password login from an ssh2 client', async () => {
    const front = new SshFront({ port: 0, hostKey: ensureKeyPair(path.join(dir, 'front_key'), 'test front').privateKey, authorizedKeys: [client.public], guest: unreachable });
    const { port } = await front.listen();
    const connection = new ssh2.Client();
    try {
      const error = await new Promise<Error>((resolve) => {
        connection.once('ready', () => resolve(new Error('logged in')));
        connection.once('error', resolve);
        connection.connect({ host: '127.0.0.1', port, username: 'root', password: 'secret', tryKeyboard: true });
      });
      expect(error.message).toMatch(/All configured authentication methods failed/);
    } finally {
      connection.end();
      await front.close();
    }
  });
});

describe('guest pool', () => {
  it('recognises OpenSSH’s MaxSessions refusal as ssh2 reports it', () => {
    expect(isSessionLimitError(new Error('(SSH) Channel open failure: open failed'))).toBe(true);
    expect(isSessionLimitError(new Error('(SSH) Channel open failure: connect failed'))).toBe(false);
    expect(isSessionLimitError('open failed')).toBe(false);
  });
});

/** Every line a front logs, by level. */
function recordingLogger() {
  const lines: { level: 'info' | 'warn' | 'debug'; message: string }[] = [];
  const at = (level: 'info' | 'warn' | 'debug') => (_object: object, message?: string) => lines.push({ level, message: message ?? '' });
  const logger: FrontLogger = { info: at('info'), warn: at('warn'), debug: at('debug') };
  return { lines, logger, logged: (pattern: RegExp) => lines.filter((l) => l.level !== 'debug' && pattern.test(l.message)) };
}

/** Resolves with what `promise` gave, or with 'timeout' after `ms` of real time. */
function within<T>(ms: number, promise: Promise<T>): Promise<T | 'timeout'> {
  return Promise.race([promise, new Promise<'timeout'>((resolve) => realSetTimeout(() => resolve('timeout'), ms))]);
}

/**
 * An ssh2 client that connects and then never answers its own auth handler: it sits where a
 * login would happen. `atLogin` resolves once the key exchange is done; `closed` when the
 * connection ends, and with how (the client gave up on nothing: readyTimeout 0).
 */
function waitingClient(port: number) {
  const client = new ssh2.Client();
  let reachedLogin = () => {};
  const atLogin = new Promise<void>((resolve) => (reachedLogin = resolve));
  const closed = new Promise<string>((resolve) => {
    let error = '';
    client.on('error', (e) => (error = e.message));
    client.on('close', () => resolve(error || 'closed'));
  });
  client.connect({ host: '127.0.0.1', port, username: 'anyone', readyTimeout: 0, authHandler: () => reachedLogin() });
  return { client, atLogin, closed };
}

describe('SshFront limits before login', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-front-limits-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  afterEach(() => vi.useRealTimers());
  const hostKey = ensureKeyPair(path.join(dir, 'front_key'), 'test front').privateKey;
  const client = pair('client');
  const stranger = pair('a stranger');
  const unreachable = { open: () => Promise.reject(new Error('no guest in this test')) };

  it('login-grace-time: closes a connection that has not logged in after 120 s (the default), once logged', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const log = recordingLogger();
    const front = new SshFront({ port: 0, hostKey, authorizedKeys: [client.public], guest: unreachable, logger: log.logger });
    const { port } = await front.listen();
    const waiting = waitingClient(port);
    try {
      await waiting.atLogin;
      vi.advanceTimersByTime(119_000);
      expect(await within(300, waiting.closed)).toBe('timeout');
      vi.advanceTimersByTime(1000);
      expect(await within(2000, waiting.closed)).not.toBe('timeout');
      expect(log.logged(/login-grace-time/)).toHaveLength(1);
      expect(log.logged(/refused/)).toHaveLength(0);
    } finally {
      waiting.client.end();
      await front.close();
    }
  });

  it('login-grace-time: a connection that logged in stays', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const front = new SshFront({ port: 0, hostKey, authorizedKeys: [client.public], guest: unreachable, loginGraceTimeMs: 1000 });
    const { port } = await front.listen();
    const connection = new ssh2.Client();
    const closed = new Promise<void>((resolve) => connection.on('close', resolve));
    try {
      await new Promise<void>((resolve, reject) => {
        connection.once('ready', resolve).once('error', reject);
        connection.connect({ host: '127.0.0.1', port, username: 'anyone', privateKey: client.private, readyTimeout: 0 });
      });
      vi.advanceTimersByTime(10_000);
      expect(await within(300, closed)).toBe('timeout');
    } finally {
      connection.end();
      await front.close();
    }
  });

  it('max-auth-tries: the 6th failed attempt (the default) closes the connection, logged once', async () => {
    const log = recordingLogger();
    const front = new SshFront({ port: 0, hostKey, authorizedKeys: [client.public], guest: unreachable, logger: log.logger });
    const { port } = await front.listen();
    const connection = new ssh2.Client();
    let tries = 0;
    try {
      const outcome = await within(
        5000,
        new Promise<string>((resolve) => {
          connection.once('ready', () => resolve('logged in'));
          connection.once('error', (e) => resolve(e.message));
          connection.once('close', () => resolve('closed'));
          connection.connect({
            host: '127.0.0.1',
            port,
            username: 'mallory',
            // A key the front does not know, again and again (50 times, were there no limit).
            authHandler: (_left, _partial, next) => {
              if (++tries <= 50) next({ type: 'publickey', username: 'mallory', key: stranger.private });
            },
          });
        }),
      );
      expect(outcome).not.toBe('timeout');
      expect(outcome).not.toBe('logged in');
      // Six tries sent; the sixth is answered by the disconnect, so the handler runs no seventh.
      expect(tries).toBe(6);
      expect(log.logged(/refused/)).toHaveLength(1);
      expect(log.logged(/refused/)[0]!.message).toMatch(/6 failed attempts.*max-auth-tries/);
    } finally {
      connection.end();
      await front.close();
    }
  });

  it('max-auth-tries: fewer failures then the right key logs in, and a refused connection is logged once when it ends', async () => {
    const log = recordingLogger();
    const front = new SshFront({ port: 0, hostKey, authorizedKeys: [client.public], guest: unreachable, logger: log.logger, maxAuthTries: 3 });
    const { port } = await front.listen();
    const login = (keys: string[]) => {
      const connection = new ssh2.Client();
      const outcome = new Promise<string>((resolve) => {
        connection.once('ready', () => resolve('logged in'));
        connection.once('error', (e) => resolve(e.message));
        connection.connect({
          host: '127.0.0.1',
          port,
          username: 'anyone',
          authHandler: (_left, _partial, next) => {
            const key = keys.shift();
            if (key === undefined) return next(false as never);
            next({ type: 'publickey', username: 'anyone', key });
          },
        });
      });
      return { connection, outcome };
    };
    const ok = login([stranger.private, stranger.private, client.private]);
    const refused = login([stranger.private, stranger.private]);
    try {
      expect(await ok.outcome).toBe('logged in');
      expect(await refused.outcome).toMatch(/All configured authentication methods failed/);
      await new Promise((r) => realSetTimeout(r, 100));
      expect(log.logged(/refused/)).toHaveLength(1);
      expect(log.logged(/refused/)[0]!.message).toBe('login refused');
    } finally {
      ok.connection.end();
      refused.connection.end();
      await front.close();
    }
  });

  it('max-startups: refuses a connection past `full` waiting to log in, logs it once, counts no logged-in ones', async () => {
    const log = recordingLogger();
    const front = new SshFront({ port: 0, hostKey, authorizedKeys: [client.public], guest: unreachable, logger: log.logger, maxStartups: { start: 2, rate: 100, full: 2 } });
    const { port } = await front.listen();
    const loggedIn = new ssh2.Client();
    const clients: ReturnType<typeof waitingClient>[] = [];
    try {
      // A logged-in connection is not waiting: two more may wait beside it.
      await new Promise<void>((resolve, reject) => {
        loggedIn.once('ready', resolve).once('error', reject);
        loggedIn.connect({ host: '127.0.0.1', port, username: 'anyone', privateKey: client.private });
      });
      const [a, b] = [waitingClient(port), waitingClient(port)];
      clients.push(a, b);
      await Promise.all([a.atLogin, b.atLogin]);

      const [c, d] = [waitingClient(port), waitingClient(port)];
      clients.push(c, d);
      for (const refused of [c, d]) {
        expect(await within(2000, refused.closed)).not.toBe('timeout');
        expect(await within(0, refused.atLogin)).toBe('timeout');
      }
      expect(log.logged(/max-startups/)).toHaveLength(1);
      expect(log.logged(/max-startups/)[0]!.message).toMatch(/refusing new connections: 2 are waiting/);

      // One waiting connection leaves: the next one is let in.
      a.client.end();
      await a.closed;
      await new Promise((r) => realSetTimeout(r, 100));
      const e = waitingClient(port);
      clients.push(e);
      expect(await within(2000, e.atLogin)).not.toBe('timeout');
      expect(log.logged(/max-startups/).map((l) => l.message)).toEqual([
        'refusing new connections: 2 are waiting to log in (max-startups)',
        'accepting new connections again, after refusing 2 (max-startups)',
      ]);
    } finally {
      loggedIn.end();
      for (const waiting of clients) waiting.client.end();
      await front.close();
    }
  });

  it('max-startups 10:30:100: none refused below 10, 30% at 10, rising linearly to all at 100 (OpenSSH’s formula)', () => {
    const limit = { start: 10, rate: 30, full: 100 };
    const share = (waiting: number) => Array.from({ length: 100 }, (_, i) => shouldDropConnection(waiting, limit, () => i / 100)).filter(Boolean).length;
    expect(share(0)).toBe(0);
    expect(share(9)).toBe(0);
    expect(share(10)).toBe(30);
    expect(share(55)).toBe(65);
    expect(share(99)).toBe(99);
    expect(share(100)).toBe(100);
    expect(share(500)).toBe(100);
    expect(shouldDropConnection(5, { start: 5, rate: 100, full: 5 }, () => 0.99)).toBe(true);
  });
});
