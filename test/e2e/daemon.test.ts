/**
 * The daemon end to end, with the real tools: `ferry daemon` from source, the host's real Nix
 * client (Debian's nix-bin) using the daemon as its only remote builder through the ssh_config
 * alias the daemon writes, the real OpenSSH client, and the debian-preset guest under qemu (tcg).
 *
 * What it proves (issue 4, "Must show"): a build boots the stopped guest on demand (ssh-ng:// and
 * ssh://); 8 builds at once; a 50 MB stdout + 50 MB stderr build log arrives whole; a config
 * change during a build waits for the build, then the guest runs the new image; a broken config
 * keeps the old guest serving; an image that never gets ready is rolled back; a killed qemu fails
 * the build in flight with a readable message and the next build boots a new guest; unknown keys
 * and passwords are refused; nothing listens beyond 127.0.0.1; the guest stops when idle. With
 * `[daemon] listen = "::1"` (issue 10) a build goes over ::1 and nothing answers on 127.0.0.1.
 *
 * One daemon per describe block, to save boots (~5-7 s each under tcg on this machine).
 */
import { execa } from 'execa';
import { createReadStream, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestRecord } from '../../src/vm/instance/record.js';
import { configText, connectOutcome, sleep, TestDaemon, type DaemonStatus } from '../support/daemon.js';

/** Wall times seen, printed at the end of each block (the report quotes them). */
const timings: Record<string, number> = {};

function expectBuilt(result: { exitCode: number | undefined; stderr: string; stdout: string; name: string }, daemon: TestDaemon): string {
  expect(result.exitCode, `nix-build of ${result.name} failed:\n${result.stderr}\n--- daemon log tail ---\n${daemon.log().slice(-3000)}`).toBe(0);
  const out = result.stdout.trim();
  expect(out).toMatch(new RegExp(`^/nix/store/[a-z0-9]{32}-${result.name}$`));
  return out;
}

/** Counts `O n xxx…` / `E n xxx…` lines of a build log and checks each stream counts up from 0. */
/**
 * Reads a big-log build's log: every `O n xxx…` / `E n xxx…` line in order per stream, none twice,
 * none cut. With `cutTailAllowed`, the file's very last line may be cut short (nix-build's own
 * printing of the log can stop mid-line; see the test); a cut line followed by more is a defect.
 */
async function logLines(file: string, options: { cutTailAllowed?: boolean } = {}): Promise<{ seen: { O: number; E: number }; bytes: number; outOfOrder?: string; cutTail?: string }> {
  const seen = { O: 0, E: 0 };
  let bytes = 0;
  let cut: string | undefined;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    const match = /^([OE]) (\d+) (x*)$/.exec(line);
    if (!match) continue;
    if (cut !== undefined) return { seen, bytes, outOfOrder: `${cut}, and more lines after it` };
    const stream = match[1] as 'O' | 'E';
    if (Number(match[2]) !== seen[stream] || match[3]!.length !== 4000) {
      const problem = `${stream} line ${seen[stream]}: ${line.slice(0, 40)}… (${line.length} chars)`;
      if (!(options.cutTailAllowed && Number(match[2]) === seen[stream] && match[3]!.length < 4000)) return { seen, bytes, outOfOrder: problem };
      cut = problem;
      continue;
    }
    seen[stream] += 1;
    bytes += line.length + 1;
  }
  return { seen, bytes, ...(cut === undefined ? {} : { cutTail: cut }) };
}

async function guestRecord(daemon: TestDaemon): Promise<GuestRecord> {
  return JSON.parse(await readFile(daemon.paths.guestRecord, 'utf8')) as GuestRecord;
}

/** Listening TCP sockets (`ss -ltnpH`) of process `pid`: their local addresses. */
async function listeningAddresses(pid: number): Promise<string[]> {
  const { stdout } = await execa('ss', ['-ltnpH']);
  return stdout
    .split('\n')
    .filter((line) => line.includes(`pid=${pid},`))
    .map((line) => line.trim().split(/\s+/)[3]!);
}

