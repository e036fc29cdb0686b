/**
 * The Apple-silicon path under emulation, with the real tools (issue 6): an aarch64-linux guest
 * built by ferry (debian preset: mmdebstrap --variant=extract for arm64 on this x86_64 host)
 * booted by `ferry daemon` under qemu-system-aarch64 (tcg), the host's real `nix-build` building
 * an aarch64-linux derivation through the daemon, the guest stopped at the start; then, in the
 * same guest, an x86_64-linux derivation through binfmt_misc and qemu-user — the path Rosetta
 * takes on a Mac, with another interpreter. A config asking for Rosetta here is refused, naming
 * the key, and the running guest keeps serving.
 *
 * The x86_64 builder must be an x86_64 binary: the host's static busybox (busybox-static), put
 * in the store with builtins.path (as a directory, so that argv[0] is `busybox` and busybox picks
 * the applet from argv[1]). Its output — `uname -m` (x86_64, emulated) and `uname -r` (the guest's
 * arm64 kernel) — proves where and how it ran.
 *
 * Speed: qemu start → FERRY-READY of this guest is printed beside the x86_64 guest's under the
 * same accelerator (tcg), booted by `ferry up` with the same image cache.
 */
import { execa } from 'execa';
import { copyFile, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostInfo } from '../../src/config/host.js';
import { parseConfigText } from '../../src/config/load.js';
import { resolvePaths } from '../../src/config/paths.js';
import { ROSETTA_TAG } from '../../src/image/guest-os/binfmt.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { RecordingRunner, type FakeChild } from '../../src/process/runner.js';
import { chooseBackend } from '../../src/vm/instance/boot.js';
import { guestVmSpec } from '../../src/vm/instance/spec.js';
import { detectKernelFormat } from '../../src/vm/kernel-image.js';
import { runFilesOf } from '../../src/vm/run-files.js';
import { vfkitMac } from '../../src/vm/vfkit.js';
import { hypervisorsUsing, IMAGE_CACHE, ROOT, TestDaemon } from '../support/daemon.js';

const timings: Record<string, number> = {};
/** The manifest of the arm64 image the daemon built (in the shared image cache; read by the vfkit argv check). */
let armManifestPath: string;

function aarch64Config(port: number, interpreter: 'qemu-user' | 'rosetta' = 'qemu-user'): string {
  return [
    '[guest]',
    'system = "aarch64-linux"',
    'preset = "debian"',
    'cpus = 2',
    'memory = "1GiB"',
    'state-disk-size = "2GiB"',
    'extra-systems = ["x86_64-linux"]',
    `interpreter = "${interpreter}"`,
    '',
    '[guest.nix]',
    'extra-config = "substituters =\\ncompress-build-log = false"',
    '',
    '[vm]',
    'backend = "qemu"',
    'accel = "tcg"',
    '',
    '[daemon]',
    `port = ${port}`,
    'idle-timeout = "5m"',
    'ready-timeout = "180s"',
    '',
  ].join('\n');
}

interface Build {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
  ms: number;
}

/** The host's nix-build with the daemon as its only builder, for both systems the guest serves. */
async function hostNixBuild(daemon: TestDaemon, expression: string): Promise<Build> {
  const file = path.join(daemon.work, `${randomUUID().slice(0, 8)}.nix`);
  await writeFile(file, expression);
  const build = await daemon.nixBuildFile(file, { systems: 'aarch64-linux,x86_64-linux', maxJobs: 1, timeoutMs: 400_000 });
  return { ...build, stdout: build.stdout.trim() };
}

function expectBuilt(build: Build, daemon: TestDaemon): string {
  expect(build.exitCode, `nix-build failed:\n${build.stderr}\n--- daemon log tail ---\n${daemon.log().slice(-3000)}`).toBe(0);
  expect(build.stdout).toMatch(/^\/nix\/store\/[a-z0-9]{32}-/);
  return build.stdout;
}

