/**
 * No Homebrew needed: on a Mac with no vfkit, qemu or hyperkit on PATH, ferry asks the host's Nix
 * for the backend by the attribute the backend table names (facts.ts `nixpkgsAttribute`), and
 * boots the guest with the binary Nix put in the store; `ferry doctor` says so. Through the code
 * the daemon runs (chooseBackend → the backend's start) and doctor() as the CLI calls it. Nix runs
 * through the recording runner: no binary cache and no Mac here (the real fetch runs in
 * .github/workflows/macos.yml, through scripts/check-platform.ts).
 */
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { HostInfo } from '../../src/config/host.js';
import { parseConfigText } from '../../src/config/load.js';
import { resolvePaths, type FerryPaths } from '../../src/config/paths.js';
import type { GuestSystem } from '../../src/config/types.js';
import type { ImageManifest } from '../../src/image/manifest.js';
import { doctor } from '../../src/install/doctor.js';
import { RecordingRunner, type FakeChild, type RecordedAnswer } from '../../src/process/runner.js';
import { BACKEND_FACTS } from '../../src/vm/facts.js';
import { locateBackend } from '../../src/vm/index.js';
import { chooseBackend } from '../../src/vm/instance/boot.js';
import { guestVmSpec } from '../../src/vm/instance/spec.js';

const GiB = 2 ** 30;
const intelMac: HostInfo = { platform: 'darwin', arch: 'x64', cpus: 4, memoryBytes: 16 * GiB, homeDir: '/Users/u' };
const appleSilicon: HostInfo = { ...intelMac, arch: 'arm64' };
const linux: HostInfo = { ...intelMac, platform: 'linux', homeDir: '/home/u' };
const FLAGS = ['--extra-experimental-features', 'nix-command flakes', 'build', '--max-jobs', '0', '--builders', ''];
const VFKIT = '/nix/store/0c5w1ib6zvk2yq1krbmx8j0cqzcp3zrq-vfkit-0.6.3';
const QEMU = '/nix/store/k2v1rl8q0bj9l4x2c8mffc0n3gy1w5r7-qemu-10.1.2';

let work: string;
let paths: FerryPaths;

beforeEach(() => {
  work = mkdtempSync(path.join(os.tmpdir(), 'ferry-backend-nix-'));
  paths = resolvePaths({ env: { FERRY_STATE_DIR: path.join(work, 's'), FERRY_CACHE_DIR: path.join(work, 'c') } });
});
afterEach(() => {
  vi.unstubAllEnvs();
  rmSync(work, { recursive: true, force: true });
});

