/**
 * `ferry image build`: everything the guest boots from, in a content-addressed cache.
 *
 * The build is split so that a change of generated files (keys, nix.conf, users, scripts) never
 * re-reads or rewrites the base, and a change of store paths never rewrites the rootfs:
 *   system-<key>.img      ext4 from the base layers but the nix ones (preset rootfs, `tar` and
 *                         `dir` layers); its key hashes the layers' fingerprints (cheap: stat of
 *                         a tarball, a walk of a directory's metadata), never contents.
 *   store-<key>.img       the nix layers' closure (the preset's store paths and `nix` layers):
 *                         a base, and when the closure grew a little since, a delta of the new
 *                         paths alone (store-disks.ts says how they are chosen).
 *   initramfs-<key>.cpio.gz   busybox, modules and stage 1; keyed by kernel, busybox and script.
 *   config-<key>.cpio.gz  the generated files, appended to the initramfs (the kernel unpacks
 *                         concatenated archives in order); stage 1 copies them into the root.
 *   initrd-<key>.img      initramfs + config, the file handed to the VM.
 *   build-<id>.json       the manifest: which of the above make one bootable guest.
 *
 * Every file is synced before it is renamed into place (atomic-file.ts), and beside each of the
 * images a record of its size and first and last bytes (`NAME.check`, cache-entry.ts) decides
 * whether a file found under its key is reused: a damaged one is removed and built again.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { FerryConfig } from '../config/types.js';
import { DOWNLOAD_FILES, IMAGE_FILES, type FerryPaths } from '../config/paths.js';
import { removeDeadTemporaries, writeChunksTo, writeFileAtomic, writeThroughTemp } from '../atomic-file.js';
import { cachedPart } from './cache-entry.js';
import type { FerryKeys } from '../keys/ferry-keys.js';
import { latestManifestFile, type BuiltPart, type ImageManifest } from './manifest.js';
import { writeExt4, type Ext4Progress } from './ext4/index.js';
import { guestFiles } from './guest-os/files.js';
import { OVERLAY_DIR, POWER_BUTTON_MODULES, STAGE1_MODULES, stage1Init } from './guest-os/stage1.js';
import { buildInitramfs, writeGzippedCpio, type CpioEntry } from './initramfs/index.js';
import { DirLayer } from './layers/dir.js';
import type { Layer } from './layers/layer.js';
import { NixLayer } from './layers/nix.js';
import { TarLayer } from './layers/tar.js';
import { buildStoreDisks } from './store-disks.js';
import { guard } from './user-errors.js';
import { debianPreset } from './presets/debian.js';
import { nixpkgsPreset } from './presets/nixpkgs.js';
import type { PresetInputs } from './presets/preset.js';
import { Tree } from './tree.js';

/** Bump when the image layout or the writer changes in a way that must invalidate caches. */
const FORMAT_VERSION = 'ferry-image-1';

export interface BuildImageOptions {
  config: FerryConfig;
  paths: FerryPaths;
  /** The guest's host key and the keys it authorizes (from `ferryKeys`): the build never makes keys. */
  keys: Pick<FerryKeys, 'guestHost' | 'guestClient'>;
  onStep?: (label: string) => void;
  onProgress?: (progress: Ext4Progress) => void;
  /** Look for newer preset inputs (packages) instead of reusing the ones resolved before. */
  refresh?: boolean;
}

