/**
 * Whole-file writes that readers see either before or after, never half done, and that are on
 * the disk before anyone trusts them: the data goes to a temporary file beside the target (same
 * filesystem), which is synced, renamed over the target, and then the directory is synced. Used
 * for every record, manifest, config and key ferry writes, and (through `syncDirectory`) by the
 * ext4 and cpio writers; a failed write leaves no temp file. Cache directories (downloads,
 * rootfs tarballs) are filled in a staging directory beside them and published the same way.
 *
 * Why both syncs: without the file's, a power loss soon after the rename can leave the new name
 * on a file of zeros (the rename reached the journal, the data did not), and a cache key then
 * names a zeroed image that is booted every time after; without the directory's, the rename
 * itself can be lost. The syncs are not optional: no caller can skip them.
 *
 * On macOS fsync(2) only hands the data to the drive, which may keep it in its volatile cache.
 * Node's fs.fsync, fs.fsyncSync and FileHandle.sync are libuv's uv_fs_fsync, and libuv's
 * uv__fs_fsync (src/unix/fs.c) issues fcntl(fd, F_FULLFSYNC) on Apple platforms, falling back
 * to F_BARRIERFSYNC and then fsync where the filesystem lacks it (read in libuv v1.46.0, the one
 * Node 20 bundles, and unchanged in v1.52). So the plain Node calls here are full syncs there.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fchmodSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';

/**
 * `.NAME.tmp-PID-RANDOM` beside `path`: hidden, named by its writer's pid (removeDeadTemporaries
 * finds a dead writer's by it), and unique, so two writes of one path in one process never share
 * (or remove) each other's temporary file.
 */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
}

export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await writeThroughTemp(path, (handle) => handle.writeFile(data), mode);
}

export function writeFileAtomicSync(path: string, data: string | Uint8Array, mode = 0o644): void {
  const temp = tempPathFor(path);
  try {
    const fd = openSync(temp, 'wx', mode);
    try {
      fchmodSync(fd, mode); // exactly the mode asked for: the umask neither loosens nor tightens it
      const bytes = typeof data === 'string' ? Buffer.from(data) : data;
      for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
  syncDirectorySync(dirname(path));
}

/**
 * The general form of writeFileAtomic, for content written in pieces or streamed (the cpio
 * writer, the concatenated initrd): `fill` writes through the open handle of a new temporary file
 * beside `path`; then the file is synced, renamed over `path`, and the directory synced.
 */
export async function writeThroughTemp(path: string, fill: (handle: FileHandle) => Promise<void>, mode = 0o644): Promise<void> {
  const temp = tempPathFor(path);
  try {
    const handle = await open(temp, 'wx', mode);
    try {
      await fill(handle);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
  await syncDirectory(dirname(path));
}

/**
 * The last step of a pipeline into writeThroughTemp's handle: every chunk written in order at the
 * handle's position, the handle left open for the sync. (`handle.createWriteStream({ autoClose:
 * false })` instead left Node 20's pipeline waiting for a close that never came.)
 */
export function writeChunksTo(handle: FileHandle): (chunks: AsyncIterable<Uint8Array>) => Promise<void> {
  return async (chunks) => {
    for await (const chunk of chunks) {
      for (let done = 0; done < chunk.length; ) done += (await handle.write(chunk, done, chunk.length - done)).bytesWritten;
    }
  };
}

/**
 * Errors that say this filesystem cannot sync (or open) a directory — some network and FUSE
 * filesystems — rather than that the disk failed: the rename is then as durable as the filesystem
 * makes it, and the write is not failed for it. EIO and the like are thrown.
 */
const DIRECTORY_SYNC_UNSUPPORTED = new Set(['EINVAL', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EISDIR', 'EACCES', 'EPERM']);

function unsupported(error: unknown): boolean {
  return DIRECTORY_SYNC_UNSUPPORTED.has((error as NodeJS.ErrnoException).code ?? '');
}

/** Makes the renames into `dir` durable (opened read-only and fsynced: see the module comment). */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle;
  try {
    handle = await open(dir, 'r');
  } catch (error) {
    if (unsupported(error)) return;
    throw error;
  }
  try {
    await handle.sync();
  } catch (error) {
    if (!unsupported(error)) throw error;
  } finally {
    await handle.close();
  }
}

export function syncDirectorySync(dir: string): void {
  let fd: number;
  try {
    fd = openSync(dir, 'r');
  } catch (error) {
    if (unsupported(error)) return;
    throw error;
  }
  try {
    fsyncSync(fd);
  } catch (error) {
    if (!unsupported(error)) throw error;
  } finally {
    closeSync(fd);
  }
}

/**
 * Puts a finished staging directory in place as `dir` (beside it, so one rename), its files and
 * directories synced first and the parent after, as for a file. If another process published
 * `dir` first — `proof`, a path inside it, exists — theirs is kept and the staging directory
 * removed; otherwise the rename's error is thrown.
 */
export async function publishDirectory(staging: string, dir: string, proof: string = dir): Promise<void> {
  try {
    await syncTree(staging);
    await rename(staging, dir);
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    if (!existsSync(proof)) throw error;
    return;
  }
  await syncDirectory(dirname(dir));
}

/** fsyncs every regular file and directory under `dir` (children first), `dir` itself last. */
async function syncTree(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await syncTree(path);
    else if (entry.isFile()) {
      const handle = await open(path, 'r');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
  }
  await syncDirectory(dir);
}

/**
 * A name for a working or staging directory in `parent` that removeDeadTemporaries recognises
 * (`.staging-PID-HEX`): if this process is killed while it works there, the next build removes it.
 */
export function stagingPathIn(parent: string): string {
  return join(parent, `.staging-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/** A new, empty directory at stagingPathIn(parent). */
export async function makeStagingDir(parent: string): Promise<string> {
  const dir = stagingPathIn(parent);
  await mkdir(dir);
  return dir;
}

/**
 * What a process leaves beside its targets while it writes: `NAME.tmp-PID…` (atomic writes, the
 * ext4 and cpio writers), `.staging-PID-…` (published directories). The pid says whose it is.
 */
const TEMPORARY_NAME = /(?:\.tmp-|^\.staging-)(\d+)(?:-[0-9a-f]+)?$/;

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, someone else's. Only ESRCH says it is gone.
    return (error as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * Removes the temporary files and staging directories in `dir` whose writer is no longer running
 * (killed mid-build: a system image's temporary file is hundreds of MiB). Those of live processes,
 * this one's included, are left alone. Returns the paths removed; a missing `dir` is nothing to do.
 */
export function removeDeadTemporaries(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const name of names) {
    const match = TEMPORARY_NAME.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    const path = join(dir, name);
    rmSync(path, { recursive: true, force: true });
    removed.push(path);
  }
  return removed;
}