/** Answers `nix build` with a store path per attribute (a missing attribute fails as Nix does), everything else exit 0. */
function nixAnswering(outPaths: Record<string, string>): (file: string, args: string[]) => RecordedAnswer {
  return (file, args) => {
    const ok = { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false };
    if (file !== 'nix') return { ...ok, stdout: `${path.basename(file)} version: v0.6.3` };
    const attribute = args.at(-1)!.replace(/^.*#legacyPackages\.[^.]+\./, '').replace(/\^out$/, '');
    const out = outPaths[attribute];
    return out ? { ...ok, stdout: `${out}\n` } : { ...ok, exitCode: 1, stderr: `error: 1 dependencies of derivation '/nix/store/x-${attribute}.drv' failed to build\nerror: unable to start any build; either increase '--max-jobs' or enable remote builds` };
  };
}

/** The guest's VM spec for `config` with the backend chosen: files the backends check exist, contents do not matter. */
function specFor(config: ReturnType<typeof parseConfigText>, facts: (typeof BACKEND_FACTS)[keyof typeof BACKEND_FACTS]) {
  mkdirSync(paths.imagesDir, { recursive: true });
  mkdirSync(path.dirname(paths.stateDisk), { recursive: true });
  const file = (name: string) => {
    writeFileSync(path.join(paths.imagesDir, name), '');
    return path.join(paths.imagesDir, name);
  };
  writeFileSync(paths.stateDisk, '');
  const manifest = { cmdline: 'ro', kernel: { path: file('vmlinuz'), version: '6.12' }, initrd: { path: file('initrd.img') }, systemDisk: { path: file('system.img') } } as unknown as ImageManifest;
  return guestVmSpec({ manifest, config, paths, facts, sshPort: 40022, now: 1700000000 });
}

function configOn(host: HostInfo, system: GuestSystem, vm = '') {
  return parseConfigText(`[guest]\nsystem = "${system}"\npreset = "nixpkgs"\n${vm}`, path.join(work, 'ferry.toml'), { host });
}

const link = (backend: string) => path.join(paths.downloadsDir, `nix-backend-${backend}`);

describe('a Mac with no backend on PATH takes it from nixpkgs through the host\'s Nix', () => {
  it('Intel Mac: vfkit by its attribute for x86_64-darwin, substitutes only, out-link in the cache; the guest boots with the store\'s vfkit', async () => {
    const runner = new RecordingRunner([], nixAnswering({ vfkit: VFKIT }));
    const config = configOn(intelMac, 'x86_64-linux');
    const backend = await chooseBackend(config, paths, runner, intelMac);
    expect(backend.facts.name).toBe('vfkit');
    expect(runner.commands.map((c) => [c.file, ...c.args])).toEqual([
      ['nix', ...FLAGS, '--out-link', link('vfkit'), '--print-out-paths', 'nixpkgs#legacyPackages.x86_64-darwin.vfkit^out'],
    ]);
    const vm = await backend.start(specFor(config, backend.facts));
    const spawned = runner.commands.find((c) => c.kind === 'spawn')!;
    expect(spawned.file).toBe(`${VFKIT}/bin/vfkit`);
    (runner.children[0] as FakeChild).exit({ code: 0, signal: null });
    await vm.exited;
  });

  it('the out-link kept from the last time: no Nix runs, its store path\'s binary is used', async () => {
    const store = path.join(work, 'store-vfkit');
    mkdirSync(path.join(store, 'bin'), { recursive: true });
    writeFileSync(path.join(store, 'bin/vfkit'), '');
    mkdirSync(paths.downloadsDir, { recursive: true });
    symlinkSync(store, link('vfkit'));
    const runner = new RecordingRunner([], nixAnswering({}));
    const config = configOn(appleSilicon, 'aarch64-linux');
    const backend = await chooseBackend(config, paths, runner, appleSilicon);
    expect(backend.facts.name).toBe('vfkit');
    expect(runner.commands).toEqual([]);
    expect(await locateBackend('auto', 'aarch64-linux', { runner, host: appleSilicon, kernelCacheDir: paths.kernelsDir, fromHostNix: { downloadsDir: paths.downloadsDir } })).toMatchObject({
      name: 'vfkit',
      binary: path.join(store, 'bin/vfkit'),
      fromNix: { storePath: store, installable: 'nixpkgs#legacyPackages.aarch64-darwin.vfkit^out' },
    });
  });

  it('Apple silicon, vfkit not in the cache: qemu next, by its attribute; FERRY_NIXPKGS pins the flake; the guest boots with qemu-system-aarch64 from the store', async () => {
    vi.stubEnv('FERRY_NIXPKGS', 'github:NixOS/nixpkgs/nixos-25.05');
    const runner = new RecordingRunner([], nixAnswering({ qemu: QEMU }));
    const config = configOn(appleSilicon, 'aarch64-linux');
    const backend = await chooseBackend(config, paths, runner, appleSilicon);
    expect(backend.facts.name).toBe('qemu');
    expect(runner.commands.map((c) => c.args.slice(-3))).toEqual([
      [link('vfkit'), '--print-out-paths', 'github:NixOS/nixpkgs/nixos-25.05#legacyPackages.aarch64-darwin.vfkit^out'],
      [link('qemu'), '--print-out-paths', 'github:NixOS/nixpkgs/nixos-25.05#legacyPackages.aarch64-darwin.qemu^out'],
    ]);
    // qemu's probe and start find the store's binary as they would find one on PATH.
    expect(await backend.validate(specFor(config, backend.facts))).not.toContainEqual(expect.objectContaining({ message: expect.stringContaining('not found') }));
  });

  it('[vm] backend named but not on PATH: that one from Nix; nothing in the cache for any: the error names PATH and what Nix said', async () => {
    const named = new RecordingRunner([], nixAnswering({ qemu: QEMU }));
    const backend = await chooseBackend(configOn(intelMac, 'x86_64-linux', '[vm]\nbackend = "qemu"\n'), paths, named, intelMac);
    expect(backend.facts.name).toBe('qemu');
    expect(named.commands.map((c) => c.args.at(-1))).toEqual(['nixpkgs#legacyPackages.x86_64-darwin.qemu^out']);

    const none = new RecordingRunner([], nixAnswering({}));
    await expect(chooseBackend(configOn(intelMac, 'x86_64-linux'), paths, none, intelMac)).rejects.toMatchObject({
      message: expect.stringMatching(
        /^no VM backend for x86_64-linux guests is installed: looked for vfkit, qemu-system-x86_64, hyperkit on PATH; the host's Nix could not provide vfkit \(nixpkgs#legacyPackages\.x86_64-darwin\.vfkit\^out, substitutes only\): .*unable to start any build/,
      ),
      hint: expect.stringContaining('`brew install vfkit`, or `nix profile install nixpkgs#vfkit`'),
    });
    expect(none.commands.map((c) => c.args.at(-1)!.split('.').at(-1))).toEqual(['vfkit^out', 'qemu^out', 'hyperkit^out']);
  });

  it('no Nix on the Mac at all: asked once, the error says so; a Linux host never asks Nix', async () => {
    const noNix = new RecordingRunner([], () => ({ exitCode: undefined, signal: undefined, stdout: '', stderr: '', timedOut: false, errorCode: 'ENOENT', error: 'spawn nix ENOENT' }));
    await expect(chooseBackend(configOn(appleSilicon, 'aarch64-linux'), paths, noNix, appleSilicon)).rejects.toMatchObject({
      message: expect.stringContaining("taking vfkit from nixpkgs (none is on PATH) needs the host's nix, and none was found (tried nix, /nix/var/nix/profiles/default/bin/nix, /run/current-system/sw/bin/nix)"),
    });
    expect(noNix.commands.map((c) => c.file)).toEqual(['nix', '/nix/var/nix/profiles/default/bin/nix', '/run/current-system/sw/bin/nix']);

    const onLinux = new RecordingRunner([], nixAnswering({ qemu: QEMU }));
    await expect(chooseBackend(parseConfigText('[guest]\npreset = "debian"\n', path.join(work, 'ferry.toml'), { host: linux }), paths, onLinux, linux)).rejects.toMatchObject({
      message: 'no VM backend for x86_64-linux guests is installed: looked for qemu-system-x86_64 on PATH',
    });
    expect(onLinux.commands).toEqual([]);
  });

  it('ferry doctor on an Apple-silicon Mac (FERRY_PLATFORM) says the backend is vfkit from nixpkgs, and the version the store\'s binary printed', async () => {
    vi.stubEnv('FERRY_PLATFORM', 'darwin/arm64');
    const home = path.join(work, 'Users/u');
    const env = { HOME: home, PATH: '/usr/bin:/bin', FERRY_STATE_DIR: paths.stateDir, FERRY_CACHE_DIR: paths.cacheDir };
    const runner = new RecordingRunner([], nixAnswering({ vfkit: VFKIT }));
    const checks = await doctor({ root: path.join(work, 'root'), env, platform: 'darwin', runner });
    expect(checks.find((check) => check.name === 'backend')).toEqual({
      name: 'backend',
      status: 'ok',
      detail: `vfkit: ${VFKIT}/bin/vfkit, from nixpkgs through the host's Nix (nixpkgs#legacyPackages.aarch64-darwin.vfkit^out; none on PATH; GC root ${link('vfkit')}) (vfkit version: v0.6.3); stops the guest by its control command, then vfkit's REST Stop`,
    });
    expect(runner.commands.filter((c) => c.file === 'nix' || c.file.startsWith('/nix/store/')).map((c) => [c.file, c.args.at(-1)])).toEqual([
      ['nix', 'nixpkgs#legacyPackages.aarch64-darwin.vfkit^out'],
      [`${VFKIT}/bin/vfkit`, '--version'],
    ]);
  });
});
