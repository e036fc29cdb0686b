/**
 * The nixpkgs check (src/image/presets/nixpkgs-check.ts, scripts/check-nixpkgs-preset.ts), through
 * the preset's own facts. The trees are small nixpkgs-shaped inputs written here line by line
 * (nixpkgs' own files are not committed to ferry; docs/nixpkgs-preset.md records the run on them):
 *   - the facts come from the preset's code: one per attribute, per layout entry (per system
 *     where the path differs), per stage-1 module, and every layout entry has a rule;
 *   - a tree laid out as nixpkgs is confirms everything nixpkgs' files can decide, and names the
 *     rest (`elsewhere`) with where it is confirmed;
 *   - each way nixpkgs could move under the preset is refuted with the line that says so —
 *     pkgsStatic.busybox not a Hydra job (the change this check forced), a compressed arm64
 *     kernel, a module compression the initramfs cannot read, a virtio driver switched off, the CA
 *     bundle elsewhere — and a file the tree lacks is `missing`, never confirmed;
 *   - the script: its exit codes, --json, and its error for a directory that is not there.
 */
import { execa } from 'execa';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GUEST_SYSTEMS } from '../../src/config/schema.js';
import { STAGE1_MODULES } from '../../src/image/guest-os/stage1.js';
import { checkNixpkgsPreset, KCONFIG, NixpkgsTree, type FactResult } from '../../src/image/presets/nixpkgs-check.js';
import { NIXPKGS_ATTRIBUTES, NIXPKGS_LAYOUT } from '../../src/image/presets/nixpkgs.js';

/** The lines of a nixpkgs tree that decide the preset's facts, in nixpkgs' own shapes. */
const NIXPKGS_SHAPED: Record<string, string[]> = {
  'ci/supportedSystems.json': ['[', '  "aarch64-linux",', '  "aarch64-darwin",', '  "x86_64-linux",', '  "x86_64-darwin"', ']'],
  'pkgs/top-level/release.nix': ['      packageJobs = packagePlatforms pkgs // {', '        pkgsMusl.stdenv = [', '        pkgsStatic.stdenv = [', '          "x86_64-linux"', '        ];'],
  'lib/systems/platforms.nix': [
    'rec {', '  pc = {', '    linux-kernel = {', '      autoModules = true;', '      target = "bzImage";', '    };', '  };',
    '  aarch64-multiplatform = {', '    linux-kernel = {', '      autoModules = true;', '      preferBuiltin = true;', '      target = "Image";', '    };', '  };', '}',
  ],
  'pkgs/os-specific/linux/kernel/manual-config.nix': [
    '      installFlags = [', '        "INSTALL_PATH=$(out)"', '      ] ++ (optional isModular "INSTALL_MOD_PATH=$(out)")',
    '          cp -av $2 $4', '        make modules_install $makeFlags', '        platforms = platforms.linux;',
  ],
  'pkgs/os-specific/linux/kernel/common-config.nix': ['      MODULE_COMPRESS_XZ   = yes;', '      BINFMT_MISC   = option yes;'],
  'pkgs/os-specific/linux/busybox/default.nix': [
    '  enableStatic ? stdenv.hostPlatform.isStatic,', '  enableMinimal ? false,', '    make ${if enableMinimal then "allnoconfig" else "defconfig"}',
    '    CONFIG_PREFIX "$out"', '    CONFIG_INSTALL_NO_USR y', '    CONFIG_TC n', '    platforms = platforms.linux;',
  ],
  'pkgs/tools/networking/openssh/common.nix': ['      "--sbindir=\\${out}/bin"', '    platforms = lib.platforms.unix ++ lib.platforms.windows;'],
  'pkgs/tools/package-management/nix/modular/packaging/everything.nix': ['      lndir ${nix-cli} $out', '    platforms = nix-cli.meta.platforms;'],
  'pkgs/by-name/ca/cacert/package.nix': ['    platforms = lib.platforms.all;', '    install -D -t "$out/etc/ssl/certs" ca-bundle.crt'],
  'pkgs/by-name/e2/e2fsprogs/package.nix': ['  outputs = [', '    "bin"', '    "out"', '  ];', '    platforms = lib.platforms.unix;'],
  'pkgs/build-support/setup-hooks/move-sbin.sh': ['fixupOutputHooks+=(_moveSbin)', '        mv "$i" $prefix/bin'],
  'pkgs/tools/package-management/nix/modular/src/libstore/package.nix': ['      (lib.mesonOption "sandbox-shell" "${busybox-sandbox-shell}/bin/busybox")'],
  'pkgs/os-specific/linux/busybox/sandbox-shell.nix': ['busybox.override {', '  enableStatic = true;', '  enableMinimal = true;'],
};

let work: string;
let count = 0;

