/**
 * Checks the nixpkgs preset against nixpkgs' own files — a checkout, the flake's source in the
 * store, or a directory of files fetched one by one at the same relative paths — without
 * evaluating or building anything. What is checked comes from the preset's code, never from a
 * second list: the attributes (NIXPKGS_ATTRIBUTES), the files taken from each store path
 * (NIXPKGS_LAYOUT), the guest systems (GUEST_SYSTEMS), the module compressions the initramfs reads
 * (MODULE_SUFFIXES), the modules stage 1 loads (STAGE1_MODULES), the applets the image links
 * (REQUIRED_APPLETS), and whether the guest's nix.conf leaves the sandbox's /bin/sh to Nix
 * (sandboxPaths). What lives here is only where nixpkgs decides each of those and how to read
 * it there (RULES, EXPRESSIONS, KCONFIG); a preset fact with no rule is reported, not skipped.
 *
 * Each result is `confirmed` or `refuted` with the lines that decide it (file:line), `missing`
 * when a file that decides it is not in the tree given, or `elsewhere` when nixpkgs' files cannot
 * decide it (Nix's own build installs nix-daemon; the arch defconfig decides built-in or module):
 * those are confirmed where the preset's own path checks run on real store paths — `ferry image
 * build` with the nixpkgs preset, the macOS workflow's arm64 job. docs/nixpkgs-preset.md records
 * one run and the files it read.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { GUEST_SYSTEMS } from '../../config/schema.js';
import { sandboxPaths } from '../guest-os/files.js';
import { MODULE_SUFFIXES } from '../initramfs/modules.js';
import { INTERPRETER_MODULES, STAGE1_MODULES } from '../guest-os/stage1.js';
import { REQUIRED_APPLETS } from './nixpkgs-root.js';
import { NIXPKGS_ATTRIBUTES, NIXPKGS_LAYOUT, type NixpkgsInput, type NixpkgsLayoutEntry } from './nixpkgs.js';

export type FactStatus = 'confirmed' | 'refuted' | 'missing' | 'elsewhere';

export interface FactResult {
  /** What the preset relies on, in a sentence. */
  fact: string;
  status: FactStatus;
  /** The lines that decide it: `file:line: text`. */
  evidence: string[];
  /** Why the status, where the lines alone do not say (and where an `elsewhere` fact is confirmed). */
  note?: string;
}

/** A nixpkgs tree: a checkout or fetched files under the same relative paths. */
export class NixpkgsTree {
  private readonly cache = new Map<string, string[] | undefined>();

  constructor(readonly root: string) {}

  /** The file's lines, or undefined when the tree does not have it. */
  lines(file: string): string[] | undefined {
    if (!this.cache.has(file)) {
      const path = join(this.root, file);
      this.cache.set(file, existsSync(path) ? readFileSync(path, 'utf8').split('\n') : undefined);
    }
    return this.cache.get(file);
  }

  /** The first of `files` the tree has. */
  first(files: readonly string[]): string | undefined {
    return files.find((file) => this.lines(file) !== undefined);
  }

  /** Every line of `file` matching `pattern`, as evidence (`file:line: text`). */
  grep(file: string, pattern: RegExp, from = 0, to = Infinity): string[] {
    const lines = this.lines(file) ?? [];
    const out: string[] = [];
    for (let i = from; i < Math.min(to, lines.length); i++) if (pattern.test(lines[i])) out.push(`${file}:${i + 1}: ${lines[i].trim()}`);
    return out;
  }
}

// ---- where nixpkgs decides things --------------------------------------------------------------

const RELEASE = 'pkgs/top-level/release.nix';
const RELEASE_LIB = 'pkgs/top-level/release-lib.nix';
const SUPPORTED_SYSTEMS = 'ci/supportedSystems.json';
const PLATFORMS = 'lib/systems/platforms.nix';
const KERNEL_CONFIG = 'pkgs/os-specific/linux/kernel/common-config.nix';
const KERNEL_BUILD = 'pkgs/os-specific/linux/kernel/manual-config.nix';
const MOVE_SBIN = 'pkgs/build-support/setup-hooks/move-sbin.sh';
const NIX_STORE_LIB = 'pkgs/tools/package-management/nix/modular/src/libstore/package.nix';
const SANDBOX_SHELL = 'pkgs/os-specific/linux/busybox/sandbox-shell.nix';

