/**
 * The manifest of one built image: which parts of the content-addressed cache make one bootable
 * guest (build-<id>.json), and the latest build's (latest.json). Read back by the daemon (the
 * current and previous image, for rollback), `ferry up` and the tests.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { IMAGE_FILES, type FerryPaths } from '../config/paths.js';

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

/** Reads the manifest of the latest `ferry image build`, if any. */
export async function latestManifest(paths: FerryPaths): Promise<ImageManifest | undefined> {
  const text = await readFile(latestManifestFile(paths), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  return text === undefined ? undefined : (JSON.parse(text) as ImageManifest);
}