describe('one daemon: on-demand boot, ssh-ng and ssh, 8 builds at once, a 100 MB log, refusals, a killed qemu', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => configText(port));
  }, 300_000);

  afterAll(async () => {
    const code = await daemon?.stop();
    console.log(`timings (ms): ${JSON.stringify(timings)}`);
    expect(code).toBe(0); // SIGTERM: a clean shutdown
  }, 120_000);

  it('a build boots the stopped guest on demand (ssh-ng://), then ssh:// builds too', async () => {
    const before = await daemon.ferry(['status', '--json']);
    expect(before.exitCode, before.stderr).toBe(0);
    const status = JSON.parse(before.stdout) as DaemonStatus;
    expect(status.guest.state).toBe('stopped');
    expect(status.guest.boots).toBe(0);
    expect(status.daemon.listen).toBe(`127.0.0.1:${daemon.port}`);

    const first = await daemon.nixBuild('on-demand', 'echo built-in-the-guest > $out');
    const out = expectBuilt(first, daemon);
    expect(await readFile(out, 'utf8')).toBe('built-in-the-guest\n');
    expect(first.stderr).toContain("on 'ssh-ng://ferry-builder'");
    timings.firstBuildWithBootMs = first.ms;

    const after = await daemon.status();
    expect(after.guest.state).toBe('running');
    expect(after.guest.boots).toBe(1);
    timings.bootReadyMs = after.guest.readyMs!;
    // The session's record lands when the channel closes, a moment after nix-build exits.
    await daemon.waitForStatus((s) => s.recentSessions.some((r) => r.command === 'nix-daemon --stdio' && r.exit.kind === 'status' && r.exit.code === 0), 10_000, 'the session record');
    // ssh-ng's session went to the guest's nix-daemon socket, not through a nix-daemon --stdio process.
    expect((await daemon.status()).recentSessions.find((r) => r.command === 'nix-daemon --stdio')?.via).toBe('nix-daemon-socket');

    // The guest really built it: its own store has the path, and its uname is Linux on the guest kernel.
    const inGuest = await daemon.ssh([`test -s ${out} && cat ${out}`]);
    expect(inGuest.exitCode, inGuest.stderr).toBe(0);
    expect(inGuest.stdout).toBe('built-in-the-guest');

    const legacy = await daemon.nixBuild('legacy-ssh', 'echo over-nix-store-serve > $out', { proto: 'ssh' });
    expect(await readFile(expectBuilt(legacy, daemon), 'utf8')).toBe('over-nix-store-serve\n');
    expect(legacy.stderr).toContain("on 'ssh://ferry-builder'");
    timings.warmBuildSshMs = legacy.ms;
    const warm = await daemon.nixBuild('warm', 'echo warm > $out');
    expectBuilt(warm, daemon);
    timings.warmBuildSshNgMs = warm.ms;
    await daemon.waitForStatus((s) => s.recentSessions.some((r) => r.command === 'nix-store --serve --write' && r.exit.kind === 'status' && r.exit.code === 0), 10_000, 'the ssh:// session record');
    expect((await daemon.status()).recentSessions.find((r) => r.command === 'nix-store --serve --write')?.via).toBe('exec');
  }, 180_000);

  it('8 nix builds at once all succeed', async () => {
    const started = performance.now();
    const builds = await Promise.all(
      Array.from({ length: 8 }, (_, i) => daemon.nixBuild(`parallel-${i}`, `i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; echo parallel-${i} > $out`, { proto: i % 2 ? 'ssh' : 'ssh-ng' })),
    );
    timings.eightBuildsMs = Math.round(performance.now() - started);
    for (const [i, build] of builds.entries()) expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe(`parallel-${i}\n`);
    expect((await daemon.status()).guest.boots).toBe(1);
  }, 240_000);

  it('a build writing 50 MB to stdout and 50 MB to stderr, interleaved, completes and its log arrives whole', async () => {
    // ssh://: Nix sends the build log on the session's stderr, so all 100 MB pass the daemon as
    // channel data. (With ssh-ng:// Nix 2.8 itself drops log lines when they come this fast —
    // also straight to the guest's sshd, without ferry; NixOS/nix#10289 — so it cannot judge.)
    const lines = 12_500;
    const pad = 'x'.repeat(4000);
    const script = `i=0; while [ $i -lt ${lines} ]; do echo "O $i ${pad}"; echo "E $i ${pad}" >&2; i=$((i+1)); done; echo done > $out`;
    const logFile = path.join(daemon.work, 'big-build.stderr');
    const build = await daemon.nixBuild('big-log', script, { proto: 'ssh', stderrFile: logFile, timeoutMs: 300_000 });
    expect(build.exitCode, (await readFile(logFile, 'utf8')).slice(-2000)).toBe(0);
    timings.bigLogBuildMs = build.ms;

    // The host's own copy of the log (nix-store -l), which Nix writes from what came through the
    // daemon, is whole: every line, in order within each stream, none twice, none cut.
    const drv = (await execa('nix-instantiate', [build.exprFile])).stdout.trim();
    const stored = path.join(daemon.work, 'big-build.log');
    await execa('sh', ['-c', `nix-store -l ${drv} > ${stored}`]);
    const whole = await logLines(stored);
    expect(whole.outOfOrder).toBeUndefined();
    expect(whole.seen).toEqual({ O: lines, E: lines });
    expect(whole.bytes).toBeGreaterThan(100_000_000);
    // What nix-build printed: in order too. (Nix 2.8's legacy-ssh hook sometimes leaves the
    // last few dozen lines unprinted on stderr — the last one printed can be cut mid-line —
    // although its log file above has them all.)
    const printed = await logLines(logFile, { cutTailAllowed: true });
    expect(printed.outOfOrder).toBeUndefined();
    expect(printed.seen.O).toBeGreaterThan(lines * 0.99);
    if (printed.seen.O < lines || printed.cutTail) console.log(`nix-build printed ${printed.seen.O}/${lines} stdout and ${printed.seen.E}/${lines} stderr lines${printed.cutTail ? `, then a cut line (${printed.cutTail})` : ''}; its log file has all`);
  }, 360_000);

  it('refuses an unknown key and passwords; nothing listens beyond 127.0.0.1', async () => {
    const otherKey = path.join(daemon.work, 'other_ed25519');
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', otherKey]);
    const sshWith = (key: string, extra: string[] = []) =>
      execa(
        'ssh',
        ['-p', String(daemon.port), '-i', key, '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${daemon.paths.builderKnownHosts}`, '-o', 'HostKeyAlias=ferry-builder',
          '-o', 'StrictHostKeyChecking=yes', '-o', 'BatchMode=yes', ...extra, 'builder@127.0.0.1', 'echo in'],
        { reject: false, stdin: 'ignore', timeout: 60_000 },
      );
    const good = await sshWith(daemon.paths.clientKey);
    expect(good.exitCode, good.stderr).toBe(0); // the same command with the right key gets in
    expect(good.stdout).toBe('in');

    const unknown = await sshWith(otherKey);
    expect(unknown.exitCode).toBe(255);
    expect(unknown.stderr).toMatch(/Permission denied \(publickey\)/);

    // `[daemon] authorized-keys` in a changed config lets the key in without a restart, and
    // taking it out again locks it out.
    const pollLogin = async (want: number) => {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const result = await sshWith(otherKey);
        if (result.exitCode === want || Date.now() > deadline) return result;
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    };
    await daemon.writeConfig({ extra: `authorized-keys = [${JSON.stringify(`${otherKey}.pub`)}]` });
    const allowed = await pollLogin(0);
    expect(allowed.exitCode, allowed.stderr).toBe(0);
    expect(allowed.stdout).toBe('in');
    await daemon.writeConfig({});
    const lockedOut = await pollLogin(255);
    expect(lockedOut.stderr).toMatch(/Permission denied \(publickey\)/);

    // OpenSSH asked for password login: the front does not even offer it.
    const password = await sshWith(otherKey, ['-o', 'PreferredAuthentications=password,keyboard-interactive', '-o', 'PubkeyAuthentication=no']);
    expect(password.exitCode).toBe(255);
    expect(password.stderr).toMatch(/Permission denied \(publickey\)/);
    // A client that sends a password anyway (ssh2) is refused too.
    const sent = await new Promise<string>((resolve) => {
      const client = new ssh2.Client();
      client.on('ready', () => {
        client.end();
        resolve('logged in');
      });
      client.on('error', (error) => resolve(error.message));
      client.connect({ host: '127.0.0.1', port: daemon.port, username: 'builder', password: 'builder', tryKeyboard: true, readyTimeout: 20_000 });
    });
    expect(sent).toMatch(/authentication methods failed/i);

    // The daemon's own sockets, and the guest's forwarded sshd (qemu's hostfwd): loopback only.
    const daemonAddresses = await listeningAddresses(daemon.pid);
    expect(daemonAddresses).toEqual([`127.0.0.1:${daemon.port}`]);
    const qemu = await guestRecord(daemon);
    const qemuAddresses = await listeningAddresses(qemu.pid);
    expect(qemuAddresses.length).toBeGreaterThan(0);
    for (const address of qemuAddresses) expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
  }, 120_000);

  it('qemu killed during a build: the client fails with a readable message, the next build boots a new guest', async () => {
    const before = await daemon.status();
    expect(before.guest.state).toBe('running');
    const { pid } = await guestRecord(daemon);
    // ssh://: Nix shows the session's stderr, where the daemon explains. (With ssh-ng:// Nix 2.8
    // shows only its own "unexpected end-of-file".)
    const building = daemon.nixBuild('killed', 'sleep 60; echo never > $out', { proto: 'ssh', timeoutMs: 150_000 });
    await daemon.waitForStatus((s) => s.sessions.open > 0, 60_000, 'the build session');
    await sleep(4000); // the build runs in the guest now
    process.kill(pid, 'SIGKILL');
    const killedAt = performance.now();
    const failed = await building;
    timings.failAfterKillMs = Math.round(performance.now() - killedAt);
    expect(failed.exitCode).not.toBe(0);
    console.log(`nix-build after qemu was killed (exit ${failed.exitCode}):\n${failed.stderr}`);
    expect(failed.stderr).toContain('ferry: the guest went away');
    expect(failed.stderr).toMatch(/error: builder for .*ferry-e2e-killed-.* failed/);

    const crashed = await daemon.waitForStatus((s) => s.guest.crashes === 1 && s.guest.state !== 'running', 30_000, 'the crash noticed');
    expect(crashed.guest.lastError).toMatch(/exited unexpectedly/);
    await daemon.waitForLog((e) => e.msg?.includes('the guest crashed') === true, 10_000, 'the crash');

    const next = await daemon.nixBuild('after-crash', 'echo after-crash > $out');
    expect(await readFile(expectBuilt(next, daemon), 'utf8')).toBe('after-crash\n');
    timings.buildAfterCrashMs = next.ms;
    const after = await daemon.status();
    expect(after.guest.state).toBe('running');
    expect(after.guest.boots).toBe(before.guest.boots + 1);
    expect((await guestRecord(daemon)).pid).not.toBe(pid);
  }, 240_000);
});