/** Each input's expression (candidates, newest layout first: packages move to pkgs/by-name). */
const EXPRESSIONS: Record<NixpkgsInput, readonly string[]> = {
  kernel: [KERNEL_BUILD],
  busybox: ['pkgs/by-name/bu/busybox/package.nix', 'pkgs/os-specific/linux/busybox/default.nix'],
  openssh: ['pkgs/tools/networking/openssh/common.nix', 'pkgs/by-name/op/openssh/common.nix'],
  nix: ['pkgs/tools/package-management/nix/modular/packaging/everything.nix'],
  cacert: ['pkgs/by-name/ca/cacert/package.nix', 'pkgs/data/misc/cacert/default.nix'],
  e2fsprogs: ['pkgs/by-name/e2/e2fsprogs/package.nix', 'pkgs/tools/filesystems/e2fsprogs/default.nix'],
};

/** The Kconfig symbol of each module stage 1 loads (the kernel's drivers/*\/Kconfig, fs/*\/Kconfig). */
export const KCONFIG: Readonly<Record<string, string>> = {
  virtio_pci: 'VIRTIO_PCI',
  virtio_mmio: 'VIRTIO_MMIO',
  virtio_blk: 'VIRTIO_BLK',
  virtio_net: 'VIRTIO_NET',
  virtio_console: 'VIRTIO_CONSOLE',
  virtio_rng: 'HW_RANDOM_VIRTIO',
  overlay: 'OVERLAY_FS',
  binfmt_misc: 'BINFMT_MISC',
  virtiofs: 'VIRTIO_FS',
  fuse: 'FUSE_FS',
};

/** The Kconfig choice behind each module compression the initramfs reads. */
const COMPRESS_SYMBOL: Record<string, string> = { xz: 'MODULE_COMPRESS_XZ', zst: 'MODULE_COMPRESS_ZSTD', gz: 'MODULE_COMPRESS_GZIP', none: 'MODULE_COMPRESS_NONE' };

/** The linux-kernel platform block of `lib/systems/platforms.nix` each guest system selects. */
const KERNEL_PLATFORM: Record<string, string> = { 'x86_64-linux': 'pc', 'aarch64-linux': 'aarch64-multiplatform' };

type Rule = (tree: NixpkgsTree, entry: NixpkgsLayoutEntry, system: string) => Omit<FactResult, 'fact'>;

/** How each NIXPKGS_LAYOUT entry is decided in nixpkgs, keyed by `input:path`. */
const RULES: Record<string, Rule> = {
  'kernel:bzImage': (tree, entry, system) => kernelTarget(tree, system, entry.path(system)),
  'kernel:Image': (tree, entry, system) => kernelTarget(tree, system, entry.path(system)),
  'kernel:lib/modules': (tree) =>
    all(tree, KERNEL_BUILD, [/INSTALL_MOD_PATH=\$\(out\)/, /make modules_install/]),
  'busybox:bin/busybox': (tree) => all(tree, EXPRESSIONS.busybox, [/CONFIG_PREFIX "\$out"/, /CONFIG_INSTALL_NO_USR y/]),
  'openssh:bin/sshd': (tree) => all(tree, EXPRESSIONS.openssh, [/--sbindir=\\?\$\{out\}\/bin/]),
  'nix:bin/nix-daemon': nixProgram,
  'nix:bin/nix-store': nixProgram,
  'cacert:etc/ssl/certs/ca-bundle.crt': (tree) => all(tree, EXPRESSIONS.cacert, [/install -D -t "\$out\/etc\/ssl\/certs" ca-bundle\.crt/]),
  'e2fsprogs:bin/resize2fs': (tree) => {
    // resize2fs installs to sbindir, in the `bin` output; stdenv's move-sbin hook moves every
    // output's sbin/ into its bin/ (and leaves sbin -> bin).
    const outputs = all(tree, EXPRESSIONS.e2fsprogs, [/^\s*"bin"$/]);
    const moved = all(tree, MOVE_SBIN, [/fixupOutputHooks\+=\(_moveSbin\)/, /mv "\$i" \$prefix\/bin/]);
    return combine([outputs, moved]);
  },
};

function kernelTarget(tree: NixpkgsTree, system: string, file: string): Omit<FactResult, 'fact'> {
  const block = KERNEL_PLATFORM[system];
  const lines = tree.lines(PLATFORMS);
  if (!lines || !block) return { status: 'missing', evidence: [], note: `needs ${PLATFORMS}` };
  const start = lines.findIndex((line) => new RegExp(`^\\s*${block.replace(/[-]/g, '\\-')} = \\{`).test(line));
  const end = start < 0 ? -1 : lines.findIndex((line, i) => i > start && /^ {2}\};/.test(line));
  const target = tree.grep(PLATFORMS, /^\s*target = "/, start, end);
  const install = all(tree, KERNEL_BUILD, [/"INSTALL_PATH=\$\(out\)"/, /cp -av \$2 \$4/]);
  if (start < 0 || target.length === 0) return { status: 'refuted', evidence: target, note: `no \`target\` in the ${block} block of ${PLATFORMS}` };
  const named = /target = "([^"]+)"/.exec(target[0])![1];
  const ok = named === file;
  return combine([
    { status: ok ? 'confirmed' : 'refuted', evidence: target, note: ok ? undefined : `the ${block} kernel is ${named}, not ${file}` },
    install,
  ]);
}

