/**
 * Kernel module selection for the initramfs: find the requested modules in a kernel's module
 * tree, follow each module's `depends=` (read from the module's own ELF `.modinfo` section,
 * because Debian's cloud kernel package ships no modules.dep) and return a load order with
 * dependencies first. Modules listed in modules.builtin are part of the kernel and skipped.
 */
import { readdir, readFile } from 'node:fs/promises';
import { basename, join, relative } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { decompress as zstdDecompress } from 'fzstd';
// xz-decompress is CommonJS whose exports Node's ESM loader cannot name statically.
import xzDecompress from 'xz-decompress';
import { FerryError } from '../../errors.js';
import { Elf, ElfError } from './elf.js';

export type ModuleCompression = 'none' | 'xz' | 'zst' | 'gz';

export interface SelectedModule {
  /** Canonical name ('-' replaced by '_'), as the kernel reports it. */
  name: string;
  /** The module file in the host's module tree. */
  sourcePath: string;
  /** Path below /lib/modules/VERSION without any compression suffix, e.g. kernel/drivers/block/virtio_blk.ko. */
  installPath: string;
  compression: ModuleCompression;
  /** Canonical names of the modules this one needs loaded first (built-in ones omitted). */
  depends: string[];
  /** The uncompressed module, ready for busybox insmod. */
  data: Buffer;
  /** ELF e_machine, to check that busybox is built for the same architecture. */
  machine: number;
}

export interface ModuleSelection {
  /** The kernel release, the name of the modules directory. */
  version: string;
  /** Modules to load, each after everything it depends on. */
  loadOrder: SelectedModule[];
  /** Requested or depended-on names that are built into the kernel. */
  builtin: string[];
  /** Optional names this kernel has neither as a module nor built in (skipped). */
  absent: string[];
}

/** The module file names the initramfs reads, and the compression each means. */
export const MODULE_SUFFIXES: ReadonlyArray<readonly [string, ModuleCompression]> = [
  ['.ko.xz', 'xz'],
  ['.ko.zst', 'zst'],
  ['.ko.gz', 'gz'],
  ['.ko', 'none'],
];

/** Module names compare with '-' and '_' treated alike; the kernel itself uses '_'. */
export function canonicalModuleName(name: string): string {
  return name.replaceAll('-', '_');
}

/**
 * Resolves `names` and everything they depend on in `modulesDir` (a /lib/modules/VERSION
 * directory). Throws a FerryError naming the module and the directory when a module is neither
 * present nor built in — except for the `optional` names, which are skipped when this kernel
 * lacks them (their dependencies, once an optional module is there, are required as any).
 */
export async function selectModules(modulesDir: string, names: readonly string[], optional: readonly string[] = []): Promise<ModuleSelection> {
  const version = basename(modulesDir);
  const available = await indexModuleFiles(modulesDir);
  const builtinNames = await readBuiltin(modulesDir);

  const loadOrder: SelectedModule[] = [];
  const done = new Map<string, SelectedModule | 'builtin'>();
  const builtin: string[] = [];
  const absent: string[] = [];
  const inProgress: string[] = [];

  // Depth-first, appending a module after its dependencies: a deterministic topological order.
  const visit = async (rawName: string, neededBy: string | undefined): Promise<void> => {
    const name = canonicalModuleName(rawName);
    if (done.has(name)) return;
    if (inProgress.includes(name)) {
      throw new FerryError(`kernel modules in ${modulesDir} depend on each other in a cycle: ${[...inProgress, name].join(' -> ')}`);
    }
    const file = available.get(name);
    if (!file) {
      if (builtinNames.has(name)) {
        done.set(name, 'builtin');
        builtin.push(name);
        return;
      }
      if (!neededBy && optional.includes(rawName)) {
        absent.push(name);
        return;
      }
      const why = neededBy ? ` (needed by ${neededBy})` : '';
      throw new FerryError(`kernel module ${rawName}${why} not found in ${modulesDir}`, {
        hint: `no ${name}.ko, .ko.xz, .ko.zst or .ko.gz below that directory, and modules.builtin does not list it`,
      });
    }
    inProgress.push(name);
    const data = await readModule(file.path, file.compression);
    const info = parseModinfo(data, file.path);
    const machine = new Elf(data).machine;
    checkVermagic(info, version, file.path);
    const dependsRaw = (info.get('depends')?.[0] ?? '').split(',').filter((d) => d !== '');
    for (const dep of dependsRaw) await visit(dep, name);
    inProgress.pop();
    const depends = dependsRaw.map(canonicalModuleName).filter((dep) => done.get(dep) !== 'builtin');
    const selected: SelectedModule = {
      name,
      sourcePath: file.path,
      installPath: stripCompression(relative(modulesDir, file.path)),
      compression: file.compression,
      depends,
      data,
      machine,
    };
    done.set(name, selected);
    loadOrder.push(selected);
  };

  for (const name of [...names, ...optional]) await visit(name, undefined);
  return { version, loadOrder, builtin, absent };
}

