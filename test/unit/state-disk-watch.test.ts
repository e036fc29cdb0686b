/**
 * What the guest's control command `df` prints (`stat -f -c '%S %b %f %a' MOUNT`), read as ferry
 * status reports it: checked against coreutils' own `df` on this machine's /tmp, and against
 * busybox's `stat` (the guest's applets) for the same filesystem.
 */
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { parseStatfs } from '../../src/daemon/state-disk-watch.js';

describe('parseStatfs', () => {
  it("reads stat -f's block counts as df -B1 reports them, from coreutils' stat and busybox's", async () => {
    const df = (await execa('df', ['-B1', '--output=size,used,avail', '/tmp'])).stdout.trim().split('\n')[1]!.trim().split(/\s+/).map(Number);
    for (const stat of [['stat'], ['busybox', 'stat']]) {
      const text = (await execa(stat[0]!, [...stat.slice(1), '-f', '-c', '%S %b %f %a', '/tmp'])).stdout;
      const usage = parseStatfs(text)!;
      expect(usage.sizeBytes, stat.join(' ')).toBe(df[0]);
      // df's "used" is size − free, as ours; another process may write between the two reads.
      expect(Math.abs(usage.usedBytes - df[1]!), stat.join(' ')).toBeLessThan(64 * 1024 ** 2);
      expect(Math.abs(usage.availableBytes - df[2]!), stat.join(' ')).toBeLessThan(64 * 1024 ** 2);
    }
  });

  it('refuses anything else', () => {
    for (const text of ['', '4096 10 5', '4096 10 5 x', '4096 10 5 4 3', '-1 10 5 4', 'ferry control: unknown command: df']) expect(parseStatfs(text), text).toBeUndefined();
    expect(parseStatfs('4096 100 40 30\n')).toEqual({ sizeBytes: 409600, usedBytes: 245760, freeBytes: 163840, availableBytes: 122880 });
  });
});
