/**
 * The Apple-silicon path, the parts that run without a VM (issue 6):
 *  - the vfkit argv for an aarch64 guest with Rosetta, flag by flag, against crc-org/vfkit
 *    doc/usage.md: "--cpus", "--memory" (MiB), "--bootloader linux,kernel=…,initrd=…,cmdline=\"…\"",
 *    "--device virtio-blk,path=…", "virtio-net,nat,mac=…", "virtio-serial,logFilePath=…",
 *    "virtio-rng", "rosetta,mountTag=…" ("The share can then be mounted with
 *    `mount -t virtiofs rosetta-share /mnt`"), "--restful-uri unix://…";
 *  - configs asking for an interpreter the backend or host cannot provide are refused, naming the key;
 *  - the binfmt_misc registration line (qemu's scripts/qemu-binfmt-conf.sh magic and mask; the
 *    same line doc/usage.md gives for Rosetta), checked against real ELF headers;
 *  - the generated binfmt script parses in both shells that may run it, and is absent when no
 *    interpreter is asked for (x86_64 guests unchanged);
 *  - the arm64 preset's extract hook, run for real on a miniature rootfs.
 */
import { execa } from 'execa';
import { mkdir, mkdtemp, open, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolvePaths } from '../../src/config/paths.js';
import { parseConfigText } from '../../src/config/load.js';
import type { HostInfo } from '../../src/config/host.js';
import { BINFMT_PATH, ELF_MATCH, ROSETTA_TAG, binfmtEntries, binfmtRegistration, binfmtScript } from '../../src/image/guest-os/binfmt.js';
import { guestFiles, nixConf } from '../../src/image/guest-os/files.js';
import { stage2Script } from '../../src/image/guest-os/stage2.js';
import { STAGE1_MODULES } from '../../src/image/guest-os/stage1.js';
import { mmdebstrapArm64Argv, postinstHook } from '../../src/image/presets/debian-arm64.js';
import { mmdebstrapArgv } from '../../src/image/presets/debian.js';

const GiB = 2 ** 30;
const appleSilicon: HostInfo = { platform: 'darwin', arch: 'arm64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/Users/u' };
const intelMac: HostInfo = { ...appleSilicon, arch: 'x64' };
const linuxX64: HostInfo = { platform: 'linux', arch: 'x64', cpus: 8, memoryBytes: 16 * GiB, homeDir: '/home/u' };

const rosettaToml = '[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\ninterpreter = "rosetta"\n';
const qemuUserToml = '[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\ninterpreter = "qemu-user"\n[vm]\nbackend = "qemu"\n';
const keys = { hostPrivateKey: 'PRIV', hostPublicKey: 'ssh-ed25519 AAAA host', builderKeys: ['ssh-ed25519 AAAA b'], controlKey: 'ssh-ed25519 AAAA c' };

function refusal(text: string, host: HostInfo): Error {
  try {
    parseConfigText(text, 'ferry.toml', { host });
  } catch (error) {
    return error as Error;
  }
  throw new Error('the config was accepted');
}

describe('Rosetta in an aarch64 guest (the vfkit argv itself is checked from a real build in test/e2e/aarch64.test.ts)', () => {
  it('the guest mounts the share vfkit offers and registers the binary in it', () => {
    const config = parseConfigText(`${rosettaToml}cpus = 4\nmemory = "3GiB"\n[vm]\nbackend = "vfkit"\n`, '/u/ferry.toml', { host: appleSilicon });
    // vfkit's "--device rosetta,mountTag=rosetta-share"; the guest: "mount -t virtiofs rosetta-share /mnt".
    const script = binfmtScript(config)!;
    expect(script).toContain(`busybox mount -t virtiofs ${ROSETTA_TAG} /mnt/rosetta`);
    expect(script).toContain(':/mnt/rosetta/rosetta:CF');
    expect(nixConf(config).split('\n')).toContain('extra-platforms = x86_64-linux');
  });
});

