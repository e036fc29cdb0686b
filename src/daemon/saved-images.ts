/**
 * Which image the guest runs and which it ran before, kept on disk (paths.currentImage) so that a
 * restarted daemon can still roll back; and the image the daemon starts with.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../atomic-file.js';
import type { FerryPaths } from '../config/paths.js';
import type { FerryConfig } from '../config/types.js';
import { buildImage } from '../image/build.js';
import type { ImageManifest } from '../image/manifest.js';
import { ferryKeys } from '../keys/ferry-keys.js';

interface SavedImages {
  current: string;
  previous?: string;
}

export interface StartImages {
  current: ImageManifest;
  previous?: ImageManifest;
}

/**
 * The image to run: the config's, built now (a cache hit when nothing changed). If that build
 * fails but an image ran before, that one keeps serving and the error shows in status.
 */
export async function initialImages(paths: FerryPaths, config: FerryConfig, log: Logger): Promise<StartImages> {
  const saved = await loadSavedImages(paths);
  try {
    log.info('building the image (a cache hit when nothing changed)');
    const built = await buildImage({ config, paths, keys: ferryKeys(paths), onStep: (step) => log.info(step) });
    const previous = saved.current && saved.current.id !== built.id ? saved.current : saved.previous;
    await saveImages(paths, built, previous);
    return { current: built, previous };
  } catch (error) {
    if (!saved.current) throw error;
    log.error({ err: error }, `the image build failed; using the image that ran before (${saved.current.id})`);
    return { current: saved.current, previous: saved.previous };
  }
}

async function loadSavedImages(paths: FerryPaths): Promise<Partial<StartImages>> {
  const text = await readFile(paths.currentImage, 'utf8').catch(() => undefined);
  if (!text) return {};
  const saved = JSON.parse(text) as SavedImages;
  const load = async (file?: string) =>
    file && existsSync(file) ? (JSON.parse(await readFile(file, 'utf8')) as ImageManifest) : undefined;
  return { current: await load(saved.current), previous: await load(saved.previous) };
}

export async function saveImages(paths: FerryPaths, current: ImageManifest, previous: ImageManifest | undefined): Promise<void> {
  const saved: SavedImages = { current: current.manifestPath, previous: previous?.manifestPath };
  await writeFileAtomic(paths.currentImage, `${JSON.stringify(saved, null, 2)}\n`);
}
