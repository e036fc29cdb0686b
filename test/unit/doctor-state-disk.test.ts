/**
 * `ferry doctor` reports the state disk: not made yet, how full (from its superblock when no
 * guest runs), a warning below guest.nix.min-free, and a failure when guest.state-disk-size is
 * smaller than the disk (ferry never shrinks it). Through doctor() as the CLI calls it, on a
 * disk made by the code the daemon runs (ensureStateDisk).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { doctor, type Check } from '../../src/install/doctor.js';
import { hostContext } from '../../src/install/install.js';
import { ensureStateDisk } from '../../src/image/state-disk.js';

let dir: string;
let env: Record<string, string | undefined>;
const GiB = 1024 ** 3;

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-doctor-state-'));
  env = { HOME: path.join(dir, 'home'), PATH: process.env.PATH, FERRY_CONFIG: path.join(dir, 'ferry.toml') };
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

async function stateDiskCheck(config: string): Promise<Check> {
  writeFileSync(env.FERRY_CONFIG!, `[vm]\naccel = "tcg"\n${config}`);
  const checks = await doctor({ root: path.join(dir, 'root'), env, platform: 'linux' });
  return checks.find((check) => check.name === 'state disk')!;
}

describe('ferry doctor: the state disk', () => {
  it('not made yet; then its use from the superblock; a warning below min-free; a failure when the size is below the disk', async () => {
    const disk = hostContext({ root: path.join(dir, 'root'), env, platform: 'linux' }).layout.paths.stateDisk;
    expect(await stateDiskCheck('[guest]\nstate-disk-size = "1GiB"\n')).toEqual({ name: 'state disk', status: 'ok', detail: `${disk} is made at the first boot (1.0 GiB, sparse)` });

    await ensureStateDisk(disk, GiB);
    const fresh = await stateDiskCheck('[guest]\nstate-disk-size = "1GiB"\n');
    expect(fresh.status).toBe('ok');
    expect(fresh.detail).toMatch(new RegExp(`^${disk}: \\d+\\.\\d MiB of 1\\.0 GiB used \\(\\d+%\\), \\d+\\.\\d MiB free; garbage collected below 205\\.0 MiB free \\(as of the guest’s last stop\\)$`));

    const low = await stateDiskCheck('[guest]\nstate-disk-size = "1GiB"\n[guest.nix]\nmin-free = "1000MiB"\n');
    expect(low).toMatchObject({ status: 'warn', fix: expect.stringContaining('guest.state-disk-size') });
    expect(low.detail).toContain('the next build starts with a garbage collection');

    await ensureStateDisk(disk, 2 * GiB); // grown, as a larger size does
    const shrunk = await stateDiskCheck('[guest]\nstate-disk-size = "1GiB"\n');
    expect(shrunk).toMatchObject({ status: 'fail', detail: `${disk} is 2.0 GiB, guest.state-disk-size says 1.0 GiB: ferry never shrinks it (that would lose /nix), so the guest will not boot` });
  });
});