describe('configs asking for an interpreter the backend or host cannot provide', () => {
  it('Rosetta under qemu on an Apple-silicon Mac: refused, naming guest.interpreter and vm.backend', () => {
    const error = refusal(`${rosettaToml}[vm]\nbackend = "qemu"\n`, appleSilicon);
    expect(error.message).toContain('guest.interpreter');
    expect(error.message).toContain('only by the vfkit backend');
    expect(error.message).toContain('vm.backend is "qemu"');
  });

  it('Rosetta on an Intel Mac: refused, naming guest.interpreter, suggesting qemu-user', () => {
    const error = refusal(rosettaToml, intelMac);
    expect(error.message).toContain('guest.interpreter');
    expect(error.message).toContain('needs an Apple-silicon Mac');
    expect(error.message).toContain('"qemu-user"');
  });

  it('Rosetta on this kind of host (Linux x86_64): refused; qemu-user accepted', () => {
    expect(refusal(rosettaToml, linuxX64).message).toMatch(/guest\.interpreter.*Apple-silicon/);
    expect(parseConfigText(qemuUserToml, 'ferry.toml', { host: linuxX64 }).guest.interpreter).toBe('qemu-user');
  });

  it('Rosetta is the default on Apple silicon, qemu-user elsewhere', () => {
    const toml = '[guest]\nsystem = "aarch64-linux"\nextra-systems = ["x86_64-linux"]\n';
    expect(parseConfigText(toml, 'ferry.toml', { host: appleSilicon }).guest.interpreter).toBe('rosetta');
    expect(parseConfigText(toml, 'ferry.toml', { host: linuxX64 }).guest.interpreter).toBe('qemu-user');
  });
});

describe('the binfmt_misc registration', () => {
  it('is qemu-binfmt-conf.sh\'s x86_64 line with the F flag, for qemu-user and for Rosetta', () => {
    const config = parseConfigText(qemuUserToml, 'ferry.toml', { host: linuxX64 });
    expect(binfmtEntries(config)).toEqual([{ name: 'qemu-x86_64', system: 'x86_64-linux', interpreter: '/usr/libexec/ferry/qemu-x86_64-static', flags: 'F' }]);
    expect(binfmtRegistration(binfmtEntries(config)[0]!)).toBe(
      ':qemu-x86_64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00:\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/usr/libexec/ferry/qemu-x86_64-static:F',
    );
    // The line doc/usage.md gives for Rosetta, with Apple's credentials flag.
    expect(binfmtRegistration({ name: 'rosetta', system: 'x86_64-linux', interpreter: '/mnt/rosetta/rosetta', flags: 'CF' })).toBe(
      ':rosetta:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\x3e\\x00:\\xff\\xff\\xff\\xff\\xff\\xfe\\xfe\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:/mnt/rosetta/rosetta:CF',
    );
  });

  it('matches a real x86_64 executable (the host\'s static busybox) and not an aarch64 one', async () => {
    // binfmt_misc's own escape syntax: \xNN is a byte, anything else is itself.
    const decode = (text: string) => Buffer.from([...text.matchAll(/\\x([0-9a-f]{2})|([^\\])/g)].map((m) => (m[1] ? parseInt(m[1], 16) : m[2]!.charCodeAt(0))));
    const magic = decode(ELF_MATCH['x86_64-linux'].magic);
    const mask = decode(ELF_MATCH['x86_64-linux'].mask);
    expect(magic.length).toBe(20);
    expect(mask.length).toBe(20);
    // fs/binfmt_misc.c check_file(): a byte matches when ((byte ^ magic) & mask) == 0.
    const matches = (header: Buffer) => [...header.subarray(0, 20)].every((byte, i) => ((byte ^ magic[i]!) & mask[i]!) === 0);
    const file = await open('/bin/busybox', 'r');
    const header = Buffer.alloc(20);
    await file.read(header, 0, 20, 0);
    await file.close();
    expect(matches(header)).toBe(true);
    const aarch64 = Buffer.from(header);
    aarch64[18] = 0xb7; // e_machine EM_AARCH64
    expect(matches(aarch64)).toBe(false);
    const sharedObject = Buffer.from(header);
    sharedObject[16] = 0x03; // ET_DYN (PIE executables): the mask's \xfe lets it through
    expect(matches(sharedObject)).toBe(true);
  });

  it('the script parses in dash and busybox sh; stage 2 runs it; an x86_64 guest gets none', async () => {
    const config = parseConfigText(qemuUserToml, 'ferry.toml', { host: linuxX64 });
    const script = binfmtScript(config)!;
    for (const shell of [['dash', '-n'], ['busybox', 'sh', '-n']]) {
      const result = await execa(shell[0]!, [...shell.slice(1), '-c', script], { reject: false });
      expect(result.exitCode, `${shell.join(' ')}: ${result.stderr}`).toBe(0);
    }
    expect(guestFiles(config, keys).find((f) => f.path === BINFMT_PATH)?.mode).toBe(0o755);
    // Registered before nix-daemon starts, so the daemon's first build already sees it.
    const stage2 = stage2Script();
    const registration = stage2.indexOf(`[ -x ${BINFMT_PATH} ] && ${BINFMT_PATH}\n`);
    expect(registration).toBeGreaterThan(0);
    expect(registration).toBeLessThan(stage2.indexOf('setsid nix-daemon'));
    const x86 = parseConfigText('[guest]\nsystem = "x86_64-linux"\n', 'ferry.toml', { host: linuxX64 });
    expect(binfmtScript(x86)).toBeUndefined();
    expect(guestFiles(x86, keys).some((f) => f.path === BINFMT_PATH)).toBe(false);
    expect(STAGE1_MODULES).toEqual(expect.arrayContaining(['binfmt_misc', 'virtiofs', 'virtio_pci']));
  });
});

