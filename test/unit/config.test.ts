import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ConfigError,
  assertSocketPathFits,
  defaultConfig,
  loadConfig,
  parseConfigText,
  parseDuration,
  parseSize,
  renderDefaultConfig,
  resolvePaths,
  type HostInfo,
} from '../../src/config/index.js';
import { ExitCode, FerryError } from '../../src/errors.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const linuxX64: HostInfo = { platform: 'linux', arch: 'x64', cpus: 2, memoryBytes: 8 * GiB, homeDir: '/home/ann' };
const macArm: HostInfo = { platform: 'darwin', arch: 'arm64', cpus: 12, memoryBytes: 32 * GiB, homeDir: '/Users/ann' };
const macIntel: HostInfo = { platform: 'darwin', arch: 'x64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/Users/ann' };

/** The ConfigError that parsing `text` throws (fails the test if it does not throw one). */
function problemsOf(text: string, host: HostInfo = linuxX64): ConfigError {
  try {
    parseConfigText(text, 'ferry.toml', { host });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return error as ConfigError;
  }
  throw new Error(`expected a ConfigError for:\n${text}`);
}

/** The single problem message for `key`. */
function messageFor(error: ConfigError, key: string): string {
  const matching = error.problems.filter((p) => p.key === key);
  expect(matching.map((p) => p.key), `problems: ${error.message}`).toEqual([key]);
  return matching[0].message;
}

describe('units', () => {
  it.each([
    ['512MiB', 512 * MiB],
    ['4GiB', 4 * GiB],
    ['4G', 4 * GiB],
    ['4gb', 4 * GiB],
    ['1.5K', 1536],
    ['40GiB', 40 * GiB],
    ['2TiB', 2 * 1024 ** 4],
    [4096, 4096],
    ['4096', 4096],
    ['10B', 10],
  ])('size %j = %d bytes', (input, bytes) => {
    expect(parseSize(input)).toEqual({ ok: true, value: bytes });
  });

  it.each([12.5, -1, '4 GiBs', 'GiB', '4iB', '', true, ['4GiB']])('refuses size %j', (input) => {
    const result = parseSize(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.message).toMatch(/^expected a size like "4GiB".*, got /);
  });

  it('says what the bad size was and its type', () => {
    expect(parseSize(12.5)).toEqual({ ok: false, message: 'expected a size like "4GiB", "512MiB" or a number of bytes, got 12.5 (number)' });
  });

  it.each([
    ['90s', 90_000],
    ['30m', 1_800_000],
    ['1h', 3_600_000],
    ['1h30m', 5_400_000],
    ['250ms', 250],
    ['0', 0],
    [0, 0],
  ])('duration %j = %d ms', (input, ms) => {
    expect(parseDuration(input)).toEqual({ ok: true, value: ms });
  });

  it.each([30, '30', '30 minutes', '1x', '', '-5m'])('refuses duration %j', (input) => {
    const result = parseDuration(input);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.message).toMatch(/^expected a duration like "90s", "30m", "1h" or "0", got /);
  });
});

