/** `ferry uninstall` as a user runs it (program.ts's main, in this process): it takes `--yes`, as `ferry install` does. */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, expect, it, vi } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { main } from '../../src/program.js';

const savedEnv = { ...process.env };
let dir: string | undefined;
afterEach(() => {
  vi.restoreAllMocks();
  process.env = { ...savedEnv };
  if (dir) rmSync(dir, { recursive: true, force: true });
});

it('`ferry uninstall --yes` is accepted (as `ferry install --yes` is)', async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-uninstall-cli-'));
  const root = path.join(dir, 'root');
  mkdirSync(root);
  for (const name of ['FERRY_STATE_DIR', 'FERRY_CACHE_DIR', 'FERRY_LOG_DIR', 'FERRY_CONFIG']) delete process.env[name];
  process.env.HOME = path.join(root, 'home');
  let output = '';
  const capture = (chunk: unknown) => ((output += String(chunk)), true);
  vi.spyOn(process.stdout, 'write').mockImplementation(capture);
  vi.spyOn(process.stderr, 'write').mockImplementation(capture);
  const code = await main(['node', 'ferry', 'uninstall', '--yes', '--dry-run', '--root', root]);
  expect(output).not.toMatch(/unknown option/);
  expect(code).toBe(ExitCode.Ok);
  expect(output).toContain('dry run: nothing was changed');
});
