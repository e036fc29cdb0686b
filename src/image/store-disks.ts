/**
 * The store disks: the nix layers' closure on read-only disks of its own, after the state disk,
 * so that adding a store path rewrites only what is new — never the system disk, never the
 * store paths the guest already has.
 *
 * Design (issue 15): a closure of 1 GiB takes seconds to write whatever the writer, and the
 * system disk once held it beside the rootfs, so one more small path rewrote both. Now:
 *
 *   store-<key>.img    a base: every path of a closure, keyed by that closure (its sorted path
 *                      names, as the nix layer's fingerprint), with `store-<key>.paths` beside it
 *                      listing them.
 *   store-<key>.img    a delta: the paths of a newer closure that a cached base lacks, keyed by
 *                      the base and the whole new closure.
 *
 * A build looks for the cached base holding the most paths of the closure and nothing outside
 * it. If it holds all of it, it is the only store disk. If what it lacks is small — at most
 * DELTA_MAX_BYTES of NAR, or an eighth of the base, whichever is larger — the guest gets the base
 * and a delta of just the rest. Otherwise (a closure that lost paths, or grew by much) a new base
 * of the whole closure is written, and later deltas are made against it. So a delta never stacks
 * on a delta: a guest has at most two store disks, and each small addition rewrites only the
 * paths added since the base, a few MiB, well under a second.
 *
 * In the guest, stage 1 mounts them read-only and stacks them under /nix, the delta above the
 * base above the system disk's own /nix (overlayfs lower layers), with the state disk's upper
 * layer on top as before. The top store disk carries the whole closure's registration at
 * STORE_REGISTRATION_PATH; stage 1 copies it to NIX_REGISTRATION_PATH, where stage 2 loads it.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { IMAGE_FILES, type FerryPaths } from '../config/paths.js';
import { cachedPart, trustedCacheEntry } from './cache-entry.js';
import { writeExt4, type Ext4Progress } from './ext4/index.js';
import { addRegistration, NixLayer, registrationNarSizes } from './layers/nix.js';
import type { BuiltPart } from './manifest.js';
import { Tree } from './tree.js';
import { guard } from './user-errors.js';

/** Where the top store disk carries the closure's registration (outside /nix, which the guest's overlay replaces). */
export const STORE_REGISTRATION_PATH = '/ferry/nix-registration';

/** A delta may hold this many NAR bytes, or an eighth of its base if that is more, before a new base is written. */
export const DELTA_MAX_BYTES = 64 * 1024 ** 2;

/** Bump when a store disk's layout changes. */
const STORE_FORMAT = 'ferry-store-1';
const PATHS_HEADER = `${STORE_FORMAT} base`;

export interface StoreDiskOptions {
  onStep?: (label: string) => void;
  onProgress?: (progress: Ext4Progress) => void;
}

/**
 * The store disks for the given nix layers (base first, then a delta if any); none without nix
 * layers. Every disk is in the cache, written now or found there.
 */
