/**
 * Nix's sandbox in the guest ("Builds users can trust", item 1), with the real tools: the daemon
 * from source, the host's real nix-build (Debian's Nix, whose own nix.conf says `sandbox = false`),
 * the debian-preset guest under qemu (tcg).
 *
 * - A derivation sees nothing of the guest outside its inputs: none of the guest's own paths, no
 *   store path it did not ask for, and no network — it cannot reach the host (qemu's 10.0.2.2,
 *   which is the host's loopback) — over ssh-ng:// and ssh:// alike.
 * - A fixed-output derivation can reach the host: Nix gives those the network.
 * - A guest whose kernel will not make the sandbox's namespaces fails the build with a message
 *   that says so, instead of building unsandboxed.
 */
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configText, TestDaemon } from '../support/daemon.js';

/** Paths of the guest's own filesystem that no build may see. */
const GUEST_PATHS = ['/usr/bin', '/etc/ssh', '/etc/nix/nix.conf', '/home/builder', '/var/lib/ferry', '/root', '/nix/var/nix/db', '/usr/lib/ferry'];

/** An HTTP server on the host's loopback, reached from the guest as 10.0.2.2; it counts requests. */
async function hostServer(): Promise<{ port: number; hits: string[]; close: () => Promise<void> }> {
  const hits: string[] = [];
  const server = http.createServer((request, response) => {
    hits.push(request.url ?? '');
    response.end('fetched-from-the-host\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { port, hits, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

/** The probe: one line per guest path (present/absent), the store's entries, the network. */
function probeScript(port: number): string {
  return [
    'store=$(ls /nix/store | wc -l)', // before $out exists
    ...GUEST_PATHS.map((p) => `if [ -e ${p} ]; then echo "${p} present"; else echo "${p} absent"; fi >> $out`),
    'echo "store $store" >> $out',
    // busybox's nc, not wget: its -T segfaults in a chroot (static glibc), which would pass for "unreachable".
    `if echo GET /from-a-sandboxed-build | nc 10.0.2.2 ${port} >/dev/null 2>/build/nc; then echo "network reached" >> $out; else cat /build/nc >> $out; fi`,
  ].join('; ');
}

describe("Nix's sandbox in the guest, through the daemon", () => {
  let daemon: TestDaemon;
  let server: Awaited<ReturnType<typeof hostServer>>;

  beforeAll(async () => {
    server = await hostServer();
    daemon = await TestDaemon.start((port) => configText(port));
  }, 300_000);

  afterAll(async () => {
    await server?.close();
    expect(await daemon?.stop()).toBe(0);
  }, 120_000);

  for (const proto of ['ssh-ng', 'ssh'] as const) {
    it(`a build over ${proto}:// sees none of the guest's paths, only its own store paths, and no network`, async () => {
      const result = await daemon.nixBuild(`sandbox-probe-${proto}`, probeScript(server.port), { proto });
      expect(result.exitCode, `${result.stderr}\n--- daemon log ---\n${daemon.log().slice(-3000)}`).toBe(0);
      const lines = (await readFile(result.stdout.trim(), 'utf8')).trim().split('\n');
      expect(lines).toEqual([...GUEST_PATHS.map((p) => `${p} absent`), 'store 0', "nc: can't connect to remote host (10.0.2.2): Network is unreachable"]);
      expect(server.hits).toEqual([]);
      // Unsandboxed, the same build sees them: the probe can tell (the guest has every one).
      const guest = await daemon.ssh([GUEST_PATHS.map((p) => `test -e ${p}`).join(' && ') + ' && echo all-there']);
      expect(guest.stdout).toBe('all-there');
    }, 240_000);
  }

  it('a fixed-output derivation reaches the host through 10.0.2.2', async () => {
    const content = 'fetched-from-the-host\n';
    const hash = createHash('sha256').update(content).digest('hex');
    const name = `ferry-e2e-fixed-output-${Date.now()}`;
    const exprFile = path.join(daemon.work, `${name}.nix`);
    const script = `wget -q -O $out http://10.0.2.2:${server.port}/from-a-fixed-output-build`;
    await writeFile(
      exprFile,
      `derivation { name = ${JSON.stringify(name)}; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" ${JSON.stringify(script)} ]; outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "${hash}"; }\n`,
    );
    const result = await daemon.nixBuildFile(exprFile);
    expect(result.exitCode, `${result.stderr}\n--- daemon log ---\n${daemon.log().slice(-3000)}`).toBe(0);
    expect(await readFile(result.stdout.trim(), 'utf8')).toBe(content);
    expect(server.hits).toEqual(['/from-a-fixed-output-build']);
  }, 240_000);
});

describe('a guest that cannot set up the sandbox', () => {
  let daemon: TestDaemon;

  beforeAll(async () => {
    // The kernel's own switch (sysctl.* on the command line, Linux 5.8+): no mount namespaces.
    daemon = await TestDaemon.start((port) => configText(port, { extra: '' }).replace('accel = "tcg"', 'accel = "tcg"\nkernel-cmdline-extra = "sysctl.user.max_mnt_namespaces=0"'));
  }, 300_000);

  afterAll(async () => {
    expect(await daemon?.stop()).toBe(0);
  }, 120_000);

  it('fails the build with a message naming the sandbox, and never builds unsandboxed', async () => {
    const result = await daemon.nixBuild('no-sandbox', 'echo built-unsandboxed > $out');
    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toContain("Nix's sandbox cannot be set up: user.max_mnt_namespaces is 0");
    const status = await daemon.status();
    expect(status.guest.state).not.toBe('running');
  }, 240_000);
});
