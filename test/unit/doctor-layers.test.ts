/**
 * `ferry doctor` checks the paths of `[[image.layers]]`: each exists and is what its layer reads
 * (a readable file for a tarball, a directory for a dir layer, a path in /nix/store for a nix
 * layer). A failure names the file, line and key, the path and what was expected, with a fix.
 * Through doctor() as the CLI calls it, and `ferry doctor --json`.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { doctor, renderChecks, type Check } from '../../src/install/doctor.js';
import { runCli } from '../support/in-process-cli.js';

const isRoot = process.getuid?.() === 0;

let dir: string;
let configFile: string;
let env: Record<string, string | undefined>;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-doctor-layers-'));
  configFile = path.join(dir, 'ferry.toml');
  env = { HOME: path.join(dir, 'home'), PATH: process.env.PATH, FERRY_CONFIG: configFile };
  writeFileSync(path.join(dir, 'rootfs.tar'), '');
  mkdirSync(path.join(dir, 'overlay'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A ferry.toml with these layers (each a TOML table body). */
function writeLayers(layers: string[]): void {
  writeFileSync(configFile, ['[vm]', 'accel = "tcg"', '', ...layers.flatMap((body) => ['[[image.layers]]', body, ''])].join('\n'));
}

async function layersCheck(): Promise<Check | undefined> {
  const checks = await doctor({ root: path.join(dir, 'root'), env, platform: 'linux' });
  expect(checks.find((check) => check.name === 'config')?.status).toBe('ok');
  return checks.find((check) => check.name === 'layers');
}

describe('ferry doctor: the layer paths', () => {
  it('layers that are what they say: one passing check listing them; no layers: no check', async () => {
    symlinkSync('rootfs.tar', path.join(dir, 'link.tar')); // followed, as the tar layer does
    writeLayers(['type = "tar"\npath = "link.tar"', 'type = "dir"\npath = "overlay"']);
    expect(await layersCheck()).toEqual({ name: 'layers', status: 'ok', detail: `tar ${path.join(dir, 'link.tar')}, dir ${path.join(dir, 'overlay')}` });
    writeLayers([]);
    expect(await layersCheck()).toBeUndefined();
  });

  it('a missing tarball, a directory as a tarball, a file as a dir layer, a nix path outside the store: each named with its key, line and what was expected', async () => {
    writeLayers([
      'type = "tar"\npath = "missing.tar"', // lines 4-6
      'type = "tar"\npath = "overlay"', // 8-10
      'type = "dir"\npath = "rootfs.tar"', // 12-14
      'type = "nix"\npaths = ["overlay", "/nix/store/no-such-path-ferry-test"]', // 16-18
    ]);
    const check = (await layersCheck())!;
    expect(check.status).toBe('fail');
    const problems = check.detail.split('; ');
    expect(problems).toEqual([
      `${configFile}:6: key \`image.layers[0].path\`: ${path.join(dir, 'missing.tar')}: does not exist (expected a readable tarball: a regular file, plain, gzip, xz or zstd)`,
      `${configFile}:10: key \`image.layers[1].path\`: ${path.join(dir, 'overlay')}: is a directory (expected a readable tarball: a regular file, plain, gzip, xz or zstd)`,
      `${configFile}:14: key \`image.layers[2].path\`: ${path.join(dir, 'rootfs.tar')}: is a regular file (expected a directory this user can list)`,
      expect.stringMatching(new RegExp(`^${configFile}:18: key \`image\\.layers\\[3\\]\\.paths\\[0\\]\`: ${path.join(dir, 'overlay')}: resolves to .*, outside /nix/store`)),
      expect.stringMatching(new RegExp(`^${configFile}:18: key \`image\\.layers\\[3\\]\\.paths\\[1\\]\`: /nix/store/no-such-path-ferry-test: does not exist`)),
    ]);
    expect(check.fix).toMatch(/correct its path/);
    expect(renderChecks([check])).toMatch(/^✗ layers: .*\n {4}fix: /);
  });

  it.skipIf(isRoot)('an unreadable tarball is named as such', async () => {
    chmodSync(path.join(dir, 'rootfs.tar'), 0o200);
    writeLayers(['type = "tar"\npath = "rootfs.tar"']);
    expect((await layersCheck())?.detail).toMatch(/rootfs\.tar: is not readable by this user \(expected a readable tarball/);
  });

  it('`ferry doctor --json`: the failing layers check in the report, exit 1', async () => {
    writeLayers(['type = "dir"\npath = "nowhere"']);
    const run = await runCli(['doctor', '--json', '--root', path.join(dir, 'root')], { ...env, FERRY_PLATFORM: 'linux' });
    expect(run.code).toBe(ExitCode.Failure);
    const report = JSON.parse(run.stdout) as { ok: boolean; checks: Check[] };
    expect(report.ok).toBe(false);
    expect(report.checks.find((check) => check.name === 'layers')).toEqual({
      name: 'layers',
      status: 'fail',
      detail: `${configFile}:6: key \`image.layers[0].path\`: ${path.join(dir, 'nowhere')}: does not exist (expected a directory this user can list)`,
      fix: expect.stringContaining(configFile),
    });
  });
});
