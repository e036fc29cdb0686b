/**
 * The daemon's own ssh_config alias (builder_ssh_config), written by the real writer and read by
 * the real OpenSSH client: with `[daemon] listen = "::1"` it reaches a real SshFront on ::1 (host
 * key pinned, client key accepted) and nothing answers on 127.0.0.1 at that port.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, describe, expect, it } from 'vitest';
import { resolvePaths } from '../../src/config/paths.js';
import { BUILDER_ALIAS, frontAddress, writeDaemonSshConfig } from '../../src/daemon/ssh-alias.js';
import { SshFront } from '../../src/daemon/ssh-front.js';
import { ferryKey } from '../../src/keys/ferry-keys.js';
import { connectOutcome } from '../support/daemon.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-alias-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const unreachable = { open: () => Promise.reject(new Error('no guest in this test')) };

describe('the daemon’s builder alias', () => {
  it('formats addresses as ssh and readers write them', () => {
    expect(frontAddress('127.0.0.1', 31322)).toBe('127.0.0.1:31322');
    expect(frontAddress('::1', 31322)).toBe('[::1]:31322');
  });

  it('with listen = "::1": HostName ::1 (no brackets), and OpenSSH through it reaches the front on ::1 only', async () => {
    const paths = resolvePaths({ env: { FERRY_STATE_DIR: path.join(dir, 'state'), FERRY_CACHE_DIR: path.join(dir, 'cache') } });
    const client = ferryKey(paths, 'client');
    const front = new SshFront({ host: '::1', port: 0, hostKey: ferryKey(paths, 'daemonHost').privateKey, authorizedKeys: [client.publicKey], guest: unreachable });
    const listening = await front.listen();
    try {
      expect(listening.host).toBe('::1');
      const file = writeDaemonSshConfig(paths, listening);
      expect(file).toBe(paths.builderSshConfig);
      const text = readFileSync(file, 'utf8');
      expect(text).toMatch(/^\s+HostName ::1$/m);
      expect(text).toMatch(new RegExp(`^\\s+Port ${listening.port}$`, 'm'));

      // OpenSSH's own reading of the file.
      const resolved = await execa('ssh', ['-G', '-F', file, BUILDER_ALIAS]);
      expect(resolved.stdout).toMatch(/^hostname ::1$/m);
      expect(resolved.stdout).toMatch(new RegExp(`^port ${listening.port}$`, 'm'));

      // A real login through the alias: host key pinned, key accepted; the front's own message
      // (it has no guest here) proves the session reached it.
      const login = await execa('ssh', ['-F', file, BUILDER_ALIAS, 'true'], { reject: false, stdin: 'ignore', timeout: 30_000 });
      expect(login.stderr).toContain('ferry: cannot reach the guest: no guest in this test');
      expect(login.exitCode).toBe(255);

      expect(await connectOutcome('::1', listening.port)).toBe('connected');
      expect(await connectOutcome('127.0.0.1', listening.port)).toBe('ECONNREFUSED');
    } finally {
      await front.close();
    }
  });
});
