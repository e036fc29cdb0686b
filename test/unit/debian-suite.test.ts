/**
 * guest.debian-suite: the key and its default, what the preset's rootfs and identity are keyed
 * by, the host's Debian source read into the private apt state's sources, and the private apt
 * state itself (through a recording runner: every apt command carries its own Dir::State,
 * Dir::Cache and sources, and none touches the host's dpkg or apt lists).
 */
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostInfo } from '../../src/config/host.js';
import { parseConfigText, renderDefaultConfig } from '../../src/config/index.js';
import { aptTarget, packageInfo } from '../../src/image/presets/apt.js';
import { debianMirror, hostSources, sourcesFromDeb822, sourcesFromOneLine, suiteSources } from '../../src/image/presets/apt-sources.js';
import { debianPreset, mmdebstrapArgv } from '../../src/image/presets/debian.js';
import { RecordingRunner } from '../../src/process/runner.js';

const GiB = 1024 ** 3;
const linuxX64: HostInfo = { platform: 'linux', arch: 'x64', cpus: 2, memoryBytes: 8 * GiB, homeDir: '/home/ann' };

/** This machine's /etc/apt/sources.list.d/debian.sources, as Debian's cloud images write it. */
const HOST_SOURCES = `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`;

describe('guest.debian-suite', () => {
  it('defaults to trixie, takes bookworm, refuses anything else naming the key', () => {
    expect(parseConfigText('', 'ferry.toml', { host: linuxX64 }).guest.debianSuite).toBe('trixie');
    expect(parseConfigText('[guest]\ndebian-suite = "bookworm"\n', 'ferry.toml', { host: linuxX64 }).guest.debianSuite).toBe('bookworm');
    expect(() => parseConfigText('[guest]\ndebian-suite = "buster"\n', 'ferry.toml', { host: linuxX64 })).toThrow(/guest\.debian-suite/);
  });

  it('is in the default ferry.toml with a comment, and loads back as it stands', () => {
    const text = renderDefaultConfig(linuxX64);
    expect(text).toMatch(/# The Debian release of the debian preset: "trixie" \(Nix 2\.26\) or "bookworm" \(Nix 2\.8\)[^]*\n# debian-suite = "trixie"\n/);
    const uncommented = text.replace('# debian-suite = "trixie"', 'debian-suite = "trixie"');
    expect(parseConfigText(uncommented, 'ferry.toml', { host: linuxX64 }).guest.debianSuite).toBe('trixie');
  });

  it('keys the rootfs: mmdebstrap gets the suite as its argument, on both architectures', () => {
    expect(mmdebstrapArgv('amd64').at(-1)).toBe('trixie');
    expect(mmdebstrapArgv('amd64', 'bookworm').at(-1)).toBe('bookworm');
    expect(mmdebstrapArgv('arm64', 'bookworm').at(-1)).toBe('bookworm');
    expect(mmdebstrapArgv('arm64').at(-1)).toBe('trixie');
  });
});

describe("the host's Debian source", () => {
  it('deb822: the archive and the security archive with their keyring', () => {
    const mirror = debianMirror(sourcesFromDeb822(HOST_SOURCES));
    expect(mirror).toEqual({
      archive: { uri: 'http://deb.debian.org/debian', signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg' },
      security: { uri: 'http://deb.debian.org/debian-security', signedBy: '/usr/share/keyrings/debian-archive-keyring.gpg' },
    });
    expect(suiteSources(mirror, 'trixie')).toBe(
      'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n' +
        'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: trixie-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n',
    );
  });

  it('one-line sources with a local mirror; disabled, non-deb and foreign sources are passed over', () => {
    const sources = [
      ...sourcesFromOneLine('deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n# deb http://old/debian bookworm main\ndeb-src http://src/debian bookworm main\ndeb [arch=amd64 signed-by=/etc/apt/keyrings/local.gpg] http://mirror.local/debian bookworm main contrib\n'),
      ...sourcesFromDeb822('Types: deb\nURIs: http://other/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n'),
    ];
    expect(debianMirror(sources)).toEqual({ archive: { uri: 'http://mirror.local/debian', signedBy: '/etc/apt/keyrings/local.gpg' }, security: undefined });
    expect(suiteSources(debianMirror(sources), 'trixie')).not.toContain('security');
  });

  it("an inline Signed-By key stays a deb822 continuation; a host without Debian sources gets Debian's own", () => {
    const inline = 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBG\n -----END PGP PUBLIC KEY BLOCK-----\n';
    const mirror = debianMirror(sourcesFromDeb822(inline));
    expect(mirror.archive.signedBy).toBe('-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBG\n-----END PGP PUBLIC KEY BLOCK-----');
    expect(suiteSources(mirror, 'trixie')).toContain('Signed-By: -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mQINBG\n -----END PGP PUBLIC KEY BLOCK-----\n');
    expect(debianMirror([]).archive.uri).toBe('http://deb.debian.org/debian');
  });

  it('reads sources.list and sources.list.d/*.sources and *.list, nothing else', async () => {
    const etc = await mkdtemp(join(tmpdir(), 'ferry-etc-apt-'));
    try {
      await mkdir(join(etc, 'sources.list.d'));
      await writeFile(join(etc, 'sources.list.d', 'debian.sources'), HOST_SOURCES);
      await writeFile(join(etc, 'sources.list.d', 'nodesource.sources.disabled-by-farm'), 'Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n');
      expect(hostSources(etc).flatMap((s) => s.uris)).toEqual(['http://deb.debian.org/debian', 'http://deb.debian.org/debian-security']);
    } finally {
      await rm(etc, { recursive: true, force: true });
    }
  });
});

describe('the private apt state', () => {
  let downloads: string;
  beforeAll(async () => {
    downloads = await mkdtemp(join(tmpdir(), 'ferry-apt-state-'));
  });
  afterAll(async () => {
    await rm(downloads, { recursive: true, force: true });
  });

  it("updates once into downloads/apt-<suite>-<arch> and asks it, never the host's apt or dpkg", async () => {
    const runner = new RecordingRunner([], (file, args) =>
      file === 'apt-cache' && args.at(-1) === 'linux-image-cloud-arm64'
        ? { exitCode: 0, signal: undefined, stdout: 'Package: linux-image-cloud-arm64\nVersion: 6.12.118-1\nDepends: linux-image-6.12.118+deb13-cloud-arm64 (= 6.12.118-1)\n', stderr: '', timedOut: false }
        : { exitCode: 0, signal: undefined, stdout: '', stderr: '', timedOut: false },
    );
    const apt = aptTarget(downloads, 'trixie', 'arm64', runner);
    const info = await packageInfo(apt, 'linux-image-cloud-arm64');
    expect(info).toEqual({ name: 'linux-image-cloud-arm64', arch: 'arm64', version: '6.12.118-1', depends: 'linux-image-6.12.118+deb13-cloud-arm64 (= 6.12.118-1)' });
    expect(runner.commands.map((c) => c.file)).toEqual(['apt-get', 'apt-cache']);
    const [update, show] = runner.commands;
    expect(update.args.slice(-2)).toEqual(['update', '-qq']);
    expect(show.args.slice(-3)).toEqual(['show', '--no-all-versions', 'linux-image-cloud-arm64']); // no :arm64, no dpkg --add-architecture
    const dir = join(downloads, 'apt-trixie-arm64');
    for (const command of runner.commands) {
      // Staged first, then renamed: the update ran against the staging directory, later commands against the state.
      const state = command === update ? /\.staging-\d+-[0-9a-f]+/.exec(command.args.join(' '))![0] : 'apt-trixie-arm64';
      const root = join(downloads, state);
      expect(command.args).toEqual(expect.arrayContaining(['-c', join(root, 'apt.conf'), '-o', `Dir::State=${join(root, 'state')}`, '-o', `Dir::State::status=${join(root, 'status')}`, '-o', `Dir::Cache=${join(root, 'cache')}`, '-o', `Dir::Etc::SourceParts=${join(root, 'sources.list.d')}`]));
    }
    expect(await readFile(join(dir, 'apt.conf'), 'utf8')).toContain('APT::Architecture "arm64";\nAPT::Architectures { "arm64"; };');
    expect(await readFile(join(dir, 'apt.conf'), 'utf8')).toContain('#clear APT::Update::Post-Invoke;');
    expect(await readFile(join(dir, 'sources.list.d', 'debian.sources'), 'utf8')).toMatch(/^Suites: trixie trixie-updates$/m);
    // The same process asks again without another update.
    await packageInfo(apt, 'linux-image-cloud-arm64');
    expect(runner.commands.filter((c) => c.args.includes('update'))).toHaveLength(1);
  });

  it('records the resolution per suite: bookworm and trixie side by side', async () => {
    // A bare system string is the default suite; the guest's config names its own.
    const failing = new RecordingRunner([], () => ({ exitCode: 100, signal: undefined, stdout: '', stderr: 'E: no network here', timedOut: false }));
    const error = await debianPreset(downloads, { system: 'x86_64-linux', debianSuite: 'bookworm' }, undefined, false, failing).catch((e: unknown) => e);
    expect(String(error)).toMatch(/apt-get update \(Debian bookworm amd64, in .*\.staging-/);
    expect((error as { exitCode: number }).exitCode).toBe(69);
  });
});
