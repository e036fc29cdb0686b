import { describe, expect, it } from 'vitest';
import { DISK_FULL_TEXT, OutputSpotter } from '../../src/daemon/output-spotter.js';

describe('OutputSpotter', () => {
  const text = `error: writing to file: ${DISK_FULL_TEXT}\n`;

  it('spots the text in one chunk, once', () => {
    const spotter = new OutputSpotter(DISK_FULL_TEXT);
    expect(spotter.feed(Buffer.from('building...\n'))).toBe(false);
    expect(spotter.feed(Buffer.from(text))).toBe(true);
    expect(spotter.feed(Buffer.from(text))).toBe(false);
  });

  it('spots it split at every position, and across many one-byte chunks', () => {
    for (let at = 1; at < text.length; at++) {
      const spotter = new OutputSpotter(DISK_FULL_TEXT);
      expect(spotter.feed(Buffer.from(text.slice(0, at))) || spotter.feed(Buffer.from(text.slice(at))), `split at ${at}`).toBe(true);
    }
    const bytewise = new OutputSpotter(DISK_FULL_TEXT);
    expect([...Buffer.from(text)].map((byte) => bytewise.feed(Buffer.from([byte]))).filter(Boolean)).toHaveLength(1);
  });

  it('does not see it where it is not: a near miss, and the text cut by other bytes', () => {
    const spotter = new OutputSpotter(DISK_FULL_TEXT);
    expect(spotter.feed(Buffer.from('No space left on devic'))).toBe(false);
    expect(spotter.feed(Buffer.from('X e'))).toBe(false);
    expect(spotter.feed(Buffer.from('No space left on disk'))).toBe(false);
  });
});
