/**
 * Spots a fixed text in a stream of chunks, across chunk boundaries, without keeping the stream:
 * only the last few bytes of each chunk are carried over. The front watches what the guest
 * sends for "No space left on device", the one failure whose fix is on the host's side.
 */
export const DISK_FULL_TEXT = 'No space left on device';

export class OutputSpotter {
  readonly #needle: Buffer;
  #tail = Buffer.alloc(0);
  #seen = false;

  constructor(text: string) {
    this.#needle = Buffer.from(text);
  }

  /** True the first time the text has passed, false before and after. */
  feed(chunk: Buffer): boolean {
    if (this.#seen) return false;
    const carry = this.#needle.length - 1;
    // Where the text may straddle the previous chunk and this one, then this chunk itself.
    const boundary = Buffer.concat([this.#tail, chunk.subarray(0, carry)]);
    if (boundary.includes(this.#needle) || chunk.includes(this.#needle)) {
      this.#seen = true;
      return true;
    }
    // A copy of the last bytes only: the chunk itself is not kept alive.
    this.#tail = Buffer.from(chunk.length >= carry ? chunk.subarray(chunk.length - carry) : Buffer.concat([this.#tail, chunk]).subarray(-carry));
    return false;
  }
}
