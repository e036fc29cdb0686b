/**
 * One write at a time into a server channel, whether it is for stdout or stderr.
 *
 * Why: in ssh2 1.17 a server channel keeps one "waiting for window" slot per stream
 * (`_chunk` for stdout, `_chunkErr` for stderr) but, when the client grants more window, resumes
 * only the first one it finds (lib/server.js, CHANNEL_WINDOW_ADJUST) and never clears a slot
 * after resuming it. With stdout and stderr waiting together, stderr is never resumed (a stall),
 * and a later wait re-sends an old stdout chunk and calls its callback twice (data sent twice).
 * So this writer lets a stderr write start only once the previous stdout write has been handed
 * to the protocol, and vice versa, and clears the stale slots after each write completes (safe
 * then: nothing else of this channel is waiting).
 */
import { EventEmitter } from 'node:events';

export type OutputStream = 'stdout' | 'stderr';

/** The part of a server channel the writer uses: the channel itself is stdout. */
export interface WritableChannel {
  write(chunk: Buffer, callback: (error?: Error | null) => void): boolean;
  readonly stderr: { write(chunk: Buffer, callback: (error?: Error | null) => void): boolean };
}

export interface SerialWriterOptions {
  /** Above this many queued bytes `write()` returns false; 'drain' follows when the queue empties. */
  readonly highWaterMark?: number;
  /** Called after every completed write, before the next one starts. */
  readonly afterEachWrite?: () => void;
}

/**
 * Events: 'drain' (queue was above the high-water mark and is now empty), 'idle' (queue empty and
 * no write in flight), 'error' (a write failed; the queue is dropped).
 */
export class SerialChannelWriter extends EventEmitter {
  readonly #channel: WritableChannel;
  readonly #highWaterMark: number;
  readonly #afterEachWrite: (() => void) | undefined;
  readonly #queue: { stream: OutputStream; data: Buffer }[] = [];
  #queuedBytes = 0;
  #writing = false;
  #needDrain = false;
  #failed: Error | undefined;

  constructor(channel: WritableChannel, options: SerialWriterOptions = {}) {
    super();
    this.#channel = channel;
    this.#highWaterMark = options.highWaterMark ?? 1024 * 1024;
    this.#afterEachWrite = options.afterEachWrite;
  }

  /** Bytes accepted but not yet handed to the channel. */
  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  /** True while nothing is queued or being written. */
  get idle(): boolean {
    return !this.#writing && this.#queue.length === 0;
  }

  /** Queue `data` for `stream`. Returns false when the caller should pause until 'drain'. */
  write(stream: OutputStream, data: Buffer): boolean {
    if (this.#failed !== undefined) return false;
    if (data.length > 0) {
      this.#queue.push({ stream, data });
      this.#queuedBytes += data.length;
      this.#pump();
    }
    const below = this.#queuedBytes < this.#highWaterMark;
    if (!below) this.#needDrain = true;
    return below;
  }

  /** Resolves when everything queued so far has been handed to the channel (or writing failed). */
  whenIdle(): Promise<void> {
    if (this.idle || this.#failed !== undefined) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.off('idle', done);
        this.off('error', done);
        resolve();
      };
      this.on('idle', done);
      this.on('error', done);
    });
  }

  /** Drop whatever is queued (the channel is gone). */
  discard(): void {
    this.#queue.length = 0;
    this.#queuedBytes = 0;
  }

  #pump(): void {
    if (this.#writing || this.#failed !== undefined) return;
    const next = this.#queue.shift();
    if (next === undefined) {
      if (this.#needDrain) {
        this.#needDrain = false;
        this.emit('drain');
      }
      this.emit('idle');
      return;
    }
    this.#queuedBytes -= next.data.length;
    this.#writing = true;
    const target = next.stream === 'stdout' ? this.#channel : this.#channel.stderr;
    target.write(next.data, (error) => {
      this.#writing = false;
      if (error) {
        this.#failed = error;
        this.discard();
        this.emit('error', error);
        return;
      }
      this.#afterEachWrite?.();
      this.#pump();
    });
  }
}

/**
 * Clear ssh2 1.17's "waiting for window" slots of a server channel once its write completed (see
 * the module comment). Only call it when no write of this channel is pending.
 */
export function forgetResumedChunks(channel: object): void {
  const slots = channel as { _chunk?: unknown; _chunkcb?: unknown; _chunkErr?: unknown; _chunkcbErr?: unknown };
  slots._chunk = undefined;
  slots._chunkcb = undefined;
  slots._chunkErr = undefined;
  slots._chunkcbErr = undefined;
}
