/**
 * The nix-darwin module check (scripts/eval-darwin-module.ts, test/e2e/darwin-module.test.ts):
 * nix/darwin-module.nix evaluated by nix-darwin's real module system with nixpkgs' real lib
 * (test/support/darwin-eval.nix, with a stand-in package set it names), by Debian trixie's Nix
 * 2.26 in its own rootfs (trixie-nix.ts), and compared with what the real `ferry install` writes
 * for the same settings and home under --root, run in that same rootfs with the same node and
 * cli.js, so both sides' paths are the same strings.
 *
 * The sources are the revisions recorded in darwin-eval-sources.json, found (in this order) as a
 * tree named by FERRY_NIX_DARWIN_SRC / FERRY_NIXPKGS_LIB_SRC, a tree cached under
 * ~/.cache/ferry-test/nix-sources/, or a git repository holding the revision (FERRY_NIX_DARWIN_GIT /
 * FERRY_NIXPKGS_LIB_GIT, or the mirrors under /work/.mirror), exported into that cache.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import plist from 'plist';
import { fixtureCacheRoot } from './fixtures.js';
import { trixieNixRoot } from './trixie-nix.js';

const CHECKOUT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const SOURCES_FILE = path.join(CHECKOUT, 'test/support/darwin-eval-sources.json');
const EXPRESSION = path.join(CHECKOUT, 'test/support/darwin-eval.nix');
const FLAKE_EXPRESSION = path.join(CHECKOUT, 'test/support/flake-eval.nix');

interface SourcePin {
  repository: string;
  rev: string;
  date: string;
  env: string;
}
type SourceName = 'nix-darwin' | 'nixpkgs.lib';
const GIT_FALLBACK: Record<SourceName, { env: string; mirror: string }> = {
  'nix-darwin': { env: 'FERRY_NIX_DARWIN_GIT', mirror: '/work/.mirror/nix-darwin+nix-darwin/repo' },
  'nixpkgs.lib': { env: 'FERRY_NIXPKGS_LIB_GIT', mirror: '/work/.mirror/nix-community+nixpkgs.lib/repo' },
};

export function sourcePins(): Record<SourceName, SourcePin> {
  return JSON.parse(readFileSync(SOURCES_FILE, 'utf8')) as Record<SourceName, SourcePin>;
}

export type Sources = { ok: true; trees: Record<SourceName, string>; pins: Record<SourceName, SourcePin> } | { ok: false; missing: string };

/** The pinned source trees, or why they cannot be had here (no network is ever used). */
export async function findSources(env: NodeJS.ProcessEnv = process.env): Promise<Sources> {
  const pins = sourcePins();
  const trees = {} as Record<SourceName, string>;
  for (const name of Object.keys(pins) as SourceName[]) {
    const tree = await sourceTree(name, pins[name], env);
    if (!tree) {
      return {
        ok: false,
        missing: `${name} ${pins[name].rev} is not here: set ${pins[name].env} to a checkout of ${pins[name].repository} at that revision, or ${GIT_FALLBACK[name].env} to a clone holding it`,
      };
    }
    trees[name] = tree;
  }
  return { ok: true, trees, pins };
}

