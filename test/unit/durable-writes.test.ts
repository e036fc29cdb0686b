/**
 * Every file ferry writes is on the disk before its name is: each writer syncs its temporary file,
 * renames it into place, then syncs the directory (atomic-file.ts). The real fs calls run (files
 * are really written); node:fs and node:fs/promises are wrapped only to record, in order, which
 * path each sync and rename was for.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it, vi } from 'vitest';

const events: string[] = [];
/** `.NAME.tmp-PID-RANDOM` → `NAME.tmp`, a directory → `DIR/`, so the expected orders read plainly. */
const label = (path: string): string => {
  const name = basename(path).replace(/^\.(.*)\.tmp-\d+-[0-9a-f]+$/, '$1.tmp');
  return path === work ? 'DIR/' : name;
};

vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const opened = new Map<number, string>();
  return {
    ...fs,
    openSync: (path: string, flags: import('node:fs').OpenMode = 'r', mode?: import('node:fs').Mode) => {
      const fd = fs.openSync(path, flags, mode);
      opened.set(fd, path);
      return fd;
    },
    fsyncSync: (fd: number) => {
      events.push(`sync ${label(opened.get(fd) ?? '?')}`);
      fs.fsyncSync(fd);
    },
    renameSync: (from: string, to: string) => {
      events.push(`rename ${label(from)} → ${label(to)}`);
      fs.renameSync(from, to);
    },
  };
});

vi.mock('node:fs/promises', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...fs,
    open: async (path: string, flags?: string | number, mode?: import('node:fs').Mode) => {
      const handle = await fs.open(path, flags, mode);
      const sync = handle.sync.bind(handle);
      handle.sync = async () => {
        events.push(`sync ${label(path)}`);
        await sync();
      };
      return handle;
    },
    rename: async (from: string, to: string) => {
      events.push(`rename ${label(from)} → ${label(to)}`);
      await fs.rename(from, to);
    },
  };
});

const { writeFileAtomic, writeFileAtomicSync, writeThroughTemp } = await import('../../src/atomic-file.js');
const { writeExt4 } = await import('../../src/image/ext4/index.js');
const { writeGzippedCpio } = await import('../../src/image/initramfs/index.js');
const { Tree } = await import('../../src/image/tree.js');

const work = mkdtempSync(join(tmpdir(), 'ferry-durable-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
beforeEach(() => {
  events.length = 0;
});

describe('each writer syncs the file, renames it, then syncs the directory', () => {
  it('writeFileAtomic', async () => {
    await writeFileAtomic(join(work, 'a.json'), '{"a":1}\n');
    expect(events).toEqual(['sync a.json.tmp', 'rename a.json.tmp → a.json', 'sync DIR/']);
    expect(readFileSync(join(work, 'a.json'), 'utf8')).toBe('{"a":1}\n');
  });

  it('writeFileAtomicSync', () => {
    writeFileAtomicSync(join(work, 'b.json'), '{"b":1}\n', 0o600);
    expect(events).toEqual(['sync b.json.tmp', 'rename b.json.tmp → b.json', 'sync DIR/']);
    expect(readFileSync(join(work, 'b.json'), 'utf8')).toBe('{"b":1}\n');
  });

  it('the ext4 writer', async () => {
    const tree = new Tree();
    tree.add('/etc', { kind: 'dir', perm: 0o755 });
    tree.add('/etc/hostname', { kind: 'file', perm: 0o644, size: 6, content: { kind: 'bytes', data: Buffer.from('ferry\n') } });
    await writeExt4(tree, join(work, 'system.img'));
    expect(events).toEqual(['sync system.img.tmp', 'rename system.img.tmp → system.img', 'sync DIR/']);
  });

  it('the cpio writer', async () => {
    await writeGzippedCpio([{ kind: 'file', path: 'init', data: Buffer.from('#!/bin/sh\n'), mode: 0o755 }], join(work, 'c.cpio.gz'), { mtime: 0 });
    expect(events).toEqual(['sync c.cpio.gz.tmp', 'rename c.cpio.gz.tmp → c.cpio.gz', 'sync DIR/']);
  });
});

describe('a failed write', () => {
  it('leaves no temporary file and the old content in place', async () => {
    const target = join(work, 'kept.json');
    writeFileSync(target, 'old');
    await expect(
      writeThroughTemp(target, async (handle) => {
        await handle.writeFile('half');
        throw new Error('the source went away');
      }),
    ).rejects.toThrow('the source went away');
    expect(readFileSync(target, 'utf8')).toBe('old');
    expect(events).toEqual([]); // neither synced nor renamed
    expect(readdirSync(work).filter((name) => name.includes('.tmp-'))).toEqual([]);
  });

  it('of a path that cannot be renamed over (a directory) leaves no temporary file, async and sync', async () => {
    const dir = join(work, 'is-a-dir');
    await (await import('node:fs/promises')).mkdir(join(dir, 'inside'), { recursive: true });
    await expect(writeFileAtomic(dir, 'x')).rejects.toThrow(/EISDIR|ENOTEMPTY|EEXIST/);
    expect(() => writeFileAtomicSync(dir, 'x')).toThrow(/EISDIR|ENOTEMPTY|EEXIST/);
    expect(readdirSync(work).filter((name) => name.includes('.tmp-'))).toEqual([]);
  });
});
