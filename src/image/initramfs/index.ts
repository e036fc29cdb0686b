/**
 * Builds ferry's initramfs: busybox (statically linked, or dynamically linked with its loader and
 * libraries at the store paths it names — runtime.ts), the kernel modules stage 1 needs (with
 * their dependencies, uncompressed), the /init script, and the few directories and device nodes
 * the kernel and the script expect. Written as gzip'd cpio newc, atomically and synced.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip, constants as zlibConstants } from 'node:zlib';
import { writeChunksTo, writeThroughTemp } from '../../atomic-file.js';
import { FerryError } from '../../errors.js';
import { cpioArchive, type CpioEntry } from './cpio.js';
import { Elf, ElfError } from './elf.js';
import { selectModules, type ModuleSelection } from './modules.js';
import { programRuntime } from './runtime.js';

export { cpioArchive, type CpioEntry } from './cpio.js';
export { selectModules, canonicalModuleName, type ModuleSelection, type SelectedModule } from './modules.js';

/** The file /init iterates to load modules: one absolute path per line, dependencies first. */
export const MODULE_LOAD_ORDER_PATH = 'lib/modules/load-order';

/** Applets linked in /bin so /init can run before (or without) `busybox --install`. */
export const DEFAULT_APPLETS = [
  'sh', 'mount', 'umount', 'insmod', 'mkdir', 'mknod', 'cat', 'echo', 'ls', 'sleep', 'sync',
  'poweroff', 'reboot', 'switch_root', 'ln', 'rm', 'cp', 'mv', 'chmod', 'test', '[', 'grep',
  'sed', 'date', 'dmesg', 'modprobe', 'ip', 'hostname', 'uname', 'true', 'false', 'tr', 'head',
  'tail', 'cut', 'wc', 'printf', 'env', 'chroot', 'kill', 'ps', 'mountpoint', 'readlink',
  'basename', 'dirname',
];

export interface BuildInitramfsOptions {
  /**
   * busybox for the guest's architecture: statically linked, or dynamically linked with its
   * loader and libraries on this host at the absolute paths it names (nixpkgs' `busybox`).
   */
  busybox: string;
  /** The kernel's /lib/modules/VERSION directory. Required when `modules` is not empty. */
  modulesDir?: string;
  /** Modules to include (with their dependencies), e.g. virtio_blk, virtio_net, overlay. */
  modules?: readonly string[];
  /** Modules to include when the kernel has them (skipped, not an error, when it does not). */
  optionalModules?: readonly string[];
  /** The text of /init, the first process. */
  init: string;
  /** Busybox applets to link in /bin; DEFAULT_APPLETS if not given. */
  applets?: readonly string[];
  /** More entries, written after everything else (so they can add to ferry's directories). */
  extraFiles?: readonly CpioEntry[];
  outputPath: string;
  /** Modification time of every entry, seconds since the epoch (same inputs, same bytes). */
  mtime: number;
  /** gzip level, 1 (fast) to 9 (small); 6 if not given. */
  compressionLevel?: number;
}

export interface InitramfsResult {
  sizeBytes: number;
  sha256: string;
  /** The kernel release the modules came from, if any modules were included. */
  kernelVersion?: string;
  /** Module names in the order /init loads them. */
  modules: string[];
}

export async function buildInitramfs(options: BuildInitramfsOptions): Promise<InitramfsResult> {
  const requested = options.modules ?? [];
  const optional = options.optionalModules ?? [];
  let selection: ModuleSelection | undefined;
  if (requested.length > 0 || optional.length > 0) {
    if (!options.modulesDir) {
      throw new FerryError(`initramfs ${options.outputPath}: modules ${[...requested, ...optional].join(', ')} were requested but no modules directory was given`);
    }
    selection = await selectModules(options.modulesDir, requested, optional);
  }
  const runtime = await checkBusybox(options.busybox, selection);

  const entries = initramfsEntries(options, selection, runtime);
  const level = options.compressionLevel ?? 6;
  if (!Number.isInteger(level) || level < 1 || level > 9) {
    throw new FerryError(`initramfs compression level must be an integer from 1 to 9, got ${level}`);
  }

  const { sizeBytes, sha256 } = await writeGzippedCpio(entries, options.outputPath, { mtime: options.mtime, level });
  return {
    sizeBytes,
    sha256,
    kernelVersion: selection?.version,
    modules: selection?.loadOrder.map((m) => m.name) ?? [],
  };
}

/**
 * Writes entries as a gzip'd cpio newc archive, atomically and synced (writeThroughTemp), and
 * returns its size and sha256. Used for the initramfs and for the small config archive appended
 * to it.
 */