describe('an aarch64-linux guest under qemu-system-aarch64 (tcg), through the daemon', () => {
  let daemon: TestDaemon;
  let busyboxDir: string;

  beforeAll(async () => {
    daemon = await TestDaemon.start((port) => aarch64Config(port), { readyTimeoutMs: 900_000 });
    armManifestPath = (JSON.parse(await readFile(daemon.paths.currentImage, 'utf8')) as { current: string }).current;
    busyboxDir = path.join(daemon.work, 'x86_64-busybox');
    await mkdir(busyboxDir);
    await copyFile('/bin/busybox', path.join(busyboxDir, 'busybox'));
  }, 900_000);

  afterAll(async () => {
    const code = await daemon?.stop();
    console.log(`aarch64 timings (ms): ${JSON.stringify(timings)}`);
    expect(code).toBe(0);
  }, 120_000);

  it('the host nix-build builds an aarch64-linux derivation; the guest boots on demand', async () => {
    expect((await daemon.status()).guest.state).toBe('stopped');
    const name = `ferry-aarch64-${randomUUID().slice(0, 8)}`;
    const build = await hostNixBuild(
      daemon,
      `derivation { name = "${name}"; system = "aarch64-linux"; builder = "/bin/sh"; args = [ "-c" "uname -m > $out" ]; }\n`,
    );
    const out = expectBuilt(build, daemon);
    expect(await readFile(out, 'utf8')).toBe('aarch64\n');
    expect(build.stderr).toContain("on 'ssh-ng://ferry-builder'");
    const status = await daemon.status();
    expect(status.guest.state).toBe('running');
    expect(status.guest.boots).toBe(1);
    timings.aarch64ReadyMs = status.guest.readyMs!;
    timings.firstBuildWithBootMs = build.ms;
    const warm = await hostNixBuild(
      daemon,
      `derivation { name = "${name}-warm"; system = "aarch64-linux"; builder = "/bin/sh"; args = [ "-c" "echo warm > $out" ]; }\n`,
    );
    expect(await readFile(expectBuilt(warm, daemon), 'utf8')).toBe('warm\n');
    timings.warmTrivialBuildMs = warm.ms;
  }, 600_000);

  it('the same guest builds an x86_64-linux derivation through binfmt_misc and qemu-user', async () => {
    const name = `ferry-x86-on-arm-${randomUUID().slice(0, 8)}`;
    const build = await hostNixBuild(
      daemon,
      [
        'let busybox = builtins.path { path = ' + busyboxDir + '; name = "x86_64-busybox"; }; in',
        `derivation { name = "${name}"; system = "x86_64-linux"; builder = "\${busybox}/busybox";`,
        '  args = [ "sh" "-c" "${busybox}/busybox uname -m > $out; ${busybox}/busybox uname -r >> $out" ]; }',
        '',
      ].join('\n'),
    );
    const out = expectBuilt(build, daemon);
    const [machine, kernel] = (await readFile(out, 'utf8')).trim().split('\n');
    expect(machine).toBe('x86_64'); // an x86_64 binary ran…
    expect(kernel).toMatch(/-cloud-arm64$/); // …on the aarch64 guest's kernel: emulated by qemu-user
    timings.x86_64OnAarch64BuildMs = build.ms;
    const registered = await daemon.ssh(['cat /proc/sys/fs/binfmt_misc/qemu-x86_64']);
    expect(registered.stdout).toContain('flags: F');
    expect(registered.stdout).toContain('interpreter /usr/libexec/ferry/qemu-x86_64-static');
  }, 600_000);

  it('interpreter = "rosetta" on this Linux host is refused, naming the key; the guest keeps serving', async () => {
    await writeFile(daemon.env.FERRY_CONFIG, aarch64Config(daemon.port, 'rosetta'));
    const refused = await daemon.waitForStatus((s) => s.daemon.configError !== undefined, 30_000, 'the config error');
    expect(refused.daemon.configError).toContain('guest.interpreter');
    expect(refused.daemon.configError).toContain('Apple-silicon');
    expect(refused.guest.state).toBe('running');
    const name = `ferry-aarch64-after-refusal-${randomUUID().slice(0, 8)}`;
    const build = await hostNixBuild(
      daemon,
      `derivation { name = "${name}"; system = "aarch64-linux"; builder = "/bin/sh"; args = [ "-c" "echo still-serving > $out" ]; }\n`,
    );
    expect(await readFile(expectBuilt(build, daemon), 'utf8')).toBe('still-serving\n');
    expect((await daemon.status()).guest.boots).toBe(1);
  }, 300_000);
});

