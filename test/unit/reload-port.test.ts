/**
 * The daemon's reload of ferry.toml and the settings the running SSH front cannot change (port,
 * listen): the warning compares with what the front listens on. The image build is stubbed to
 * fail (the reload stops there; the guest keeps serving).
 */
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Logger } from 'pino';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { loadConfig } from '../../src/config/load.js';
import { resolvePaths } from '../../src/config/paths.js';
import type { FerryConfig } from '../../src/config/types.js';
import { ConfigReload } from '../../src/daemon/reload.js';

vi.mock('../../src/image/build.js', () => ({ buildImage: () => Promise.reject(new Error('no build in this test')) }));
vi.mock('../../src/keys/ferry-keys.js', () => ({ ferryKeys: () => ({}) }));

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-reload-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

it('a config file removed (the default port) and restored (the port the front has): the restored port is not "new"', async () => {
  const file = path.join(dir, 'ferry.toml');
  const text = '[daemon]\nport = 7123\n';
  writeFileSync(file, text);
  const paths = resolvePaths({ configFile: file, stateDir: path.join(dir, 'state'), cacheDir: path.join(dir, 'cache'), logDir: path.join(dir, 'logs'), env: {} });
  let config: FerryConfig = await loadConfig(file);
  const warnings: string[] = [];
  const ignore = () => {};
  const log = { warn: (_: unknown, message: string) => warnings.push(message), error: ignore, info: ignore, debug: ignore } as unknown as Logger;
  const reloader = new ConfigReload({
    paths,
    log,
    config: () => config,
    adopt: (next) => (config = next),
    setAuthorizedKeys: ignore,
    clientPublicKey: 'ssh-ed25519 AAAA test',
    swapTo: () => Promise.reject(new Error('not reached')),
  });

  unlinkSync(file);
  expect((await reloader.reload('removed')).outcome).toBe('build-error');
  expect(config.daemon.port).not.toBe(7123);
  expect(warnings).toEqual(['a new port takes effect when the daemon restarts']);

  writeFileSync(file, text);
  expect((await reloader.reload('restored')).outcome).toBe('build-error');
  expect(config.daemon.port).toBe(7123);
  expect(warnings).toEqual(['a new port takes effect when the daemon restarts']);

  // A real change warns once, and not again while it stays.
  writeFileSync(file, '[daemon]\nport = 7124\n');
  await reloader.reload('changed');
  writeFileSync(file, '[daemon]\nport = 7124\nlog-level = "debug"\n');
  await reloader.reload('changed again');
  expect(warnings).toEqual(['a new port takes effect when the daemon restarts', 'a new port takes effect when the daemon restarts']);
});
