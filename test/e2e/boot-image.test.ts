/**
 * End to end: Debian's cloud kernel boots under qemu (TCG, no KVM needed) from a ferry-built
 * initramfs, loads the virtio modules ferry selected, mounts an ext4 system disk built from a
 * Tree, reads a known file through an overlay (as stage 1 will), writes a new file to the disk,
 * and powers off. The host then checks the console, that the disk is still clean (e2fsck -fn),
 * and that the guest's write landed (debugfs) while the overlay's did not.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildInitramfs } from '../../src/image/initramfs/index.js';
import { Tree } from '../../src/image/tree.js';
import { busyboxStatic, debianKernel, type KernelFixture } from '../support/fixtures.js';

const MTIME = 1_700_000_000;
const KNOWN_CONTENT = 'hello from a ferry-built disk';
const GUEST_WRITES = 'written by the guest';
const BOOT_TIMEOUT_MS = 240_000;

const INIT = `#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "FERRY-TEST-FAIL: $*"; poweroff -f; }
while read -r module; do
  insmod "$module" || fail "insmod $module"
done < /lib/modules/load-order
n=0
while [ ! -b /dev/vda ]; do
  n=$((n + 1)); [ $n -gt 300 ] && fail "no /dev/vda after 30 s"
  sleep 0.1
done
echo "FERRY-TEST-NET: $(ls /sys/class/net | tr '\\n' ' ')"
echo "FERRY-TEST-RNG: $(cat /sys/class/misc/hw_random/rng_current)"
# Stage 1's shape: the system disk read-only under an overlay with a tmpfs upper layer.
mount -t ext4 -o ro /dev/vda /mnt || fail "mount /dev/vda read-only"
mkdir -p /run/overlay /newroot
mount -t tmpfs tmpfs /run/overlay && mkdir /run/overlay/upper /run/overlay/work
mount -t overlay overlay -o lowerdir=/mnt,upperdir=/run/overlay/upper,workdir=/run/overlay/work /newroot \\
  || fail "mount overlay"
echo "FERRY-TEST-CONTENT: $(cat /newroot/hello.txt)"
echo "only in the overlay" > /newroot/overlay-only || fail "write to the overlay"
umount /newroot || fail "umount overlay"
# Then a write that must reach the disk.
mount -o remount,rw /mnt || fail "remount /dev/vda read-write"
echo "${GUEST_WRITES}" > /mnt/newfile || fail "write /mnt/newfile"
sync
umount /mnt || fail "umount /mnt"
echo FERRY-TEST-DONE
poweroff -f
`;

let work: string;
let kernel: KernelFixture;
let initrd: string;
let disk: string;
let diskWriter: string;
let qemu: ResultPromise | undefined;

/** The system disk from a Tree: ferry's ext4 writer once it exists, mke2fs -d until then. */
async function makeDisk(tree: Tree, path: string): Promise<string> {
  const ext4Url = new URL('../../src/image/ext4/index.ts', import.meta.url);
  if (existsSync(fileURLToPath(ext4Url))) {
    const { writeExt4 } = await import(/* @vite-ignore */ ext4Url.href);
    await writeExt4(tree, path, { sizeBytes: 64 * 1024 * 1024, label: 'ferry-test', timestamp: MTIME });
    return 'writeExt4';
  }
  const staging = join(work, 'disk-staging');
  await mkdir(staging);
  for (const { path: name, node } of tree.walk()) {
    if (node.kind === 'dir') await mkdir(join(staging, name));
    else if (node.kind === 'file' && node.content.kind === 'bytes') await writeFile(join(staging, name), node.content.data);
    else throw new Error(`the mke2fs fallback handles only directories and in-memory files, not ${name}`);
  }
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-E', 'root_owner=0:0', '-d', staging, path, '64M']);
  return 'mke2fs -d';
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-boot-test-'));
  let busybox: string;
  [kernel, busybox] = await Promise.all([debianKernel('amd64'), busyboxStatic('amd64')]);

  const tree = new Tree();
  const data = Buffer.from(`${KNOWN_CONTENT}\n`);
  tree.add('hello.txt', { kind: 'file', perm: 0o644, size: data.length, content: { kind: 'bytes', data } });
  disk = join(work, 'system.ext4');
  diskWriter = await makeDisk(tree, disk);

  initrd = join(work, 'initrd.gz');
  const result = await buildInitramfs({
    busybox,
    modulesDir: kernel.modulesDir,
    modules: ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_console', 'virtio_rng', 'ext4', 'overlay'],
    init: INIT,
    outputPath: initrd,
    mtime: MTIME,
    compressionLevel: 1,
  });
  console.log(
    `kernel ${kernel.version} (${kernel.package} ${kernel.packageVersion}); disk by ${diskWriter}; ` +
      `initramfs ${result.sizeBytes} bytes, modules: ${result.modules.join(' ')}`,
  );
});

