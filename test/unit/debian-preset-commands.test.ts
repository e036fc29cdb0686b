/**
 * The debian preset's commands through the process runner, on the real tools: one file out of a
 * real .deb (dpkg-deb piped into tar by ferry, no shell), and mmdebstrap's failure as the one
 * ProcessError a user reads. (The full preset — apt downloads, a real mmdebstrap rootfs — runs in
 * the e2e suite.)
 */
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { extractDebMember } from '../../src/image/presets/apt.js';
import { cachedMmdebstrap } from '../../src/image/presets/mmdebstrap.js';
import { createExecaRunner, ProcessError } from '../../src/process/runner.js';

let work: string;
let deb: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-deb-'));
  const pkg = join(work, 'pkg');
  await mkdir(join(pkg, 'DEBIAN'), { recursive: true });
  await mkdir(join(pkg, 'usr', 'bin'), { recursive: true });
  await mkdir(join(pkg, 'usr', 'share', 'big'), { recursive: true });
  await writeFile(join(pkg, 'DEBIAN', 'control'), 'Package: ferry-test\nVersion: 1.0\nArchitecture: all\nMaintainer: ferry <ferry@example.org>\nDescription: test\n');
  await writeFile(join(pkg, 'usr', 'bin', 'wanted'), '#!/bin/sh\necho wanted\n');
  await chmod(join(pkg, 'usr', 'bin', 'wanted'), 0o755);
  // Enough beside it that tar keeps reading after the member (the pipe must not stall).
  await writeFile(join(pkg, 'usr', 'share', 'big', 'data'), Buffer.alloc(4 << 20, 7));
  deb = join(work, 'ferry-test.deb');
  const built = await createExecaRunner().run('dpkg-deb', ['--root-owner-group', '--build', pkg, deb]);
  expect(built.exitCode, built.stderr).toBe(0);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('extractDebMember', () => {
  it('extracts exactly the one member, mode included', async () => {
    const out = join(work, 'out');
    await mkdir(out);
    await extractDebMember(deb, out, './usr/bin/wanted');
    expect(await readFile(join(out, 'usr', 'bin', 'wanted'), 'utf8')).toBe('#!/bin/sh\necho wanted\n');
    expect(existsSync(join(out, 'usr', 'share', 'big'))).toBe(false);
  });

  it("names tar when the member is not in the package, and dpkg-deb when the package is not one", async () => {
    const out = join(work, 'out-missing');
    await mkdir(out);
    const missing = (await extractDebMember(deb, out, './usr/bin/absent').catch((e: unknown) => e)) as ProcessError;
    expect(missing).toBeInstanceOf(ProcessError);
    expect(missing.message).toMatch(/^tar -x \.\/usr\/bin\/absent exited with code 2: .*Not found in archive/);
    const notDeb = join(work, 'not.deb');
    await writeFile(notDeb, 'not an ar archive');
    const bad = (await extractDebMember(notDeb, out, './usr/bin/wanted').catch((e: unknown) => e)) as ProcessError;
    expect(bad).toBeInstanceOf(ProcessError);
    expect(bad.file === 'tar' || bad.file === 'dpkg-deb').toBe(true);
  });
});

describe('cachedMmdebstrap', () => {
  it('turns a failed mmdebstrap into one line with its exit code and what it said, and leaves no rootfs', async () => {
    const downloads = join(work, 'downloads');
    const error = (await cachedMmdebstrap(downloads, ['--variant=bogus', 'bookworm']).catch((e: unknown) => e)) as ProcessError;
    expect(error).toBeInstanceOf(ProcessError);
    expect(error.message).toMatch(/^mmdebstrap exited with code \d+: E: invalid variant/);
    expect(error.exitCode).toBe(ExitCode.Unavailable);
    expect(error.args.slice(0, 3)).toEqual(['--quiet', '--variant=bogus', 'bookworm']);
    expect(error.hint).toBe("mmdebstrap's suite and packages: --variant=bogus bookworm");
    expect(existsSync(join(downloads, 'rootfs'))).toBe(true);
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(join(downloads, 'rootfs'))).toEqual([]);
  });
});
