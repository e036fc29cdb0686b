/**
 * Just enough ELF reading for the initramfs: a module's `.modinfo` section, whether a busybox
 * binary is statically linked and for which machine, and — for a dynamically linked one — its
 * loader (PT_INTERP) and what the loader must find (DT_NEEDED, DT_RUNPATH / DT_RPATH). Handles
 * 32- and 64-bit objects of either byte order.
 */

export class ElfError extends Error {}

/** e_machine values of the architectures ferry's guests run. */
export const ELF_MACHINES: Record<number, string> = { 0x3e: 'x86_64', 0xb7: 'aarch64', 0x03: 'i386', 0x28: 'arm' };

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NEEDED = 1;
const DT_STRTAB = 5;
const DT_RPATH = 15;
const DT_RUNPATH = 29;

interface ProgramHeader {
  type: number;
  offset: number;
  vaddr: number;
  filesz: number;
}

/** What the dynamic loader reads from an object's dynamic section. */
export interface DynamicInfo {
  /** DT_NEEDED: the libraries, by name, in order. */
  needed: string[];
  /** DT_RUNPATH (or the older DT_RPATH when there is no RUNPATH), split at ':'. */
  runpath: string[];
  /** True when the search path came from DT_RPATH (which, unlike RUNPATH, applies to dependencies too). */
  inheritedRpath: boolean;
}

export class Elf {
  readonly is64: boolean;
  readonly little: boolean;
  readonly machine: number;

  constructor(private readonly data: Buffer) {
    if (data.length < 52 || data.readUInt32BE(0) !== 0x7f454c46) throw new ElfError('no ELF magic');
    if (data[4] !== 1 && data[4] !== 2) throw new ElfError(`unknown ELF class ${data[4]}`);
    this.is64 = data[4] === 2;
    this.little = data[5] === 1;
    this.machine = this.u16(0x12);
  }

  get machineName(): string {
    return ELF_MACHINES[this.machine] ?? `machine ${this.machine}`;
  }

  /** The bytes of the named section, or undefined if there is none. */
  section(wanted: string): Buffer | undefined {
    const shoff = this.word(this.is64 ? 0x28 : 0x20);
    const shentsize = this.u16(this.is64 ? 0x3a : 0x2e);
    const shnum = this.u16(this.is64 ? 0x3c : 0x30);
    const shstrndx = this.u16(this.is64 ? 0x3e : 0x32);
    if (shoff + shnum * shentsize > this.data.length || shstrndx >= shnum) throw new ElfError('section table out of bounds');
    const sectionAt = (index: number) => {
      const base = shoff + index * shentsize;
      const offset = this.word(base + (this.is64 ? 0x18 : 0x10));
      const size = this.word(base + (this.is64 ? 0x20 : 0x14));
      if (offset + size > this.data.length) throw new ElfError(`section ${index} out of bounds`);
      return { nameOffset: this.u32(base), data: this.data.subarray(offset, offset + size) };
    };
    const names = sectionAt(shstrndx).data;
    for (let i = 0; i < shnum; i++) {
      const section = sectionAt(i);
      const end = names.indexOf(0, section.nameOffset);
      if (names.toString('latin1', section.nameOffset, end < 0 ? undefined : end) === wanted) return section.data;
    }
    return undefined;
  }

  /** True if the program needs a dynamic loader (a PT_INTERP program header). */
  hasInterpreter(): boolean {
    return this.programHeaders().some((header) => header.type === PT_INTERP);
  }

  /** The loader PT_INTERP names (e.g. /nix/store/…-glibc-2.40/lib/ld-linux-x86-64.so.2), if any. */
  interpreter(): string | undefined {
    const header = this.programHeaders().find((h) => h.type === PT_INTERP);
    if (!header) return undefined;
    const bytes = this.bytes(header.offset, header.filesz, 'PT_INTERP');
    const end = bytes.indexOf(0);
    return bytes.toString('latin1', 0, end < 0 ? undefined : end);
  }