describe('the same real arm64 image on an Apple-silicon Mac: backend auto → vfkit, console on hvc0 (crc-org/vfkit doc/usage.md)', () => {
  // vfkit cannot run here: the argv comes from ferry's real selection and start, through the
  // recording runner, for the image the daemon above built — not from a hand-written manifest.
  it('is the documented syntax, flag by flag, with the backend’s console first and the Rosetta share', async () => {
    const work = await mkdtemp(path.join(tmpdir(), 'ferry-vfkit-argv-'));
    try {
      const host: HostInfo = { platform: 'darwin', arch: 'arm64', cpus: 8, memoryBytes: 16 * 2 ** 30, homeDir: work };
      const toml = '[guest]\nsystem = "aarch64-linux"\npreset = "debian"\ncpus = 4\nmemory = "3GiB"\nextra-systems = ["x86_64-linux"]\n';
      const config = parseConfigText(toml, path.join(work, 'ferry.toml'), { host });
      expect([config.vm.backend, config.guest.interpreter]).toEqual(['auto', 'rosetta']); // the Mac defaults
      const paths = resolvePaths({ env: { FERRY_STATE_DIR: path.join(work, 'state'), FERRY_CACHE_DIR: IMAGE_CACHE } });
      const manifest = JSON.parse(await readFile(armManifestPath, 'utf8')) as ImageManifest;
      expect(manifest.system).toBe('aarch64-linux');
      expect(manifest.cmdline).not.toMatch(/console=/); // the image never guesses its backend's console
      await mkdir(paths.vmDir, { recursive: true });
      await writeFile(paths.stateDisk, '');

      const runner = new RecordingRunner(['vfkit', 'qemu-system-aarch64']);
      const backend = await chooseBackend(config, paths, runner, host);
      expect(backend.facts.name).toBe('vfkit');
      const spec = guestVmSpec({ manifest, config, paths, facts: backend.facts, now: 1700000000 });
      const vm = await backend.start(spec);
      const argv = runner.commands[0].args;
      (runner.children[0] as FakeChild).exit({ code: 0, signal: null });
      await vm.exited;

      const pairs: Array<[string, string]> = [];
      for (let i = 0; i < argv.length; i += 2) pairs.push([argv[i]!, argv[i + 1]!]);
      const bootloader = pairs.find(([flag]) => flag === '--bootloader')![1];
      const kernel = /kernel=([^,]+)/.exec(bootloader)![1];
      expect(pairs).toEqual([
        ['--cpus', '4'], // "Number of virtual CPUs"
        ['--memory', '3072'], // "The value is in MiB"
        // "--bootloader linux,kernel=…,initrd=…,cmdline=\"…\"": an uncompressed Image ("must be uncompressed")
        ['--bootloader', `linux,kernel=${kernel},initrd=${manifest.initrd.path},cmdline="console=hvc0 ${manifest.cmdline} ferry.time=1700000000 ferry.net=dhcp"`],
        ['--device', `virtio-blk,path=${manifest.systemDisk.path},readonly`],
        ['--device', `virtio-blk,path=${paths.stateDisk}`],
        ['--device', `virtio-net,nat,mac=${vfkitMac('ferry')}`],
        ['--device', `virtio-serial,logFilePath=${paths.consoleLog}`],
        ['--device', 'virtio-rng'],
        ['--device', `rosetta,mountTag=${ROSETTA_TAG}`], // "--device rosetta,mountTag=rosetta-share"
        ['--restful-uri', `unix://${runFilesOf(spec).vfkitRestSocket}`],
      ]);
      // Debian's cloud-arm64 kernel already is an uncompressed Image, so vfkit gets it as it is
      // (a compressed one would be unpacked into paths.kernelsDir: test/unit/vm-argv.test.ts).
      expect(kernel).toBe(manifest.kernel.path);
      const head = Buffer.alloc(64);
      const handle = await open(kernel, 'r');
      await handle.read(head, 0, 64, 0);
      await handle.close();
      expect(detectKernelFormat(head)).toEqual({ kind: 'arm64-image' });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }, 120_000);
});

describe('speed: the x86_64 guest under the same accelerator (tcg), for comparison', () => {
  it('ferry up → FERRY-READY of the x86_64 debian guest', async () => {
    const work = await mkdtemp(path.join(tmpdir(), 'ferry-x86-speed-'));
    const env = {
      ...(process.env as Record<string, string>),
      FERRY_STATE_DIR: path.join(work, 'state'),
      FERRY_CACHE_DIR: IMAGE_CACHE,
      FERRY_CONFIG: path.join(work, 'ferry.toml'),
    };
    const ferry = (args: string[]) => execa('node', ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), ...args], { env, cwd: ROOT, reject: false, timeout: 600_000 });
    try {
      await writeFile(env.FERRY_CONFIG, '[guest]\nsystem = "x86_64-linux"\ncpus = 2\nmemory = "1GiB"\nstate-disk-size = "2GiB"\n\n[vm]\nbackend = "qemu"\naccel = "tcg"\n');
      const up = await ferry(['up', '--json']);
      expect(up.exitCode, up.stderr).toBe(0);
      timings.x86_64ReadyMs = (JSON.parse(up.stdout) as { readyMs: number }).readyMs;
      expect((await ferry(['down'])).exitCode).toBe(0);
      console.log(
        `speed under tcg: qemu start → FERRY-READY aarch64 ${timings.aarch64ReadyMs} ms, x86_64 ${timings.x86_64ReadyMs} ms (ratio ${(timings.aarch64ReadyMs! / timings.x86_64ReadyMs).toFixed(2)}, target ≤ 2)`,
      );
    } finally {
      for (const pid of await hypervisorsUsing(work)) process.kill(pid, 'SIGKILL');
      await rm(work, { recursive: true, force: true });
    }
  }, 900_000);
});