describe('config changes: swap after the build in flight, a broken config, an image that never gets ready', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => configText(port, { maxJobs: 2 }));
  }, 300_000);

  afterAll(async () => {
    await daemon?.stop();
    console.log(`timings (ms): ${JSON.stringify(timings)}`);
  }, 120_000);

  it('a config change during a build: the build completes, then the guest runs the new image', async () => {
    const warm = await daemon.nixBuild('boot', 'echo boot > $out');
    expectBuilt(warm, daemon);
    const old = await daemon.status();
    expect(old.guest.state).toBe('running');

    const building = daemon.nixBuild('during-swap', 'sleep 15; echo survived > $out');
    await daemon.waitForStatus((s) => s.sessions.open > 0, 60_000, 'the build session');
    await daemon.writeConfig({ maxJobs: 3 });
    // The new image is built while the build runs, then waits for the session to end.
    const waiting = await daemon.waitForStatus((s) => s.guest.pendingImage !== undefined, 60_000, 'the new image pending');
    expect(waiting.guest.pendingImage).not.toBe(old.guest.image);
    expect(waiting.guest.state).toBe('running');
    expect(waiting.guest.boots).toBe(old.guest.boots);

    const build = await building;
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('survived\n');
    timings.buildDuringSwapMs = build.ms;
    const buildDone = performance.now();
    const swapped = await daemon.waitForStatus((s) => s.guest.lastSwap?.outcome === 'applied' && s.guest.state === 'running', 120_000, 'the swap');
    timings.swapAfterBuildEndMs = Math.round(performance.now() - buildDone);
    expect(swapped.guest.image).toBe(waiting.guest.pendingImage);
    expect(swapped.guest.previousImage).toBe(old.guest.image);
    expect(swapped.guest.boots).toBe(old.guest.boots + 1);
    const conf = await daemon.ferry(['exec', '--', 'cat', '/etc/nix/nix.conf']);
    expect(conf.exitCode, conf.stderr).toBe(0);
    expect(conf.stdout).toMatch(/^max-jobs = 3$/m);
  }, 240_000);

  it('a broken config is reported with file and key, and the old guest keeps serving', async () => {
    const before = await daemon.status();
    await daemon.writeConfig({ maxJobs: 'lots' });
    const broken = await daemon.waitForStatus((s) => s.daemon.configError !== undefined, 30_000, 'the config error');
    expect(broken.daemon.configError).toContain(daemon.env.FERRY_CONFIG);
    expect(broken.daemon.configError).toContain('max-jobs');
    const logged = await daemon.waitForLog((e) => e.level === 50 && e.msg?.includes('not valid') === true, 10_000, 'the config error');
    expect(JSON.stringify(logged)).toContain(daemon.env.FERRY_CONFIG);
    expect(JSON.stringify(logged)).toContain('max-jobs');
    const text = await daemon.ferry(['status']);
    expect(text.stdout).toContain('config error');
    expect(text.stdout).toContain('max-jobs');

    const build = await daemon.nixBuild('broken-config', 'echo still-serving > $out');
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('still-serving\n');
    const after = await daemon.status();
    expect(after.guest.image).toBe(before.guest.image);
    expect(after.guest.boots).toBe(before.guest.boots);
  }, 120_000);

  it('an image whose guest never gets ready is rolled back, and the next build succeeds', async () => {
    const before = await daemon.status();
    // A dir layer replaces sshd with a program that fails: stage 2 prints FERRY-FAILED.
    const layer = path.join(daemon.work, 'broken-sshd-layer');
    await mkdir(path.join(layer, 'usr/sbin'), { recursive: true });
    await writeFile(path.join(layer, 'usr/sbin/sshd'), '#!/bin/sh\necho "sshd broken on purpose" >&2\nexit 1\n');
    await chmod(path.join(layer, 'usr/sbin/sshd'), 0o755);
    await daemon.writeConfig({ maxJobs: 3, extra: `[[image.layers]]\ntype = "dir"\npath = "${layer}"\n` });
    const changed = performance.now();

    const rolled = await daemon.waitForStatus(
      (s) => s.guest.lastSwap?.outcome === 'rolled-back' && s.guest.state === 'running',
      180_000,
      'the rollback',
    );
    timings.configChangeToRollbackMs = Math.round(performance.now() - changed);
    expect(rolled.daemon.configError).toBeUndefined();
    expect(rolled.guest.image).toBe(before.guest.image);
    expect(rolled.guest.lastSwap!.imageId).not.toBe(before.guest.image);
    expect(rolled.guest.lastSwap!.error).toMatch(/FERRY-FAILED|did not become ready/);
    await daemon.waitForLog((e) => e.msg?.includes('rolling back') === true, 10_000, 'the rollback');
    const text = await daemon.ferry(['status']);
    expect(text.stdout).toMatch(/swap\s+rolled-back/);

    const build = await daemon.nixBuild('after-rollback', 'echo rolled-back > $out');
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('rolled-back\n');
  }, 240_000);
});

