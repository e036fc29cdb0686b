/**
 * What a dynamically linked program needs at run time, as the dynamic loader will look for it:
 * its loader (PT_INTERP) and every library its DT_NEEDED names, transitively, found along each
 * object's DT_RUNPATH (DT_RPATH), `$ORIGIN` expanded. Nix-built programs name all of these by
 * absolute /nix/store paths, so carrying exactly these files at exactly these paths into the
 * initramfs makes the program run there unchanged — no patchelf, no copy of the whole closure.
 * NixOS's stage 1 carries its dynamically linked tools the same way (nixpkgs
 * nixos/modules/system/boot/stage-1.nix, copy_bin_and_libs), there with the paths rewritten.
 *
 * Where an object's own search path does not have a library, the loader's default directory is
 * tried last: nixpkgs' glibc searches its own lib/ (the loader's directory), not /lib or /usr/lib.
 */
import { readFile, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join } from 'node:path';
import { FerryError } from '../../errors.js';
import { Elf, ElfError } from './elf.js';

export interface ProgramRuntime {
  /** The loader, absolute; undefined for a statically linked program. */
  interpreter?: string;
  /** The loader and every library the loader opens, absolute host paths, loader first. */
  files: string[];
}

/** The loader and libraries `program` needs; `{ files: [] }` for a static program. */
export async function programRuntime(program: string): Promise<ProgramRuntime> {
  const elf = await readElf(program, program);
  const interpreter = elf.interpreter();
  if (interpreter === undefined) return { files: [] };
  if (!isAbsolute(interpreter)) throw runtimeError(program, `its loader ${interpreter} is not an absolute path`);
  await readElf(interpreter, program);

  const files = [interpreter];
  // Libraries already loaded, by file name (the loader matches a DT_NEEDED name against the
  // sonames it has loaded; nixpkgs names each library file by its soname).
  const loaded = new Set([basename(interpreter)]);
  const inherited: string[] = [];
  const queue: Array<{ path: string; elf: Elf }> = [{ path: program, elf }];
  while (queue.length > 0) {
    const object = queue.shift()!;
    const dynamic = object.elf.dynamic();
    if (!dynamic) continue;
    const own = dynamic.runpath.map((dir) => dir.replaceAll('$ORIGIN', dirname(object.path)).replaceAll('${ORIGIN}', dirname(object.path)));
    // DT_RPATH (unlike DT_RUNPATH) also serves the libraries loaded after the object that has it.
    if (dynamic.inheritedRpath) inherited.push(...own);
    const dirs = [...new Set([...own, ...inherited, dirname(interpreter)])];
    for (const name of dynamic.needed) {
      if (loaded.has(basename(name))) continue;
      const found = name.includes('/') ? name : await firstExisting(dirs.map((dir) => join(dir, name)));
      if (!found) {
        throw runtimeError(program, `${object.path === program ? 'it' : object.path} needs ${name}, which is in none of ${dirs.join(', ')}`);
      }
      loaded.add(basename(name));
      files.push(found);
      queue.push({ path: found, elf: await readElf(found, program) });
    }
  }
  return { interpreter, files };
}

async function firstExisting(paths: string[]): Promise<string | undefined> {
  for (const path of paths) {
    if ((await stat(path).catch(() => undefined))?.isFile()) return path;
  }
  return undefined;
}

async function readElf(path: string, program: string): Promise<Elf> {
  let data: Buffer;
  try {
    data = await readFile(path);
  } catch (error) {
    if (path === program) throw new FerryError(`cannot read ${path}: ${(error as Error).message}`);
    throw runtimeError(program, `cannot read ${path}: ${(error as Error).message}`);
  }
  try {
    return new Elf(data);
  } catch (error) {
    if (error instanceof ElfError) throw runtimeError(program, `${path} is not an ELF object (${error.message})`);
    throw error;
  }
}

function runtimeError(program: string, why: string): FerryError {
  return new FerryError(`${program} is dynamically linked, and ${why}`, {
    hint: 'give a statically linked program, or one whose loader and libraries are on this host at the paths it names (a Nix store path with its closure)',
  });
}
