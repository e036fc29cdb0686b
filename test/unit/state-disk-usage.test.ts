/**
 * The state disk's use, read from its superblock on the host, against what e2fsprogs' own
 * dumpe2fs reads from the same image: fresh from ferry's writer, and after e2fsprogs' debugfs
 * wrote a file into it (the guest's kernel keeps the same counts).
 */
import { execa } from 'execa';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureStateDisk } from '../../src/image/state-disk.js';
import { readFilesystemUsage } from '../../src/image/state-disk-usage.js';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-state-usage-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function dumpe2fs(image: string): Promise<{ size: number; free: number; reserved: number }> {
  const { stdout } = await execa('dumpe2fs', ['-h', image], { stderr: 'ignore' });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)$`, 'm').exec(stdout)![1]);
  const block = field('Block size');
  return { size: field('Block count') * block, free: field('Free blocks') * block, reserved: field('Reserved block count') * block };
}

describe('readFilesystemUsage', () => {
  it('reads what dumpe2fs reads: a fresh state disk, then one holding 48 MiB more', async () => {
    const image = path.join(work, 'state.img');
    await ensureStateDisk(image, 1024 ** 3);
    const fresh = (await readFilesystemUsage(image))!;
    const expected = await dumpe2fs(image);
    expect(fresh).toEqual({ sizeBytes: expected.size, usedBytes: expected.size - expected.free, freeBytes: expected.free, availableBytes: expected.free - expected.reserved });
    expect(fresh.sizeBytes).toBe(1024 ** 3);

    const data = path.join(work, 'data');
    await writeFile(data, Buffer.alloc(48 * 1024 ** 2, 7));
    await execa('debugfs', ['-w', '-R', `write ${data} data`, image]);
    const after = (await readFilesystemUsage(image))!;
    expect(after.freeBytes).toBe((await dumpe2fs(image)).free);
    expect(after.usedBytes - fresh.usedBytes).toBeGreaterThanOrEqual(48 * 1024 ** 2);
  });

  it('says undefined for a file that is not ext4', async () => {
    const other = path.join(work, 'zeros.img');
    await writeFile(other, Buffer.alloc(8192));
    expect(await readFilesystemUsage(other)).toBeUndefined();
    const short = path.join(work, 'short.img');
    await writeFile(short, 'x');
    expect(await readFilesystemUsage(short)).toBeUndefined();
  });
});
