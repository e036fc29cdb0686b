/**
 * The SSH front's algorithms as an auditor sees them: a real `ssh-audit` (Debian's package;
 * scripts/setup-debian.sh installs it) against a real front. Any `fail` or `warn` fails the
 * test, but for one: Debian 12's ssh-audit 2.5 does not know OpenSSH's strict-kex marker
 * (kex-strict-s-v00@openssh.com, the Terrapin protection, which ssh2 advertises) and warns
 * about it as an unknown algorithm, twice; later versions know it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { SshFront } from '../../src/daemon/ssh-front.js';
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-audit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const unreachable = { open: () => Promise.reject(new Error('no guest in this test')) };

/** ssh-audit 2.5's two lines about the strict-kex marker it does not know. */
const STRICT_KEX_UNKNOWN_25 = [
  /^\(kex\) kex-strict-s-v00@openssh\.com +-- \[warn\] unknown algorithm$/,
  /^!!! WARNING: unknown algorithm\(s\) found!: kex-strict-s-v00@openssh\.com\. +Please email the full output above to the maintainer .*$/,
];

describe('ssh-audit against the SSH front', () => {
  it('finds nothing weak: curve25519, AES-GCM, etm MACs, no compression', async () => {
    const front = new SshFront({ port: 0, hostKey: ensureKeyPair(path.join(dir, 'front_key'), 'test front').privateKey, authorizedKeys: [], guest: unreachable });
    const { port } = await front.listen();
    try {
      const audit = (...args: string[]) => execa('ssh-audit', ['-n', '-p', String(port), ...args, '127.0.0.1'], { reject: false, timeout: 30_000 });
      const text = await audit();
      if ((text as { code?: string }).code === 'ENOENT') throw new Error('ssh-audit is not installed (scripts/setup-debian.sh installs it)');
      const lines = text.stdout.split('\n').map((line) => line.trim());
      expect(lines, text.stdout + text.stderr).toContain('(gen) banner: SSH-2.0-ferry');
      // Only its help names the version (with colours, whatever -n says).
      const version = /# ssh-audit v(\d+\.\d+)/.exec((await execa('ssh-audit', ['-h'], { reject: false })).stdout)?.[1];
      const accepted = version === '2.5' ? STRICT_KEX_UNKNOWN_25 : [];
      const complaints = lines.filter((line) => /\[(warn|fail)\]|^!!!|^-\[(warn|fail)\]/i.test(line));
      expect(complaints.filter((line) => !accepted.some((pattern) => pattern.test(line))), text.stdout).toEqual([]);

      const json = JSON.parse((await audit('-j')).stdout) as { kex: { algorithm: string }[]; enc: string[]; mac: string[]; compression: string[]; key: { algorithm: string }[] };
      expect(json.kex.map((k) => k.algorithm)).toEqual(['curve25519-sha256', 'curve25519-sha256@libssh.org', 'kex-strict-s-v00@openssh.com']);
      expect(json.key.map((k) => k.algorithm)).toEqual(['ssh-ed25519']);
      expect(json.enc).toEqual(['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com']);
      expect(json.mac).toEqual(['hmac-sha2-256-etm@openssh.com', 'hmac-sha2-512-etm@openssh.com']);
      expect(json.compression).toEqual(['none']);
    } finally {
      await front.close();
    }
  });
});