describe('a valid ferry.toml', () => {
  it('gives a complete, typed, frozen config', () => {
    const config = parseConfigText(
      `
[guest]
system = "x86_64-linux"
preset = "debian"
cpus = 2
memory = "3GiB"
hostname = "builder-1"
state-disk-size = 21474836480
extra-systems = ["i686-linux"]

[guest.nix]
max-jobs = 3
cores = 2
features = ["big-parallel", "kvm"]
extra-config = "keep-outputs = true"
trusted-users = ["builder"]
min-free = "2GiB"

[image]
size = "2GiB"

[[image.layers]]
type = "tar"
path = "rootfs.tar.zst"

[[image.layers]]
type = "dir"
path = "~/overlay"

[[image.layers]]
type = "nix"
paths = ["/nix/store/abc-hello"]

[vm]
backend = "qemu"
accel = "tcg"
kernel-cmdline-extra = "quiet"

[daemon]
port = 31400
listen = "::1"
idle-timeout = "0"
ready-timeout = "90s"
ssh-timeout = "45s"
image-timeout = "10m"
authorized-keys = ["keys/extra.pub"]
login-grace-time = "30s"
max-auth-tries = 3
max-startups = "5:50:20"
log-level = "debug"
`,
      '/etc/ferry/ferry.toml',
      { host: linuxX64 },
    );
    expect(config).toEqual({
      source: '/etc/ferry/ferry.toml',
      guest: {
        system: 'x86_64-linux',
        preset: 'debian',
        debianSuite: 'trixie',
        cpus: 2,
        memoryBytes: 3 * GiB,
        hostname: 'builder-1',
        stateDiskSizeBytes: 20 * GiB,
        extraSystems: ['i686-linux'],
        // i686 runs natively on an x86_64 kernel: no interpreter needed.
        interpreter: 'none',
        nix: { maxJobs: 3, cores: 2, features: ['big-parallel', 'kvm'], extraConfig: 'keep-outputs = true', trustedUsers: ['builder'], minFreeBytes: 2 * GiB, maxFreeBytes: 8 * GiB, substituters: 'host', trustedPublicKeys: 'host' },
      },
      image: {
        sizeBytes: 2 * GiB,
        layers: [
          { type: 'tar', path: '/etc/ferry/rootfs.tar.zst' },
          { type: 'dir', path: '/home/ann/overlay' },
          { type: 'nix', paths: ['/nix/store/abc-hello'] },
        ],
      },
      vm: { backend: 'qemu', accel: 'tcg', kernelCmdlineExtra: 'quiet' },
      daemon: {
        port: 31400,
        listen: '::1',
        idleTimeoutMs: 0,
        readyTimeoutMs: 90_000,
        sshTimeoutMs: 45_000,
        imageTimeoutMs: 10 * 60_000,
        authorizedKeys: ['/etc/ferry/keys/extra.pub'],
        loginGraceTimeMs: 30_000,
        maxAuthTries: 3,
        maxStartups: { start: 5, rate: 50, full: 20 },
        logLevel: 'debug',
      },
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.guest.nix.features)).toBe(true);
    expect(Object.isFrozen(config.image.layers[0])).toBe(true);
  });

  it('resolves max-jobs "auto" to the guest cpus', () => {
    const config = parseConfigText('[guest]\ncpus = 3\n[guest.nix]\nmax-jobs = "auto"\n', 'ferry.toml', { host: linuxX64 });
    expect(config.guest.nix.maxJobs).toBe(3);
  });

  it('an aarch64 guest on an Apple-silicon Mac builds x86_64-linux through Rosetta by default', () => {
    const config = parseConfigText('[guest]\nextra-systems = ["x86_64-linux"]\n', 'ferry.toml', { host: macArm });
    expect(config.guest.system).toBe('aarch64-linux');
    expect(config.guest.interpreter).toBe('rosetta');
  });

  it('the same request on Linux gets qemu-user', () => {
    const config = parseConfigText('[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\n', 'ferry.toml', { host: linuxX64 });
    expect(config.guest.interpreter).toBe('qemu-user');
  });
});

describe('defaults per platform', () => {
  it('Apple silicon: aarch64 guest, nixpkgs preset, at most 4 cpus', () => {
    const config = defaultConfig({ host: macArm });
    expect(config.source).toBeNull();
    expect(config.guest).toMatchObject({ system: 'aarch64-linux', preset: 'nixpkgs', cpus: 4, memoryBytes: 4 * GiB, interpreter: 'none' });
    expect(config.guest.nix.maxJobs).toBe(4);
    expect(config.daemon).toMatchObject({ port: 31322, listen: '127.0.0.1', idleTimeoutMs: 30 * 60_000, readyTimeoutMs: 5 * 60_000, sshTimeoutMs: 20_000, imageTimeoutMs: 30 * 60_000 });
  });

  it('Intel Mac: x86_64 guest, nixpkgs preset', () => {
    expect(defaultConfig({ host: macIntel }).guest).toMatchObject({ system: 'x86_64-linux', preset: 'nixpkgs' });
  });

  it('Linux x86_64 with 2 cores: x86_64 guest, debian preset, 2 cpus', () => {
    expect(defaultConfig({ host: linuxX64 }).guest).toMatchObject({ system: 'x86_64-linux', preset: 'debian', cpus: 2 });
  });

  it('an empty file gives the same as no file (apart from the source)', () => {
    const fromEmpty = parseConfigText('', '/tmp/ferry.toml', { host: macArm });
    expect({ ...fromEmpty, source: null }).toEqual(defaultConfig({ host: macArm }));
  });
});