function nixProgram(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  const merged = all(tree, EXPRESSIONS.nix, [/lndir \$\{nix-cli\} \$out/]);
  return {
    status: merged.status === 'confirmed' ? 'elsewhere' : merged.status,
    evidence: merged.evidence,
    note:
      'nixpkgs merges nix-cli into the output; the program names are Nix\'s own build\'s (NixOS/nix src/nix/meson.build, nix_symlinks: nix-daemon, nix-store … -> nix), ' +
      'not in nixpkgs: confirmed by the preset\'s path check on the real store path (ferry image build, the macOS workflow\'s arm64 job)',
  };
}

/** Every pattern matches somewhere in the first of `files` the tree has. */
function all(tree: NixpkgsTree, files: string | readonly string[], patterns: RegExp[]): Omit<FactResult, 'fact'> {
  const candidates = typeof files === 'string' ? [files] : files;
  const file = tree.first(candidates);
  if (!file) return { status: 'missing', evidence: [], note: `needs ${candidates.join(' or ')}` };
  const evidence: string[] = [];
  const absent: string[] = [];
  for (const pattern of patterns) {
    const hits = tree.grep(file, pattern);
    if (hits.length === 0) absent.push(pattern.source);
    evidence.push(...hits.slice(0, 1));
  }
  return absent.length === 0 ? { status: 'confirmed', evidence } : { status: 'refuted', evidence, note: `${file} has no line matching ${absent.join(', ')}` };
}

/** The worst of several partial results (refuted > missing > elsewhere > confirmed), evidence joined. */
function combine(parts: Array<Omit<FactResult, 'fact'>>): Omit<FactResult, 'fact'> {
  const order: FactStatus[] = ['refuted', 'missing', 'elsewhere', 'confirmed'];
  const status = order.find((s) => parts.some((p) => p.status === s))!;
  const notes = parts.map((p) => p.note).filter(Boolean);
  return { status, evidence: parts.flatMap((p) => p.evidence), ...(notes.length ? { note: notes.join('; ') } : {}) };
}

// ---- the facts ---------------------------------------------------------------------------------

type Attributes = Record<NixpkgsInput, { attribute: string; output: string }>;

/** Hydra (release.nix) builds `attribute` for every guest system, so the binary cache has it. */
function hydraJob(tree: NixpkgsTree, input: NixpkgsInput, attributes: Attributes): Omit<FactResult, 'fact'> {
  const { attribute } = attributes[input];
  if (!tree.lines(RELEASE)) return { status: 'missing', evidence: [], note: `needs ${RELEASE}` };
  const systems = supportedSystems(tree);
  if (attribute.includes('.')) {
    // Below a package set Hydra builds only what release.nix names (packagePlatforms does not
    // recurse into pkgsStatic, pkgsMusl …, which are not recurseForDerivations).
    const [set] = attribute.split('.');
    const named = tree.grep(RELEASE, new RegExp(`^\\s*${escape(attribute)}\\s*=`));
    if (named.length > 0) return combine([{ status: 'confirmed', evidence: named }, systems]);
    const others = tree.grep(RELEASE, new RegExp(`^\\s*${escape(set)}\\.\\S+\\s*=`));
    return {
      status: 'refuted',
      evidence: others,
      note: `${RELEASE} names no ${attribute} job${others.length ? ` (of ${set} it builds only ${others.map((e) => /(\S+)\s*=/.exec(e.split(': ').slice(1).join(': '))![1]).join(', ')})` : ''}: it is not in the binary cache`,
    };
  }
  // A top-level package is a job on each supported system its meta.platforms covers
  // (release-lib.nix packagePlatforms), unless meta.hydraPlatforms says otherwise.
  const file = tree.first(EXPRESSIONS[input]);
  if (!file) return combine([{ status: 'missing', evidence: [], note: `needs ${EXPRESSIONS[input].join(' or ')}` }, systems]);
  const platforms = tree.grep(file, /^\s*platforms\s*=\s*(lib\.)?platforms\.(linux|unix|all)\b|^\s*platforms\s*=\s*nix-cli\.meta\.platforms/);
  const hydraOff = tree.grep(file, /hydraPlatforms\s*=\s*\[\s*\]/);
  const packagePlatforms = tree.grep(RELEASE_LIB, /value\.meta\.hydraPlatforms or/);
  if (hydraOff.length > 0) return { status: 'refuted', evidence: hydraOff, note: 'meta.hydraPlatforms is empty: Hydra does not build it' };
  if (platforms.length === 0) return { status: 'refuted', evidence: [], note: `${file} sets no meta.platforms that covers Linux` };
  const viaNixCli = /nix-cli\.meta\.platforms/.test(platforms[0]);
  return combine([
    {
      status: viaNixCli ? 'elsewhere' : 'confirmed',
      evidence: [...platforms, ...packagePlatforms],
      ...(viaNixCli ? { note: "nix takes nix-cli's meta.platforms (its own file); confirmed by substitution on the macOS workflow's arm64 job" } : {}),
    },
    systems,
  ]);
}