export async function buildImage(options: BuildImageOptions): Promise<ImageManifest> {
  const { config, paths } = options;
  const timings: Record<string, number> = {};
  const timed = async <T>(name: string, work: () => Promise<T>): Promise<T> => {
    const start = performance.now();
    try {
      return await work();
    } finally {
      timings[name] = Math.round(performance.now() - start);
    }
  };
  await mkdir(paths.imagesDir, { recursive: true });
  await mkdir(paths.downloadsDir, { recursive: true });
  removeTemporariesOfDeadBuilds(paths, options.onStep);

  const preset = await timed('preset', () => resolvePreset(config, paths, options.onStep, options.refresh));
  const layers = baseLayers(config, preset);
  const nixLayers = layers.filter((layer): layer is NixLayer => layer instanceof NixLayer);
  const systemLayers = layers.filter((layer) => !(layer instanceof NixLayer));
  const systemDisk = await timed('systemDisk', () => buildSystemDisk(systemLayers, config, paths, options));
  const storeDisks = await timed('storeDisks', () => buildStoreDisks(nixLayers, paths, options));
  const initramfs = await timed('initramfs', () => buildBaseInitramfs(preset, paths, options.onStep));
  const configArchive = await timed('config', () => buildConfigArchive(config, options.keys, paths, options.onStep));
  const initrd = await timed('initrd', () => concatenate(initramfs, configArchive, paths, options.onStep));

  const cmdline = imageKernelArgs(systemDisk.key, storeDisks.length);
  const id = sha256([FORMAT_VERSION, systemDisk.key, ...storeDisks.map((disk) => disk.key), initrd.key, preset.kernel, cmdline].join('\n')).slice(0, 16);
  const manifestPath = join(paths.imagesDir, IMAGE_FILES.manifest(id));
  const manifest: ImageManifest = {
    id,
    system: config.guest.system,
    preset: preset.name,
    systemDisk,
    storeDisks,
    initramfs,
    config: configArchive,
    initrd,
    kernel: { path: preset.kernel, version: preset.kernelVersion },
    cmdline,
    manifestPath,
    timings,
  };
  await writeFileAtomic(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
  await writeFileAtomic(latestManifestFile(paths), `${JSON.stringify(manifest, null, 2)}\n`);
  return manifest;
}

/**
 * The image's own kernel arguments, naming the system disk the initramfs must find. Nothing of a
 * backend's: the backend that boots the image puts its `console=` first (vm/backend.ts).
 * cryptomgr.notests: the kernel's known-answer self-tests of every crypto algorithm it carries run
 * at each boot; they took ~0.25 s of the kernel's ~1.8 s under emulation (initcall_debug).
 */
export function imageKernelArgs(systemDiskKey: string, storeDisks = 0): string {
  const stores = storeDisks > 0 ? ` ferry.stores=${storeDisks}` : '';
  return `panic=-1 loglevel=4 cryptomgr.notests ferry.system=${systemDiskKey.slice(0, 16)}${stores}`;
}

/**
 * A build killed mid-write leaves its temporary file (a system image's is hundreds of MiB) or
 * staging directory behind; the next build removes those whose writer is gone, and says so.
 */
function removeTemporariesOfDeadBuilds(paths: FerryPaths, onStep?: (label: string) => void): void {
  const downloads = [DOWNLOAD_FILES.rootfsDir, DOWNLOAD_FILES.kernelDir, DOWNLOAD_FILES.busyboxDir, DOWNLOAD_FILES.qemuUserDir];
  const dirs = [paths.imagesDir, paths.downloadsDir, ...downloads.map((name) => join(paths.downloadsDir, name))];
  const removed = dirs.flatMap((dir) => removeDeadTemporaries(dir));
  if (removed.length > 0) onStep?.(`removed what builds that did not finish left behind: ${removed.join(', ')}`);
}

async function resolvePreset(config: FerryConfig, paths: FerryPaths, onStep?: (label: string) => void, refresh = false): Promise<PresetInputs> {
  if (config.guest.preset === 'debian') return debianPreset(paths.downloadsDir, config.guest, onStep, refresh);
  return nixpkgsPreset(paths.downloadsDir, config.guest.system, { onStep, refresh });
}

function baseLayers(config: FerryConfig, preset: PresetInputs): Layer[] {
  const layers: Layer[] = [];
  if (preset.rootfsTar) layers.push(new TarLayer(preset.rootfsTar, { keepOwners: true }));
  if (preset.storePaths?.length) layers.push(new NixLayer({ paths: preset.storePaths }));
  if (preset.layers) layers.push(...preset.layers);
  for (const layer of config.image.layers) {
    if (layer.type === 'tar') layers.push(new TarLayer(layer.path, { keepOwners: true }));
    else if (layer.type === 'dir') layers.push(new DirLayer(layer.path));
    else layers.push(new NixLayer({ paths: [...layer.paths] }));
  }
  return layers;
}

async function buildSystemDisk(layers: Layer[], config: FerryConfig, paths: FerryPaths, options: BuildImageOptions): Promise<BuiltPart> {
  const fingerprints = await guard(() => Promise.all(layers.map((layer) => layer.fingerprint())));
  const key = sha256(JSON.stringify([FORMAT_VERSION, fingerprints, config.image.sizeBytes]));
  const path = join(paths.imagesDir, IMAGE_FILES.systemDisk(key.slice(0, 32)));
  return cachedPart(path, key, options.onStep, async () => {
    const tree = new Tree();
    await guard(async () => {
      for (const layer of layers) {
        options.onStep?.(`reading ${layer.description}`);
        await layer.apply(tree);
      }
    });
    options.onStep?.('writing the system disk');
    await guard(() =>
      writeExt4(tree, path, {
        sizeBytes: config.image.sizeBytes === 'auto' ? undefined : config.image.sizeBytes,
        label: 'ferry-system',
        uuid: Buffer.from(key.slice(0, 32), 'hex'),
        onProgress: options.onProgress,
      }),
    );
  });
}

async function buildBaseInitramfs(preset: PresetInputs, paths: FerryPaths, onStep?: (label: string) => void): Promise<BuiltPart> {
  const busybox = await stat(preset.busybox);
  const init = stage1Init();
  const key = sha256(JSON.stringify([FORMAT_VERSION, preset.identity, preset.kernelVersion, busybox.size, STAGE1_MODULES, POWER_BUTTON_MODULES, init]));
  const path = join(paths.imagesDir, IMAGE_FILES.initramfs(key.slice(0, 32)));
  return cachedPart(path, key, onStep, () => {
    onStep?.('writing the initramfs');
    return buildInitramfs({
      busybox: preset.busybox,
      modulesDir: preset.modulesDir,
      modules: STAGE1_MODULES,
      optionalModules: POWER_BUTTON_MODULES,
      init,
      outputPath: path,
      mtime: 0,
      compressionLevel: 6,
    });
  });
}

async function buildConfigArchive(config: FerryConfig, keys: BuildImageOptions['keys'], paths: FerryPaths, onStep?: (label: string) => void): Promise<BuiltPart> {
  const files = guestFiles(config, {
    hostPrivateKey: keys.guestHost.privateKey,
    hostPublicKey: keys.guestHost.publicKey,
    builderKeys: [keys.guestClient.publicKey],
    controlKey: keys.guestClient.publicKey,
  });
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  for (const file of files) {
    const path = `${OVERLAY_DIR}${file.path}`;
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!dirs.has(dir)) {
        dirs.add(dir);
        entries.push({ kind: 'dir', path: dir, mode: 0o755 });
      }
    }
    entries.push({ kind: 'file', path, data: Buffer.from(file.content), mode: file.mode });
  }
  const key = sha256(JSON.stringify([FORMAT_VERSION, files]));
  const path = join(paths.imagesDir, IMAGE_FILES.configArchive(key.slice(0, 32)));
  return cachedPart(path, key, onStep, () => writeGzippedCpio(entries, path, { mtime: 0 }));
}

/** The initrd handed to the VM: the initramfs, then the config archive (the kernel unpacks both, in order). */
async function concatenate(initramfs: BuiltPart, configArchive: BuiltPart, paths: FerryPaths, onStep?: (label: string) => void): Promise<BuiltPart> {
  const key = sha256(`${initramfs.key}\n${configArchive.key}`);
  const path = join(paths.imagesDir, IMAGE_FILES.initrd(key.slice(0, 32)));
  return cachedPart(path, key, onStep, () =>
    writeThroughTemp(path, async (handle) => {
      for (const part of [initramfs, configArchive]) {
        await pipeline(createReadStream(part.path), writeChunksTo(handle));
      }
    }),
  );
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
