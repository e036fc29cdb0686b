/**
 * ferry's key pairs must always be readable by ssh2 (the daemon loads its host key with it) and
 * by OpenSSH. ssh2 1.17's generator makes a malformed ed25519 pair about 1 time in 256, so 2,000
 * pairs straight from it would almost surely include one (P ≈ 0.9996); ferry's must not.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, describe, expect, it } from 'vitest';
import { resolvePaths } from '../../src/config/paths.js';
import { ferryKeys } from '../../src/keys/ferry-keys.js';
import { ensureKeyPair, generateKeyPair } from '../../src/keys/ssh-keys.js';

const work = mkdtempSync(join(tmpdir(), 'ferry-keys-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('ssh key pairs', () => {
  it('every generated pair parses, private and public half', () => {
    for (let i = 0; i < 2000; i++) {
      const pair = generateKeyPair('t');
      expect(ssh2.utils.parseKey(pair.private)).not.toBeInstanceOf(Error);
      expect(ssh2.utils.parseKey(pair.public)).not.toBeInstanceOf(Error);
    }
  });

  it('ensureKeyPair writes a mode 600 private key that OpenSSH reads, and keeps it on the next call', () => {
    const path = join(work, 'keys', 'id');
    const first = ensureKeyPair(path, 'ferry-test');
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const derived = execFileSync('ssh-keygen', ['-y', '-f', path], { encoding: 'utf8' }).trim();
    expect(first.publicKey.startsWith(derived)).toBe(true);
    expect(ensureKeyPair(path, 'ferry-test').privateKey).toBe(first.privateKey);
  });

  it('ferryKeys makes every pair ferry uses once, where paths names them, and loads the same ones after', () => {
    const paths = resolvePaths({ env: { FERRY_STATE_DIR: join(work, 'state'), FERRY_CACHE_DIR: join(work, 'cache') } });
    const first = ferryKeys(paths);
    expect([first.daemonHost.privatePath, first.client.privatePath, first.guestHost.privatePath, first.guestClient.privatePath]).toEqual([
      paths.daemonHostKey,
      paths.clientKey,
      paths.guestHostKey,
      paths.guestClientKey,
    ]);
    expect(new Set(Object.values(first).map((pair) => pair.publicKey)).size).toBe(4);
    for (const pair of Object.values(first)) expect(statSync(pair.privatePath).mode & 0o777).toBe(0o600);
    expect(statSync(paths.keysDir).mode & 0o777).toBe(0o700);
    const again = ferryKeys(paths);
    for (const name of ['daemonHost', 'client', 'guestHost', 'guestClient'] as const) expect(again[name].privateKey).toBe(first[name].privateKey);
  });
});