export async function buildStoreDisks(layers: NixLayer[], paths: FerryPaths, options: StoreDiskOptions = {}): Promise<BuiltPart[]> {
  if (layers.length === 0) return [];
  const all = new NixLayer({ paths: [...new Set(layers.flatMap((layer) => layer.requestedPaths))] });
  const closure = await guard(() => all.closure());
  const diskPath = (key: string) => join(paths.imagesDir, IMAGE_FILES.storeDisk(key.slice(0, 32)));

  // What a rebuild that changed no store path finds: the same disks, without asking Nix for more than the closure.
  const baseKey = sha256([STORE_FORMAT, 'base', ...closure].join('\n'));
  const exact = await trustedCacheEntry(diskPath(baseKey), options.onStep);
  if (exact !== undefined) return [{ path: diskPath(baseKey), key: baseKey, sizeBytes: exact, cacheHit: true }];
  const base = await largestCachedBase(paths.imagesDir, new Set(closure), options.onStep);
  const missing = base ? closure.filter((path) => !base.paths.has(path)) : closure;
  const deltaKey = base ? sha256([STORE_FORMAT, 'delta', base.key, ...closure].join('\n')) : undefined;
  const cachedDelta = deltaKey ? await trustedCacheEntry(diskPath(deltaKey), options.onStep) : undefined;
  if (base && deltaKey && cachedDelta !== undefined) return [base.part, { path: diskPath(deltaKey), key: deltaKey, sizeBytes: cachedDelta, cacheHit: true }];

  const registration = await guard(() => all.registration());
  const narSizes = registrationNarSizes(registration.text);
  const bytes = (storePaths: Iterable<string>) => {
    let sum = 0;
    for (const path of storePaths) sum += narSizes.get(path) ?? 0;
    return sum;
  };
  const write = async (key: string, storePaths: readonly string[], what: string) => {
    const tree = new Tree();
    options.onStep?.(`reading ${storePaths.length} store paths for the ${what}`);
    await guard(() => all.addStorePaths(tree, storePaths));
    addRegistration(tree, registration, STORE_REGISTRATION_PATH);
    options.onStep?.(`writing the ${what}`);
    await guard(() =>
      writeExt4(tree, diskPath(key), { label: 'ferry-store', uuid: Buffer.from(key.slice(0, 32), 'hex'), onProgress: options.onProgress }),
    );
  };

  if (base && deltaKey && bytes(missing) <= Math.max(DELTA_MAX_BYTES, bytes(base.paths) / 8)) {
    const delta = await cachedPart(diskPath(deltaKey), deltaKey, options.onStep, () =>
      write(deltaKey, missing, `store delta (${missing.length} paths that ${base.name} lacks)`),
    );
    return [base.part, delta];
  }
  const part = await cachedPart(diskPath(baseKey), baseKey, options.onStep, () => write(baseKey, closure, `store disk (${closure.length} paths)`));
  // The list is written after the disk is recorded, so a base is offered to later builds only once it is whole.
  await writeFileAtomic(join(paths.imagesDir, IMAGE_FILES.storeDiskPaths(baseKey.slice(0, 32))), `${[PATHS_HEADER, baseKey, ...closure].join('\n')}\n`);
  return [part];
}

interface CachedBase {
  key: string;
  name: string;
  paths: Set<string>;
  part: BuiltPart;
}

/**
 * The cached base with the most paths of `closure` and none outside it, if any. By paths, not
 * bytes: the NAR sizes come from the registration, which a build that finds its disks cached
 * never needs to ask Nix for.
 */
async function largestCachedBase(imagesDir: string, closure: Set<string>, onStep?: (label: string) => void): Promise<CachedBase | undefined> {
  const lists = (await readdir(imagesDir)).filter((name) => /^store-[0-9a-f]{32}\.paths$/.test(name));
  const candidates: Array<Omit<CachedBase, 'part'>> = [];
  for (const name of lists) {
    const list = await readBaseList(join(imagesDir, name));
    if (!list || !list.paths.every((path) => closure.has(path))) continue;
    candidates.push({ key: list.key, name: IMAGE_FILES.storeDisk(list.key.slice(0, 32)), paths: new Set(list.paths) });
  }
  candidates.sort((a, b) => b.paths.size - a.paths.size || (a.key < b.key ? -1 : 1));
  for (const candidate of candidates) {
    const path = join(imagesDir, candidate.name);
    const sizeBytes = await trustedCacheEntry(path, onStep);
    if (sizeBytes !== undefined) return { ...candidate, part: { path, key: candidate.key, sizeBytes, cacheHit: true } };
  }
  return undefined;
}

/** A base's list of store paths; undefined when it is missing or not one ferry wrote whole. */
async function readBaseList(file: string): Promise<{ key: string; paths: string[] } | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n');
  if (lines[0] !== PATHS_HEADER || !/^[0-9a-f]{64}$/.test(lines[1] ?? '') || lines.at(-1) !== '') return undefined;
  return { key: lines[1], paths: lines.slice(2, -1) };
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
