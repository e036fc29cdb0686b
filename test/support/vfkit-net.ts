/**
 * What stands for vmnet's NAT behind the vfkit stand-in: a network namespace of its own with a
 * tap device at 192.168.64.1/24 (vmnet's shared-mode subnet on a Mac) and busybox's udhcpd
 * serving it. The guest takes its address by DHCP and announces it on hvc0; the daemon and the
 * host's nix-build run inside the namespace too (`ip netns exec`), so every address the test uses
 * exists only there and nothing leaves it (the namespace has no route out).
 */
import { execa, type ResultPromise } from 'execa';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

export const STANDIN_BIN = path.resolve(import.meta.dirname, 'bin');
export const GATEWAY = '192.168.64.1';

export class VfkitNetwork {
  private constructor(
    readonly netns: string,
    readonly tap: string,
    private readonly dir: string,
    private readonly dhcp: ResultPromise,
  ) {}

  static async create(): Promise<VfkitNetwork> {
    const netns = `ferry-vf-${randomUUID().slice(0, 8)}`;
    const tap = 'vmnet0';
    const dir = await mkdtemp(path.join(tmpdir(), 'ferry-vfnet-'));
    const inNs = (...args: string[]) => execa('ip', ['netns', 'exec', netns, ...args]);
    await execa('ip', ['netns', 'add', netns]);
    try {
      await inNs('ip', 'link', 'set', 'lo', 'up');
      await inNs('ip', 'tuntap', 'add', 'dev', tap, 'mode', 'tap');
      await inNs('ip', 'addr', 'add', `${GATEWAY}/24`, 'dev', tap);
      await inNs('ip', 'link', 'set', tap, 'up');
      const conf = path.join(dir, 'udhcpd.conf');
      await writeFile(path.join(dir, 'leases'), '');
      await writeFile(
        conf,
        [`interface ${tap}`, 'start 192.168.64.2', 'end 192.168.64.20', `lease_file ${path.join(dir, 'leases')}`, 'option subnet 255.255.255.0', `option router ${GATEWAY}`, ''].join('\n'),
      );
      const dhcp = execa('ip', ['netns', 'exec', netns, 'busybox', 'udhcpd', '-f', conf], { reject: false, stdin: 'ignore' });
      return new VfkitNetwork(netns, tap, dir, dhcp);
    } catch (error) {
      await execa('ip', ['netns', 'del', netns], { reject: false });
      throw error;
    }
  }

  /** The environment that makes a process see a Mac with vfkit on PATH and this network behind it. */
  env(platform: 'darwin/arm64' | 'darwin/x86_64'): Record<string, string> {
    return {
      FERRY_PLATFORM: platform,
      VFKIT_STANDIN_ARCH: platform === 'darwin/arm64' ? 'arm64' : 'amd64',
      VFKIT_STANDIN_TAP: this.tap,
      PATH: `${STANDIN_BIN}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    };
  }

  async destroy(): Promise<void> {
    this.dhcp.kill('SIGTERM');
    await this.dhcp;
    await execa('ip', ['netns', 'del', this.netns], { reject: false });
    await rm(this.dir, { recursive: true, force: true });
  }
}
