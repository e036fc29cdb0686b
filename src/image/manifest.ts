/**
 * The manifest of one built image: which parts of the content-addressed cache make one bootable
 * guest (build-<id>.json), and the latest build's (latest.json). Read back by the daemon (the
 * current and previous image, for rollback), `ferry up` and the tests.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { IMAGE_FILES, type FerryPaths } from '../config/paths.js';
import { ExitCode, FerryError } from '../errors.js';

export interface BuiltPart {
  path: string;
  key: string;
  sizeBytes: number;
  cacheHit: boolean;
}

export interface ImageManifest {
  id: string;
  system: string;
  preset: string;
  systemDisk: BuiltPart;
  /**
   * The nix layers' store disks, read-only after the state disk: a base, then a delta if any
   * (store-disks.ts). Absent in manifests written before the store had disks of its own.
   */
  storeDisks?: BuiltPart[];
  initramfs: BuiltPart;
  config: BuiltPart;
  initrd: BuiltPart;
  kernel: { path: string; version: string };
  /** The image's own kernel arguments: no per-boot parts (clock, network) and nothing of a backend's (`console=`). */
  cmdline: string;
  manifestPath: string;
  timings: Record<string, number>;
}

/**
 * The image's kernel arguments. Manifests written before the backend owned its console carry a
 * `console=` guessed at build time (wrong for vfkit on Apple silicon): it is dropped here, so the
 * saved current and previous images boot with the console of the backend that runs them.
 */
export function imageCmdline(manifest: Pick<ImageManifest, 'cmdline'>): string {
  return manifest.cmdline
    .split(' ')
    .filter((word) => word !== '' && !word.startsWith('console='))
    .join(' ');
}

export const latestManifestFile = (paths: FerryPaths): string => join(paths.imagesDir, IMAGE_FILES.latest);

/** Reads the manifest of the latest `ferry image build`, if any; a damaged one is a FerryError naming it. */
export async function latestManifest(paths: FerryPaths): Promise<ImageManifest | undefined> {
  return readManifest(latestManifestFile(paths), { missingOk: true });
}

/**
 * Reads a manifest written by a build (latest.json, build-<id>.json). A file that is not valid
 * JSON, or lacks what a boot needs, is a FerryError naming the file (exit 65), never a stack
 * trace; a missing file is one too (exit 66) unless `missingOk`.
 */
export async function readManifest(file: string, options: { missingOk: true }): Promise<ImageManifest | undefined>;
export async function readManifest(file: string, options?: { missingOk?: false }): Promise<ImageManifest>;
export async function readManifest(file: string, options: { missingOk?: boolean } = {}): Promise<ImageManifest | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && options.missingOk) return undefined;
    throw new FerryError(`cannot read the image manifest ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, { exitCode: ExitCode.NoInput, cause: error });
  }
  const damaged = (what: string, cause?: unknown) =>
    new FerryError(`the image manifest ${file} is damaged: ${what}`, { exitCode: ExitCode.DataError, cause, hint: '`ferry image build` writes it again' });
  let manifest: unknown;
  try {
    manifest = JSON.parse(text);
  } catch (error) {
    throw damaged(`not valid JSON (${(error as Error).message})`, error);
  }
  const missing = missingFields(manifest);
  if (missing.length > 0) throw damaged(`expected an image manifest, but ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} missing or of the wrong type`);
  return manifest as ImageManifest;
}

/** The fields a boot and a rollback read, as `systemDisk.path`, that are absent or not what they should be. */
function missingFields(value: unknown): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return ['everything (it is not an object)'];
  const manifest = value as Record<string, unknown>;
  const missing = ['id', 'system', 'cmdline', 'manifestPath'].filter((key) => typeof manifest[key] !== 'string');
  for (const part of ['systemDisk', 'initramfs', 'config', 'initrd', 'kernel']) {
    const entry = manifest[part];
    if (typeof entry !== 'object' || entry === null || typeof (entry as Record<string, unknown>).path !== 'string') missing.push(`${part}.path`);
  }
  return missing;
}