interface ModuleFile {
  path: string;
  compression: ModuleCompression;
}

/** Every module file below `modulesDir`, by canonical name. Sorted walk, so duplicates resolve the same way every time. */
async function indexModuleFiles(modulesDir: string): Promise<Map<string, ModuleFile>> {
  let entries: string[];
  try {
    entries = (await readdir(modulesDir, { recursive: true })).sort();
  } catch (error) {
    throw new FerryError(`cannot read the kernel modules directory ${modulesDir}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const index = new Map<string, ModuleFile>();
  for (const entry of entries) {
    const match = MODULE_SUFFIXES.find(([suffix]) => entry.endsWith(suffix));
    if (!match) continue;
    const [suffix, compression] = match;
    const name = canonicalModuleName(basename(entry).slice(0, -suffix.length));
    if (!index.has(name)) index.set(name, { path: join(modulesDir, entry), compression });
  }
  return index;
}

async function readBuiltin(modulesDir: string): Promise<Set<string>> {
  let text: string;
  try {
    text = await readFile(join(modulesDir, 'modules.builtin'), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return new Set();
    throw error;
  }
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const file = basename(line.trim());
    if (file.endsWith('.ko')) names.add(canonicalModuleName(file.slice(0, -3)));
  }
  return names;
}

function stripCompression(path: string): string {
  for (const [suffix] of MODULE_SUFFIXES) {
    if (path.endsWith(suffix)) return path.slice(0, -suffix.length) + '.ko';
  }
  return path;
}

/** Reads a module file and returns the uncompressed ELF object. */
export async function readModule(path: string, compression: ModuleCompression): Promise<Buffer> {
  const raw = await readFile(path);
  try {
    switch (compression) {
      case 'none':
        return raw;
      case 'gz':
        return gunzipSync(raw);
      case 'zst':
        return Buffer.from(zstdDecompress(raw));
      case 'xz': {
        const stream = new xzDecompress.XzReadableStream(new Blob([raw]).stream());
        return Buffer.from(await new Response(stream).arrayBuffer());
      }
    }
  } catch (error) {
    throw new FerryError(`cannot decompress kernel module ${path} (${compression}): ${(error as Error).message}`, {
      cause: error,
      hint: 'busybox insmod needs an uncompressed module; check that the file is intact',
    });
  }
}

/**
 * The key=value strings of an ELF object's `.modinfo` section. Keys may repeat (alias=, parm=),
 * so each maps to every value in order.
 */
export function parseModinfo(elf: Buffer, pathForErrors: string): Map<string, string[]> {
  let section: Buffer | undefined;
  try {
    section = new Elf(elf).section('.modinfo');
  } catch (error) {
    if (!(error instanceof ElfError)) throw error;
    throw new FerryError(`kernel module ${pathForErrors} is not a valid ELF object: ${error.message}`);
  }
  const info = new Map<string, string[]>();
  if (!section) return info;
  for (const item of section.toString('utf8').split('\0')) {
    const eq = item.indexOf('=');
    if (eq <= 0) continue;
    const key = item.slice(0, eq);
    const values = info.get(key) ?? [];
    values.push(item.slice(eq + 1));
    info.set(key, values);
  }
  return info;
}

/** A module built for another kernel fails at boot with an obscure insmod error; say so now instead. */
function checkVermagic(info: Map<string, string[]>, version: string, path: string): void {
  const vermagic = info.get('vermagic')?.[0];
  if (!vermagic) return;
  const release = vermagic.split(' ')[0];
  if (release !== version) {
    throw new FerryError(`kernel module ${path} was built for kernel ${release}, but its directory is for ${version}`);
  }
}
