/**
 * Which image the guest runs and which it ran before, kept on disk (paths.currentImage) so that a
 * restarted daemon can still roll back; and the images the daemon starts with.
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { writeFileAtomic } from '../atomic-file.js';
import type { FerryPaths } from '../config/paths.js';
import { readManifest, type ImageManifest } from '../image/manifest.js';

interface SavedImages {
  current: string;
  previous?: string;
}

export interface StartImages {
  current: ImageManifest;
  previous?: ImageManifest;
}

/**
 * The images the daemon starts with, from its first build and what ran before: the build (what
 * ran before becomes the one to roll back to) or, when the build failed, what ran before — so it
 * keeps serving while status shows the error. Undefined: nothing to boot yet.
 */
export function startImages(saved: Partial<StartImages>, built: ImageManifest | undefined): StartImages | undefined {
  if (built !== undefined) return { current: built, previous: saved.current && saved.current.id !== built.id ? saved.current : saved.previous };
  return saved.current === undefined ? undefined : { current: saved.current, previous: saved.previous };
}

/**
 * The images saved by the daemon that ran before. Everything here can be rebuilt, so nothing here
 * stops the daemon: a damaged current-image.json is logged (naming it) and treated as none saved —
 * the daemon starts from a fresh build; a saved manifest that is gone or damaged is logged and
 * left out (no rollback to it).
 */
export async function loadSavedImages(paths: FerryPaths, log: Logger): Promise<Partial<StartImages>> {
  const file = paths.currentImage;
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') log.warn({ err: error, file }, `cannot read ${file}; starting as if no image was saved`);
    return {};
  }
  const saved = parseSavedImages(text);
  if (typeof saved === 'string') {
    log.warn({ file }, `${file} is damaged (${saved}); starting from a fresh build, as if no image was saved`);
    return {};
  }
  const load = async (manifestFile: string | undefined): Promise<ImageManifest | undefined> => {
    if (manifestFile === undefined) return undefined;
    try {
      return await readManifest(manifestFile, { missingOk: true });
    } catch (error) {
      log.warn({ err: error, file: manifestFile }, `${(error as Error).message}; ${file} names it, so that image is left out`);
      return undefined;
    }
  };
  return { current: await load(saved.current), previous: await load(saved.previous) };
}

/** The saved record, or what is wrong with it. */
function parseSavedImages(text: string): SavedImages | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return `not valid JSON: ${(error as Error).message}`;
  }
  const record = value as Partial<Record<keyof SavedImages, unknown>> | null;
  if (typeof record !== 'object' || record === null || Array.isArray(record) || typeof record.current !== 'string' || !['string', 'undefined'].includes(typeof record.previous)) {
    return 'expected {"current": "<manifest path>", "previous": "<manifest path>"}';
  }
  return record as SavedImages;
}

export async function saveImages(paths: FerryPaths, current: ImageManifest, previous: ImageManifest | undefined): Promise<void> {
  const saved: SavedImages = { current: current.manifestPath, previous: previous?.manifestPath };
  await writeFileAtomic(paths.currentImage, `${JSON.stringify(saved, null, 2)}\n`);
}