async function sourceTree(name: SourceName, pin: SourcePin, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  const named = env[pin.env];
  if (named) return path.resolve(named);
  const cached = path.join(fixtureCacheRoot(), 'nix-sources', `${name}-${pin.rev}`);
  if (existsSync(cached)) return cached;
  const gitDir = env[GIT_FALLBACK[name].env] ?? GIT_FALLBACK[name].mirror;
  if (!existsSync(gitDir)) return undefined;
  const has = await execa('git', ['--git-dir', gitDir, 'cat-file', '-e', `${pin.rev}^{commit}`], { reject: false });
  if (has.exitCode !== 0) return undefined;
  const staging = `${cached}.staging-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  await execa('sh', ['-c', 'git --git-dir="$1" archive "$2" | tar -x -C "$3"', 'sh', gitDir, pin.rev, staging]);
  await rename(staging, cached);
  return cached;
}

/** Mounts /proc, /dev and each bind (host path → same or given path inside), then chroots to run the command. */
const CHROOT_SCRIPT = `set -e
root=$1; shift
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mkdir -p "$root$2"; else mkdir -p "$(dirname "$root$2")"; [ -e "$root$2" ] || : > "$root$2"; fi
  mount --bind "$1" "$root$2"
  shift 2
done
shift
exec chroot "$root" "$@"`;

/** Nix without build users or sandbox (the chroot is the only user), and no binary cache: nothing is fetched. */
const NIX_CONFIG = ['build-users-group =', 'sandbox = false', 'substituters =', 'experimental-features = nix-command'].join('\n');

export class TrixieNix {
  private constructor(
    readonly root: string,
    private readonly binds: string[],
  ) {}

  static async open(trees: Record<SourceName, string>): Promise<TrixieNix> {
    const root = await trixieNixRoot();
    const node = process.execPath;
    const binds = [trees['nix-darwin'], '/src/nix-darwin', trees['nixpkgs.lib'], '/src/nixpkgs-lib', CHECKOUT, CHECKOUT, node, node];
    // A worktree's node_modules may be a link to another checkout's: that one is needed at its own path.
    const modules = realpathSync(path.join(CHECKOUT, 'node_modules'));
    if (!modules.startsWith(CHECKOUT + path.sep)) binds.push(modules, modules);
    return new TrixieNix(root, binds);
  }

  /** Runs argv in the rootfs, in a private mount and pid namespace, with only `env` set. */
  async run(argv: string[], env: Record<string, string> = {}): Promise<string> {
    const vars = Object.entries({ PATH: '/usr/bin:/bin', NIX_CONFIG, ...env }).map(([k, v]) => `${k}=${v}`);
    const result = await execa('unshare', ['--mount', '--pid', '--fork', 'sh', '-c', CHROOT_SCRIPT, 'sh', this.root, ...this.binds, '--', '/usr/bin/env', '-i', ...vars, ...argv], { reject: false });
    if (result.exitCode !== 0) throw new Error(`${argv.join(' ')} (in ${this.root}) exited ${result.exitCode}:\n${result.stderr}`);
    return result.stdout;
  }

  /** A path inside the rootfs, as the host sees it. */
  hostPath(inside: string): string {
    return path.join(this.root, inside);
  }
}

/** What the module's typed settings are set to in the check: none of them ferry's defaults. */
export const CHECK_SETTINGS = {
  system: 'x86_64-linux',
  cpus: 2,
  memory: '2GiB',
  stateDiskSize: '8GiB',
  extraSystems: ['i686-linux'],
  interpreter: 'none',
  maxJobs: 3,
  features: ['big-parallel'],
  idleTimeout: '10m',
  port: 31400,
};
/** The install's --root inside the rootfs, and the primary user's home in it (user paths follow HOME). */
const INSTALL_ROOT = '/tmp/ferry-darwin-eval';
const HOME = `${INSTALL_ROOT}/Users/alice`;

interface FileRef {
  path: string;
  drvs: string[];
}
export interface ModuleEval {
  nixDarwinRelease: string;
  libRelease: string;
  failedAssertions: string[];
  userLaunchAgents: Record<string, FileRef>;
  launchDaemons: Record<string, FileRef>;
  sshAlias: FileRef | null;
  machinesFile: string | null;
  buildMachines: Array<Record<string, unknown>>;
  distributedBuilds: boolean;
  buildersUseSubstitutes: boolean | null;
  ferryConfig: string | null;
  activation: string;
}

export async function evaluateModule(nix: TrixieNix, enable: boolean, nixEnable = true): Promise<ModuleEval> {
  const args = ['--arg', 'enable', String(enable), '--arg', 'nixEnable', String(nixEnable), '--argstr', 'home', HOME, '--argstr', 'node', process.execPath];
  for (const [name, at] of [['nixDarwin', '/src/nix-darwin'], ['nixpkgsLib', '/src/nixpkgs-lib'], ['ferrySrc', CHECKOUT]]) args.push('--argstr', name, at);
  args.push('--arg', 'ferrySettings', `builtins.fromJSON ${JSON.stringify(JSON.stringify(CHECK_SETTINGS))}`);
  // --read-write-mode: the derivations are written to the store, so they can be built after.
  return JSON.parse(await nix.run(['nix-instantiate', '--eval', '--strict', '--json', '--read-write-mode', EXPRESSION, ...args])) as ModuleEval;
}

/** Builds a file's derivation in the rootfs (the stand-in ferry runs `ferry service-files`) and reads it. */
export async function buildFile(nix: TrixieNix, file: FileRef): Promise<string> {
  await nix.run(['nix-store', '--realise', ...file.drvs]);
  return readFile(nix.hostPath(file.path), 'utf8');
}

/** What the real `ferry install --root` writes for the module's ferry.toml and the same home, on a Mac's layout. */
export async function installReference(nix: TrixieNix, configFile: string): Promise<{ plist: string; sshAlias: string; machines: string; nixConf: string }> {
  await rm(nix.hostPath(INSTALL_ROOT), { recursive: true, force: true });
  await mkdir(nix.hostPath(HOME), { recursive: true });
  await nix.run([process.execPath, path.join(CHECKOUT, 'dist/cli.js'), 'install', '--root', INSTALL_ROOT, '--no-build', '--yes'], {
    HOME,
    FERRY_PLATFORM: 'darwin',
    FERRY_CONFIG: configFile,
  });
  const read = (inside: string) => readFile(nix.hostPath(inside), 'utf8');
  return {
    plist: await read(`${HOME}/Library/LaunchAgents/dev.ferry.daemon.plist`),
    sshAlias: await read(`${INSTALL_ROOT}/etc/ssh/ssh_config.d/ferry.conf`),
    machines: await read(`${INSTALL_ROOT}/etc/nix/machines`),
    nixConf: await read(`${INSTALL_ROOT}/etc/nix/nix.conf`),
  };
}

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

const same = (name: string, got: unknown, expected: unknown): Check => {
  const ok = JSON.stringify(got) === JSON.stringify(expected);
  return { name, ok, detail: ok ? JSON.stringify(got).slice(0, 160) : `got ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}` };
};

/** The machines line's fields but the last (install's has the base64 host key; the module pins it through the alias instead). */
const machineFields = (text: string, marker = 'ssh-ng://ferry-builder ') => text.split('\n').find((line) => line.startsWith(marker))?.split(' ').slice(0, 7) ?? [];

/** Every check, enabled and disabled, each naming what it compared; and the sources' releases. */
export async function checkModule(nix: TrixieNix): Promise<{ checks: Check[]; releases: Record<SourceName, string> }> {
  const checks: Check[] = [];
  const on = await evaluateModule(nix, true);
  checks.push(same('enabled: no failed nix-darwin assertions', on.failedAssertions, []));
  const agent = on.userLaunchAgents['dev.ferry.daemon.plist'];
  checks.push(same('enabled: one LaunchAgent, dev.ferry.daemon.plist', Object.keys(on.userLaunchAgents), ['dev.ferry.daemon.plist']));
  const releases = { 'nix-darwin': on.nixDarwinRelease, 'nixpkgs.lib': on.libRelease };
  if (!agent || !on.sshAlias || !on.ferryConfig) return { checks: [...checks, { name: 'enabled: agent, alias and FERRY_CONFIG defined', ok: false, detail: JSON.stringify(on) }], releases };
  // Built first: the build makes the module's ferry.toml, which install then finds and keeps.
  const plistText = await buildFile(nix, agent);
  const aliasText = await buildFile(nix, on.sshAlias);
  const expected = await installReference(nix, on.ferryConfig);
  const ours = plist.parse(plistText) as Record<string, unknown>;
  const theirs = plist.parse(expected.plist) as Record<string, unknown>;
  checks.push(same('enabled: ProgramArguments = ferry install’s', ours.ProgramArguments, theirs.ProgramArguments));
  checks.push(same('enabled: EnvironmentVariables = ferry install’s', ours.EnvironmentVariables, theirs.EnvironmentVariables));
  checks.push({ name: 'enabled: the whole plist = ferry install’s, byte for byte', ok: plistText === expected.plist, detail: `${plistText.length} bytes` });
  checks.push(same('enabled: ssh alias in environment.etc = ferry install’s /etc/ssh/ssh_config.d/ferry.conf', aliasText, expected.sshAlias));
  checks.push(
    same('enabled: nix.buildMachines', on.buildMachines, [
      {
        hostName: 'ferry-builder',
        mandatoryFeatures: [],
        maxJobs: CHECK_SETTINGS.maxJobs,
        protocol: 'ssh-ng',
        publicHostKey: null,
        speedFactor: 1,
        sshKey: machineFields(expected.machines)[2], // the key install names
        sshUser: null,
        supportedFeatures: CHECK_SETTINGS.features,
        system: null,
        systems: [CHECK_SETTINGS.system, ...CHECK_SETTINGS.extraSystems],
      },
    ]),
  );
  checks.push(same('enabled: nix-darwin’s /etc/nix/machines line = ferry install’s (all fields but the host key)', machineFields(on.machinesFile ?? ''), machineFields(expected.machines)));
  checks.push(same('enabled: nix.distributedBuilds', on.distributedBuilds, true));
  // launchd makes no directory for StandardOutPath: the activation makes the agent's own, as its user.
  checks.push(
    same('enabled: activation makes the plist’s StandardOutPath directory as the user', on.activation.trim(), `sudo --user=alice -- mkdir -p "$(dirname "$(/usr/libexec/PlistBuddy -c 'Print :StandardOutPath' ${agent.path})")"`),
  );
  checks.push(same('enabled: nix.settings.builders-use-substitutes (install writes it too)', [on.buildersUseSubstitutes, expected.nixConf.includes('builders-use-substitutes = true')], [true, true]));

  const unmanaged = await evaluateModule(nix, true, false);
  checks.push(same('enabled with nix.enable off: refused by an assertion naming ferry install', unmanaged.failedAssertions.some((m) => m.startsWith('services.ferry: nix.enable is off') && m.includes('`ferry install`')), true));

  const off = await evaluateModule(nix, false);
  checks.push(
    same(
      'disabled: no agent, daemon, alias, machines, distributed builds, substitutes setting, FERRY_CONFIG or activation',
      [off.userLaunchAgents, off.launchDaemons, off.sshAlias, off.machinesFile, off.buildMachines, off.distributedBuilds, off.buildersUseSubstitutes, off.ferryConfig, off.activation],
      [{}, {}, null, null, [], false, null, null, ''],
    ),
  );
  return { checks, releases };
}

interface FlakeSystem {
  default: string;
  nodejs: string;
  npmConfigHook: string;
  lockPackages: number;
  src: string[];
  app: { type: string; program: string };
  unit: { doCheck: boolean; checkPhase: string; __darwinAllowLocalNetworking: boolean; src: string[] };
  shell: string[];
}
interface FlakeEval {
  outputs: string[];
  systems: Record<string, FlakeSystem>;
  darwinModule: boolean;
  overlay: string[];
}

/** flake.nix's outputs with nixpkgs' real lib and the stand-ins test/support/flake-eval.nix names: their shape on all four systems. */
export async function checkFlake(nix: TrixieNix): Promise<Check[]> {
  const flake = JSON.parse(
    await nix.run(['nix-instantiate', '--eval', '--strict', '--json', '--read-write-mode', FLAKE_EXPRESSION, '--argstr', 'nixpkgsLib', '/src/nixpkgs-lib', '--argstr', 'ferrySrc', CHECKOUT]),
  ) as FlakeEval;
  const pkg = JSON.parse(readFileSync(path.join(CHECKOUT, 'package.json'), 'utf8')) as { name: string; version: string };
  const lock = JSON.parse(readFileSync(path.join(CHECKOUT, 'package-lock.json'), 'utf8')) as { packages: Record<string, unknown> };
  const checks: Check[] = [
    same('flake: outputs', flake.outputs, ['apps', 'checks', 'darwinModules', 'devShells', 'overlays', 'packages']),
    same('flake: systems', Object.keys(flake.systems), ['aarch64-darwin', 'aarch64-linux', 'x86_64-darwin', 'x86_64-linux']),
    same('flake: darwinModules.default is a module, overlays.default adds ferry', [flake.darwinModule, flake.overlay], [true, ['ferry']]),
  ];
  for (const [system, out] of Object.entries(flake.systems)) {
    const tests = /npx vitest run (.*)\n/.exec(out.unit.checkPhase)?.[1].split(' ') ?? [];
    checks.push(
      same(`flake ${system}: package ${pkg.name}-${pkg.version} on nodejs_22 from importNpmLock (every lock entry), built from src, bin, launchd only`, [out.default, out.nodejs, out.npmConfigHook, out.lockPackages, out.src], [`${pkg.name}-${pkg.version}`, 'nodejs_22', 'importNpmLock.npmConfigHook', Object.keys(lock.packages).length, ['bin', 'launchd', 'package-lock.json', 'package.json', 'src', 'tsconfig.json']]),
      same(`flake ${system}: apps.default runs bin/ferry`, [out.app.type, out.app.program.endsWith('/bin/ferry')], ['app', true]),
      same(`flake ${system}: checks.unit runs unit-test files that exist, with the tests in its source`, [out.unit.doCheck, tests.length > 0 && tests.every((t) => t.startsWith('test/unit/') && existsSync(path.join(CHECKOUT, t))), out.unit.src.includes('test')], [true, true, true]),
      same(`flake ${system}: devShell has node 22 and the test tools`, out.shell.slice(0, 5), ['nodejs_22', 'e2fsprogs', 'openssh', 'qemu', 'nix']),
    );
  }
  return checks;
}
