/**
 * The Mac path through vfkit, exercised here (issue 11): the host reported as a Mac by
 * FERRY_PLATFORM, `backend = "auto"`, and `vfkit` on PATH — the stand-in test/support/
 * vfkit-standin.ts, written from vfkit's source, running the real guest under qemu (tcg) with
 * Virtualization.framework's devices. Its NAT is a network namespace with a DHCP server
 * (test/support/vfkit-net.ts); the daemon and the host's real nix-build run inside it.
 *
 * For each Mac (Intel: darwin/x86_64 and an x86_64 guest; Apple silicon: darwin/arm64 and the
 * aarch64 guest of the debian preset), one daemon and one state disk:
 *   1. a build boots the stopped guest through vfkit; FERRY-READY came on hvc0 with the address
 *      the guest took by DHCP; the host's nix-build builds the guest system's derivation;
 *   2. the idle stop ends clean (the guest's control command; e2fsck -fn finds nothing);
 *   3. `ferry down` of a guest whose control command does not answer: vfkit's REST `Stop` presses
 *      the power button — the x86_64 guest powers off cleanly (e2fsck finds nothing); the aarch64
 *      guest cannot see it here (see MACS), and `HardStop` ends it;
 *   4. `ferry down` of a paused guest (answers nothing): REST `Stop` refused, then `HardStop`;
 *      nothing left running.
 * And a compressed arm64 kernel handed to the stand-in: refused, nothing left running.
 */
import { execa } from 'execa';
import { readFile, rename } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GuestRecord } from '../../src/vm/instance/record.js';
import { runFilesOf } from '../../src/vm/run-files.js';
import { hypervisorsUsing, TestDaemon } from '../support/daemon.js';
import { VfkitNetwork } from '../support/vfkit-net.js';

const timings: Record<string, number> = {};

function vfkitConfig(system: string, port: number): string {
  return [
    '[guest]',
    `system = "${system}"`,
    'preset = "debian"',
    'cpus = 2',
    'memory = "1GiB"',
    'state-disk-size = "2GiB"',
    '',
    '[guest.nix]',
    'extra-config = "substituters =\\ncompress-build-log = false"',
    '',
    '[daemon]',
    `port = ${port}`,
    'idle-timeout = "15s"',
    'ready-timeout = "240s"',
    '',
  ].join('\n');
}

/** vfkit's REST API over its unix socket, as a client on the Mac would call it. */
function rest(socketPath: string, method: 'GET' | 'POST', body?: unknown): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const text = body === undefined ? undefined : JSON.stringify(body);
    const request = http.request({ socketPath, path: '/vm/state', method, headers: text ? { 'content-type': 'application/json' } : {} }, (response) => {
      let data = '';
      response.setEncoding('utf8').on('data', (chunk: string) => (data += chunk));
      response.on('end', () => resolve({ code: response.statusCode ?? 0, body: data }));
    });
    request.on('error', reject);
    request.end(text);
  });
}

async function e2fsck(disk: string): Promise<{ exitCode?: number; stdout: string }> {
  const result = await execa('e2fsck', ['-fn', disk], { reject: false });
  return { exitCode: result.exitCode, stdout: `${result.stdout}\n${result.stderr}` };
}

/**
 * `powerButton`: whether the guest sees the power button REST `Stop` presses here. x86_64: ACPI,
 * Debian's `button` and `evdev` modules, stage 2's acpid. aarch64 under qemu's virt machine booted
 * without firmware: the button is a GPIO key in the device tree, and Debian's arm64 cloud kernel
 * has no gpio-keys driver (CONFIG_KEYBOARD_GPIO is not set), so the ladder goes on to HardStop.
 * What Virtualization.framework's requestStop presents to an arm64 Linux guest has not been
 * observed (no Mac here).
 */
const MACS = [
  { platform: 'darwin/x86_64', system: 'x86_64-linux', machine: 'x86_64', what: 'an Intel Mac', powerButton: true },
  { platform: 'darwin/arm64', system: 'aarch64-linux', machine: 'aarch64', what: 'an Apple-silicon Mac', powerButton: false },
] as const;

