/**
 * The SSH front's pieces that need no sshd: who may log in, the per-channel serial writer, the
 * listen-address rule, the persistent host key, and the session count / idle event (driven by
 * an in-process ssh2 client against a guest that cannot be reached).
 */
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, describe, expect, it } from 'vitest';
import { decideAuth, parseAllowedKeys } from '../../src/daemon/authorized-keys.js';
import { forgetResumedChunks, SerialChannelWriter, type WritableChannel } from '../../src/daemon/channel-writer.js';
import { isSessionLimitError } from '../../src/daemon/guest-pool.js';
import type { SessionRecord } from '../../src/daemon/session-log.js';
import { SshFront } from '../../src/daemon/ssh-front.js';

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

  it('accepts RSA keys signing with rsa-sha2-256', () => {
    const signer = parsedPrivate(rsa.private);
    expect(decideAuth(allowed, 'publickey', attempt(rsa.public, 'rsa-sha2-256', signer, 'sha256')).accept).toBe(true);
  });

  it('refuses an unknown key, a forged signature, a type mismatch, and every other method', () => {
    expect(decideAuth(allowed, 'publickey', attempt(other.public))).toMatchObject({ accept: false, reason: /unknown ssh-ed25519 key/ });
    // The allowed public key, signed by someone else's private key.
    const forged = attempt(mine.public, undefined, parsedPrivate(other.private));
    expect(decideAuth(allowed, 'publickey', forged)).toMatchObject({ accept: false, reason: /bad signature/ });
    const wrongAlgo = attempt(mine.public, 'ssh-rsa');
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