describe('[daemon] listen = "::1"', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => configText(port, { listen: '::1' }));
  }, 300_000);

  afterAll(async () => {
    await daemon?.stop();
    console.log(`timings (ms): ${JSON.stringify(timings)}`);
  }, 120_000);

  it('the front listens on ::1 only, its alias goes there, and the host\'s nix-build builds through it', async () => {
    const status = await daemon.status();
    expect(status.daemon.listen).toBe(`[::1]:${daemon.port}`);
    await daemon.waitForLog((e) => e.msg === `SSH front listening on [::1]:${daemon.port}`, 10_000, 'the front on [::1]');
    expect(await listeningAddresses(daemon.pid)).toEqual([`[::1]:${daemon.port}`]);
    expect(await connectOutcome('127.0.0.1', daemon.port)).toBe('ECONNREFUSED');
    expect(readFileSync(daemon.paths.builderSshConfig, 'utf8')).toMatch(/^\s+HostName ::1$/m);

    const build = await daemon.nixBuild('over-ipv6', 'echo built-over-ipv6 > $out');
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('built-over-ipv6\n');
    timings.buildOverIpv6Ms = build.ms;
    expect((await daemon.status()).guest.boots).toBe(1);
    expect(await connectOutcome('127.0.0.1', daemon.port)).toBe('ECONNREFUSED'); // still nothing there
  }, 180_000);
});

