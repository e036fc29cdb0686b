/**
 * The daemon's first seconds, end to end (issue "Builds users can trust", item 4): the real
 * `ferry daemon`, the host's real nix-build and OpenSSH client through the alias the daemon
 * writes, the debian-preset guest under qemu (tcg).
 *
 * - A fresh state dir and an empty image cache: the front answers at once; a build started a
 *   second after the daemon waits while the image is built and the guest boots, then succeeds.
 * - An image that cannot be built (a tar layer that does not exist): a session gets the build's
 *   error on stderr and a non-zero exit, the daemon stays up and status says why; once the
 *   config is fixed the next build succeeds, without a restart.
 * - SIGTERM while the first image builds: the daemon ends at once (exit 0), the build abandoned.
 *
 * One daemon (at most one boot) per block.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { configText, TestDaemon } from '../support/daemon.js';

const timings: Record<string, number> = {};

function expectBuilt(result: { exitCode: number | undefined; stderr: string; stdout: string; name: string }, daemon: TestDaemon): string {
  expect(result.exitCode, `nix-build of ${result.name} failed:\n${result.stderr}\n--- daemon log tail ---\n${daemon.log().slice(-3000)}`).toBe(0);
  return result.stdout.trim();
}

/** The time (ms since the epoch) of the daemon's first log line with message `msg`. */
function loggedAt(daemon: TestDaemon, msg: string): number {
  const entry = daemon.logEntries().find((e) => e.msg === msg);
  expect(entry, `no log line "${msg}" in:\n${daemon.log().slice(-3000)}`).toBeDefined();
  return entry!.time as number;
}

afterAll(() => console.log(`timings (ms): ${JSON.stringify(timings)}`));

describe('a fresh start: the front answers from the first second', () => {
  let daemon: TestDaemon | undefined;
  afterAll(async () => {
    expect(await daemon?.stop()).toBe(0); // SIGTERM: a clean shutdown
  }, 120_000);

  it('an ssh session and a build a second after the start wait for the image build and the boot, then succeed', async () => {
    const spawned = Date.now();
    daemon = await TestDaemon.start((port) => configText(port), { freshImages: true, answering: true });
    timings.controlAnswersAfterMs = Date.now() - spawned;
    const early = await daemon.status();
    expect(early.guest.image).toBeUndefined(); // no image yet: it is being built
    expect(early.daemon.buildingSince).toBeDefined();
    expect(early.guest.state).toBe('stopped');

    // Both at once: OpenSSH is in within a few hundred ms, nix-build after its evaluation.
    const [ssh, build] = await Promise.all([daemon.ssh(['echo', 'in-the-guest']), daemon.nixBuild('first-second', 'echo first-second > $out')]);
    expect(ssh.exitCode, ssh.stderr).toBe(0);
    expect(ssh.stdout).toBe('in-the-guest');
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('first-second\n');
    timings.firstBuildMs = build.ms;

    const status = await daemon.waitForStatus((s) => s.recentSessions.length >= 2, 10_000, 'the session records');
    expect(status.guest).toMatchObject({ state: 'running', boots: 1 }); // one build and one boot for both
    expect(status.daemon.buildError).toBeUndefined();
    expect(status.daemon.buildingSince).toBeUndefined();
    // The order, from the daemon's own clock: front listening, the session in, the image built, the guest ready.
    const listening = loggedAt(daemon, `SSH front listening on 127.0.0.1:${daemon.port}`);
    const sessionIn = Date.parse(String(status.recentSessions.find((r) => r.command === 'echo in-the-guest')!.startedAt));
    const imageReady = loggedAt(daemon, 'image ready');
    const guestReady = loggedAt(daemon, 'guest ready');
    timings.imageBuildMs = imageReady - listening;
    timings.sessionWaitedMs = guestReady - sessionIn;
    expect(listening).toBeLessThan(sessionIn);
    expect(sessionIn).toBeLessThan(imageReady);
    expect(imageReady).toBeLessThan(guestReady);
  }, 400_000);
});

describe('an image that cannot be built', () => {
  let daemon: TestDaemon | undefined;
  afterAll(async () => {
    expect(await daemon?.stop()).toBe(0);
  }, 120_000);

  it('a session gets the error and exit 255, the daemon stays up and says why; a fixed config builds without a restart', async () => {
    const missing = path.join('/nonexistent', 'ferry-e2e-rootfs.tar');
    daemon = await TestDaemon.start((port) => configText(port, { extra: `[[image.layers]]\ntype = "tar"\npath = "${missing}"\n` }));

    const failed = await daemon.ssh(['echo', 'never']);
    expect(failed.exitCode).toBe(255);
    expect(failed.stderr).toMatch(new RegExp(`^ferry: cannot reach the guest: its image could not be built: tar ${missing}: cannot read the tarball ${missing}: ENOENT: no such file or directory[^\n]*$`));
    expect(failed.stdout).toBe('');

    const json = await daemon.ferry(['status', '--json']);
    expect(json.exitCode, json.stderr).toBe(0); // the daemon still runs
    const status = JSON.parse(json.stdout) as Awaited<ReturnType<TestDaemon['status']>>;
    expect(status.daemon.buildError).toContain(`tar ${missing}: cannot read the tarball`);
    expect(status.guest.image).toBeUndefined();
    expect(status.guest.boots).toBe(0);
    const text = await daemon.ferry(['status']);
    expect(text.stdout).toContain('image build failed (no image to boot: sessions get this error');
    expect(text.stdout).toContain(`tar ${missing}`);
    expect(text.stdout).not.toMatch(/internal error|\n\s+at /);
    // `ferry rebuild` tries again, and says why it failed.
    const rebuild = await daemon.ferry(['rebuild']);
    expect(rebuild.exitCode).toBe(1);
    expect(rebuild.stderr).toContain(`ferry: the image build failed: tar ${missing}: cannot read the tarball`);
    expect(rebuild.stdout).toContain('image build failed (no image to boot');

    await daemon.writeConfig({});
    const fixed = Date.now();
    const build = await daemon.nixBuild('after-fix', 'echo fixed > $out');
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('fixed\n');
    timings.fixedToBuiltMs = Date.now() - fixed;
    const after = await daemon.status();
    expect(after.daemon.buildError).toBeUndefined();
    expect(after.guest).toMatchObject({ state: 'running', boots: 1 });
    expect(after.daemon.pid).toBe(status.daemon.pid); // the same daemon
  }, 300_000);
});

describe('SIGTERM while the first image builds', () => {
  it('the daemon ends at once with exit 0, abandoning the build, and leaves no pid file', async () => {
    const daemon = await TestDaemon.start((port) => configText(port), { freshImages: true, answering: true });
    expect((await daemon.status()).daemon.buildingSince).toBeDefined();
    const { daemonPid } = daemon.paths;
    const started = performance.now();
    expect(await daemon.stop()).toBe(0);
    timings.stopDuringBuildMs = Math.round(performance.now() - started);
    expect(timings.stopDuringBuildMs).toBeLessThan(5_000); // not the rest of the build
    expect(daemon.logEntries().some((e) => e.msg?.startsWith('an image build was under way; it is abandoned') === true)).toBe(true);
    expect(existsSync(daemonPid)).toBe(false);
  }, 120_000);
});
