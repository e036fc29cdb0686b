/**
 * `ferry image build --json` as a user runs it (program.ts's main, in this process): a failure
 * prints a JSON error object on stdout, with the exit code and stderr it has without --json.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { main } from '../../src/program.js';

let dir: string;
let savedEnv: NodeJS.ProcessEnv;
let stdout: string;
let stderr: string;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-cli-'));
  savedEnv = { ...process.env };
  // Any build that got started would fail at once: its cache directory cannot be made.
  writeFileSync(path.join(dir, 'file'), '');
  Object.assign(process.env, { FERRY_STATE_DIR: path.join(dir, 'state'), FERRY_CACHE_DIR: path.join(dir, 'file', 'cache'), FERRY_LOG_DIR: path.join(dir, 'logs') });
  delete process.env.FERRY_CONFIG;
  stdout = '';
  stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk) => ((stdout += String(chunk)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => ((stderr += String(chunk)), true));
});
afterEach(() => {
  vi.restoreAllMocks();
  process.env = savedEnv;
  rmSync(dir, { recursive: true, force: true });
});

it('`ferry image build --json` failing prints a JSON error object on stdout, with the same exit code and stderr', async () => {
  const missing = path.join(dir, 'missing.toml');
  const code = await main(['node', 'ferry', 'image', 'build', '--json', '--config', missing]);
  expect(code).toBe(ExitCode.Config);
  expect(JSON.parse(stdout)).toEqual({ error: `${missing}: cannot read the configuration file: no such file`, exitCode: ExitCode.Config });
  expect(stderr).toBe(`ferry: ${missing}: cannot read the configuration file: no such file\n`);
});

it('`ferry image build` with FERRY_CONFIG naming a missing file fails naming it (not a build with the defaults)', async () => {
  const missing = path.join(dir, 'gone.toml');
  process.env.FERRY_CONFIG = missing;
  const code = await main(['node', 'ferry', 'image', 'build', '--json']);
  expect(code).toBe(ExitCode.Config);
  expect(JSON.parse(stdout)).toEqual({ error: `${missing}: cannot read the configuration file (named by FERRY_CONFIG): no such file`, exitCode: ExitCode.Config });
});
