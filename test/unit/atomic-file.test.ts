/**
 * publishDirectory: a staging directory becomes the cache directory in one rename; when another
 * process published the same directory first, theirs stays and ours goes; any other failure is
 * reported. On the real filesystem.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeStagingDir, publishDirectory, removeDeadTemporaries } from '../../src/atomic-file.js';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-publish-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function staged(name: string, content: string): Promise<string> {
  const staging = path.join(work, `.staging-${name}`);
  await mkdir(staging);
  await writeFile(path.join(staging, 'data'), content);
  return staging;
}

describe('publishDirectory', () => {
  it('renames the staging directory into place', async () => {
    const dir = path.join(work, 'first');
    await publishDirectory(await staged('first', 'ours'), dir, path.join(dir, 'data'));
    expect(await readFile(path.join(dir, 'data'), 'utf8')).toBe('ours');
    expect((await readdir(work)).filter((n) => n.startsWith('.staging-first'))).toEqual([]);
  });

  it('keeps what another process published first and removes its own staging directory', async () => {
    const dir = path.join(work, 'raced');
    await publishDirectory(await staged('raced-a', 'theirs'), dir, path.join(dir, 'data'));
    const late = await staged('raced-b', 'ours');
    await publishDirectory(late, dir, path.join(dir, 'data'));
    expect(await readFile(path.join(dir, 'data'), 'utf8')).toBe('theirs');
    expect(existsSync(late)).toBe(false);
  });

  it('throws when the rename fails and nothing usable is there', async () => {
    const dir = path.join(work, 'blocked');
    await mkdir(dir);
    await writeFile(path.join(dir, 'unrelated'), 'x'); // a non-empty directory: rename fails
    const staging = await staged('blocked', 'ours');
    await expect(publishDirectory(staging, dir, path.join(dir, 'data'))).rejects.toThrow(/ENOTEMPTY|EEXIST/);
  });
});

describe('removeDeadTemporaries', () => {
  it("removes a dead writer's temporary files and staging directories, keeps live ones and everything else", async () => {
    const { spawnSync } = await import('node:child_process');
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!; // exited: its pid names nobody now
    const dir = path.join(work, 'temporaries');
    await mkdir(dir);
    const names = {
      deadImage: `.system-abc.img.tmp-${dead}`,
      deadCpio: `.initramfs-abc.cpio.gz.tmp-${dead}-0a1b2c3d`,
      deadAtomic: `install.json.tmp-${dead}`,
      deadStaging: `.staging-${dead}-deadbeef`,
      ours: `.system-def.img.tmp-${process.pid}`,
      parent: `latest.json.tmp-${process.ppid}`,
      image: 'system-abc.img',
      lookalike: 'notes.tmp-later',
    };
    for (const [key, name] of Object.entries(names)) {
      if (key === 'deadStaging') await mkdir(path.join(dir, name));
      else await writeFile(path.join(dir, name), 'x');
    }
    const removed = removeDeadTemporaries(dir).map((file) => path.basename(file)).sort();
    expect(removed).toEqual([names.deadImage, names.deadCpio, names.deadAtomic, names.deadStaging].sort());
    expect((await readdir(dir)).sort()).toEqual([names.ours, names.parent, names.image, names.lookalike].sort());
    expect(removeDeadTemporaries(path.join(work, 'missing'))).toEqual([]);
  });

  it("a download's working directory (makeStagingDir) is removed once the process that made it is gone", async () => {
    const dir = await mkdtemp(path.join(work, 'downloads-'));
    const atomicFile = new URL('../../src/atomic-file.ts', import.meta.url).href;
    // Another process makes one and exits without cleaning up, as a killed download would.
    const { stdout } = await execa('node', ['--import', 'tsx', '--input-type=module', '-e', `const { makeStagingDir } = await import(${JSON.stringify(atomicFile)}); process.stdout.write(await makeStagingDir(${JSON.stringify(dir)}));`]);
    const ours = await makeStagingDir(dir);
    expect(removeDeadTemporaries(dir)).toEqual([stdout]);
    expect(await readdir(dir)).toEqual([path.basename(ours)]);
  });
});
