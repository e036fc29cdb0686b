/**
 * An image cache entry is reused only while it still looks as it did when it was written. The
 * cache finds entries by key, a hash of their inputs, not of their bytes: a file damaged after it
 * was written (zeros left by a power loss before its data reached the disk, a truncation, a
 * failing disk) would otherwise sit under a valid key and be booted every time after.
 *
 * Beside each entry, `NAME.check` records its size and the sha256 of its first and last 64 KiB:
 * an ext4 image's superblock, group descriptors and first bitmaps; a gzip'd cpio's header, first
 * entries and trailer (whose CRC and length cover the whole archive). A check reads those 128 KiB,
 * never the whole image (hundreds of MiB). The record is written (atomically, synced) only after
 * the entry itself is synced and in place, so it never vouches for bytes not yet on the disk; an
 * entry without one — interrupted between the two, or written before ferry kept records — is not
 * trusted either.
 */
import { createHash } from 'node:crypto';
import { open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { basename } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { ExitCode, FerryError } from '../errors.js';
import type { BuiltPart } from './manifest.js';

const SAMPLE_BYTES = 64 * 1024;

interface CheckRecord {
  sizeBytes: number;
  /** sha256 of bytes [0, 64 KiB) and [size − 64 KiB, size), the two clipped to the file and not overlapping. */
  sampleSha256: string;
}

export const checkRecordPath = (path: string): string => `${path}.check`;

/** Records the entry at `path` as it is now (call it once the entry is synced and in place); returns its size. */
export async function recordCacheEntry(path: string): Promise<number> {
  const record = await describe(path);
  await writeFileAtomic(checkRecordPath(path), `${JSON.stringify(record)}\n`);
  return record.sizeBytes;
}

/**
 * The size of the entry at `path` when it is there and matches its record. One that is there but
 * does not match (or has no readable record) is said through `onStep`, removed with its record,
 * and treated as missing, so the caller builds it again.
 */
export async function trustedCacheEntry(path: string, onStep?: (label: string) => void): Promise<number | undefined> {
  let actual: CheckRecord;
  try {
    actual = await describe(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const problem = mismatch(actual, await readRecord(path));
  if (problem === undefined) return actual.sizeBytes;
  onStep?.(`${basename(path)} in the image cache ${problem}: removed, building it again`);
  await rm(path, { force: true });
  await rm(checkRecordPath(path), { force: true });
  return undefined;
}

function mismatch(actual: CheckRecord, recorded: CheckRecord | string): string | undefined {
  if (typeof recorded === 'string') return recorded;
  if (actual.sizeBytes !== recorded.sizeBytes) return `has ${actual.sizeBytes} bytes, ${recorded.sizeBytes} when it was written`;
  if (actual.sampleSha256 !== recorded.sampleSha256) return 'does not have the first and last bytes it was written with';
  return undefined;
}

/** The record beside `path`, or why there is none to go by. */
async function readRecord(path: string): Promise<CheckRecord | string> {
  let text: string;
  try {
    text = await readFile(checkRecordPath(path), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'has no record of its size and checksum';
    throw error;
  }
  try {
    const record = JSON.parse(text) as Partial<CheckRecord>;
    if (typeof record.sizeBytes === 'number' && typeof record.sampleSha256 === 'string') return record as CheckRecord;
  } catch {
    // reported below, as any other unreadable record
  }
  return 'has a damaged record of its size and checksum';
}

async function describe(path: string): Promise<CheckRecord> {
  const handle = await open(path, 'r');
  try {
    const sizeBytes = (await handle.stat()).size;
    const head = Math.min(SAMPLE_BYTES, sizeBytes);
    const tailStart = Math.max(head, sizeBytes - SAMPLE_BYTES);
    const buffer = Buffer.alloc(head + (sizeBytes - tailStart));
    await readFully(handle, buffer.subarray(0, head), 0);
    await readFully(handle, buffer.subarray(head), tailStart);
    return { sizeBytes, sampleSha256: createHash('sha256').update(buffer).digest('hex') };
  } finally {
    await handle.close();
  }
}

/** Fills `target` from `position`; a file that shrank meanwhile leaves zeros, which then do not match. */
async function readFully(handle: FileHandle, target: Buffer, position: number): Promise<void> {
  for (let done = 0; done < target.length; ) {
    const { bytesRead } = await handle.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) return;
    done += bytesRead;
  }
}

/**
 * The cache entry at `path`: reused when it matches its record (above), otherwise made
 * by `build` (which writes it synced and in place) and recorded.
 */
export async function cachedPart(path: string, key: string, onStep: ((label: string) => void) | undefined, build: () => Promise<unknown>): Promise<BuiltPart> {
  const trusted = await trustedCacheEntry(path, onStep);
  if (trusted !== undefined) return { path, key, sizeBytes: trusted, cacheHit: true };
  await build();
  try {
    return { path, key, sizeBytes: await recordCacheEntry(path), cacheHit: false };
  } catch (error) {
    // Another build of the same key found this entry between its rename and its record, took it
    // for a damaged one and removed it: rare, and the next build finds or makes it whole.
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    throw new FerryError(`${path} was removed by another build while this one wrote it`, { exitCode: ExitCode.TempFail, hint: 'run the build again', cause: error });
  }
}
