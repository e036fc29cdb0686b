/**
 * What a dynamically linked busybox needs in the initramfs (src/image/initramfs/runtime.ts),
 * checked against the real dynamic loader: the program's own loader, `ld.so --list PROGRAM` (what
 * ldd runs, without ldd's host loader), must name exactly the files programRuntime carries. The binary is Debian's busybox
 * linked as nixpkgs links its `busybox` (test/support/nixpkgs-busybox.ts).
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FerryError } from '../../src/errors.js';
import { programRuntime } from '../../src/image/initramfs/runtime.js';
import { nixpkgsShapedBusybox, type NixpkgsShapedBusybox } from '../support/nixpkgs-busybox.js';

let shaped: NixpkgsShapedBusybox;
let work: string;

beforeAll(async () => {
  shaped = await nixpkgsShapedBusybox();
  work = await mkdtemp(join(tmpdir(), 'ferry-runtime-'));
}, 120_000);

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

/** The files `loader` maps for `program`, as `--list` prints them (the loader included). */
async function loaderList(loader: string, program: string): Promise<string[]> {
  const { stdout } = await execa(loader, ['--list', program]);
  return stdout
    .split('\n')
    .map((line) => /=> (\/\S+)/.exec(line)?.[1] ?? /^\s*(\/\S+)/.exec(line)?.[1])
    .filter((path): path is string => path !== undefined);
}

describe('programRuntime', () => {
  it('names the loader and exactly the libraries the real loader maps, at their store paths', async () => {
    const program = join(shaped.busybox, 'bin/busybox');
    const runtime = await programRuntime(program);
    expect(runtime.interpreter).toBe(`${shaped.glibc}/lib/ld-linux-x86-64.so.2`);
    expect(runtime.files[0]).toBe(runtime.interpreter);
    expect([...runtime.files].sort()).toEqual((await loaderList(runtime.interpreter!, program)).sort());
    expect(runtime.files.every((file) => file.startsWith(`${shaped.glibc}/lib/`))).toBe(true);
  });

  it('is empty for a static program', async () => {
    expect(await programRuntime('/bin/busybox')).toEqual({ files: [] });
  });

  it('names the library it cannot find, and where it looked', async () => {
    // The host's own ls: its libraries are found through ld.so.cache, which nothing in an
    // initramfs would have; it names no RUNPATH, so only the loader's directory is searched.
    const ls = (await execa('sh', ['-c', 'command -v ls'])).stdout.trim();
    const error = await programRuntime(ls).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FerryError);
    expect((error as FerryError).message).toMatch(new RegExp(`^${ls} is dynamically linked, and it needs lib\\S+\\.so\\.\\d+, which is in none of /lib64$`));
  });

  it('says which file it cannot read', async () => {
    const missing = join(work, 'no-such-program');
    await expect(programRuntime(missing)).rejects.toThrow(new RegExp(`^cannot read ${missing}: ENOENT`));
  });
});
