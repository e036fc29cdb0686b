/**
 * A config file the user named — `--config F` or FERRY_CONFIG — must exist, for every command
 * that reads the config: `ferry up` and `ferry doctor` as `ferry image build` already did
 * (image-build-json.test.ts). Without it they went on with the defaults: `up` built and booted a
 * default guest, `doctor` reported "no such file; the defaults apply" as a passing check.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import type { Check } from '../../src/install/doctor.js';
import { runCli } from '../support/in-process-cli.js';

let dir: string;
let env: Record<string, string | undefined>;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-config-named-'));
  // Any build that got started would fail at once: its cache directory cannot be made.
  writeFileSync(path.join(dir, 'file'), '');
  env = {
    PATH: process.env.PATH,
    HOME: path.join(dir, 'home'),
    FERRY_STATE_DIR: path.join(dir, 'state'),
    FERRY_CACHE_DIR: path.join(dir, 'file', 'cache'),
    FERRY_LOG_DIR: path.join(dir, 'logs'),
    FERRY_PLATFORM: 'linux',
  };
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

it('`ferry up` with FERRY_CONFIG naming a missing file: exit 78, the file and FERRY_CONFIG named, nothing built', async () => {
  const missing = path.join(dir, 'gone.toml');
  const run = await runCli(['up'], { ...env, FERRY_CONFIG: missing });
  expect(run.code, run.stderr).toBe(ExitCode.Config);
  expect(run.stderr).toBe(`ferry: ${missing}: cannot read the configuration file (named by FERRY_CONFIG): no such file\n`);
});

it('`ferry up --config` naming a missing file: exit 78 too', async () => {
  const missing = path.join(dir, 'typo.toml');
  const run = await runCli(['up', '--config', missing], env);
  expect(run.code, run.stderr).toBe(ExitCode.Config);
  expect(run.stderr).toBe(`ferry: ${missing}: cannot read the configuration file: no such file\n`);
});

it('`ferry doctor --json` with FERRY_CONFIG naming a missing file: the config check fails, naming it, with a fix; exit 1', async () => {
  const missing = path.join(dir, 'gone.toml');
  const run = await runCli(['doctor', '--json', '--root', path.join(dir, 'root')], { ...env, FERRY_CONFIG: missing });
  expect(run.code).toBe(ExitCode.Failure);
  const report = JSON.parse(run.stdout) as { ok: boolean; checks: Check[] };
  expect(report.ok).toBe(false);
  expect(report.checks.find((check) => check.name === 'config')).toEqual({
    name: 'config',
    status: 'fail',
    detail: `${missing}: cannot read the configuration file (named by FERRY_CONFIG): no such file`,
    fix: expect.stringContaining('FERRY_CONFIG'),
  });
});