describe('the arm64 debian preset', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'ferry-arm64-hook-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('uses mmdebstrap --variant=extract for arm64 with the hook; amd64 keeps --variant=essential', () => {
    const argv = mmdebstrapArm64Argv('bookworm');
    expect(argv.slice(0, 4)).toEqual(['--variant=extract', '--include=?essential', '--include=openssh-server,nix-bin,busybox,iproute2,ca-certificates,e2fsprogs,mawk', '--architectures=arm64']);
    expect(argv[4]).toBe(`--extract-hook=${postinstHook()}`); // customize hooks do not run for extract
    expect(mmdebstrapArgv('arm64', 'bookworm')).toEqual(argv);
    expect(mmdebstrapArgv('amd64')[0]).toBe('--variant=essential');
  });

  it('the hook makes what the skipped maintainer scripts would have, on a miniature rootfs', async () => {
    const r = path.join(root, 'rootfs');
    for (const dir of ['etc', 'root', 'var/run', 'var/lock', 'usr/bin', 'usr/share/base-passwd', 'usr/share/libc-bin', 'usr/share/base-files', 'bin']) await mkdir(path.join(r, dir), { recursive: true });
    await writeFile(path.join(r, 'usr/share/base-passwd/passwd.master'), 'root:*:0:0:root:/root:/bin/bash\nnobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n');
    await writeFile(path.join(r, 'usr/share/base-passwd/group.master'), 'root:*:0:\nshadow:*:42:\nnogroup:*:65534:\n');
    await writeFile(path.join(r, 'usr/share/libc-bin/nsswitch.conf'), 'passwd: files\n');
    for (const f of ['profile', 'dot.profile', 'dot.bashrc']) await writeFile(path.join(r, 'usr/share/base-files', f), `# ${f}\n`);
    await writeFile(path.join(r, 'bin/dash'), '');
    await writeFile(path.join(r, 'bin/bash'), '');
    const qemu = path.join(root, 'qemu-x86_64-static');
    await writeFile(qemu, 'ELF');
    const run = () => execa('sh', ['-c', postinstHook(), 'exec', r], { env: { FERRY_QEMU_X86_64: qemu }, reject: false });
    const first = await run();
    expect(first.exitCode, first.stderr).toBe(0);
    expect(await readFile(path.join(r, 'etc/passwd'), 'utf8')).toBe(
      'root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n',
    );
    expect(await readFile(path.join(r, 'etc/shadow'), 'utf8')).toBe('root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n');
    expect(await readFile(path.join(r, 'etc/group'), 'utf8')).toBe('root:x:0:\nshadow:x:42:\nnogroup:x:65534:\n');
    expect((await stat(path.join(r, 'etc/shadow'))).mode & 0o777).toBe(0o640);
    expect(await readFile(path.join(r, 'etc/shells'), 'utf8')).toBe('# /etc/shells: valid login shells\n/bin/bash\n/bin/dash\n');
    expect(await readFile(path.join(r, 'etc/nsswitch.conf'), 'utf8')).toBe('passwd: files\n');
    expect(await readlink(path.join(r, 'var/run'))).toBe('/run');
    expect(await readlink(path.join(r, 'usr/bin/awk'))).toBe('mawk');
    expect(await readFile(path.join(r, 'usr/libexec/ferry/qemu-x86_64-static'), 'utf8')).toBe('ELF');
    // Idempotent: a second run changes nothing and does not fail.
    const second = await run();
    expect(second.exitCode, second.stderr).toBe(0);
    expect((await readFile(path.join(r, 'etc/passwd'), 'utf8')).match(/^sshd:/gm)).toHaveLength(1);
  });
});
