/**
 * The guest's console as lines. Backends feed bytes in (from a growing log file, or a pty); the
 * daemon reads lines out: by listener, by async iteration, or by waiting for a readiness line.
 */
import { open, stat } from 'node:fs/promises';
import { FerryError } from '../errors.js';

export type LineListener = (line: string) => void;

export interface ConsoleStream extends AsyncIterable<string> {
  /** The lines seen so far in this boot (the most recent `historyLimit`). */
  history(): readonly string[];
  /** Calls `listener` for each new line; returns a function that unsubscribes. */
  onLine(listener: LineListener): () => void;
  /** The first line (already seen or still to come) matching `pattern`. */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray>;
  readonly closed: boolean;
}

const HISTORY_LIMIT = 5000;

export class LineConsole implements ConsoleStream {
  private readonly lines: string[] = [];
  private readonly listeners = new Set<LineListener>();
  private readonly closeListeners = new Set<(reason: string) => void>();
  private partial = '';
  private dropped = 0;
  private closeReason: string | undefined;

  constructor(private readonly label: string) {}

  get closed(): boolean {
    return this.closeReason !== undefined;
  }

  /** Feeds raw console bytes; complete lines are emitted, CRs and ANSI noise dropped. */
  push(chunk: string): void {
    if (this.closed) return;
    const text = this.partial + chunk;
    const parts = text.split('\n');
    this.partial = parts.pop() ?? '';
    for (const raw of parts) this.emit(raw);
  }

  /** No more lines: flushes a trailing partial line and ends waits and iterators. */
  close(reason: string): void {
    if (this.closed) return;
    if (this.partial) this.emit(this.partial);
    this.partial = '';
    this.closeReason = reason;
    for (const listener of this.closeListeners) listener(reason);
    this.closeListeners.clear();
    this.listeners.clear();
  }

  history(): readonly string[] {
    return this.lines;
  }

  onLine(listener: LineListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private onClose(listener: (reason: string) => void): () => void {
    if (this.closeReason !== undefined) {
      listener(this.closeReason);
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  waitForLine(pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const match = line.match(pattern);
      if (match) return Promise.resolve(match);
    }
    return new Promise((resolve, reject) => {
      const cleanups: Array<() => void> = [];
      const finish = (action: () => void): void => {
        for (const cleanup of cleanups) cleanup();
        action();
      };
      const timer = setTimeout(
        () => finish(() => reject(this.waitError(pattern, `no console line matched within ${timeoutMs} ms`))),
        timeoutMs,
      );
      cleanups.push(() => clearTimeout(timer));
      cleanups.push(
        this.onLine((line) => {
          const match = line.match(pattern);
          if (match) finish(() => resolve(match));
        }),
      );
      cleanups.push(this.onClose((reason) => finish(() => reject(this.waitError(pattern, reason)))));
    });
  }

  private waitError(pattern: RegExp, why: string): FerryError {
    const tail = this.lines.slice(-15).join('\n');
    return new FerryError(`${this.label}: waiting for a console line matching ${pattern}: ${why}`, {
      hint: tail ? `last console lines:\n${tail}` : 'the console printed nothing',
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    // `next` counts lines from the start of the boot; `dropped` of them fell out of the history.
    let next = this.dropped;
    while (true) {
      if (next < this.dropped) next = this.dropped;
      while (next - this.dropped < this.lines.length) {
        yield this.lines[next - this.dropped];
        next++;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          offLine();
          offClose();
          resolve();
        };
        const offLine = this.onLine(done);
        const offClose = this.onClose(done);
      });
    }
  }

  private emit(raw: string): void {
    // eslint-disable-next-line no-control-regex
    const line = raw.replace(/\r/g, '').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    this.lines.push(line);
    if (this.lines.length > HISTORY_LIMIT) {
      this.lines.shift();
      this.dropped++;
    }
    for (const listener of [...this.listeners]) listener(line);
  }
}

/**
 * Follows a log file as the hypervisor appends to it (qemu `-serial file:`, vfkit
 * `logFilePath=`). Polls rather than fs.watch: watch events are unreliable on macOS for files
 * written by another process, and a 100 ms poll is cheap next to a VM.
 */
export class FileTail {
  private offset = 0;
  private timer: NodeJS.Timeout | undefined;
  private reading = false;
  private readonly decoder = new TextDecoder('utf-8');

  constructor(
    private readonly file: string,
    private readonly sink: (text: string) => void,
    private readonly pollMs = 100,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.poll(), this.pollMs);
    this.timer.unref();
  }

  /** Reads whatever is left, then stops. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    while (this.reading) await new Promise((r) => setTimeout(r, 10));
    await this.poll();
  }

  async poll(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const info = await stat(this.file).catch(() => undefined);
      if (!info) return;
      if (info.size < this.offset) this.offset = 0; // truncated: the hypervisor started afresh
      if (info.size === this.offset) return;
      const handle = await open(this.file, 'r');
      try {
        const buffer = Buffer.alloc(Math.min(info.size - this.offset, 1 << 20));
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, this.offset);
        this.offset += bytesRead;
        this.sink(this.decoder.decode(buffer.subarray(0, bytesRead), { stream: true }));
      } finally {
        await handle.close();
      }
    } finally {
      this.reading = false;
    }
  }
}
