/**
 * `ferry status` with no daemon: exit 69, as its --help says, with --json too — scripts tell "not
 * running" from the exit code (scripts/check-platform.ts waits on it). Through main() as the CLI runs.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { runCli } from '../support/in-process-cli.js';

let home: string;
beforeEach(() => {
  home = mkdtempSync(path.join(os.tmpdir(), 'ferry-status-cli-'));
});
afterEach(() => rmSync(home, { recursive: true, force: true }));

it('no daemon: exit 69 with and without --json; --json still prints daemon null and why', async () => {
  const socket = path.join(home, 'ferry.sock');
  const json = await runCli(['status', '--json'], { FERRY_STATE_DIR: home, PATH: process.env.PATH });
  expect(json.code).toBe(ExitCode.Unavailable);
  expect(JSON.parse(json.stdout)).toEqual({ daemon: null, error: `the ferry daemon is not running (no answer on ${socket})` });
  const plain = await runCli(['status'], { FERRY_STATE_DIR: home, PATH: process.env.PATH });
  expect(plain.code).toBe(ExitCode.Unavailable);
  expect(plain.stderr).toContain('the ferry daemon is not running');
});
