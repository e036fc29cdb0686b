/**
 * The files ferry generates for the guest: nix.conf from the config, an sshd_config that the real
 * sshd accepts (`sshd -t`), and every generated script parsed by both shells that may run it
 * (busybox sh in the initramfs, dash as Debian's /bin/sh) — a syntax error there is a guest that
 * never boots. Also the state disk: created once by ferry's ext4 writer, grown, never shrunk.
 */
import { execa } from 'execa';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/config/load.js';
import { guestFiles, nixConf, sshdConfig } from '../../src/image/guest-os/files.js';
import { GUEST_BUSYBOX, stage1Init } from '../../src/image/guest-os/stage1.js';
import { controlScript, inittab, shutdownScript, stage2Script, udhcpcScript } from '../../src/image/guest-os/stage2.js';
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
    expect(lines).toContain(`min-free = ${4 * 1024 ** 3}`);
    expect(lines).toContain(`max-free = ${10 * 1024 ** 3}`);
    expect(lines.join('\n')).not.toMatch(/sandbox = (false|relaxed)/);
  });

  it('changes when max-jobs changes (so an image build with a new max-jobs has a new config archive)', () => {
    const other = parseConfigText('[guest.nix]\nmax-jobs = 6\n', 'ferry.toml');
    expect(nixConf(other)).toContain('max-jobs = 6');
    expect(nixConf(other)).not.toBe(nixConf(config));
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
    expect(executables.length).toBe(4);
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