describe('each kind of error names the file and the key', () => {
  it('wrong type', () => {
    const error = problemsOf('[guest]\ncpus = "2"\n');
    expect(error.message).toBe('ferry.toml:2: key `guest.cpus`: expected a whole number, got "2" (string)');
    expect(error.exitCode).toBe(ExitCode.Config);
    expect(error.exitCode).toBe(78);
    expect(error).toBeInstanceOf(FerryError);
  });

  it('a table where a value belongs, and a value where a table belongs', () => {
    const error = problemsOf('guest = 3\n[daemon.port]\nx = 1\n');
    expect(messageFor(error, 'guest')).toBe('expected a table, got 3 (number)');
    expect(messageFor(error, 'daemon.port')).toBe('expected a whole number, got a table');
  });

  it('unknown key, with the close match suggested', () => {
    expect(problemsOf('[guest]\nmemroy = "4GiB"\n').message).toBe('ferry.toml:2: key `guest.memroy`: unknown key (did you mean `guest.memory`?)');
  });

  it('unknown key in snake_case or camelCase: suggests the kebab-case key', () => {
    expect(messageFor(problemsOf('[guest.nix]\nmax_jobs = 2\n'), 'guest.nix.max_jobs')).toBe('unknown key (did you mean `guest.nix.max-jobs`?)');
    expect(messageFor(problemsOf('[daemon]\nidleTimeout = "1h"\n'), 'daemon.idleTimeout')).toBe('unknown key (did you mean `daemon.idle-timeout`?)');
  });

  it('a key in the wrong table says where it belongs', () => {
    expect(messageFor(problemsOf('[vm]\nmemory = "4GiB"\n'), 'vm.memory')).toBe('unknown key here (`memory` belongs in `guest.memory`)');
  });

  it('an unknown key with nothing close lists the known ones', () => {
    expect(messageFor(problemsOf('[vm]\nturbo = true\n'), 'vm.turbo')).toBe('unknown key (known keys here: backend, accel, kernel-cmdline-extra)');
    expect(messageFor(problemsOf('[gust]\n'), 'gust')).toBe('unknown key (did you mean `guest`?)');
  });

  it('a misspelt choice suggests the right one', () => {
    expect(messageFor(problemsOf('[vm]\nbackend = "qmeu"\n'), 'vm.backend')).toBe(
      'expected one of "auto", "qemu", "hyperkit", "vfkit", got "qmeu" (string) (did you mean "qemu"?)',
    );
  });

  it('bad size', () => {
    expect(problemsOf('[guest]\nmemory = 12.5\n').message).toBe(
      'ferry.toml:2: key `guest.memory`: expected a size like "4GiB", "512MiB" or a number of bytes, got 12.5 (number)',
    );
    expect(messageFor(problemsOf('[guest]\nmemory = "64MiB"\n'), 'guest.memory')).toBe('expected at least 256MiB, got "64MiB" (string)');
    expect(messageFor(problemsOf('[guest]\nmemory = "1.5M"\n'), 'guest.memory')).toBe('expected at least 256MiB, got "1.5M" (string)');
    expect(messageFor(problemsOf('[guest]\nmemory = 1073741825\n'), 'guest.memory')).toBe('expected a whole number of MiB, got 1073741825 (number)');
    expect(messageFor(problemsOf('[image]\nsize = "big"\n'), 'image.size')).toMatch(/^expected "auto" or a size like "4GiB".*, got "big" \(string\)$/);
  });

  it('bad duration', () => {
    expect(messageFor(problemsOf('[daemon]\nidle-timeout = 30\n'), 'daemon.idle-timeout')).toBe(
      'expected a duration like "90s", "30m", "1h" or "0", got 30 (number)',
    );
    expect(messageFor(problemsOf('[daemon]\nready-timeout = "0"\n'), 'daemon.ready-timeout')).toBe(
      'expected a duration greater than 0, like "5m", got "0" (string)',
    );
    expect(messageFor(problemsOf('[daemon]\nssh-timeout = "0"\n'), 'daemon.ssh-timeout')).toBe(
      'expected a duration greater than 0, like "5m", got "0" (string)',
    );
  });

  // Node runs a timer of more than 2^31−1 ms (24.86 days) after 1 ms: a longer timeout would fire at once.
  it.each(['idle-timeout', 'ready-timeout', 'ssh-timeout', 'image-timeout', 'login-grace-time'])('daemon.%s longer than 24 days is refused, giving the largest value', (key) => {
    for (const value of ['25d', '600h', '24d1s', '30d']) {
      expect(messageFor(problemsOf(`[daemon]\n${key} = "${value}"\n`), `daemon.${key}`)).toBe(
        `expected at most 24d (a longer timer would fire at once), got "${value}" (string)`,
      );
    }
    const daemon = parseConfigText(`[daemon]\n${key} = "24d"\n`, 'ferry.toml', { host: linuxX64 }).daemon;
    const ms = { 'idle-timeout': daemon.idleTimeoutMs, 'ready-timeout': daemon.readyTimeoutMs, 'ssh-timeout': daemon.sshTimeoutMs, 'image-timeout': daemon.imageTimeoutMs, 'login-grace-time': daemon.loginGraceTimeMs }[key];
    expect(ms).toBe(24 * 86_400_000);
    expect(ms).toBeLessThanOrEqual(2 ** 31 - 1);
  });

  it.each(['0.0.0.0', '192.168.1.10', '::', 'localhost', '127.0.0.1:22'])('non-loopback listen %j is refused', (address) => {
    const message = messageFor(problemsOf(`[daemon]\nlisten = "${address}"\n`), 'daemon.listen');
    expect(message).toBe(
      `expected a loopback address ("127.0.0.1" or "::1"), got ${JSON.stringify(address)} (string): the daemon hands a build machine to whoever connects, so it never listens beyond this host`,
    );
  });

  it('limits before login: OpenSSH’s defaults; max-startups as one number or start:rate:full', () => {
    expect(defaultConfig({ host: linuxX64 }).daemon).toMatchObject({ loginGraceTimeMs: 120_000, maxAuthTries: 6, maxStartups: { start: 10, rate: 30, full: 100 } });
    const startups = (value: string) => parseConfigText(`[daemon]\nmax-startups = ${value}\n`, 'ferry.toml', { host: linuxX64 }).daemon.maxStartups;
    expect(startups('4')).toEqual({ start: 4, rate: 100, full: 4 });
    expect(startups('"4"')).toEqual({ start: 4, rate: 100, full: 4 });
    expect(parseConfigText('[daemon]\nlogin-grace-time = "0"\n', 'ferry.toml', { host: linuxX64 }).daemon.loginGraceTimeMs).toBe(0);
    const expected = 'expected "start:rate:full" like "10:30:100" (start ≤ full, rate 1-100) or one number of connections';
    for (const bad of ['"10:30"', '"10:0:100"', '"10:101:100"', '"20:30:10"', '0', '"many"', '2.5']) {
      expect(messageFor(problemsOf(`[daemon]\nmax-startups = ${bad}\n`), 'daemon.max-startups')).toMatch(new RegExp(`^${expected.replace(/[()]/g, '\\$&')}, got `));
    }
    expect(messageFor(problemsOf('[daemon]\nmax-auth-tries = 0\n'), 'daemon.max-auth-tries')).toBe('expected at least 1, got 0 (number)');
  });

  it('port out of range', () => {
    expect(messageFor(problemsOf('[daemon]\nport = 70000\n'), 'daemon.port')).toBe('expected at most 65535, got 70000 (number)');
  });

  it('image layers: unknown type, missing field, field of another type', () => {
    const error = problemsOf(`
[[image.layers]]
type = "tarball"
path = "a.tar"
[[image.layers]]
type = "nix"
path = "/nix/store/x"
[[image.layers]]
path = "d"
`);
    expect(messageFor(error, 'image.layers[0].type')).toBe('expected one of "tar", "dir", "nix", got "tarball" (string)');
    expect(messageFor(error, 'image.layers[1].paths')).toBe('required: expected a list');
    expect(messageFor(error, 'image.layers[1].path')).toBe('unknown key (did you mean `image.layers[1].paths`?)');
    expect(messageFor(error, 'image.layers[2].type')).toBe('required: expected one of "tar", "dir", "nix"');
  });

  it('lines of keys in arrays of tables, dotted keys, and missing keys (their table\'s line)', () => {
    const error = problemsOf(`
[[image.layers]]
type = "tar"
path = "a.tar"

[[image.layers]]
type = "nix"
path = "/nix/store/x"

[guest]
nix.cores = -1
`);
    expect(error.problems.map((p) => [p.key, p.line])).toEqual([
      ['guest.nix.cores', 11],
      ['image.layers[1].paths', 6],
      ['image.layers[1].path', 8],
    ]);
  });

  it('TOML syntax error: file, line and column', () => {
    const error = problemsOf('[guest]\ncpus = 2\nmemory = = "4GiB"\n');
    expect(error.problems).toHaveLength(1);
    expect(error.problems[0]).toMatchObject({ file: 'ferry.toml', line: 3, column: 10 });
    expect(error.message).toMatch(/^ferry\.toml:3:10: TOML syntax error: /);
  });

  it('a duplicated key is a syntax error at its second occurrence', () => {
    const error = problemsOf('[guest]\ncpus = 2\n\ncpus = 3\n');
    expect(error.problems[0].line).toBe(4);
  });
});

