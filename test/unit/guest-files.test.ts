/**
 * The files ferry generates for the guest: nix.conf from the config, an sshd_config that the real
 * sshd accepts (`sshd -t`), and every generated script parsed by both shells that may run it
 * (busybox sh in the initramfs, dash as Debian's /bin/sh) — a syntax error there is a guest that
 * never boots. Also the state disk: created once by ferry's ext4 writer, grown, never shrunk.
 */
import { execa } from 'execa';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { readHostNixSettings } from '../../src/config/host-nix-conf.js';
import { guestCacheUrl, guestFiles, nixConf, sshdConfig } from '../../src/image/guest-os/files.js';
import { GUEST_BUSYBOX, stage1Init } from '../../src/image/guest-os/stage1.js';
import { acpidFiles, controlScript, HOST_ADDRESS_PLACEHOLDER, hostAddressScript, inittab, shutdownScript, stage2Script, udhcpcScript } from '../../src/image/guest-os/stage2.js';
import { ensureStateDisk } from '../../src/image/state-disk.js';
import { ensureKeyPair } from '../../src/keys/ssh-keys.js';
import { guestCmdline } from '../../src/vm/instance/spec.js';
import { guestSshConfigText, shellQuote, sshArgv } from '../../src/vm/instance/ssh.js';
import { resolvePaths } from '../../src/config/paths.js';
import type { ImageManifest } from '../../src/image/manifest.js';

