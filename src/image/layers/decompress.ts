/**
 * Opens a possibly compressed file as a stream of its decompressed bytes.
 *
 * The compression is recognised by magic bytes, never by the file name, so `rootfs.tar` that is
 * really gzip (or `.tgz`, `.tzst`, …) just works. Every decoder error is re-raised as a
 * `DecompressError` that names the file, so a corrupt download is reported as such instead of
 * as a bare "incorrect header check".
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { PassThrough, Readable, Transform, type TransformCallback } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import * as zlib from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
// A CommonJS (webpack) bundle: Node cannot see its named exports from ESM, so take the default.
import xzDecompress from 'xz-decompress';

const { XzReadableStream } = xzDecompress;

export type Compression = 'gzip' | 'xz' | 'zstd' | 'none';

const MAGIC: Array<[Compression, Buffer]> = [
  ['gzip', Buffer.from([0x1f, 0x8b])],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['zstd', Buffer.from([0x28, 0xb5, 0x2f, 0xfd])],
];

/** Bytes needed by `detectCompression`. */
export const MAGIC_BYTES = 6;

export class DecompressError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DecompressError';
  }
}

/** Recognises the compression from the first bytes of a file (`MAGIC_BYTES` are enough). */
export function detectCompression(head: Uint8Array): Compression {
  for (const [compression, magic] of MAGIC) {
    if (head.length >= magic.length && Buffer.from(head.buffer, head.byteOffset, magic.length).equals(magic)) {
      return compression;
    }
  }
  return 'none';
}

/** Reads the first bytes of `path` and recognises its compression. */
export async function detectFileCompression(path: string): Promise<Compression> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(MAGIC_BYTES);
    const { bytesRead } = await handle.read(head, 0, MAGIC_BYTES, 0);
    return detectCompression(head.subarray(0, bytesRead));
  } finally {
    await handle.close();
  }
}

/**
 * Opens `path` and returns its decompressed bytes. Errors (unreadable file, corrupt or truncated
 * compressed data) are emitted on the returned stream as `DecompressError`s naming `path`.
 * Destroying the returned stream stops reading the file.
 */
export async function openDecompressed(path: string): Promise<{ compression: Compression; stream: Readable }> {
  const compression = await detectFileCompression(path);
  return { compression, stream: decompressStream(createReadStream(path, { highWaterMark: 1 << 20 }), compression, path) };
}

/** Decompresses `input` (already known to be `compression`); `name` is used in error messages. */
export function decompressStream(input: Readable, compression: Compression, name: string): Readable {
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  let decoder: Readable & { destroy(err?: Error): unknown };
  switch (compression) {
    case 'none':
      decoder = input;
      break;
    case 'gzip': {
      const gunzip = zlib.createGunzip({ chunkSize: 1 << 18 }); // bigger chunks: fewer trips through the tar parser
      input.pipe(gunzip);
      decoder = gunzip;
      break;
    }
    case 'zstd': {
      const zstd = nativeZstd() ?? new ZstdTransform();
      input.pipe(zstd);
      decoder = zstd;
      break;
    }
    case 'xz':
      // xz-decompress speaks web streams; Node converts both ways with backpressure preserved.
      decoder = Readable.fromWeb(
        new XzReadableStream(Readable.toWeb(input) as unknown as ReadableStream<Uint8Array>) as unknown as WebReadableStream,
      );
      break;
  }

  let failed = false;
  const fail = (stage: 'read' | 'decompress', err: Error): void => {
    if (failed) return;
    failed = true;
    const what =
      stage === 'read'
        ? `cannot read ${name}: ${err.message}`
        : `${name}: corrupt or truncated ${compression} data: ${explain(err.message)}`;
    out.destroy(new DecompressError(what, { cause: err }));
    input.destroy();
    if (decoder !== input) decoder.destroy();
  };
  input.on('error', (err) => fail('read', err));
  if (decoder !== input) decoder.on('error', (err) => fail('decompress', err));
  decoder.pipe(out);
  // When the consumer gives up early, stop reading the file too.
  out.on('close', () => {
    if (!input.destroyed) input.destroy();
    if (decoder !== input && !decoder.destroyed) decoder.destroy();
  });
  return out;
}

/**
 * Node's own zstd decoder (Node >= 22.15), about eight times faster than fzstd. Node 20, which
 * ferry still supports, lacks it; its typings do too, hence the lookup by name.
 */
function nativeZstd(): Transform | undefined {
  const create = (zlib as unknown as { createZstdDecompress?: () => Transform }).createZstdDecompress;
  return typeof create === 'function' ? create() : undefined;
}

/** A Node Transform around fzstd's streaming decoder (pure JavaScript, for Node 20). */
class ZstdTransform extends Transform {
  private readonly decoder: ZstdDecompress;
  private sawInput = false;

  constructor() {
    super({ readableHighWaterMark: 1 << 20 });
    this.decoder = new ZstdDecompress((data) => {
      // fzstd may reuse its window buffer: copy before handing the bytes on.
      if (data.length > 0) this.push(Buffer.from(data));
    });
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    try {
      this.sawInput ||= chunk.length > 0;
      this.decoder.push(chunk);
      callback();
    } catch (err) {
      callback(asError(err));
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      // `final` makes fzstd check that the last frame is complete (it throws on truncation).
      if (this.sawInput) this.decoder.push(new Uint8Array(0), true);
      callback();
    } catch (err) {
      callback(asError(err));
    }
  }
}

// xz-embedded's return codes, which xz-decompress reports only as numbers.
const XZ_ERRORS: Record<string, string> = {
  '2': 'unsupported integrity check',
  '3': 'out of memory',
  '4': 'memory limit reached',
  '5': 'not xz data',
  '6': 'unsupported xz options',
  '7': 'corrupt data',
  '8': 'unexpected end of data (truncated file?)',
};

function explain(message: string): string {
  const xz = /failed with error code (\d+)/.exec(message);
  return xz && XZ_ERRORS[xz[1]] ? `${XZ_ERRORS[xz[1]]} (${message})` : message;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
