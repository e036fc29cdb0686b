/**
 * The guest substitutes ("Builds users can trust", item 2), with the real tools: a binary cache
 * made by the host's real Nix (`nix-store --generate-binary-cache-key`, `nix-store --add` of a
 * generated file, `nix copy --to file://…`) and served over HTTP on the host's loopback by a tiny
 * node server; the daemon from source with guest.nix.substituters = ["http://127.0.0.1:PORT"]
 * (written into the guest's nix.conf at a placeholder that stage 2 turns into 10.0.2.2, qemu's
 * address for the host's loopback); the host's real nix-build with the daemon as its only builder.
 *
 * A build that needs the input succeeds, the guest fetched it from the cache (the server saw its
 * .narinfo and .nar), and the bytes the host sent through the daemon's SSH front for that build
 * (its session log: status recentSessions, bytesIn) stay far below the input's size.
 *
 * The host's nix-build gets `builders-use-substitutes = true` through NIX_CONFIG: this is what
 * `ferry install` writes into the host's nix.conf, which a test cannot edit on the machine it runs
 * on. Without it (the second test), the same cache is there for the guest, and the host sends the
 * input through the front itself.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configWithCache, derivationNeeding, makeBinaryCache, serveCache, type CacheServer } from '../support/binary-cache.js';
import { TestDaemon } from '../support/daemon.js';

/** Big enough that a copy through the front would show; small enough for a tcg guest on CI. */
const INPUT_BYTES = 64 * 1024 * 1024;
describe("the guest substitutes a build's input from a binary cache on the host's loopback", () => {
  let work: string;
  let cache: CacheServer;
  let daemon: TestDaemon;
  let inputs: string[] = [];
  const timings: Record<string, number> = {};

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'ferry-substitute-'));
    let started = performance.now();
    // Two inputs, both in the cache: one for each test.
    const made = await makeBinaryCache(work, 2, INPUT_BYTES);
    inputs = made.inputs;
    timings.cacheMs = Math.round(performance.now() - started);
    cache = await serveCache(made.dir);

    started = performance.now();
    daemon = await TestDaemon.start((port) => configWithCache(port, cache, made.publicKey));
    timings.daemonMs = Math.round(performance.now() - started);
  }, 600_000);

  afterAll(async () => {
    await cache?.close();
    if (daemon) expect(await daemon.stop()).toBe(0);
    if (work) await rm(work, { recursive: true, force: true });
    if (inputs.length > 0) await execa('nix-store', ['--delete', ...inputs], { reject: false });
  }, 180_000);

  /** Builds a derivation needing `input`; what the cache served and the front carried for it. */
  async function buildNeeding(input: string, substitutes: boolean) {
    const name = `ferry-e2e-substitute-${randomUUID().slice(0, 8)}`;
    const exprFile = path.join(work, `${name}.nix`);
    await writeFile(exprFile, derivationNeeding(name, input));
    const seen = new Set((await daemon.status()).recentSessions.map((session) => session.id));
    const served = cache.requests.length;
    // The host's Nix settings for this nix-build (the daemon's env is what nixBuildFile runs with).
    if (substitutes) daemon.env.NIX_CONFIG = 'builders-use-substitutes = true';
    else delete daemon.env.NIX_CONFIG;
    const result = await daemon.nixBuildFile(exprFile, { timeoutMs: 480_000, maxJobs: 1 });
    expect(result.exitCode, `nix-build failed:\n${result.stderr}\ndaemon log tail:\n${daemon.log().slice(-3000)}`).toBe(0);
    expect((await readFile(result.stdout.trim(), 'utf8')).trim()).toBe(input);
    const after = await daemon.waitForStatus((status) => status.recentSessions.some((session) => !seen.has(session.id)), 30_000, 'the build session in the log');
    const sessions = after.recentSessions.filter((session) => !seen.has(session.id));
    const requests = cache.requests.slice(served);
    const report = {
      ms: result.ms,
      sessions: sessions.length,
      bytesIn: sessions.reduce((sum, session) => sum + session.bytesIn, 0),
      bytesOut: sessions.reduce((sum, session) => sum + session.bytesOut + session.bytesErr, 0),
      narBytes: requests.filter((request) => request.url.startsWith('/nar/') && request.status === 200).reduce((sum, request) => sum + request.bytes, 0),
      requests,
    };
    console.log(
      `substitute e2e (builders-use-substitutes ${substitutes}): input ${INPUT_BYTES} B; host → guest through the front ${report.bytesIn} B, guest → host ${report.bytesOut} B ` +
        `over ${report.sessions} session(s); the cache served ${report.narBytes} B of nar (${requests.map((request) => `${request.status} ${request.url}`).join(', ')}); ` +
        `nix-build ${report.ms} ms${timings.buildMs === undefined ? ' (guest boot included)' : ''}; cache made in ${timings.cacheMs} ms, daemon up in ${timings.daemonMs} ms`,
    );
    timings.buildMs ??= result.ms;
    return report;
  }

  it('with builders-use-substitutes: the guest fetches the input from the cache, and the host sends far fewer bytes than its size through the daemon', async () => {
    const report = await buildNeeding(inputs[0], true);
    // The guest asked the cache for the input: its narinfo, then its nar, whole.
    const hash = path.basename(inputs[0]).slice(0, 32);
    expect(report.requests.some((request) => request.url === `/${hash}.narinfo` && request.status === 200), JSON.stringify(report.requests)).toBe(true);
    expect(report.narBytes).toBeGreaterThanOrEqual(INPUT_BYTES);
    expect(report.bytesIn).toBeLessThan(INPUT_BYTES / 50);
  }, 600_000);

  it('without it (Nix\'s default): the host sends the input through the daemon itself, the cache unused', async () => {
    const report = await buildNeeding(inputs[1], false);
    expect(report.narBytes).toBe(0);
    expect(report.bytesIn).toBeGreaterThanOrEqual(INPUT_BYTES);
  }, 600_000);
});
