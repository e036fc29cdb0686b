/**
 * What the daemon watches (src/daemon/reload.ts, daemon.ts): ferry.toml and the host's nix.conf
 * with every file it includes — present or not yet — since the guest's binary caches follow the
 * host's. Real chokidar on real files.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hostNixConfFiles } from '../../src/config/host-nix-conf.js';
import { watchConfigFiles } from '../../src/daemon/reload.js';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-config-watch-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/**
 * Watches `files`, writes `file` until the watcher calls back (chokidar sets up its watch of a
 * missing file's directory after its `ready` event, so a write right away can go unseen), and
 * returns what it called back with.
 */
async function changeSeen(files: string[], file: string, text: string, attempts = 40): Promise<{ file: string; event: string }> {
  let seen: { file: string; event: string } | undefined;
  const watcher = watchConfigFiles(files, (changed, event) => (seen ??= { file: changed, event }));
  try {
    for (let attempt = 0; attempt < attempts && !seen; attempt++) {
      await writeFile(file, `${text}# ${attempt}\n`);
      for (let i = 0; i < 10 && !seen; i++) await new Promise((r) => setTimeout(r, 100));
    }
    return seen ?? { file: 'none', event: 'none' };
  } finally {
    await watcher.close();
  }
}

describe('the files the daemon watches', () => {
  it("nix.conf and what it includes, a missing !include among them (Determinate's nix.custom.conf appears later)", async () => {
    const nixConf = path.join(work, 'nix.conf');
    await writeFile(nixConf, 'include base.conf\n!include nix.custom.conf\n');
    await writeFile(path.join(work, 'base.conf'), '!include nix.conf\n'); // a loop is read once
    expect(hostNixConfFiles(nixConf)).toEqual([nixConf, path.join(work, 'base.conf'), path.join(work, 'nix.custom.conf')]);
  });

  it('a file that appears, and a change of one that exists, call back with that file', async () => {
    const ferryToml = path.join(work, 'ferry.toml');
    await writeFile(ferryToml, '');
    const nixConf = path.join(work, 'nix.conf');
    const files = [ferryToml, ...hostNixConfFiles(nixConf)];
    const custom = path.join(work, 'nix.custom.conf');
    // 'add', or 'change' when chokidar saw the file appear only after a first write it missed.
    expect(await changeSeen(files, custom, 'extra-substituters = http://cache.example\n')).toEqual({ file: custom, event: expect.stringMatching(/^(add|change)$/) });
    expect(await changeSeen(files, nixConf, 'include base.conf\n!include nix.custom.conf\nsubstituters =\n')).toEqual({ file: nixConf, event: 'change' });
    // A file outside the list is not watched.
    expect((await changeSeen([ferryToml], custom, 'substituters =\n', 3)).file).toBe('none');
  }, 90_000);
});
