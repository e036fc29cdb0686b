/**
 * The state disk never fills ("Builds users can trust", item 3), with the real tools: the daemon
 * from source, the host's real nix-build, the debian-preset guest under qemu (tcg) on a 1 GiB
 * state disk.
 *
 * - Builds that together need more than the disk all succeed: the guest's Nix collects garbage
 *   (min-free / max-free, "auto": a fifth and two fifths of the disk) — what builds leave behind
 *   in a builder is garbage (a remote build's outputs went to the host already).
 * - `ferry status --json` reports the disk's use.
 * - A single build larger than the disk fails with a message naming the state disk and
 *   guest.state-disk-size, and the next build succeeds.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { shellQuote } from '../../src/vm/instance/ssh.js';
import { configText, TestDaemon } from '../support/daemon.js';

const MiB = 1024 ** 2;
const OUTPUT_MIB = 160;
const BUILDS = 7; // 7 × 160 MiB = 1120 MiB on a 1 GiB disk

describe('a 1 GiB state disk', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => configText(port).replace('state-disk-size = "4GiB"', 'state-disk-size = "1GiB"'));
  }, 300_000);

  afterAll(async () => {
    expect(await daemon?.stop()).toBe(0);
  }, 120_000);

  it(`${BUILDS} builds of ${OUTPUT_MIB} MiB each all succeed: the guest's Nix collects garbage before the disk is full`, async () => {
    // Built by the guest's own nix-build through the daemon's front, so the outputs stay in the
    // guest (unrooted: garbage once built) instead of crossing to the host at tcg's pace.
    const said: string[] = [];
    for (let i = 0; i < BUILDS; i++) {
      const expression = `derivation { name = "ferry-e2e-garbage-${i}-${Date.now()}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "dd if=/dev/zero of=$out bs=1048576 count=${OUTPUT_MIB}" ]; }`;
      const result = await daemon.ssh(['nix-build', '--no-out-link', '-E', shellQuote(expression)], { timeoutMs: 300_000 });
      expect(result.exitCode, `build ${i}: ${result.stderr}\n--- daemon log ---\n${daemon.log().slice(-3000)}`).toBe(0);
      said.push(result.stderr);
    }
    // Nix's auto-GC says so to the client whose build triggered it, or in nix-daemon's own log.
    const log = await daemon.ssh(['cat /var/log/nix-daemon.log']);
    expect(`${said.join('\n')}\n${log.stdout}`).toMatch(/auto-GC|garbage collect|deleting/);
    const status = await daemon.status();
    expect(status.stateDisk).toMatchObject({ source: 'guest', sizeBytes: expect.any(Number), usedBytes: expect.any(Number), freeBytes: expect.any(Number) });
    expect(status.stateDisk!.sizeBytes).toBeLessThanOrEqual(1024 * MiB);
    expect(status.stateDisk!.availableBytes).toBeGreaterThan(0);
  }, 1_800_000);

  it('a build larger than the disk fails naming the state disk and guest.state-disk-size; the next build succeeds', async () => {
    const tooBig = await daemon.nixBuild('larger-than-the-disk', 'dd if=/dev/zero of=$out bs=1048576 count=1200', { timeoutMs: 300_000 });
    expect(tooBig.exitCode).not.toBe(0);
    expect(tooBig.stderr).toContain('No space left on device');
    expect(tooBig.stderr).toMatch(/ferry: the guest's state disk .* is full.*guest\.state-disk-size/);
    const next = await daemon.nixBuild('after-the-full-disk', 'echo fine > $out');
    expect(next.exitCode, next.stderr).toBe(0);
  }, 600_000);
});
