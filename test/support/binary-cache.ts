/**
 * A binary cache on the host's loopback, made by the host's real Nix and served over HTTP by a
 * tiny static server — what test/e2e/substitute.test.ts and bench/substitute.ts build against:
 * `nix-store --generate-binary-cache-key`, `nix-store --add` of files of random bytes (new store
 * paths every run, so no store has them yet), `nix copy --to file://…` (uncompressed: the bytes
 * are random anyway, and xz in a tcg guest would be the slowest step).
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, statSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { execa } from 'execa';
import { configText } from './daemon.js';

export interface CacheServer {
  port: number;
  /** Each request's path and the bytes sent for it. */
  requests: Array<{ url: string; status: number; bytes: number }>;
  close: () => Promise<void>;
}

export interface BinaryCache {
  dir: string;
  publicKey: string;
  /** The store paths in it (also in the host's own store). */
  inputs: string[];
}

async function run(args: string[]): Promise<string> {
  const result = await execa(args[0]!, args.slice(1), { reject: false, timeout: 300_000 });
  if (result.exitCode !== 0) throw new Error(`${args.join(' ')} failed (${result.exitCode}):\n${result.stderr}`);
  return String(result.stdout).trim();
}

/** A signed `file://` cache in `work/cache` holding `count` store paths of `bytes` random bytes each. */
export async function makeBinaryCache(work: string, count: number, bytes: number): Promise<BinaryCache> {
  const secret = path.join(work, 'cache.secret');
  const pub = path.join(work, 'cache.pub');
  await run(['nix-store', '--generate-binary-cache-key', `ferry-test-${randomUUID().slice(0, 8)}-1`, secret, pub]);
  const dir = path.join(work, 'cache');
  const inputs: string[] = [];
  for (let i = 0; i < count; i++) {
    const input = path.join(work, `ferry-test-input-${i}-${randomUUID().slice(0, 8)}`);
    const handle = await open(input, 'w');
    for (let written = 0; written < bytes; written += 1 << 20) await handle.write(randomBytes(Math.min(1 << 20, bytes - written)));
    await handle.close();
    const storePath = await run(['nix-store', '--add', input]);
    inputs.push(storePath);
    await run(['nix', '--extra-experimental-features', 'nix-command', 'copy', '--to', `file://${dir}?compression=none&secret-key=${secret}`, storePath]);
  }
  return { dir, publicKey: (await readFile(pub, 'utf8')).trim(), inputs };
}

/** A static server over a `file://` binary cache's directory, on 127.0.0.1 only. */
export async function serveCache(dir: string): Promise<CacheServer> {
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

/** configText's guest.nix line (no substituters at all): replaced by the test cache. */
const NO_SUBSTITUTERS = 'extra-config = "substituters =\\ncompress-build-log = false"';

/** The test daemon's config with the cache as the guest's only substituter. */
export function configWithCache(port: number, cache: CacheServer, publicKey: string): string {
  const text = configText(port);
  if (!text.includes(NO_SUBSTITUTERS)) throw new Error(`test/support/daemon.ts configText no longer has ${NO_SUBSTITUTERS}`);
  return text.replace(NO_SUBSTITUTERS, [`substituters = ["http://127.0.0.1:${cache.port}"]`, `trusted-public-keys = [${JSON.stringify(publicKey)}]`, 'extra-config = "compress-build-log = false"'].join('\n'));
}

/** A derivation needing `input`: the builder checks it is there (busybox's test, no exec) and names it. */
export function derivationNeeding(name: string, input: string): string {
  return `derivation { name = ${JSON.stringify(name)}; system = builtins.currentSystem; builder = "/bin/sh"; input = builtins.storePath ${JSON.stringify(input)}; args = [ "-c" "[ -s \\"$input\\" ] && echo \\"$input\\" > $out" ]; }\n`;
}