describe('cross-key and host checks', () => {
  it('Rosetta on Linux, or under qemu, is refused naming guest.interpreter', () => {
    const onLinux = problemsOf('[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\ninterpreter = "rosetta"\n', linuxX64);
    expect(messageFor(onLinux, 'guest.interpreter')).toBe('"rosetta" needs an Apple-silicon Mac, but this host is linux x64; use "qemu-user"');
    const onIntelMac = problemsOf('[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\ninterpreter = "rosetta"\n[vm]\nbackend = "qemu"\n', macIntel);
    expect(messageFor(onIntelMac, 'guest.interpreter')).toMatch(/needs an Apple-silicon Mac, but this host is darwin x64/);
    const underQemu = problemsOf('[guest]\nextra-systems = ["x86_64-linux"]\ninterpreter = "rosetta"\n[vm]\nbackend = "qemu"\n', macArm);
    expect(messageFor(underQemu, 'guest.interpreter')).toBe(
      '"rosetta" is provided only by the vfkit backend, but vm.backend is "qemu"; use "qemu-user" or set vm.backend = "vfkit"',
    );
  });

  it('a foreign extra system with interpreter "none" is refused', () => {
    const error = problemsOf('[guest]\nextra-systems = ["aarch64-linux"]\ninterpreter = "none"\n');
    expect(messageFor(error, 'guest.interpreter')).toBe(
      'expected "rosetta" or "qemu-user" to run aarch64-linux builds on an x86_64-linux guest, got "none" (string)',
    );
  });

  it('extra-systems repeating the guest system, and backends the host cannot run', () => {
    const error = problemsOf('[guest]\nextra-systems = ["x86_64-linux"]\n[vm]\nbackend = "hyperkit"\naccel = "hvf"\n');
    expect(messageFor(error, 'guest.extra-systems')).toBe('lists "x86_64-linux", which is already the guest\'s own system (guest.system)');
    expect(messageFor(error, 'vm.backend')).toBe('"hyperkit" runs only on Intel Macs, but this host is linux x64');
    expect(error.problems.filter((p) => p.key === 'vm.accel').map((p) => p.message)).toEqual([
      '"hvf" is not an accelerator hyperkit can use for an x86_64-linux guest here (this host is linux x64; it can use hypervisor.framework); remove it or set it to "auto"',
    ]);
    const qemuHvf = problemsOf('[vm]\nbackend = "qemu"\naccel = "hvf"\n');
    expect(messageFor(qemuHvf, 'vm.accel')).toBe(
      '"hvf" is not an accelerator qemu can use for an x86_64-linux guest here (this host is linux x64; it can use kvm, tcg); remove it or set it to "auto"',
    );
    const autoHvf = problemsOf('[vm]\naccel = "hvf"\n');
    expect(messageFor(autoHvf, 'vm.accel')).toBe('"hvf" cannot run an x86_64-linux guest here (this host is linux x64); use "auto" or "tcg"');
    const vfkitHere = problemsOf('[vm]\nbackend = "vfkit"\n');
    expect(messageFor(vfkitHere, 'vm.backend')).toBe('"vfkit" runs only on macOS, but this host is linux x64');
    const vfkitForeign = problemsOf('[guest]\nsystem = "x86_64-linux"\n[vm]\nbackend = "vfkit"\n', macArm);
    expect(messageFor(vfkitForeign, 'vm.backend')).toBe('"vfkit" runs only aarch64-linux guests on this host (it cannot emulate), but guest.system is "x86_64-linux"');
  });

  it('kvm for a foreign guest architecture is refused', () => {
    expect(messageFor(problemsOf('[guest]\nsystem = "aarch64-linux"\n[vm]\naccel = "kvm"\n'), 'vm.accel')).toBe(
      '"kvm" cannot run an aarch64-linux guest here (this host is linux x64); use "auto" or "tcg"',
    );
  });

  it('more memory than the host has is refused', () => {
    expect(messageFor(problemsOf('[guest]\nmemory = "16GiB"\n'), 'guest.memory')).toBe("expected at most this host's memory (8GiB), got 16GiB");
  });
});