let work: string;
beforeAll(async () => {
  work = await mkdtemp(path.join(tmpdir(), 'ferry-guest-files-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const config = parseConfigText(
  `[guest]\nhostname = "ferry-test"\nextra-systems = ["i686-linux"]\n[guest.nix]\nmax-jobs = 5\ncores = 2\nfeatures = ["big-parallel", "kvm"]\ntrusted-users = ["alice"]\nextra-config = "keep-outputs = true"\n`,
  'ferry.toml',
);

describe('nix.conf', () => {
  it('carries the config: jobs, cores, features, trusted users (builder always), extra platforms, extra lines', () => {
    const text = nixConf(config);
    const lines = text.trimEnd().split('\n');
    expect(lines).toContain('max-jobs = 5');
    expect(lines).toContain('cores = 2');
    expect(lines).toContain('system-features = big-parallel kvm');
    expect(lines).toContain('trusted-users = root alice builder');
    expect(lines).toContain('extra-platforms = i686-linux');
    expect(lines).toContain('build-users-group = nixbld');
    expect(lines.at(-1)).toBe('keep-outputs = true');
  });

  it("turns Nix's sandbox on with no fallback, /bin/sh the guest's static busybox, and garbage collection from the state disk's size", () => {
    const lines = nixConf(config).trimEnd().split('\n');
    expect(lines).toContain('sandbox = true');
    expect(lines).toContain('sandbox-fallback = false');
    expect(lines).toContain(`sandbox-paths = /bin/sh=${GUEST_BUSYBOX}`);
    // The default 40GiB state disk: GC below 4GiB free, until 10GiB are free.
    expect(lines).toContain(`min-free = ${8 * 1024 ** 3}`);
    expect(lines).toContain(`max-free = ${16 * 1024 ** 3}`);
    expect(lines.join('\n')).not.toMatch(/sandbox = (false|relaxed)/);
  });

  it("leaves the nixpkgs preset's /bin/sh to its Nix: the static busybox-sandbox-shell it is built with, not the preset's dynamic busybox", () => {
    const nixpkgs = parseConfigText('[guest]\npreset = "nixpkgs"\nsystem = "x86_64-linux"\n', '/dev/null/ferry.toml');
    expect(nixpkgs.guest.preset).toBe('nixpkgs');
    const lines = nixConf(nixpkgs).trimEnd().split('\n');
    expect(lines).toContain('sandbox = true');
    expect(lines).toContain('sandbox-fallback = false');
    expect(lines.filter((line) => line.startsWith('sandbox-paths'))).toEqual([]);
  });

  it('changes when max-jobs changes (so an image build with a new max-jobs has a new config archive)', () => {
    const other = parseConfigText('[guest.nix]\nmax-jobs = 6\n', 'ferry.toml');
    expect(nixConf(other)).toContain('max-jobs = 6');
    expect(nixConf(other)).not.toBe(nixConf(config));
  });
});

describe("nix.conf's binary caches follow the host's Nix", () => {
  const withCaches = (nix: string) => parseConfigText(`[guest.nix]\n${nix}\n`, 'ferry.toml');
  const hostFiles = async (files: Record<string, string>) => {
    const dir = await mkdtemp(path.join(work, 'etc-nix-'));
    for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
    return path.join(dir, 'nix.conf');
  };
  const cacheLines = (text: string) => text.split('\n').filter((line) => /substituters|trusted-public-keys/.test(line));

  it("reads the host's nix.conf as Nix does: includes in place, a later NAME = replacing, extra- appending, comments dropped", async () => {
    const file = await hostFiles({
      'nix.conf': 'substituters = https://old.example\nsubstituters = https://cache.nixos.org/ # the default\ntrusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n!include nix.custom.conf\n!include missing.conf\n',
      'nix.custom.conf': 'extra-substituters = http://127.0.0.1:5000 https://nix-community.cachix.org\nextra-trusted-public-keys = local-1:AAAA\n',
    });
    const host = readHostNixSettings(file);
    expect(host.substituters).toEqual({ value: ['https://cache.nixos.org/'], extra: ['http://127.0.0.1:5000', 'https://nix-community.cachix.org'] });
    expect(host.trustedPublicKeys).toEqual({ value: ['cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY='], extra: ['local-1:AAAA'] });
    // In the guest: the same settings, the loopback cache at the placeholder stage 2 replaces.
    expect(cacheLines(nixConf(withCaches(''), () => host))).toEqual([
      'substituters = https://cache.nixos.org/',
      `extra-substituters = http://${HOST_ADDRESS_PLACEHOLDER}:5000 https://nix-community.cachix.org`,
      'trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=',
      'extra-trusted-public-keys = local-1:AAAA',
    ]);
  });

  it("a host without Nix (no nix.conf) or one that keeps Nix's defaults: no lines, the guest's Nix has the same defaults", async () => {
    expect(readHostNixSettings(path.join(work, 'no-such-dir/nix.conf'))).toEqual({ substituters: { value: undefined, extra: [] }, trustedPublicKeys: { value: undefined, extra: [] } });
    const file = await hostFiles({ 'nix.conf': 'sandbox = false\n' });
    expect(cacheLines(nixConf(withCaches(''), () => readHostNixSettings(file)))).toEqual([]);
  });

  it('the config overrides the host: guest.nix.substituters and trusted-public-keys, the host not read; extra-config still comes last', () => {
    const config = withCaches('substituters = ["http://localhost:8080/cache?priority=10", "https://cache.example"]\ntrusted-public-keys = ["mine-1:AAAA"]\nextra-config = "substituters ="');
    const text = nixConf(config, () => {
      throw new Error('the host is not read when the config names the caches');
    });
    expect(cacheLines(text)).toEqual([`substituters = http://${HOST_ADDRESS_PLACEHOLDER}:8080/cache?priority=10 https://cache.example`, 'trusted-public-keys = mine-1:AAAA', 'substituters =']);
    // An empty list: no caches at all.
    expect(cacheLines(nixConf(withCaches('substituters = []'), () => ({ substituters: { extra: [] }, trustedPublicKeys: { extra: [] } })))).toEqual(['substituters =']);
  });

  it("a host's cache in its own file system (file://, a path, its local store) is not the guest's: left out; keys are kept", () => {
    const host = { substituters: { value: ['file:///var/cache/nix', '/srv/cache', 'https://cache.nixos.org/'], extra: ['daemon', 'local'] }, trustedPublicKeys: { extra: ['local-1:AAAA'] } };
    expect(cacheLines(nixConf(withCaches(''), () => host))).toEqual(['substituters = https://cache.nixos.org/', 'extra-trusted-public-keys = local-1:AAAA']);
  });

  it('only a loopback host is rewritten: 127.0.0.1, localhost, [::1], with a user or port; not a name that merely starts so', () => {
    expect(guestCacheUrl('http://127.0.0.1:5000')).toBe(`http://${HOST_ADDRESS_PLACEHOLDER}:5000`);
    expect(guestCacheUrl('https://localhost/nix')).toBe(`https://${HOST_ADDRESS_PLACEHOLDER}/nix`);
    expect(guestCacheUrl('http://[::1]:8080')).toBe(`http://${HOST_ADDRESS_PLACEHOLDER}:8080`);
    expect(guestCacheUrl('ssh://nix@localhost')).toBe(`ssh://nix@${HOST_ADDRESS_PLACEHOLDER}`);
    expect(guestCacheUrl('http://localhost.example.com')).toBe('http://localhost.example.com');
    expect(guestCacheUrl('https://cache.nixos.org')).toBe('https://cache.nixos.org');
  });

  it('the same host files give the same guest files (the config archive is reproducible) whatever backend boots them', async () => {
    const file = await hostFiles({ 'nix.conf': 'extra-substituters = http://127.0.0.1:5000\n' });
    const keys = { hostPrivateKey: 'k', hostPublicKey: 'p', builderKeys: ['b'], controlKey: 'c' };
    const once = guestFiles(withCaches(''), keys, () => readHostNixSettings(file));
    expect(guestFiles(withCaches(''), keys, () => readHostNixSettings(file))).toEqual(once);
    expect(JSON.stringify(once)).not.toContain('10.0.2.2:5000');
    // Stage 2 puts the gateway in before nix-daemon starts.
    const stage2 = stage2Script();
    expect(stage2.indexOf(`sed -i "s/${HOST_ADDRESS_PLACEHOLDER.replace('.', '\\.')}/`)).toBeGreaterThan(0);
    expect(stage2.indexOf(`sed -i "s/${HOST_ADDRESS_PLACEHOLDER.replace('.', '\\.')}/`)).toBeLessThan(stage2.indexOf('setsid nix-daemon'));
  });

  it("stage 2 puts the gateway at the placeholder: the DHCP router (vfkit, hyperkit), else qemu's 10.0.2.2", async () => {
    const conf = path.join(work, 'placeholder-nix.conf');
    const bin = await mkdtemp(path.join(work, 'bin-'));
    for (const [route, expected] of [['default via 192.168.64.1 dev eth0\n192.168.64.0/24 dev eth0 scope link', '192.168.64.1'], ['', '10.0.2.2']] as const) {
      await writeFile(path.join(bin, 'ip'), `#!/bin/sh\n[ "$1" = route ] && printf '%s\\n' '${route}'\n`, { mode: 0o755 });
      await writeFile(conf, `substituters = http://${HOST_ADDRESS_PLACEHOLDER}:5000 https://cache.nixos.org\n`);
      // dash: busybox sh would run its own `ip` applet (the host's real routes), not the stub.
      const ran = await execa('dash', ['-c', hostAddressScript(conf)], { env: { PATH: `${bin}:${process.env.PATH}` }, reject: false });
      expect(ran.exitCode, ran.stderr).toBe(0);
      expect(await readFile(conf, 'utf8')).toBe(`substituters = http://${expected}:5000 https://cache.nixos.org\n`);
    }
  });

  it('refuses a substituter with a space and a key that is not NAME:BASE64, naming the key', () => {
    expect(() => withCaches('substituters = ["http://a b"]')).toThrow(/guest\.nix\.substituters.*binary cache URL/s);
    expect(() => withCaches('trusted-public-keys = ["nokey"]')).toThrow(/guest\.nix\.trusted-public-keys.*NAME:BASE64/s);
  });
});

describe('sshd_config', () => {
  it('is accepted by the real sshd (sshd -t) with the generated host key', async () => {
    const key = ensureKeyPair(path.join(work, 'host'), 'test-host');
    const file = path.join(work, 'sshd_config');
    await writeFile(file, sshdConfig());
    const result = await execa('/usr/sbin/sshd', ['-t', '-f', file, '-h', key.privatePath], { reject: false });
    // sshd checks its privilege separation directory (/run/sshd, made by the guest's stage 2)
    // only after it has parsed the config and loaded the keys: that complaint alone means both passed.
    if (result.exitCode !== 0) expect(result.stderr).toMatch(/^Missing privilege separation directory: \/run\/sshd$/);
    else expect(result.stderr).toBe('');
    const broken = path.join(work, 'sshd_config.broken');
    await writeFile(broken, `${sshdConfig()}NoSuchOption yes\n`);
    const refused = await execa('/usr/sbin/sshd', ['-t', '-f', broken, '-h', key.privatePath], { reject: false });
    expect(refused.stderr).toContain('Bad configuration option: NoSuchOption');
  });

  it('lets root in with the forced control command only, and nobody in with a password', () => {
    const text = sshdConfig();
    expect(text).toMatch(/^PermitRootLogin forced-commands-only$/m);
    expect(text).toMatch(/^PasswordAuthentication no$/m);
    expect(text).toMatch(/^KbdInteractiveAuthentication no$/m);
  });
});

describe('generated scripts', () => {
  const keys = { hostPrivateKey: 'PRIVATE', hostPublicKey: 'ssh-ed25519 AAAA host', builderKeys: ['ssh-ed25519 BBBB b'], controlKey: 'ssh-ed25519 CCCC c' };
  const scripts: Array<[string, string]> = [
    ['stage 1 /init', stage1Init()],
    ['stage 2', stage2Script()],
    ['shutdown', shutdownScript()],
    ['control', controlScript()],
    ['udhcpc', udhcpcScript()],
    ['acpid power-button handler', acpidFiles().find((file) => file.mode & 0o111)!.content],
  ];
  for (const [name, text] of scripts) {
    for (const shell of [['busybox', 'sh', '-n'], ['dash', '-n']]) {
      it(`${name} parses under ${shell.slice(0, -1).join(' ')}`, async () => {
        const file = path.join(work, `${name.replace(/\W+/g, '-')}.sh`);
        await writeFile(file, text);
        const result = await execa(shell[0]!, [...shell.slice(1), file], { reject: false });
        expect(result.stderr).toBe('');
        expect(result.exitCode).toBe(0);
      });
    }
  }

  it('the syntax check catches a broken script (the check can fail)', async () => {
    const file = path.join(work, 'broken.sh');
    await writeFile(file, `${stage2Script()}\nif true; then\n`);
    expect((await execa('dash', ['-n', file], { reject: false })).exitCode).not.toBe(0);
    expect((await execa('busybox', ['sh', '-n', file], { reject: false })).exitCode).not.toBe(0);
  });

  it('every generated executable file is one of the checked scripts', () => {
    const executables = guestFiles(config, keys).filter((f) => f.mode & 0o111);
    const checked = new Set(scripts.map(([, text]) => text));
    for (const file of executables) expect(checked.has(file.content), file.path).toBe(true);
    expect(executables.length).toBe(5);
  });

  it('the control command runs poweroff, settime, time and refuses anything else', async () => {
    // Run for real with a stub PATH: `busybox poweroff`, `date` and `setsid` record their arguments.
    const bin = path.join(work, 'stub-bin');
    await execa('mkdir', ['-p', bin]);
    for (const tool of ['busybox', 'date', 'setsid']) {
      await writeFile(path.join(bin, tool), `#!/bin/sh\necho "${tool} $*" >> ${work}/calls\n`, { mode: 0o755 });
    }
    const script = path.join(work, 'control.sh');
    await writeFile(script, controlScript().replace('export PATH=/usr/sbin:/usr/bin:/sbin:/bin', `export PATH=${bin}:/usr/bin:/bin`), { mode: 0o755 });
    const run = (command: string) => execa('sh', [script], { env: { SSH_ORIGINAL_COMMAND: command }, reject: false });
    expect((await run('settime 1700000000')).exitCode).toBe(0);
    expect((await run('settime 17; reboot')).exitCode).toBe(64);
    expect((await run('rm -rf /')).stderr).toContain('unknown command: rm');
    expect((await run('poweroff')).exitCode).toBe(0);
    await new Promise((r) => setTimeout(r, 300));
    const calls = await execa('cat', [`${work}/calls`]);
    expect(calls.stdout).toContain('date -s @1700000000');
    expect(calls.stdout).toContain("setsid sh -c sleep 0.2; busybox poweroff");
    expect(calls.stdout).not.toContain('reboot');
  });

  it('inittab runs stage 2 once and the shutdown script on the way down', () => {
    expect(inittab()).toContain('::sysinit:/usr/lib/ferry/stage2');
    expect(inittab()).toContain('::shutdown:/usr/lib/ferry/shutdown');
  });
});

describe('booting a manifest', () => {
  it('the command line adds the clock and the network mode to the image\'s own', () => {
    const manifest = { cmdline: 'panic=-1' } as ImageManifest;
    expect(guestCmdline(manifest, config, 'user', 1700000000)).toBe('panic=-1 ferry.time=1700000000 ferry.net=user');
    // A manifest saved before the backend owned the console: its guess is dropped.
    expect(guestCmdline({ cmdline: 'console=ttyAMA0 panic=-1' } as ImageManifest, config, 'dhcp', 1)).toBe('panic=-1 ferry.time=1 ferry.net=dhcp');
  });

  it('ssh_config pins the guest host key under an alias, and exec quotes each word for the remote shell', () => {
    const paths = resolvePaths({ env: { FERRY_STATE_DIR: '/s', FERRY_CACHE_DIR: '/c' } });
    const text = guestSshConfigText(paths, { sshHost: '127.0.0.1', sshPort: 40022 });
    expect(text).toMatch(/^Host ferry-guest\n {2}User builder\n {2}HostName 127\.0\.0\.1\n {2}Port 40022\n/m);
    expect(text).toContain('  StrictHostKeyChecking yes');
    expect(text).toContain('  UserKnownHostsFile /s/vm/known_hosts');
    expect(text).toContain(`  IdentityFile ${paths.guestClientKey}`);
    expect(sshArgv(paths, ['sh', '-c', "echo 'a b'"])).toEqual(['-F', '/s/ssh_config', 'ferry-guest', '--', `sh -c 'echo '\\''a b'\\'''`]);
    expect(shellQuote('$HOME')).toBe("'$HOME'");
  });
});

describe('state disk', () => {
  it('is created once, sparse, by ferry’s ext4 writer, with a journal and label; e2fsck finds it clean', async () => {
    const file = path.join(work, 'state.img');
    const made = await ensureStateDisk(file, 8 * 2 ** 30);
    expect(made.action).toBe('created');
    const info = await stat(file);
    expect(info.size).toBe(8 * 2 ** 30);
    expect(info.blocks * 512).toBeLessThan(64 * 2 ** 20);
    const fsck = await execa('e2fsck', ['-fn', file], { reject: false });
    expect(fsck.exitCode, fsck.stdout).toBe(0);
    const header = (await execa('dumpe2fs', ['-h', file])).stdout;
    expect(header).toMatch(/Filesystem volume name:\s+ferry-state/);
    expect(header).toMatch(/features:.*has_journal/);
    expect((await ensureStateDisk(file, 8 * 2 ** 30)).action).toBe('unchanged');
  });

  it('a larger size grows the file (sparse) and keeps the data; a smaller one is refused', async () => {
    const file = path.join(work, 'grow.img');
    await ensureStateDisk(file, 2 ** 30);
    await execa('debugfs', ['-w', '-R', 'mkdir keep', file]);
    const grown = await ensureStateDisk(file, 2 * 2 ** 30);
    expect(grown).toMatchObject({ action: 'grown', sizeBytes: 2 * 2 ** 30 });
    expect((await stat(file)).size).toBe(2 * 2 ** 30);
    // The filesystem still describes 1 GiB until the guest's resize2fs; it is intact.
    expect((await execa('e2fsck', ['-fn', file], { reject: false })).exitCode).toBe(0);
    expect((await execa('debugfs', ['-R', 'ls -p /', file])).stdout).toContain('/keep/');
    await expect(ensureStateDisk(file, 2 ** 30)).rejects.toThrow(/is 2 GiB, larger than the configured state-disk-size 1 GiB; ferry never shrinks it/);
    expect((await stat(file)).size).toBe(2 * 2 ** 30);
  });
});
