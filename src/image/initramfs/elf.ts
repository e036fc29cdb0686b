/**
 * Just enough ELF reading for the initramfs: a module's `.modinfo` section, and whether a busybox
 * binary is statically linked and for which machine. Handles 32- and 64-bit objects of either
 * byte order.
 */

export class ElfError extends Error {}

/** e_machine values of the architectures ferry's guests run. */
export const ELF_MACHINES: Record<number, string> = { 0x3e: 'x86_64', 0xb7: 'aarch64', 0x03: 'i386', 0x28: 'arm' };

const PT_INTERP = 3;

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
    const phoff = this.word(this.is64 ? 0x20 : 0x1c);
    const phentsize = this.u16(this.is64 ? 0x36 : 0x2a);
    const phnum = this.u16(this.is64 ? 0x38 : 0x2c);
    if (phoff + phnum * phentsize > this.data.length) throw new ElfError('program header table out of bounds');
    for (let i = 0; i < phnum; i++) {
      if (this.u32(phoff + i * phentsize) === PT_INTERP) return true;
    }
    return false;
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