afterAll(async () => {
  if (qemu && qemu.exitCode === null) qemu.kill('SIGKILL');
  await qemu?.catch(() => undefined);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a ferry-built initramfs boots the Debian cloud kernel', () => {
  it(
    'loads virtio modules, reads the system disk and writes to it, then powers off',
    async () => {
      const started = performance.now();
      let console_ = '';
      let contentSeenAt: number | undefined;
      qemu = execa(
        'qemu-system-x86_64',
        [
          '-accel', 'tcg',
          '-smp', '2',
          '-m', '1024',
          '-kernel', kernel.kernel,
          '-initrd', initrd,
          '-append', 'console=ttyS0 panic=-1 loglevel=4',
          '-nographic',
          '-no-reboot',
          '-drive', `file=${disk},format=raw,if=virtio`,
          // A NIC, so virtio_net has a device to bind; restrict=on keeps the guest off the host,
          // and no option ROM spares the iPXE probe.
          '-netdev', 'user,id=net0,restrict=on',
          '-device', 'virtio-net-pci,netdev=net0,romfile=',
          // Entropy for the guest (sshd host keys at boot under TCG would otherwise wait).
          '-device', 'virtio-rng-pci',
        ],
        { stdin: 'ignore', reject: false, timeout: BOOT_TIMEOUT_MS, forceKillAfterDelay: 2_000 },
      );
      qemu.stdout!.on('data', (chunk: Buffer) => {
        console_ += chunk.toString('utf8');
        if (contentSeenAt === undefined && console_.includes('FERRY-TEST-CONTENT:')) contentSeenAt = performance.now();
      });
      const result = await qemu;
      const finished = performance.now();
      if (process.env.FERRY_TEST_CONSOLE) console.log(console_);
      const report = `console output:\n${console_}\nqemu stderr:\n${result.stderr}`;

      expect(result.timedOut, `qemu still running after ${BOOT_TIMEOUT_MS} ms; ${report}`).toBe(false);
      expect(result.exitCode, report).toBe(0);
      expect(console_, report).not.toContain('Initramfs unpacking failed');
      expect(console_, report).not.toContain('FERRY-TEST-FAIL');
      expect(console_, report).toContain(`FERRY-TEST-CONTENT: ${KNOWN_CONTENT}`);
      expect(console_, report).toMatch(/FERRY-TEST-NET: .*\beth0\b/);
      expect(console_, report).toMatch(/FERRY-TEST-RNG: virtio_rng/);
      expect(console_, report).toContain('FERRY-TEST-DONE');
      console.log(
        `qemu start -> file read: ${((contentSeenAt! - started) / 1000).toFixed(1)} s; ` +
          `qemu start -> exit: ${((finished - started) / 1000).toFixed(1)} s (tcg, 2 vCPUs)`,
      );

      const fsck = await execa('e2fsck', ['-fn', disk], { reject: false });
      expect(fsck.exitCode, `${fsck.stdout}\n${fsck.stderr}`).toBe(0);
      const cat = await execa('debugfs', ['-R', 'cat /newfile', disk]);
      expect(cat.stdout).toBe(GUEST_WRITES);
      // The overlay's write stayed in guest memory.
      const overlayOnly = await execa('debugfs', ['-R', 'stat /overlay-only', disk], { reject: false });
      expect(`${overlayOnly.stdout}${overlayOnly.stderr}`).toMatch(/File not found/);
    },
    BOOT_TIMEOUT_MS + 30_000,
  );
});