  /** The dynamic section's libraries and search path; undefined for a static object. */
  dynamic(): DynamicInfo | undefined {
    const headers = this.programHeaders();
    const dyn = headers.find((h) => h.type === PT_DYNAMIC);
    if (!dyn) return undefined;
    const entrySize = this.is64 ? 16 : 8;
    const table = this.bytes(dyn.offset, dyn.filesz, 'PT_DYNAMIC');
    const entries: Array<[number, number]> = [];
    for (let at = 0; at + entrySize <= table.length; at += entrySize) {
      const tag = this.wordIn(table, at);
      if (tag === 0) break;
      entries.push([tag, this.wordIn(table, at + entrySize / 2)]);
    }
    const strtabAddress = entries.find(([tag]) => tag === DT_STRTAB)?.[1];
    if (strtabAddress === undefined) throw new ElfError('dynamic section without DT_STRTAB');
    // DT_STRTAB is an address: the PT_LOAD segment that maps it gives its place in the file.
    const load = headers.find((h) => h.type === PT_LOAD && strtabAddress >= h.vaddr && strtabAddress < h.vaddr + h.filesz);
    if (!load) throw new ElfError('DT_STRTAB is outside every loaded segment');
    const strtab = strtabAddress - load.vaddr + load.offset;
    const string = (offset: number) => {
      const start = strtab + offset;
      if (start >= this.data.length) throw new ElfError('dynamic string out of bounds');
      const end = this.data.indexOf(0, start);
      return this.data.toString('latin1', start, end < 0 ? undefined : end);
    };
    const runpath = entries.find(([tag]) => tag === DT_RUNPATH);
    const rpath = entries.find(([tag]) => tag === DT_RPATH);
    const path = runpath ?? rpath;
    return {
      needed: entries.filter(([tag]) => tag === DT_NEEDED).map(([, value]) => string(value)),
      runpath: path ? string(path[1]).split(':').filter(Boolean) : [],
      inheritedRpath: !runpath && rpath !== undefined,
    };
  }

  private programHeaders(): ProgramHeader[] {
    const phoff = this.word(this.is64 ? 0x20 : 0x1c);
    const phentsize = this.u16(this.is64 ? 0x36 : 0x2a);
    const phnum = this.u16(this.is64 ? 0x38 : 0x2c);
    if (phoff + phnum * phentsize > this.data.length) throw new ElfError('program header table out of bounds');
    const headers: ProgramHeader[] = [];
    for (let i = 0; i < phnum; i++) {
      const base = phoff + i * phentsize;
      headers.push(
        this.is64
          ? { type: this.u32(base), offset: this.word(base + 0x08), vaddr: this.word(base + 0x10), filesz: this.word(base + 0x20) }
          : { type: this.u32(base), offset: this.u32(base + 0x04), vaddr: this.u32(base + 0x08), filesz: this.u32(base + 0x10) },
      );
    }
    return headers;
  }

  private bytes(offset: number, size: number, what: string): Buffer {
    if (offset + size > this.data.length) throw new ElfError(`${what} out of bounds`);
    return this.data.subarray(offset, offset + size);
  }

  /** An address-sized field of `buffer`. */
  private wordIn(buffer: Buffer, offset: number): number {
    if (!this.is64) return this.little ? buffer.readUInt32LE(offset) : buffer.readUInt32BE(offset);
    return Number(this.little ? buffer.readBigUInt64LE(offset) : buffer.readBigUInt64BE(offset));
  }

  private u16(offset: number): number {
    return this.little ? this.data.readUInt16LE(offset) : this.data.readUInt16BE(offset);
  }

  private u32(offset: number): number {
    return this.little ? this.data.readUInt32LE(offset) : this.data.readUInt32BE(offset);
  }

  /** An address-sized field: 8 bytes in 64-bit objects, 4 in 32-bit ones. */
  private word(offset: number): number {
    if (!this.is64) return this.u32(offset);
    return Number(this.little ? this.data.readBigUInt64LE(offset) : this.data.readBigUInt64BE(offset));
  }
}