/** Writes the nixpkgs-shaped tree with `changes` applied (a file's lines replaced, or the file removed). */
async function tree(changes: Record<string, string[] | null> = {}): Promise<string> {
  const root = join(work, `tree-${count++}`);
  for (const [file, lines] of Object.entries({ ...NIXPKGS_SHAPED, ...changes })) {
    if (lines === null) continue;
    await mkdir(dirname(join(root, file)), { recursive: true });
    await writeFile(join(root, file), `${lines.join('\n')}\n`);
  }
  return root;
}

/** NIXPKGS_SHAPED's `file` with `from` replaced by `to` in every line. */
const edit = (file: string, from: string, to: string) => ({ [file]: NIXPKGS_SHAPED[file].map((line) => line.replace(from, to)) });

const find = (results: FactResult[], text: string) => {
  const found = results.filter((r) => r.fact.includes(text));
  expect(found.map((r) => r.fact), text).toHaveLength(1);
  return found[0];
};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ferry-nixpkgs-check-'));
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe('the facts come from the preset', () => {
  it('one per attribute, layout entry and stage-1 module, each with a rule', async () => {
    const results = checkNixpkgsPreset(new NixpkgsTree(await tree()));
    for (const { attribute, output } of Object.values(NIXPKGS_ATTRIBUTES)) find(results, `Hydra builds ${attribute} (^${output})`);
    for (const entry of NIXPKGS_LAYOUT) {
      for (const system of GUEST_SYSTEMS) find(results, `has ${entry.path(system)}${GUEST_SYSTEMS.every((s) => entry.path(s) === entry.path(system)) ? ' (' : ` for ${system}`}`);
    }
    for (const module of STAGE1_MODULES) {
      expect(KCONFIG[module], module).toBeDefined();
      find(results, `${module} (${KCONFIG[module]})`);
    }
    expect(results.filter((r) => r.note?.includes('no rule'))).toEqual([]);
    // The arm64 kernel is vfkit's uncompressed Image, the x86_64 one bzImage.
    expect(results.map((r) => r.fact)).toEqual(expect.arrayContaining([expect.stringMatching(/^linux\^out has Image for aarch64-linux/), expect.stringMatching(/^linux\^out has bzImage for x86_64-linux/)]));
  });
});