describe('several problems are reported together', () => {
  it('lists every problem, one line each, with file and key', () => {
    const error = problemsOf(`
[guest]
memroy = "4GiB"
cpus = 0
memory = "lots"
[daemon]
listen = "0.0.0.0"
idle-timeout = "soon"
[vm]
backend = "virtualbox"
`);
    const keys = error.problems.map((p) => p.key).sort();
    expect(keys).toEqual(['daemon.idle-timeout', 'daemon.listen', 'guest.cpus', 'guest.memory', 'guest.memroy', 'vm.backend']);
    const lines = error.message.split('\n');
    expect(lines[0]).toBe('6 problems in the configuration:');
    expect(lines.slice(1)).toHaveLength(6);
    for (const line of lines.slice(1)) expect(line).toMatch(/^ {2}ferry\.toml:\d+: key `[a-z.-]+`: /);
    // Each problem points at the line of its key.
    expect(Object.fromEntries(error.problems.map((p) => [p.key, p.line]))).toEqual({
      'guest.memroy': 3,
      'guest.cpus': 4,
      'guest.memory': 5,
      'daemon.listen': 7,
      'daemon.idle-timeout': 8,
      'vm.backend': 10,
    });
  });

  it('cross-key problems are reported together too', () => {
    const error = problemsOf('[guest]\nmemory = "64GiB"\n[vm]\nbackend = "vfkit"\n');
    expect(error.problems.map((p) => p.key)).toEqual(['vm.backend', 'guest.memory']);
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-config-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('a missing file gives the defaults, unless it must exist', async () => {
    const missing = path.join(dir, 'nope.toml');
    expect(await loadConfig(missing, { host: linuxX64 })).toEqual(defaultConfig({ host: linuxX64 }));
    const error = await loadConfig(missing, { host: linuxX64, mustExist: true }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).message).toBe(`${missing}: cannot read the configuration file: no such file`);
  });

  it('FERRY_CONFIG naming a missing file is an error naming the file and FERRY_CONFIG, not the defaults', async () => {
    const missing = path.join(dir, 'gone.toml');
    const paths = resolvePaths({ env: { FERRY_CONFIG: missing }, homeDir: dir, platform: 'linux' });
    expect(paths.configFileNamedBy).toBe('FERRY_CONFIG');
    const error = await loadConfig(paths.configFile, { host: linuxX64, mustExist: paths.configFileNamedBy }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).exitCode).toBe(ExitCode.Config);
    expect((error as ConfigError).message).toBe(`${missing}: cannot read the configuration file (named by FERRY_CONFIG): no such file`);
    // The platform's default file is not named by the user (it may be missing); --config is.
    expect(resolvePaths({ env: {}, homeDir: dir, platform: 'linux' }).configFileNamedBy).toBeUndefined();
    expect(resolvePaths({ env: { FERRY_CONFIG: '' }, homeDir: dir, platform: 'linux' }).configFileNamedBy).toBeUndefined();
    expect(resolvePaths({ configFile: 'x.toml', env: { FERRY_CONFIG: '/y.toml' }, homeDir: dir, platform: 'linux' }).configFileNamedBy).toBe('argument');
  });

  it('reads the file, resolves relative paths against its directory, names it in errors', async () => {
    const file = path.join(dir, 'ferry.toml');
    await writeFile(file, '[[image.layers]]\ntype = "dir"\npath = "overlay"\n');
    const config = await loadConfig(file, { host: linuxX64 });
    expect(config.source).toBe(file);
    expect(config.image.layers).toEqual([{ type: 'dir', path: path.join(dir, 'overlay') }]);

    await writeFile(file, '[guest]\ncpus = true\n');
    await expect(loadConfig(file, { host: linuxX64 })).rejects.toThrow(`${file}:2: key \`guest.cpus\`: expected a whole number, got true (boolean)`);
  });

  it('a directory is not a config file', async () => {
    await expect(loadConfig(dir, { host: linuxX64 })).rejects.toThrow(/cannot read the configuration file: is a directory/);
  });
});

