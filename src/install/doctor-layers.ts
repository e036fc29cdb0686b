/**
 * doctor's look at `[[image.layers]]`: each path exists and is what its layer reads — a readable
 * file for a tarball, a directory it can list for a dir layer, something in /nix/store for a nix
 * layer. Otherwise the first `ferry up` (or the daemon, in its log) finds out minutes later,
 * after the preset's download.
 */
import { constants as fsConstants, accessSync, readFileSync, realpathSync, statSync, type Stats } from 'node:fs';
import { locateKey } from '../config/locate.js';
import { formatProblem } from '../config/problems.js';
import type { ExtraLayerConfig, FerryConfig } from '../config/types.js';
import { NIX_STORE_DIR } from '../image/layers/nix.js';

/** A doctor check (doctor.ts's `Check`, restated so that doctor.ts alone imports this file). */
interface LayersCheck {
  name: 'layers';
  status: 'ok' | 'fail';
  detail: string;
  fix?: string;
}

/** One `layers` check, or none when the config names no layers. */
export function checkLayers(config: FerryConfig): LayersCheck[] {
  const layers = config.image.layers;
  if (layers.length === 0) return [];
  const file = config.source ?? '(defaults)';
  const text = config.source ? readText(config.source) : undefined;
  const problems: string[] = [];
  layers.forEach((layer, index) => {
    for (const { key, path, message } of layerProblems(layer, `image.layers[${index}]`)) {
      const line = text === undefined ? undefined : locateKey(text, key);
      problems.push(formatProblem({ file, key, line, message: `${path}: ${message}` }));
    }
  });
  if (problems.length > 0) {
    return [{ name: 'layers', status: 'fail', detail: problems.join('; '), fix: `put the layer where ${file} says, or correct its path there (relative paths start at the file's directory)` }];
  }
  const kinds = layers.map((layer) => (layer.type === 'nix' ? `nix (${layer.paths.length} path${layer.paths.length === 1 ? '' : 's'})` : `${layer.type} ${layer.path}`));
  return [{ name: 'layers', status: 'ok', detail: kinds.join(', ') }];
}

interface LayerProblem {
  key: string;
  path: string;
  message: string;
}

function layerProblems(layer: ExtraLayerConfig, key: string): LayerProblem[] {
  if (layer.type === 'tar') {
    const message = problemOf(layer.path, 'a readable tarball: a regular file, plain, gzip, xz or zstd', (st) => st.isFile(), fsConstants.R_OK);
    return message ? [{ key: `${key}.path`, path: layer.path, message }] : [];
  }
  if (layer.type === 'dir') {
    const message = problemOf(layer.path, 'a directory this user can list', (st) => st.isDirectory(), fsConstants.R_OK | fsConstants.X_OK);
    return message ? [{ key: `${key}.path`, path: layer.path, message }] : [];
  }
  return layer.paths.flatMap((path, index) => {
    const message = problemOf(path, `a path in ${NIX_STORE_DIR}, or a symlink to one such as ./result`, () => true, fsConstants.F_OK) ?? outsideStore(path);
    return message ? [{ key: `${key}.paths[${index}]`, path, message }] : [];
  });
}

/** What is wrong with `path` for a layer that expects `expected` (symlinks followed, as the layers do). */
function problemOf(path: string, expected: string, isKind: (st: Stats) => boolean, mode: number): string | undefined {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return `${code === 'ENOENT' || code === 'ENOTDIR' ? 'does not exist' : `cannot be read: ${code ?? (error as Error).message}`} (expected ${expected})`;
  }
  if (!isKind(st)) return `is ${kindOf(st)} (expected ${expected})`;
  try {
    accessSync(path, mode);
  } catch {
    return `is not readable by this user (expected ${expected})`;
  }
  return undefined;
}

function outsideStore(path: string): string | undefined {
  const real = realpathSync(path);
  return real.startsWith(`${NIX_STORE_DIR}/`) ? undefined : `resolves to ${real}, outside ${NIX_STORE_DIR} (expected a store path: nix build's ./result, or ${NIX_STORE_DIR}/…)`;
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFile()) return 'a regular file';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'a device';
}

function readText(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}