for (const mac of MACS) {
  describe(`${mac.what} (FERRY_PLATFORM=${mac.platform}), backend auto, a ${mac.system} guest: vfkit (the stand-in)`, () => {
    let net: VfkitNetwork;
    let daemon: TestDaemon;
    const key = (name: string) => `${mac.machine}.${name}`;

    beforeAll(async () => {
      net = await VfkitNetwork.create();
      daemon = await TestDaemon.start((port) => vfkitConfig(mac.system, port), { netns: net.netns, env: net.env(mac.platform), readyTimeoutMs: 900_000 });
    }, 900_000);

    afterAll(async () => {
      const code = await daemon?.stop();
      await net?.destroy();
      console.log(`vfkit ${mac.machine} timings (ms): ${JSON.stringify(timings)}`);
      expect(code).toBe(0);
    }, 120_000);

    it('a build boots the stopped guest through vfkit; FERRY-READY on hvc0 with its DHCP address; nix-build builds through the daemon', async () => {
      expect((await daemon.status()).guest.state).toBe('stopped');
      const file = path.join(daemon.work, 'uname.nix');
      await execa('sh', ['-c', `cat > ${file}`], {
        input: `derivation { name = "ferry-vfkit-${Date.now()}"; system = "${mac.system}"; builder = "/bin/sh"; args = [ "-c" "uname -m > $out" ]; }\n`,
      });
      const build = await daemon.nixBuildFile(file, { systems: mac.system, timeoutMs: 600_000 });
      expect(build.exitCode, `nix-build failed:\n${build.stderr}\n--- daemon log ---\n${daemon.log().slice(-4000)}`).toBe(0);
      expect(await readFile(build.stdout.trim(), 'utf8')).toBe(`${mac.machine}\n`);
      timings[key('firstBuildWithBootMs')] = build.ms;

      const record = JSON.parse(await readFile(daemon.paths.guestRecord, 'utf8')) as GuestRecord;
      expect(record.backend).toBe('vfkit');
      expect(record.sshHost).toMatch(/^192\.168\.64\.(\d+)$/); // the lease udhcpd gave, announced by the guest
      expect(record.sshPort).toBe(22);
      expect(record.readyLine).toContain(`ip=${record.sshHost}`);
      timings[key('readyMs')] = record.readyMs;
      expect(await readFile(daemon.paths.consoleLog, 'utf8')).toContain(`FERRY-READY ip=${record.sshHost}`);
      const inGuest = await daemon.ssh(['cat /sys/class/tty/console/active; cat /proc/cmdline']);
      expect(inGuest.exitCode, inGuest.stderr).toBe(0);
      const [consoleDevice, cmdline] = inGuest.stdout.split('\n');
      expect(consoleDevice).toBe('hvc0');
      expect(cmdline).toMatch(/^console=hvc0 .* ferry\.net=dhcp/);
    }, 900_000);

    it('the idle stop ends clean: the control command powers the guest off, e2fsck finds nothing', async () => {
      const started = performance.now();
      await daemon.waitForStatus((s) => s.guest.state === 'stopped', 90_000, 'the idle stop');
      const stopped = await daemon.waitForLog((e) => e.msg === 'guest stopped', 10_000, 'guest stopped');
      expect(stopped.how).toBe('guest');
      timings[key('idleStopWaitMs')] = Math.round(performance.now() - started);
      const fsck = await e2fsck(daemon.paths.stateDisk);
      expect(fsck.exitCode, fsck.stdout).toBe(0);
    }, 120_000);

    it(`\`ferry down\` of a guest whose control command does not answer: the ladder goes on to vfkit's REST Stop${mac.powerButton ? ', the guest powers off cleanly' : ', then HardStop'}`, async () => {
      const up = await daemon.ferry(['up', '--json'], 600_000);
      expect(up.exitCode, up.stderr).toBe(0);
      // The control command cannot log in without its key: ssh fails, the ladder goes on to vfkit.
      const hidden = `${daemon.paths.guestClientKey}.hidden`;
      await rename(daemon.paths.guestClientKey, hidden);
      try {
        const down = await daemon.ferry(['down', '--timeout', '20']);
        expect(down.exitCode, down.stderr).toBe(0);
        if (mac.powerButton) {
          expect(down.stdout).toContain('asked through the hypervisor');
        } else {
          // REST Stop presses the power button the guest cannot see (see MACS), so HardStop ends it.
          expect(down.stdout).toContain('the hypervisor was ended');
        }
      } finally {
        await rename(hidden, daemon.paths.guestClientKey);
      }
      const log = await readFile(daemon.paths.hypervisorLog, 'utf8');
      expect(log.indexOf('msg="stopping machine"')).toBeGreaterThanOrEqual(0);
      if (mac.powerButton) {
        expect(log).not.toContain('msg="force stopping machine"');
        expect(await readFile(daemon.paths.consoleLog, 'utf8')).toContain('ferry: the power button was pressed, powering off');
        const fsck = await e2fsck(daemon.paths.stateDisk);
        expect(fsck.exitCode, fsck.stdout).toBe(0);
      } else {
        expect(log.indexOf('msg="force stopping machine"')).toBeGreaterThan(log.indexOf('msg="stopping machine"'));
      }
      expect(await hypervisorsUsing(daemon.work)).toEqual([]);
    }, 700_000);

    it('`ferry down` of a paused guest: REST Stop is refused, HardStop ends it; nothing left running', async () => {
      const up = await daemon.ferry(['up', '--json'], 600_000);
      expect(up.exitCode, up.stderr).toBe(0);
      const record = JSON.parse(await readFile(daemon.paths.guestRecord, 'utf8')) as GuestRecord;
      const socket = runFilesOf(record.spec).vfkitRestSocket;
      expect(JSON.parse((await rest(socket, 'GET')).body)).toMatchObject({ state: 'VirtualMachineStateRunning', canStop: true });
      expect((await rest(socket, 'POST', { state: 'Pause' })).code).toBe(202);
      expect(JSON.parse((await rest(socket, 'GET')).body)).toMatchObject({ state: 'VirtualMachineStatePaused', canStop: false });
      const started = performance.now();
      const down = await daemon.ferry(['down', '--timeout', '5']);
      timings[key('hardStopMs')] = Math.round(performance.now() - started);
      expect(down.exitCode, down.stderr).toBe(0);
      expect(down.stdout).toContain('the hypervisor was ended');
      expect(await hypervisorsUsing(daemon.work)).toEqual([]);
    }, 700_000);
  });
}