export async function writeGzippedCpio(
  entries: Iterable<CpioEntry>,
  outputPath: string,
  options: { mtime: number; level?: number },
): Promise<{ sizeBytes: number; sha256: string }> {
  const hash = createHash('sha256');
  let sizeBytes = 0;
  try {
    await writeThroughTemp(outputPath, (handle) =>
      pipeline(
        Readable.from(cpioArchive(entries, { mtime: options.mtime })),
        createGzip({ level: options.level ?? 6, strategy: zlibConstants.Z_DEFAULT_STRATEGY }),
        normaliseGzipHeader(),
        new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            hash.update(chunk);
            sizeBytes += chunk.length;
            callback(null, chunk);
          },
        }),
        writeChunksTo(handle),
      ),
    );
  } catch (error) {
    if (error instanceof FerryError) throw error;
    throw new FerryError(`cannot write ${outputPath}: ${(error as Error).message}`, { cause: error });
  }
  return { sizeBytes, sha256: hash.digest('hex') };
}

/** Everything in the archive, parents before children (the kernel creates entries in order). */
function initramfsEntries(options: BuildInitramfsOptions, selection: ModuleSelection | undefined, runtime: readonly string[]): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const addDir = (path: string, mode = 0o755) => {
    const parts = path.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const prefix = parts.slice(0, i).join('/');
      if (dirs.has(prefix)) continue;
      dirs.add(prefix);
      entries.push({ kind: 'dir', path: prefix, mode: i === parts.length ? mode : 0o755 });
    }
  };

  for (const dir of ['bin', 'sbin', 'dev', 'proc', 'sys', 'mnt', 'run', 'etc', 'lib/modules']) addDir(dir);
  addDir('tmp', 0o1777);
  // Without /dev/console the kernel starts /init with no stdin/stdout, and its output is lost.
  entries.push({ kind: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 });
  entries.push({ kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 });

  entries.push({ kind: 'hostFile', path: 'bin/busybox', hostPath: options.busybox, mode: 0o755 });
  // A dynamically linked busybox's loader and libraries, at the very paths its ELF names.
  for (const file of runtime) {
    addDir(dirname(file).slice(1));
    entries.push({ kind: 'hostFile', path: file.slice(1), hostPath: file, mode: 0o555 });
  }
  for (const applet of options.applets ?? DEFAULT_APPLETS) {
    if (applet === 'busybox' || applet.includes('/')) throw new FerryError(`initramfs applet name ${JSON.stringify(applet)} is not valid`);
    entries.push({ kind: 'symlink', path: `bin/${applet}`, target: 'busybox' });
  }

  if (selection) {
    const base = `lib/modules/${selection.version}`;
    const loadOrder: string[] = [];
    for (const module of selection.loadOrder) {
      const path = `${base}/${module.installPath}`;
      addDir(path.split('/').slice(0, -1).join('/'));
      entries.push({ kind: 'file', path, data: module.data, mode: 0o644 });
      loadOrder.push(`/${path}`);
    }
    entries.push({ kind: 'file', path: MODULE_LOAD_ORDER_PATH, data: Buffer.from(loadOrder.map((p) => `${p}\n`).join('')) });
  }

  entries.push({ kind: 'file', path: 'init', data: Buffer.from(options.init), mode: 0o755 });

  for (const extra of options.extraFiles ?? []) {
    const parent = extra.path.split('/').filter(Boolean).slice(0, -1).join('/');
    if (parent) addDir(parent);
    entries.push(extra);
  }
  return entries;
}

/**
 * A busybox whose loader or libraries are missing, or one for another architecture than the
 * kernel's modules, only fails at boot ("No working init found"); say what is wrong now instead.
 * Returns the files a dynamically linked busybox needs (empty for a static one).
 */
async function checkBusybox(path: string, selection: ModuleSelection | undefined): Promise<string[]> {
  const problem = (why: string) =>
    new FerryError(`busybox for the initramfs: ${path}: ${why}`, {
      hint: 'give the path of a busybox for the guest architecture: statically linked (Debian: busybox-static), or a Nix store path with its closure on this host (nixpkgs: busybox)',
    });
  let head: Buffer;
  try {
    const handle = await open(path, 'r');
    try {
      if (!(await handle.stat()).isFile()) throw new Error('not a regular file');
      const buffer = Buffer.alloc(64 * 1024);
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
      head = buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw problem((error as Error).message);
  }
  let elf: Elf;
  try {
    elf = new Elf(head);
    elf.hasInterpreter();
  } catch (error) {
    if (error instanceof ElfError) throw problem(`not an ELF executable (${error.message})`);
    throw error;
  }
  const module = selection?.loadOrder[0];
  if (module && module.machine !== elf.machine) {
    throw problem(`it is built for ${elf.machineName}, but the kernel modules (${module.sourcePath}) are for ${new Elf(module.data).machineName}`);
  }
  if (!elf.hasInterpreter()) return [];
  try {
    return (await programRuntime(path)).files;
  } catch (error) {
    if (error instanceof FerryError) throw problem(error.message.replace(`${path} is `, 'it is '));
    throw error;
  }
}

/**
 * zlib writes the host's OS code into the gzip header (3 on Linux, 19 on macOS); pin it to 3 so
 * the same inputs give the same bytes on every host.
 */
function normaliseGzipHeader(): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      const osByte = 9 - seen;
      if (osByte >= 0 && osByte < chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[osByte] = 3;
      }
      seen += chunk.length;
      callback(null, chunk);
    },
  });
}
