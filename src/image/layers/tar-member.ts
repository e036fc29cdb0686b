/**
 * The pieces of reading one tar member that the tar layer builds on: its body as a pull-only
 * iterable, its padded size, PAX numbers, ext4's time range, and waiting out backpressure.
 */
import type { Header } from 'tar-stream';

/** A header as tar-stream hands it over, with the fields its typings leave out. */
export type RawHeader = Header & { byteOffset?: number; pax?: Record<string, string> | null };

/**
 * One member's body, handed to a visitor. Its chunks may be read partly or not at all; `drain`
 * then skips the rest. (Breaking out of tar-stream's own entry iterator would destroy the whole
 * archive stream, so the visitor gets an iterable that only ever pulls.)
 */
export class MemberBody {
  private readonly iterator: AsyncIterator<Buffer>;
  private done = false;
  /** An error from reading the archive itself (as opposed to one from whoever reads the chunks). */
  failure: unknown;

  /**
   * `bodiless`: tar-stream reads no body for a directory, but its entry stream ends only when the
   * size field is 0; pulling from a directory whose size field is not 0 waited forever (found by
   * test/unit/tar-fuzz.test.ts: nothing left pending, so the CLI exited 0 without an image).
   */
  constructor(entry: AsyncIterable<Buffer>, bodiless: boolean) {
    this.iterator = entry[Symbol.asyncIterator]();
    this.done = bodiless;
  }

  readonly chunks: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]: () => ({
      next: async () => {
        if (this.done) return { done: true, value: undefined };
        return this.pull();
      },
      // Deliberately not forwarded: the rest is skipped by `drain`.
      return: async () => ({ done: true, value: undefined }),
    }),
  };

  async drain(): Promise<void> {
    while (!this.done) await this.pull();
  }

  private async pull(): Promise<IteratorResult<Buffer>> {
    try {
      const result = await this.iterator.next();
      if (result.done) this.done = true;
      return result;
    } catch (err) {
      this.failure = err;
      throw err;
    }
  }
}

/** ext4's seconds: a signed 32-bit field plus two epoch bits in *_extra. */
export const MIN_TIME = -(2 ** 31);
export const MAX_TIME = 2 ** 34 - 2 ** 31 - 1;

export function paddedSize(header: RawHeader): number {
  // tar-stream reads no body for directories, whatever their size field says.
  if (header.type === 'directory') return 0;
  return Math.ceil(header.size / 512) * 512;
}

export function paxNumber(value: string | undefined): number | undefined {
  if (value === undefined || value.trim() === '') return undefined;
  const number = Number(value);
  return Number.isFinite(number) ? Math.floor(number) : undefined;
}

export function drainOrClose(stream: { once(event: string, listener: () => void): unknown; off(event: string, listener: () => void): unknown }): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.once('drain', done);
    stream.once('close', done);
  });
}