describe('against a nixpkgs-shaped tree', () => {
  it('confirms what nixpkgs decides, with file:line, and says where the rest is confirmed', async () => {
    const results = checkNixpkgsPreset(new NixpkgsTree(await tree()));
    expect(results.filter((r) => r.status === 'refuted' || r.status === 'missing')).toEqual([]);
    expect(find(results, 'Hydra builds busybox').evidence).toEqual([
      'pkgs/os-specific/linux/busybox/default.nix:7: platforms = platforms.linux;',
      'ci/supportedSystems.json:4: "x86_64-linux",',
      'ci/supportedSystems.json:2: "aarch64-linux",',
    ]);
    expect(find(results, 'has Image for aarch64-linux').evidence[0]).toBe('lib/systems/platforms.nix:12: target = "Image";');
    const elsewhere = results.filter((r) => r.status === 'elsewhere');
    expect(elsewhere.map((r) => r.fact.split(' ')[0]).sort()).toEqual(
      ['nix^out', 'nix^out', 'Hydra', ...STAGE1_MODULES.filter((m) => m !== 'binfmt_misc')].sort(),
    );
    for (const result of elsewhere) expect(result.note).toMatch(/arm64 job/);
  });

  it('refutes pkgsStatic.busybox: release.nix builds no pkgsStatic package but its stdenv', async () => {
    const old = { ...NIXPKGS_ATTRIBUTES, busybox: { attribute: 'pkgsStatic.busybox', output: 'out' } };
    const result = find(checkNixpkgsPreset(new NixpkgsTree(await tree()), old), 'Hydra builds pkgsStatic.busybox');
    expect(result.status).toBe('refuted');
    expect(result.evidence).toEqual(['pkgs/top-level/release.nix:3: pkgsStatic.stdenv = [']);
    expect(result.note).toBe('pkgs/top-level/release.nix names no pkgsStatic.busybox job (of pkgsStatic it builds only pkgsStatic.stdenv): it is not in the binary cache');
    // Were release.nix to name it, it would be confirmed.
    const named = await tree(edit('pkgs/top-level/release.nix', 'pkgsStatic.stdenv = [', 'pkgsStatic.busybox = ['));
    expect(find(checkNixpkgsPreset(new NixpkgsTree(named), old), 'Hydra builds pkgsStatic.busybox').status).toBe('confirmed');
  });

  it.each([
    ['a compressed arm64 kernel (vfkit needs Image)', edit('lib/systems/platforms.nix', 'target = "Image"', 'target = "Image.gz"'), 'has Image for aarch64-linux', /the aarch64-multiplatform kernel is Image\.gz, not Image/],
    ['modules compressed as nothing the initramfs reads', edit('pkgs/os-specific/linux/kernel/common-config.nix', 'MODULE_COMPRESS_XZ', 'MODULE_COMPRESS_NONE_OF_THESE'), 'kernel modules are compressed', /chooses no MODULE_COMPRESS_/],
    ['virtio_blk switched off', { 'pkgs/os-specific/linux/kernel/common-config.nix': [...NIXPKGS_SHAPED['pkgs/os-specific/linux/kernel/common-config.nix'], '      VIRTIO_BLK = no;'] }, 'virtio_blk (VIRTIO_BLK)', /VIRTIO_BLK is switched off/],
    ['the CA bundle installed elsewhere', edit('pkgs/by-name/ca/cacert/package.nix', '$out/etc/ssl/certs', '$out/share/certs'), 'has etc/ssl/certs/ca-bundle.crt', /has no line matching/],
    ['sshd in sbin', edit('pkgs/tools/networking/openssh/common.nix', '/bin"', '/sbin"'), 'has bin/sshd', /has no line matching/],
    ['an applet the image links switched off', { 'pkgs/os-specific/linux/busybox/default.nix': [...NIXPKGS_SHAPED['pkgs/os-specific/linux/busybox/default.nix'], '    CONFIG_UDHCPC n'] }, 'busybox has every applet', /switched off/],
    ['a dynamically linked sandbox shell', edit('pkgs/os-specific/linux/busybox/sandbox-shell.nix', 'enableStatic = true', 'enableStatic = false'), 'static sandbox shell', /has no line matching enableStatic/],
    ['aarch64-linux no longer a Hydra system', { 'ci/supportedSystems.json': ['[', '  "x86_64-linux"', ']'] }, 'Hydra builds openssh', /lacks aarch64-linux/],
  ])('refutes %s', async (_name, changes, fact, note) => {
    const result = find(checkNixpkgsPreset(new NixpkgsTree(await tree(changes))), fact);
    expect(result.status).toBe('refuted');
    expect(result.note).toMatch(note);
  });

  it('zstd-compressed modules are as good as xz: the initramfs reads both', async () => {
    const zstd = await tree(edit('pkgs/os-specific/linux/kernel/common-config.nix', 'MODULE_COMPRESS_XZ', 'MODULE_COMPRESS_ZSTD'));
    expect(find(checkNixpkgsPreset(new NixpkgsTree(zstd)), 'kernel modules are compressed').status).toBe('confirmed');
  });

  it('a file the tree lacks leaves its facts missing, not confirmed; by-name moves are followed', async () => {
    const results = checkNixpkgsPreset(new NixpkgsTree(await tree({ 'lib/systems/platforms.nix': null })));
    expect(find(results, 'has bzImage').status).toBe('missing');
    expect(find(results, 'has bzImage').note).toBe('needs lib/systems/platforms.nix');
    const moved = await tree({
      'pkgs/os-specific/linux/busybox/default.nix': null,
      'pkgs/by-name/bu/busybox/package.nix': NIXPKGS_SHAPED['pkgs/os-specific/linux/busybox/default.nix'],
    });
    expect(find(checkNixpkgsPreset(new NixpkgsTree(moved)), 'has bin/busybox').evidence[0]).toMatch(/^pkgs\/by-name\/bu\/busybox\/package\.nix:4: /);
  });
});

describe('scripts/check-nixpkgs-preset.ts', () => {
  const script = (...args: string[]) => execa('node', ['--import', 'tsx', 'scripts/check-nixpkgs-preset.ts', ...args], { reject: false });

  it('exits 0 with a summary when nothing is refuted, 1 naming the fact when something is', async () => {
    const ok = await script(await tree(), '--revision', 'test-rev');
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout.split('\n')[0]).toMatch(/^nixpkgs test-rev at /);
    expect(ok.stdout).toMatch(/\n\d+ confirmed, \d+ left to the image build, 0 refuted, 0 missing$/);
    const bad = await script(await tree(edit('lib/systems/platforms.nix', 'target = "Image"', 'target = "Image.gz"')));
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toContain('[NO] linux^out has Image for aarch64-linux');
  });

  it('--json carries the revision, the counts and every result', async () => {
    const run = await script(await tree(), '--json', '--revision', 'abc');
    const out = JSON.parse(run.stdout) as { revision: string; counts: Record<string, number>; results: FactResult[] };
    expect(out.revision).toBe('abc');
    expect(out.counts.refuted).toBe(0);
    expect(out.results).toEqual(checkNixpkgsPreset(new NixpkgsTree(join(work, `tree-${count - 1}`))));
  });

  it('says what it expected of a directory that is not there (66, no stack trace), and has --help', async () => {
    const missing = await script(join(work, 'no-such-nixpkgs'));
    expect(missing.exitCode).toBe(66);
    expect(missing.stderr).toBe(`check-nixpkgs-preset: ${join(work, 'no-such-nixpkgs')}: not a directory (expected a nixpkgs checkout or a directory of its files)`);
    const help = await script('--help');
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toContain('--revision <rev>');
  });
});