/** ci/supportedSystems.json (or release.nix's default list) names every guest system. */
function supportedSystems(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  const json = tree.lines(SUPPORTED_SYSTEMS);
  if (json) {
    const evidence = GUEST_SYSTEMS.flatMap((system) => tree.grep(SUPPORTED_SYSTEMS, new RegExp(`"${system}"`)));
    const absent = GUEST_SYSTEMS.filter((system) => !json.some((line) => line.includes(`"${system}"`)));
    return absent.length ? { status: 'refuted', evidence, note: `${SUPPORTED_SYSTEMS} lacks ${absent.join(', ')}` } : { status: 'confirmed', evidence };
  }
  const inline = tree.grep(RELEASE, /supportedSystems \? \[/);
  const ok = inline.length > 0 && GUEST_SYSTEMS.every((system) => inline[0].includes(`"${system}"`));
  return inline.length ? { status: ok ? 'confirmed' : 'refuted', evidence: inline } : { status: 'missing', evidence: [], note: `needs ${SUPPORTED_SYSTEMS}` };
}

function moduleCompression(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  if (!tree.lines(KERNEL_CONFIG)) return { status: 'missing', evidence: [], note: `needs ${KERNEL_CONFIG}` };
  const chosen = tree.grep(KERNEL_CONFIG, /^\s*MODULE_COMPRESS_(XZ|ZSTD|GZIP|NONE)\s*=\s*(yes|mkDefault yes|whenAtLeast "[^"]+" yes)/);
  const readable = new Set(MODULE_SUFFIXES.map(([, compression]) => COMPRESS_SYMBOL[compression]));
  if (chosen.length === 0) return { status: 'refuted', evidence: [], note: `${KERNEL_CONFIG} chooses no MODULE_COMPRESS_*` };
  const unreadable = chosen.filter((line) => !readable.has(/MODULE_COMPRESS_\w+/.exec(line)![0]));
  return unreadable.length
    ? { status: 'refuted', evidence: unreadable, note: `the initramfs reads only ${[...readable].join(', ')}` }
    : { status: 'confirmed', evidence: chosen };
}

function stage1Module(tree: NixpkgsTree, module: string): Omit<FactResult, 'fact'> {
  const symbol = KCONFIG[module];
  if (!symbol) return { status: 'missing', evidence: [], note: `no Kconfig symbol known for ${module}: add it to KCONFIG in nixpkgs-check.ts` };
  if (!tree.lines(KERNEL_CONFIG)) return { status: 'missing', evidence: [], note: `needs ${KERNEL_CONFIG}` };
  const set = tree.grep(KERNEL_CONFIG, new RegExp(`^\\s*${symbol}\\s*=`));
  if (set.some((line) => /=\s*(option\s+)?no\b/.test(line))) return { status: 'refuted', evidence: set, note: `${symbol} is switched off` };
  if (set.length > 0) return { status: 'confirmed', evidence: set };
  const autoModules = Object.values(KERNEL_PLATFORM).flatMap((block) => blockLines(tree, block, /autoModules = true/));
  return {
    status: 'elsewhere',
    evidence: autoModules,
    note:
      `${KERNEL_CONFIG} does not set ${symbol}: the arch's defconfig decides, and autoModules builds whatever it leaves as a module; ` +
      'stage 1 takes either (modules.builtin, or lib/modules) — confirmed when ferry image build selects the modules from the real kernel (the macOS workflow\'s arm64 job)',
  };
}

function blockLines(tree: NixpkgsTree, block: string, pattern: RegExp): string[] {
  const lines = tree.lines(PLATFORMS) ?? [];
  const start = lines.findIndex((line) => new RegExp(`^\\s*${block} = \\{`).test(line));
  if (start < 0) return [];
  const end = lines.findIndex((line, i) => i > start && /^ {2}\};/.test(line));
  return tree.grep(PLATFORMS, pattern, start, end < 0 ? undefined : end).slice(0, 1);
}

function busyboxApplets(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  const file = tree.first(EXPRESSIONS.busybox);
  if (!file) return { status: 'missing', evidence: [], note: `needs ${EXPRESSIONS.busybox.join(' or ')}` };
  const base = all(tree, file, [/enableMinimal \? false/, /make \$\{if enableMinimal then "allnoconfig" else "defconfig"\}/]);
  // busybox's Kconfig names an applet CONFIG_<APPLET> (`[` and `[[` are CONFIG_TEST1/2, part of test).
  const symbols = REQUIRED_APPLETS.filter((a) => /^\w+$/.test(a)).map((a) => a.toUpperCase());
  const off = symbols.flatMap((symbol) => tree.grep(file, new RegExp(`^\\s*CONFIG_${symbol} n\\b`)));
  return combine([base, off.length ? { status: 'refuted', evidence: off, note: 'switched off in the busybox expression' } : { status: 'confirmed', evidence: [] }]);
}

/** nixpkgs' Nix mounts a static busybox at the sandbox's /bin/sh by itself (NixOS/nix: `"/bin/sh=" SANDBOX_SHELL`). */
function nixSandboxShell(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  return combine([
    all(tree, NIX_STORE_LIB, [/mesonOption "sandbox-shell" "\$\{busybox-sandbox-shell\}\/bin\/busybox"/]),
    all(tree, SANDBOX_SHELL, [/enableStatic = true;/]),
  ]);
}

function busyboxLinkage(tree: NixpkgsTree): Omit<FactResult, 'fact'> {
  return all(tree, EXPRESSIONS.busybox, [/enableStatic \? stdenv\.hostPlatform\.isStatic/]);
}

/**
 * Every fact the preset relies on, checked against `tree`. `attributes` is the preset's own
 * NIXPKGS_ATTRIBUTES; another set says what the check makes of a different choice (the tests ask
 * it about pkgsStatic.busybox, the preset's attribute before this check).
 */
export function checkNixpkgsPreset(tree: NixpkgsTree, attributes: Attributes = NIXPKGS_ATTRIBUTES): FactResult[] {
  const results: FactResult[] = [];
  const add = (fact: string, result: Omit<FactResult, 'fact'>) => results.push({ fact, ...result });
  for (const input of Object.keys(attributes) as NixpkgsInput[]) {
    const { attribute, output } = attributes[input];
    add(`Hydra builds ${attribute} (^${output}) for ${GUEST_SYSTEMS.join(' and ')}`, hydraJob(tree, input, attributes));
  }
  for (const system of GUEST_SYSTEMS) {
    for (const entry of NIXPKGS_LAYOUT) {
      const path = entry.path(system);
      // Entries that do not depend on the system are checked once.
      if (system !== GUEST_SYSTEMS[0] && GUEST_SYSTEMS.every((other) => entry.path(other) === path)) continue;
      const { attribute, output } = attributes[entry.input];
      const where = GUEST_SYSTEMS.every((other) => entry.path(other) === path) ? '' : ` for ${system}`;
      const rule = RULES[`${entry.input}:${path}`];
      add(
        `${attribute}^${output} has ${path}${where} (${entry.use})`,
        rule ? rule(tree, entry, system) : { status: 'missing', evidence: [], note: `no rule for ${entry.input}:${path}: add one to RULES in nixpkgs-check.ts` },
      );
    }
  }
  add(`kernel modules are compressed as the initramfs reads them (${MODULE_SUFFIXES.map(([suffix]) => suffix).join(', ')})`, moduleCompression(tree));
  for (const module of STAGE1_MODULES) {
    const only = (INTERPRETER_MODULES as readonly string[]).includes(module) ? ', loaded only with an interpreter' : '';
    add(`${module} (${KCONFIG[module] ?? '?'}) is built in or a module${only}`, stage1Module(tree, module));
  }
  add(`busybox has every applet the image links (${REQUIRED_APPLETS.length}: ${REQUIRED_APPLETS.join(' ')})`, busyboxApplets(tree));
  add('busybox is dynamically linked unless the package set is static (so the initramfs carries its loader and libraries)', busyboxLinkage(tree));
  if (sandboxPaths('nixpkgs').length === 0) {
    add("nix is built with a static sandbox shell, the /bin/sh of every build (the guest's nix.conf sets no sandbox-paths)", nixSandboxShell(tree));
  }
  return results;
}

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
