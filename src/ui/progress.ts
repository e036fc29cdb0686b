/**
 * Progress for long work. On a terminal: one line on stderr, redrawn in place, with a bar when
 * the total is known. Elsewhere (logs, CI, --json): a line per step, no redraws.
 */
import { humanBytes } from '../format.js';

export interface Progress {
  step(label: string): void;
  update(done: number, total: number, unit?: 'bytes' | 'items'): void;
  done(message?: string): void;
}

/**
 * The image writers' callbacks (buildImage, mkfs) shown on `progress`: each step by name, and the
 * data phase — the long one — as bytes.
 */
export function writerProgress(progress: Progress | undefined): {
  onStep: (label: string) => void;
  onProgress: (p: { phase: string; done: number; total: number }) => void;
} {
  return {
    onStep: (label) => progress?.step(label),
    onProgress: (p) => {
      if (p.phase === 'data') progress?.update(p.done, p.total, 'bytes');
    },
  };
}

export function createProgress(options: { stream?: NodeJS.WriteStream; quiet?: boolean } = {}): Progress {
  const stream = options.stream ?? process.stderr;
  if (options.quiet) return { step() {}, update() {}, done() {} };
  if (!stream.isTTY) {
    return {
      step: (label) => stream.write(`${label}…\n`),
      update() {},
      done: (message) => message && stream.write(`${message}\n`),
    };
  }
  let label = '';
  let lastDraw = 0;
  const draw = (text: string) => stream.write(`\r\x1b[2K${text}`);
  return {
    step(next) {
      if (label) stream.write('\n');
      label = next;
      draw(`${label}…`);
    },
    update(done, total, unit = 'items') {
      const now = Date.now();
      if (now - lastDraw < 80 && done < total) return;
      lastDraw = now;
      const width = 30;
      const fraction = total > 0 ? Math.min(1, done / total) : 0;
      const bar = '█'.repeat(Math.round(fraction * width)).padEnd(width, '░');
      const amounts = unit === 'bytes' ? `${humanBytes(done)} / ${humanBytes(total)}` : `${done} / ${total}`;
      draw(`${label} ${bar} ${Math.floor(fraction * 100)}% ${amounts}`);
    },
    done(message) {
      if (label) stream.write('\n');
      label = '';
      if (message) stream.write(`${message}\n`);
    },
  };
}

export { formatDurationMs, humanBytes } from '../format.js';