describe('renderDefaultConfig', () => {
  it.each([['Apple silicon', macArm], ['Intel Mac', macIntel], ['Linux', linuxX64]] as const)('%s: loads back to the defaults, commented or not', (_name, host) => {
    const text = renderDefaultConfig(host);
    expect(parseConfigText(text, '/x/ferry.toml', { host })).toEqual({ ...defaultConfig({ host }), source: '/x/ferry.toml' });

    // Uncommenting every `# key = value` line must give the same config: the comments tell the truth.
    const settingLine = /^# ([a-z-]+ = .*)$/;
    const uncommented = text
      .split('\n')
      .map((line) => line.replace(settingLine, '$1'))
      .join('\n');
    const settings = text.split('\n').filter((line) => settingLine.test(line));
    expect(settings.length).toBeGreaterThanOrEqual(22);
    expect(parseConfigText(uncommented, '/x/ferry.toml', { host })).toEqual({ ...defaultConfig({ host }), source: '/x/ferry.toml' });
  });

  it('shows host-dependent defaults for the host', () => {
    expect(renderDefaultConfig(macArm)).toContain('# system = "aarch64-linux"\n');
    expect(renderDefaultConfig(macArm)).toContain('# preset = "nixpkgs"\n');
    expect(renderDefaultConfig(linuxX64)).toContain('# preset = "debian"\n');
    expect(renderDefaultConfig(linuxX64)).toContain('# ready-timeout = "5m"\n# How long the SSH handshake with the ready guest\'s sshd may take before a session fails.\n# ssh-timeout = "20s"\n');
  });
});