describe('idle stop', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => configText(port, { idleTimeout: '20s' }));
  }, 300_000);

  afterAll(async () => {
    await daemon?.stop();
    console.log(`timings (ms): ${JSON.stringify(timings)}`);
  }, 120_000);

  it('the guest stops by itself after the idle timeout, and the next build boots it again', async () => {
    const first = await daemon.nixBuild('idle-1', 'echo one > $out');
    expectBuilt(first, daemon);
    const lastSessionEnd = performance.now();
    expect((await daemon.status()).guest.state).toBe('running');
    await sleep(10_000);
    expect((await daemon.status()).guest.state).toBe('running'); // not before the timeout
    const stopped = await daemon.waitForStatus((s) => s.guest.state === 'stopped', 60_000, 'the idle stop');
    timings.idleStopAfterMs = Math.round(performance.now() - lastSessionEnd);
    expect(timings.idleStopAfterMs).toBeGreaterThanOrEqual(19_000);
    expect(stopped.guest.crashes).toBe(0);
    await daemon.waitForLog((e) => e.msg === 'stopping the guest' && String(e.reason).startsWith('idle'), 10_000, 'the idle stop');

    const second = await daemon.nixBuild('idle-2', 'echo two > $out');
    expect(await readFile(expectBuilt(second, daemon), 'utf8')).toBe('two\n');
    timings.buildAfterIdleStopMs = second.ms;
    expect((await daemon.status()).guest.boots).toBe(2);
  }, 180_000);
});
