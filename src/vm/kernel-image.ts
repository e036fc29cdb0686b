/**
 * Virtualization.framework boots only an uncompressed arm64 `Image` (vfkit's doc/usage.md: "The
 * kernel *must* be uncompressed or the VM will hang"). Distributions ship `vmlinuz` gzip'd, or
 * as an EFI zboot image (a small PE that carries the compressed Image). This unpacks either
 * into a cache, keyed by the content hash of the input so a new kernel never hits a stale file.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { writeFileAtomic } from '../atomic-file.js';
import { FerryError } from '../errors.js';
import { decompressStream, detectCompression, type Compression } from '../image/layers/decompress.js';

export type KernelFormat =
  | { kind: 'arm64-image' }
  | { kind: 'compressed'; compression: Exclude<Compression, 'none'> }
  | { kind: 'efi-zboot'; compression: string; payloadOffset: number; payloadSize: number }
  | { kind: 'unknown' };

/** arm64 Image header: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst). */
const ARM64_MAGIC_OFFSET = 0x38;
const ARM64_MAGIC = Buffer.from('ARMd', 'latin1');

/**
 * Recognises the format from the first 64 bytes. The zboot header (drivers/firmware/efi/libstub/
 * zboot-header.S): "MZ" at 0, "zimg" at 4, payload offset and size (u32 LE) at 8 and 12, the
 * compression name (NUL-terminated) at 24.
 */
export function detectKernelFormat(head: Buffer): KernelFormat {
  if (head.length >= ARM64_MAGIC_OFFSET + 4 && head.subarray(ARM64_MAGIC_OFFSET, ARM64_MAGIC_OFFSET + 4).equals(ARM64_MAGIC)) {
    return { kind: 'arm64-image' };
  }
  if (head.length >= 32 && head.toString('latin1', 0, 2) === 'MZ' && head.toString('latin1', 4, 8) === 'zimg') {
    const nameEnd = head.indexOf(0, 24);
    return {
      kind: 'efi-zboot',
      compression: head.toString('latin1', 24, nameEnd < 0 ? 32 : nameEnd),
      payloadOffset: head.readUInt32LE(8),
      payloadSize: head.readUInt32LE(12),
    };
  }
  const compression = detectCompression(head);
  if (compression !== 'none') return { kind: 'compressed', compression };
  return { kind: 'unknown' };
}

const ZBOOT_COMPRESSION: Record<string, Exclude<Compression, 'none'>> = { gzip: 'gzip', zstd: 'zstd', xz: 'xz' };

/**
 * The path of an uncompressed arm64 Image for `kernel`: the file itself if it already is one,
 * else a decompressed copy in `cacheDir` (written atomically and synced: atomic-file.ts).
 */
export async function ensureUncompressedKernel(kernel: string, cacheDir: string): Promise<string> {
  const handle = await open(kernel, 'r');
  const head = Buffer.alloc(64);
  try {
    await handle.read(head, 0, 64, 0);
  } finally {
    await handle.close();
  }
  const format = detectKernelFormat(head);
  if (format.kind === 'arm64-image') return kernel;
  if (format.kind === 'unknown') {
    throw new FerryError(`kernel ${kernel} is neither an arm64 Image nor a gzip/xz/zstd or EFI zboot compressed one`, {
      hint: 'vfkit needs an uncompressed arm64 kernel Image',
    });
  }

  const digest = createHash('sha256').update(await readFile(kernel)).digest('hex').slice(0, 32);
  const output = path.join(cacheDir, `${digest}-Image`);
  if (await stat(output).then((s) => s.isFile(), () => false)) return output;

  let source: Readable;
  let compression: Exclude<Compression, 'none'>;
  if (format.kind === 'efi-zboot') {
    const known = ZBOOT_COMPRESSION[format.compression];
    if (!known) {
      throw new FerryError(`kernel ${kernel} is an EFI zboot image compressed with ${format.compression}; ferry unpacks gzip, xz and zstd`);
    }
    compression = known;
    source = createReadStream(kernel, { start: format.payloadOffset, end: format.payloadOffset + format.payloadSize - 1 });
  } else {
    compression = format.compression;
    source = createReadStream(kernel);
  }

  const chunks: Buffer[] = [];
  for await (const chunk of decompressStream(source, compression, kernel)) chunks.push(Buffer.from(chunk as Uint8Array));
  const image = Buffer.concat(chunks);
  if (detectKernelFormat(image.subarray(0, 64)).kind !== 'arm64-image') {
    throw new FerryError(`kernel ${kernel} decompressed (${compression}) to something that is not an arm64 Image`, {
      hint: 'vfkit boots arm64 kernels only',
    });
  }
  await mkdir(cacheDir, { recursive: true });
  // Synced before it is renamed into place: a zeroed file under this name would be booted every time.
  await writeFileAtomic(output, image);
  return output;
}
