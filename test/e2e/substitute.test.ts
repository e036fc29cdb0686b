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
import { randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configText, TestDaemon } from '../support/daemon.js';

/** Big enough that a copy through the front would show; small enough for a tcg guest on CI. */
const INPUT_BYTES = 64 * 1024 * 1024;
/** configText's guest.nix line (no substituters at all): replaced here by the test cache. */
const NO_SUBSTITUTERS = 'extra-config = "substituters =\\ncompress-build-log = false"';

interface CacheServer {
  port: number;
  /** Each request's path and the bytes sent for it. */
  requests: Array<{ url: string; status: number; bytes: number }>;
  close: () => Promise<void>;
}

/** A static server over a `file://` binary cache's directory, on 127.0.0.1 only. */
async function serveCache(dir: string): Promise<CacheServer> {
  const requests: CacheServer['requests'] = [];
  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://cache');
    const file = path.join(dir, path.normalize(decodeURIComponent(url.pathname)).replace(/^(\.\.[/\\])+/, ''));
    let size: number;
    try {
      const st = statSync(file);
      if (!st.isFile()) throw new Error('not a file');
      size = st.size;
    } catch {
      requests.push({ url: url.pathname, status: 404, bytes: 0 });
      response.writeHead(404).end();
      return;
    }
    requests.push({ url: url.pathname, status: 200, bytes: request.method === 'HEAD' ? 0 : size });
    response.writeHead(200, { 'content-length': size, 'content-type': file.endsWith('.narinfo') ? 'text/x-nix-narinfo' : 'application/octet-stream' });
    if (request.method === 'HEAD') response.end();
    else createReadStream(file).pipe(response);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { port, requests, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

async function nix(args: string[]): Promise<string> {
  const result = await execa(args[0], args.slice(1), { reject: false, timeout: 120_000 });
  if (result.exitCode !== 0) throw new Error(`${args.join(' ')} failed (${result.exitCode}):\n${result.stderr}`);
  return String(result.stdout).trim();
}

describe("the guest substitutes a build's input from a binary cache on the host's loopback", () => {
  let work: string;
  let cache: CacheServer;
  let daemon: TestDaemon;
  let inputs: string[] = [];
  let publicKey: string;
  const timings: Record<string, number> = {};

  beforeAll(async () => {
    work = await mkdtemp(path.join(tmpdir(), 'ferry-substitute-'));
    let started = performance.now();
    const secret = path.join(work, 'cache.secret');
    const pub = path.join(work, 'cache.pub');
    await nix(['nix-store', '--generate-binary-cache-key', `ferry-e2e-${randomUUID().slice(0, 8)}-1`, secret, pub]);
    publicKey = (await readFile(pub, 'utf8')).trim();
    const cacheDir = path.join(work, 'cache');
    // Two inputs of random bytes (new store paths every run, so no store has them yet), both in
    // the cache: one for each test.
    for (const label of ['a', 'b']) {
      const input = path.join(work, `ferry-e2e-input-${label}-${randomUUID().slice(0, 8)}`);
      const handle = await open(input, 'w');
      for (let written = 0; written < INPUT_BYTES; written += 1 << 20) await handle.write(randomBytes(1 << 20));
      await handle.close();
      const storePath = await nix(['nix-store', '--add', input]);
      inputs.push(storePath);
      // Uncompressed: the bytes are random anyway, and xz in a tcg guest would be the slowest step.
      await nix(['nix', '--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${cacheDir}?compression=none&secret-key=${secret}`, storePath]);
    }
    timings.cacheMs = Math.round(performance.now() - started);
    cache = await serveCache(cacheDir);

    started = performance.now();
    daemon = await TestDaemon.start((port) => {
      const text = configText(port);
      if (!text.includes(NO_SUBSTITUTERS)) throw new Error(`test/support/daemon.ts configText no longer has ${NO_SUBSTITUTERS}`);
      return text.replace(NO_SUBSTITUTERS, [`substituters = ["http://127.0.0.1:${cache.port}"]`, `trusted-public-keys = [${JSON.stringify(publicKey)}]`, 'extra-config = "compress-build-log = false"'].join('\n'));
    });
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
    // The builder only checks that the input is there (busybox's test, no exec) and names it.
    await writeFile(
      exprFile,
      `derivation { name = ${JSON.stringify(name)}; system = builtins.currentSystem; builder = "/bin/sh"; input = builtins.storePath ${JSON.stringify(input)}; args = [ "-c" "[ -s \\"$input\\" ] && echo \\"$input\\" > $out" ]; }\n`,
    );
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
