/**
 * Substitution in the guest against the host uploading the same input through the daemon
 * ("Builds users can trust", "Speed"): one guest, a binary cache on the host's loopback (made by
 * the host's real Nix, test/support/binary-cache.ts) holding store paths of random bytes, and a
 * build needing one of them — with the host's `builders-use-substitutes = true` (what `ferry
 * install` writes; here through NIX_CONFIG) the guest fetches it from the cache, without it the
 * host sends it through the daemon's SSH front. Alternating, a new input each build (a guest
 * that has an input already would measure nothing). Prints both times and the bytes each way.
 *
 *   node --import tsx bench/substitute.ts [--mib 200] [--runs 1] [--json]
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { configWithCache, derivationNeeding, makeBinaryCache, serveCache } from '../test/support/binary-cache.js';
import { TestDaemon } from '../test/support/daemon.js';

const { values } = parseArgs({
  options: {
    mib: { type: 'string', default: '200' },
    runs: { type: 'string', default: '1' },
    json: { type: 'boolean', default: false },
  },
});
const bytes = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);
const say = (line: string) => values.json || process.stderr.write(`${line}\n`);

const work = await mkdtemp(path.join(tmpdir(), 'ferry-bench-substitute-'));
say(`making a binary cache of ${2 * runs} store paths of ${values.mib} MiB…`);
const made = await makeBinaryCache(work, 2 * runs, bytes);
const cache = await serveCache(made.dir);
const daemon = await TestDaemon.start((port) => configWithCache(port, cache, made.publicKey));
try {
  await daemon.ferry(['start']);
  const results = { substituted: [] as Array<{ ms: number; hostSent: number; cacheServed: number }>, uploaded: [] as Array<{ ms: number; hostSent: number; cacheServed: number }> };
  for (let i = 0; i < 2 * runs; i++) {
    const substitutes = i % 2 === 0;
    const name = `ferry-bench-substitute-${randomUUID().slice(0, 8)}`;
    const exprFile = path.join(work, `${name}.nix`);
    await writeFile(exprFile, derivationNeeding(name, made.inputs[i]!));
    const seen = new Set((await daemon.status()).recentSessions.map((session) => session.id));
    const served = cache.requests.length;
    if (substitutes) daemon.env.NIX_CONFIG = 'builders-use-substitutes = true';
    else delete daemon.env.NIX_CONFIG;
    const result = await daemon.nixBuildFile(exprFile, { timeoutMs: 1_800_000, maxJobs: 1 });
    if (result.exitCode !== 0) throw new Error(`nix-build failed: ${result.stderr}`);
    const after = await daemon.waitForStatus((status) => status.recentSessions.some((session) => !seen.has(session.id)), 30_000, 'the build session');
    const hostSent = after.recentSessions.filter((session) => !seen.has(session.id)).reduce((sum, session) => sum + session.bytesIn, 0);
    const cacheServed = cache.requests.slice(served).reduce((sum, request) => sum + request.bytes, 0);
    (substitutes ? results.substituted : results.uploaded).push({ ms: result.ms, hostSent, cacheServed });
    say(`${substitutes ? 'guest substitutes' : 'host uploads    '}: ${result.ms} ms, host sent ${hostSent} B through the daemon, the cache served ${cacheServed} B`);
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  const summary = {
    inputBytes: bytes,
    runs,
    substituted: { ms: median(results.substituted.map((r) => r.ms)), hostSentBytes: median(results.substituted.map((r) => r.hostSent)) },
    uploaded: { ms: median(results.uploaded.map((r) => r.ms)), hostSentBytes: median(results.uploaded.map((r) => r.hostSent)) },
  };
  if (values.json) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  else {
    process.stdout.write(
      [
        `${new Date().toISOString().slice(0, 16)}, guest under qemu (${(await execa('uptime')).stdout.trim()}), input ${values.mib} MiB, median of ${runs}`,
        `guest substitutes: ${summary.substituted.ms} ms, the host sent ${summary.substituted.hostSentBytes} B through the daemon`,
        `host uploads:      ${summary.uploaded.ms} ms, the host sent ${summary.uploaded.hostSentBytes} B through the daemon`,
        `time: ${(summary.substituted.ms / summary.uploaded.ms).toFixed(2)}×; bytes through the daemon: ${(summary.substituted.hostSentBytes / summary.uploaded.hostSentBytes).toFixed(5)}×`,
        '',
      ].join('\n'),
    );
  }
} finally {
  await cache.close();
  await daemon.stop();
  await execa('nix-store', ['--delete', ...made.inputs], { reject: false });
  await rm(work, { recursive: true, force: true });
}