describe('paths', () => {
  const noEnv = {};

  it('macOS user install: config and state in XDG places (no spaces), cache and logs in ~/Library', () => {
    const paths = resolvePaths({ platform: 'darwin', homeDir: '/Users/ann', env: noEnv });
    expect(paths).toMatchObject({
      system: false,
      configFile: '/Users/ann/.config/ferry/ferry.toml',
      stateDir: '/Users/ann/.local/state/ferry',
      cacheDir: '/Users/ann/Library/Caches/ferry',
      logDir: '/Users/ann/Library/Logs/ferry',
      keysDir: '/Users/ann/.local/state/ferry/keys',
      controlSocket: '/Users/ann/.local/state/ferry/ferry.sock',
      clientKey: '/Users/ann/.local/state/ferry/keys/client_ed25519',
      builderSshConfig: '/Users/ann/.local/state/ferry/builder_ssh_config',
      builderKnownHosts: '/Users/ann/.local/state/ferry/builder_known_hosts',
      stateDisk: '/Users/ann/.local/state/ferry/vm/state.img',
      imagesDir: '/Users/ann/Library/Caches/ferry/images',
      consoleLog: '/Users/ann/Library/Logs/ferry/console.log',
    });
    // Paths that go into /etc/nix/machines and ssh_config must not contain spaces.
    for (const p of [paths.stateDir, paths.clientKey, paths.keysDir, paths.builderKnownHosts]) expect(p).not.toMatch(/\s/);
  });

  it('Linux user install: XDG, honouring absolute XDG variables and ignoring relative ones', () => {
    expect(resolvePaths({ platform: 'linux', homeDir: '/home/ann', env: noEnv })).toMatchObject({
      configFile: '/home/ann/.config/ferry/ferry.toml',
      stateDir: '/home/ann/.local/state/ferry',
      cacheDir: '/home/ann/.cache/ferry',
      logDir: '/home/ann/.local/state/ferry/logs',
    });
    const env = { XDG_CONFIG_HOME: '/cfg', XDG_STATE_HOME: 'relative/state', XDG_CACHE_HOME: '/c' };
    expect(resolvePaths({ platform: 'linux', homeDir: '/home/ann', env })).toMatchObject({
      configFile: '/cfg/ferry/ferry.toml',
      stateDir: '/home/ann/.local/state/ferry',
      cacheDir: '/c/ferry',
    });
  });

  it('system installs', () => {
    expect(resolvePaths({ platform: 'linux', system: true, env: noEnv })).toMatchObject({
      configFile: '/etc/ferry/ferry.toml',
      stateDir: '/var/lib/ferry',
      cacheDir: '/var/cache/ferry',
      logDir: '/var/log/ferry',
      controlSocket: '/var/lib/ferry/ferry.sock',
    });
    expect(resolvePaths({ platform: 'darwin', system: true, env: noEnv })).toMatchObject({
      configFile: '/etc/ferry/ferry.toml',
      stateDir: '/var/lib/ferry',
      cacheDir: '/Library/Caches/ferry',
      logDir: '/Library/Logs/ferry',
    });
  });

  it('FERRY_* variables override the platform, and arguments override the variables', () => {
    const env = { FERRY_CONFIG: '/t/ferry.toml', FERRY_STATE_DIR: '/t/state', FERRY_CACHE_DIR: '/t/cache', XDG_STATE_HOME: '/xdg' };
    const paths = resolvePaths({ platform: 'darwin', homeDir: '/Users/ann', env });
    expect(paths).toMatchObject({
      configFile: '/t/ferry.toml',
      stateDir: '/t/state',
      cacheDir: '/t/cache',
      // The log dir follows an overridden state dir, so a test's files stay in its own directory.
      logDir: '/t/state/logs',
      guestRecord: '/t/state/vm/guest.json',
      downloadsDir: '/t/cache/downloads',
      // FERRY_CACHE_DIR holds every cache, vfkit's uncompressed kernels too.
      kernelsDir: '/t/cache/kernels',
      hypervisorLog: '/t/state/logs/hypervisor.log',
    });
    expect(resolvePaths({ platform: 'linux', system: true, env, stateDir: '/arg/state', logDir: '/arg/logs' })).toMatchObject({
      configFile: '/t/ferry.toml',
      stateDir: '/arg/state',
      logDir: '/arg/logs',
      cacheDir: '/t/cache',
    });
    expect(resolvePaths({ platform: 'linux', homeDir: '/h', env: { FERRY_LOG_DIR: '/logs' } }).logDir).toBe('/logs');
  });

  it('the process environment is used by default', () => {
    const saved = process.env.FERRY_STATE_DIR;
    process.env.FERRY_STATE_DIR = '/tmp/ferry-env-test';
    try {
      expect(resolvePaths().stateDir).toBe('/tmp/ferry-env-test');
    } finally {
      if (saved === undefined) delete process.env.FERRY_STATE_DIR;
      else process.env.FERRY_STATE_DIR = saved;
    }
  });

  it('a control socket path too long for a unix socket is refused with a clear message', () => {
    const long = `/tmp/${'x'.repeat(100)}/ferry.sock`;
    expect(() => assertSocketPathFits(long, 'darwin')).toThrow(/is 116 bytes long; unix sockets allow at most 103 here/);
    expect(() => assertSocketPathFits('/Users/ann/.local/state/ferry/ferry.sock', 'darwin')).not.toThrow();
  });
});

