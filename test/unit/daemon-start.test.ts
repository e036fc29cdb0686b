/**
 * A `ferry daemon` that cannot start — its port is taken — says so once and leaves nothing
 * behind: the real CLI (from source) in a fresh state dir, a real listener on the port. The
 * front listens before any image is built, so this fails in a second, not after a build.
 */
import { execa } from 'execa';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { resolvePaths } from '../../src/config/paths.js';

const REPO = path.resolve(import.meta.dirname, '../..');
let dir: string;
let holder: net.Server;

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-daemon-start-'));
  holder = net.createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
});
afterEach(async () => {
  await new Promise((resolve) => holder.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

it('the port in use: one message and exit 69, no pid file, no control socket, no image built', async () => {
  const port = (holder.address() as AddressInfo).port;
  const env = { FERRY_STATE_DIR: path.join(dir, 'state'), FERRY_CACHE_DIR: path.join(dir, 'cache'), FERRY_CONFIG: path.join(dir, 'ferry.toml') };
  writeFileSync(env.FERRY_CONFIG, `[guest]\npreset = "debian"\n[daemon]\nport = ${port}\n`);
  const started = performance.now();
  const result = await execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), 'daemon', '--json-logs'], { cwd: REPO, reject: false, env, timeout: 60_000 });
  const ms = performance.now() - started;

  expect(result.exitCode, result.stderr).toBe(69);
  const said = `${result.stdout}\n${result.stderr}`;
  expect(said.match(/in use/g)).toHaveLength(1);
  expect(result.stderr).toBe(
    `ferry: cannot listen on 127.0.0.1:${port}: the port is in use\n` +
      'hint: is another ferry daemon (another state dir) running? Else set [daemon] port in ferry.toml to a free one',
  );
  // Under launchd/systemd stdout and stderr land in one file: the JSON log says nothing more of it.
  const logged = result.stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: number; msg: string });
  expect(logged.filter((entry) => entry.level >= 40)).toEqual([]);
  const paths = resolvePaths({ env });
  expect(existsSync(paths.daemonLog)).toBe(true); // it got past its log and pid file
  expect(existsSync(paths.daemonPid)).toBe(false);
  expect(existsSync(paths.controlSocket)).toBe(false);
  expect(existsSync(paths.imagesDir)).toBe(false);
  expect(ms).toBeLessThan(30_000);
}, 90_000);

it('`--config` naming a missing file: exit 78 naming it, nothing started; FERRY_CONFIG naming one: the defaults, as while running', async () => {
  const env = { FERRY_STATE_DIR: path.join(dir, 'state'), FERRY_CACHE_DIR: path.join(dir, 'cache') };
  const missing = path.join(dir, 'typo.toml');
  const result = await execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), 'daemon', '--config', missing], { cwd: REPO, reject: false, env, timeout: 60_000 });
  expect(result.exitCode, result.stderr).toBe(78);
  expect(result.stderr).toContain(`${missing}: cannot read the configuration file: no such file`);
  expect(existsSync(resolvePaths({ env }).daemonPid)).toBe(false);
  // The installed service sets FERRY_CONFIG; a file removed since is no reason to crash-loop: the
  // daemon takes the defaults and gets as far as listening on the default port, held here.
  const defaultPort = net.createServer();
  const held = await new Promise<boolean>((resolve) => defaultPort.once('error', () => resolve(false)).listen(31322, '127.0.0.1', () => resolve(true)));
  try {
    const viaEnv = await execa('node', ['--import', 'tsx', path.join(REPO, 'src/cli.ts'), 'daemon', '--json-logs'], { cwd: REPO, reject: false, env: { ...env, FERRY_CONFIG: missing }, timeout: 60_000 });
    expect(viaEnv.stderr).not.toContain('cannot read the configuration file');
    // Whoever holds 31322 (this test, or something else on this machine), the daemon got to it.
    expect(viaEnv.stderr, `held by this test: ${held}`).toContain('cannot listen on 127.0.0.1:31322: the port is in use');
  } finally {
    await new Promise((resolve) => defaultPort.close(resolve));
  }
}, 90_000);
