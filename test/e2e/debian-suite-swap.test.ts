/**
 * guest.debian-suite on one state disk, for real: a trixie guest (Nix 2.26) builds a path, then
 * the same state disk boots a bookworm guest (Nix 2.8) — the rollback a user gets by setting
 * `debian-suite = "bookworm"` again — and back to trixie.
 *
 * Why this works, and what would break it: both Nix versions keep the database at schema 10
 * (`nixSchemaVersion` in src/libstore/local-store.hh, unchanged from 2.8.0 to 2.26.3), so 2.8's
 * check (`current Nix store schema is version %1%, but I only support %2%`) passes. 2.26 adds
 * only a `SchemaMigrations` table (its fine-grained migrations, 2024), left empty unless
 * ca-derivations is enabled, and 2.8 never reads it. A future suite whose Nix bumps the schema
 * would make the older guest's nix-daemon refuse the store: this test is the alarm for that.
 *
 * Images go to this test's own cache (so `ferry up` boots what this test built), downloads are
 * the shared ones (~/.cache/ferry-test/ferry-cache/downloads).
 */
import { execa } from 'execa';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SHARED = path.join(homedir(), '.cache', 'ferry-test', 'ferry-cache');

let work: string;
let env: Record<string, string>;
let paths: FerryPaths;

function configText(suite: 'trixie' | 'bookworm'): string {
  return `[guest]\ndebian-suite = "${suite}"\ncpus = 2\nmemory = "1GiB"\nstate-disk-size = "2GiB"\n\n[guest.nix]\nextra-config = "substituters ="\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n`;
}

function ferry(args: string[]) {
  return execa('node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), ...args], { env, reject: false, timeout: 900_000, cwd: ROOT });
}

function ssh(command: string) {
  return execa('ssh', ['-F', paths.sshConfig, 'ferry-guest', command], { reject: false, timeout: 300_000 });
}

/** Builds the image for `suite` and boots it on the test's state disk; the guest's Nix version. */
async function boot(suite: 'trixie' | 'bookworm'): Promise<string> {
  await writeFile(env.FERRY_CONFIG, configText(suite));
  const built = await ferry(['image', 'build', '--json']);
  expect(built.exitCode, built.stderr).toBe(0);
  const up = await ferry(['up', '--json']);
  expect(up.exitCode, `ferry up (${suite}) failed:\n${up.stderr}\n${await readFile(paths.consoleLog, 'utf8').catch(() => '')}`).toBe(0);
  return (await ssh('nix-store --version')).stdout.trim();
}

async function down(): Promise<void> {
  const result = await ferry(['down']);
  expect(result.exitCode, result.stderr).toBe(0);
}

const derivation = (name: string) =>
  `nix-build --no-out-link -E 'derivation { name = "${name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo ${name} > $out"]; }'`;

beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-suite-swap-'));
  const cache = path.join(work, 'cache');
  await mkdir(path.join(SHARED, 'downloads'), { recursive: true });
  await mkdir(cache);
  await symlink(path.join(SHARED, 'downloads'), path.join(cache, 'downloads'));
  env = { ...(process.env as Record<string, string>), FERRY_STATE_DIR: path.join(work, 'state'), FERRY_CACHE_DIR: cache, FERRY_CONFIG: path.join(work, 'ferry.toml') };
  paths = resolvePaths({ env });
});

afterAll(async () => {
  await ferry(['down']).catch(() => undefined);
  if (process.env.FERRY_E2E_KEEP) console.log(`kept ${work}`);
  else await rm(work, { recursive: true, force: true });
});

describe('trixie → bookworm → trixie on one state disk', () => {
  let trixiePath: string;

  it('trixie (Nix 2.26) builds a path into the state disk', async () => {
    expect(await boot('trixie')).toMatch(/^nix-store \(Nix\) 2\.26\./);
    const built = await ssh(derivation('made-by-trixie'));
    expect(built.exitCode, built.stderr).toBe(0);
    trixiePath = built.stdout.trim().split('\n').at(-1)!;
    expect((await ssh('cat /nix/var/nix/db/schema')).stdout).toBe('10');
    await down();
  }, 900_000);

  it('bookworm (Nix 2.8) opens that database: the path is valid, new builds and a verify work', async () => {
    const version = await boot('bookworm');
    // A trixie guest here means the config's suite never reached the preset (src/image/build.ts, resolvePreset).
    expect(version, 'guest.debian-suite = "bookworm" booted a guest with another Nix').toMatch(/^nix-store \(Nix\) 2\.8\./);
    expect((await ssh('cat /nix/var/nix/db/schema')).stdout).toBe('10');
    const valid = await ssh(`nix-store --check-validity ${trixiePath} && cat ${trixiePath}`);
    expect(valid.exitCode, valid.stderr).toBe(0);
    expect(valid.stdout).toBe('made-by-trixie');
    const built = await ssh(derivation('made-by-bookworm'));
    expect(built.exitCode, built.stderr).toBe(0);
    const verify = await ssh('nix-store --verify --check-contents');
    expect(verify.exitCode, verify.stderr).toBe(0);
    expect(verify.stderr).not.toMatch(/error|warning/i);
    await down();
  }, 900_000);

  it('back on trixie, both paths are there', async () => {
    expect(await boot('trixie')).toMatch(/^nix-store \(Nix\) 2\.26\./);
    const both = await ssh(`nix-store --check-validity ${trixiePath} && nix-store --verify`);
    expect(both.exitCode, both.stderr).toBe(0);
    await down();
  }, 900_000);
});