describe('guest.nix.min-free and max-free', () => {
  const parse = (text: string) => parseConfigText(text, '/home/ann/.config/ferry/ferry.toml', { host: linuxX64 });

  it('"auto" (the default) is a fifth and two fifths of the state disk, in whole MiB', () => {
    expect(parse('[guest]\nstate-disk-size = "40GiB"\n').guest.nix).toMatchObject({ minFreeBytes: 8 * GiB, maxFreeBytes: 16 * GiB });
    expect(parse('[guest]\nstate-disk-size = "1GiB"\n[guest.nix]\nmin-free = "auto"\nmax-free = "auto"\n').guest.nix).toMatchObject({ minFreeBytes: 205 * MiB, maxFreeBytes: 410 * MiB });
  });

  it('a min-free given alone raises the automatic max-free to it, never below', () => {
    expect(parse('[guest]\nstate-disk-size = "4GiB"\n[guest.nix]\nmin-free = "2GiB"\n').guest.nix).toMatchObject({ minFreeBytes: 2 * GiB, maxFreeBytes: 2 * GiB });
  });

  it('refuses a min-free not below the state disk, and a max-free below min-free or above the disk, naming the keys', () => {
    expect(() => parse('[guest]\nstate-disk-size = "4GiB"\n[guest.nix]\nmin-free = "4GiB"\n')).toThrow(/guest\.nix\.min-free.*expected less than guest\.state-disk-size \(4GiB\), got 4GiB/);
    expect(() => parse('[guest]\nstate-disk-size = "4GiB"\n[guest.nix]\nmin-free = "1GiB"\nmax-free = "512MiB"\n')).toThrow(/guest\.nix\.max-free.*expected from guest\.nix\.min-free \(1GiB\) to guest\.state-disk-size \(4GiB\), got 512MiB/);
    expect(() => parse('[guest.nix]\nmin-free = "lots"\n')).toThrow(/guest\.nix\.min-free/);
  });
});
