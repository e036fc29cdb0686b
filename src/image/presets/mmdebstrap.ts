/**
 * Runs mmdebstrap into the download cache: one tarball per key (a hash of everything that makes
 * it), built in a staging directory and renamed into place, so an interrupted run never leaves
 * a half-written rootfs where a build would trust it.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { publishDirectory, stagingPathIn } from '../../atomic-file.js';
import { ExitCode } from '../../errors.js';
import { ProcessError, type Runner } from '../../process/runner.js';
import { hostRunner } from './apt.js';
import { DOWNLOAD_FILES } from '../../config/paths.js';
import { runRetrying } from '../../process/retry.js';

export async function cachedMmdebstrap(
  downloadsDir: string,
  argv: readonly string[],
  options: { keyExtra?: readonly string[]; env?: Record<string, string>; runner?: Runner } = {},
): Promise<string> {
  const key = createHash('sha256')
    .update(JSON.stringify(['mmdebstrap', ...argv, ...(options.keyExtra ?? [])]))
    .digest('hex')
    .slice(0, 16);
  const root = join(downloadsDir, DOWNLOAD_FILES.rootfsDir);
  const dir = join(root, key);
  const tar = join(dir, DOWNLOAD_FILES.rootfsTar);
  if (existsSync(tar)) return tar;
  await mkdir(root, { recursive: true });
  const staging = stagingPathIn(root);
  await mkdir(staging);
  try {
    const args = ['--quiet', ...argv, join(staging, DOWNLOAD_FILES.rootfsTar)];
    // mmdebstrap runs apt: a download cut short or apt's lock held is tried again (retry.ts).
    const result = await runRetrying(options.runner ?? hostRunner, 'mmdebstrap', args, { env: options.env });
    if (result.exitCode !== 0) {
      throw new ProcessError('mmdebstrap', args, result, {
        exitCode: ExitCode.Unavailable,
        hint: result.errorCode === 'ENOENT' ? 'apt-get install mmdebstrap' : `mmdebstrap's suite and packages: ${argv.filter((arg) => !arg.includes('\n')).join(' ')}`,
      });
    }
    await publishDirectory(staging, dir, tar); // or another process's, if it made the same rootfs first
    return tar;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
