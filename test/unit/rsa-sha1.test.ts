/**
 * RSA keys log in to the SSH front with SHA-2 signatures only (rsa-sha2-256/512), as OpenSSH's
 * sshd does since 8.8: an `ssh-rsa` signature is SHA-1. A real OpenSSH client against a real
 * front, with the same allowed RSA key both times; the front has no guest behind it, so a
 * login that gets through is told it cannot reach the guest.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SshFront } from '../../src/daemon/ssh-front.js';
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-rsa-'));
const unreachable = { open: () => Promise.reject(new Error('no guest in this test')) };
let front: SshFront;
let port: number;
const key = path.join(dir, 'id_rsa');

beforeAll(async () => {
  await execa('ssh-keygen', ['-q', '-t', 'rsa', '-b', '2048', '-N', '', '-C', 'rsa user', '-f', key]);
  const publicKey = (await execa('cat', [`${key}.pub`])).stdout;
  front = new SshFront({ port: 0, hostKey: ensureKeyPair(path.join(dir, 'front_key'), 'test front').privateKey, authorizedKeys: [publicKey], guest: unreachable });
  ({ port } = await front.listen());
});
afterAll(async () => {
  await front?.close();
  rmSync(dir, { recursive: true, force: true });
});

const ssh = (...options: string[]) =>
  execa('ssh', ['-F', 'none', '-p', String(port), '-i', key, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', ...options, 'builder@127.0.0.1', 'true'], {
    reject: false,
    timeout: 30_000,
  });

describe('RSA logins to the SSH front', () => {
  // Not rsa-sha2-512: ssh2 1.17 advertises it glued to the name before it in server-sig-algs
  // ("…nistp521rsa-sha2-512", mscdex/ssh2#1485), so OpenSSH never picks it; it takes rsa-sha2-256.
  it("go through with rsa-sha2-256, and with OpenSSH's own choice", async () => {
    for (const options of [['-o', 'PubkeyAcceptedAlgorithms=rsa-sha2-256'], []]) {
      const result = await ssh(...options);
      expect(result.stderr, options.join(' ')).toContain('ferry: cannot reach the guest');
    }
  });

  it('are refused with an ssh-rsa (SHA-1) signature', async () => {
    const result = await ssh('-o', 'PubkeyAcceptedAlgorithms=ssh-rsa');
    expect(result.exitCode).toBe(255);
    expect(result.stderr).toContain('Permission denied (publickey)');
    expect(result.stderr).not.toContain('cannot reach the guest');
  });
});
