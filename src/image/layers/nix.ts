/**
 * The `nix` layer: store paths from the host's Nix store, with their whole closure, plus the
 * registration the guest loads into its own Nix database.
 *
 * Only the stable `nix-store` commands are used (Nix 2.3 … 2.x all have them, and they need no
 * experimental features):
 *   - closure:       `nix-store --query --requisites PATH…`
 *   - registration:  `nix-store --dump-db PATH…` — the text `nix-store --load-db` reads.
 *
 * `nix-store` talks to whatever store the environment selects: the nix-daemon on a multi-user
 * install (macOS), or the local store directly when run as root on a single-user install (Debian's
 * nix-bin as root). The layer leaves NIX_REMOTE alone so the host's own choice applies.
 *
 * Store contents are walked with lstat (symlinks are never followed) and added under
 * /nix/store/<name>, owned by 0:0 with the store's canonical modes and mtime 1. File bytes stay in
 * the host store until the image is written.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { createExecaRunner, ProcessError, type Runner, type RunResult } from '../../process/runner.js';
import type { Tree } from '../tree.js';
import { LayerError, type Layer } from './layer.js';

/**
 * Where the layer puts the registration in the image. It lives outside /nix on purpose: stage 1
 * mounts the state disk over /nix (only the image's /nix/store is kept, as an overlay lower
 * layer), so anything else under /nix in the image would be hidden by the time stage 2 runs.
 *
 * Stage 2 loads it with `nix-store --load-db < NIX_REGISTRATION_PATH` when the hash in
 * NIX_REGISTRATION_HASH_PATH differs from the one recorded in NIX_REGISTRATION_STAMP_PATH, then
 * writes that hash to the stamp — so each new image is loaded once, and a reboot of the same
 * image costs nothing.
 */
export const NIX_REGISTRATION_PATH = '/usr/share/ferry/nix-registration';
/** The sha256 (lowercase hex, then a newline) of the registration file, beside it in the image. */
export const NIX_REGISTRATION_HASH_PATH = `${NIX_REGISTRATION_PATH}.sha256`;
/** On the state disk (persistent /nix): the hash of the last registration the guest loaded. */
export const NIX_REGISTRATION_STAMP_PATH = '/nix/var/ferry/loaded-registration.sha256';

/**
 * The stage-2 shell snippet (POSIX sh, busybox-friendly) that loads the image's registration once:
 * only when its hash differs from the stamp on the state disk, and the stamp is written only after
 * `--load-db` succeeded, so a failed load is retried at the next boot. Loading paths that are
 * already valid is harmless (Nix updates their records), so an overlapping new image is fine.
 *
 * `nixStore` is the command to run (tests point it at a chroot store); `root` prefixes the
 * image-side and state-side files (empty in the guest).
 */
export function nixRegistrationLoadScript(options: { nixStore?: string; root?: string } = {}): string {
  const nixStore = options.nixStore ?? 'nix-store';
  const root = options.root ?? '';
  const registration = shellQuote(`${root}${NIX_REGISTRATION_PATH}`);
  const hash = shellQuote(`${root}${NIX_REGISTRATION_HASH_PATH}`);
  const stamp = shellQuote(`${root}${NIX_REGISTRATION_STAMP_PATH}`);
  return [
    `if [ -f ${registration} ]; then`,
    `  want=$(cat ${hash})`,
    `  have=$(cat ${stamp} 2>/dev/null || true)`,
    `  if [ "$want" != "$have" ]; then`,
    `    if ${nixStore} --load-db < ${registration}; then`,
    `      mkdir -p "$(dirname ${stamp})"`,
    `      echo "$want" > ${stamp}.tmp && mv ${stamp}.tmp ${stamp}`,
    `    else`,
    `      echo "ferry: loading the Nix registration ${NIX_REGISTRATION_PATH} failed" >&2`,
    `    fi`,
    `  fi`,
    `fi`,
    '',
  ].join('\n');
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** The store directory. Store paths are only meaningful at this exact prefix (they embed it). */
export const NIX_STORE_DIR = '/nix/store';

/**
 * Where to look for one of Nix's programs: on PATH, then where Nix is commonly installed, for
 * hosts whose PATH lacks it (launchd agents, for one).
 */
export function nixProgramCandidates(program: string): string[] {
  return [program, `/nix/var/nix/profiles/default/bin/${program}`, `/run/current-system/sw/bin/${program}`];
}

export interface NixLayerOptions {
  /** Store paths (or paths inside the store, or symlinks to them such as `./result`). */
  paths: string[];
  /** The `nix-store` program; default: `nix-store` on PATH, then the usual install locations. */
  nixStoreBin?: string;
  /** What runs nix-store (default: the real runner). */
  runner?: Runner;
  /** Store paths per `nix-store --dump-db` command line (default 500; smaller only in tests). */
  maxPathsPerCommand?: number;
}

/** What `registration()` returns: the text for `nix-store --load-db` and its sha256 (hex). */
export interface NixRegistration {
  text: string;
  sha256: string;
}

/**
 * Store paths can hold many names per argv; batches keep each command line far below the
 * smallest ARG_MAX in use (256 KiB on older macOS) even for closures of thousands of paths.
 */
const DEFAULT_PATHS_PER_COMMAND = 500;

export class NixLayer implements Layer {
  readonly description: string;
  private readonly paths: string[];
  private readonly explicitBin?: string;
  private readonly runner: Runner;
  private readonly pathsPerCommand: number;
  private closurePromise?: Promise<string[]>;
  private registrationPromise?: Promise<NixRegistration>;
  private resolvedBin?: string;

  constructor(options: NixLayerOptions) {
    this.paths = [...options.paths];
    this.explicitBin = options.nixStoreBin;
    this.runner = options.runner ?? createExecaRunner();
    this.pathsPerCommand = Math.max(1, options.maxPathsPerCommand ?? DEFAULT_PATHS_PER_COMMAND);
    this.description = `nix ${this.paths.join(' ')}`;
    if (this.paths.length === 0) {
      throw new LayerError(this.description, 'no store paths given (expected at least one path in the Nix store)');
    }
  }

  /** The paths this layer was given (its closure is what it puts in an image). */
  get requestedPaths(): readonly string[] {
    return this.paths;
  }

  /**
   * A store path's name starts with a hash of everything it was made from (or of its contents),
   * and on one host a valid path always has the same contents, so the sorted closure names what
   * the layer puts in the image. The version tag changes when the layer's output format does.
   */
  async fingerprint(): Promise<string> {
    const closure = await this.closure();
    return createHash('sha256').update(`ferry-nix-layer-v1\n${closure.join('\n')}\n`).digest('hex');
  }

  /** The closure of the requested paths: every store path they need, sorted. */
  closure(): Promise<string[]> {
    this.closurePromise ??= this.queryClosure();
    return this.closurePromise;
  }

  /** The closure's registration, as `nix-store --dump-db` prints it. */
  registration(): Promise<NixRegistration> {
    this.registrationPromise ??= this.dumpRegistration();
    return this.registrationPromise;
  }

  async apply(tree: Tree): Promise<void> {
    const closure = await this.closure();
    const registration = await this.registration();

    await this.addStorePaths(tree, closure);
    addRegistration(tree, registration, NIX_REGISTRATION_PATH);
  }

  /**
   * Adds `/nix/store` and the given store paths (some of this layer's closure: the store disks
   * write the paths a cached disk lacks) with everything under them, and nothing else.
   */
  async addStorePaths(tree: Tree, storePaths: readonly string[]): Promise<void> {
    const store = { uid: 0, gid: 0, mtime: 1 };
    tree.add('/nix', { kind: 'dir', perm: 0o755, ...store });
    // 1775 + root, as Nix creates its store directory: the sticky bit stops users deleting paths.
    tree.add(NIX_STORE_DIR, { kind: 'dir', perm: 0o1775, ...store });
    const hardLinks = new Map<string, string>();
    for (const storePath of storePaths) this.addStorePath(tree, storePath, hardLinks);
  }

  private async queryClosure(): Promise<string[]> {
    const out = await this.nixStore(['--query', '--requisites', ...this.paths], 'query the closure of');
    const closure = [...new Set(out.split('\n').filter((line) => line !== ''))].sort();
    for (const path of closure) {
      if (!isStorePath(path)) {
        throw new LayerError(
          this.description,
          `nix-store printed ${JSON.stringify(path)}, which is not a path in ${NIX_STORE_DIR}; ` +
            'ferry only supports stores at /nix/store',
        );
      }
    }
    return closure;
  }

  private async dumpRegistration(): Promise<NixRegistration> {
    const closure = await this.closure();
    // --dump-db prints one self-contained record per path, so batches simply concatenate.
    let text = '';
    for (let i = 0; i < closure.length; i += this.pathsPerCommand) {
      text += await this.nixStore(['--dump-db', ...closure.slice(i, i + this.pathsPerCommand)], 'dump the registration of');
    }
    return { text, sha256: createHash('sha256').update(text).digest('hex') };
  }

  /** Runs nix-store; a failure becomes a LayerError that quotes the command's error (ProcessError, its cause). */
  private async nixStore(args: string[], what: string): Promise<string> {
    const { bin, result } = await this.run(args);
    if (result.exitCode !== 0) {
      const failure = new ProcessError(bin, args, result);
      throw new LayerError(
        this.description,
        `nix-store could not ${what} ${this.paths.map((p) => JSON.stringify(p)).join(', ')}: ${failure.message}\n` +
          'Each path must be a valid path in the host\'s Nix store (build or fetch it first, e.g. `nix build`, `nix-store --realise`).',
        { cause: failure },
      );
    }
    return result.stdout;
  }

  /** The first nix-store that can be started (then always that one) runs `args`; its output is kept exact. */
  private async run(args: string[]): Promise<{ bin: string; result: RunResult }> {
    const candidates = this.resolvedBin ? [this.resolvedBin] : this.explicitBin ? [this.explicitBin] : nixProgramCandidates('nix-store');
    for (const bin of candidates) {
      const result = await this.runner.run(bin, args, { stripFinalNewline: false });
      if (result.errorCode === 'ENOENT' || result.errorCode === 'EACCES') continue;
      this.resolvedBin = bin;
      return { bin, result };
    }
    throw new LayerError(
      this.description,
      `cannot run nix-store (tried ${candidates.map((c) => JSON.stringify(c)).join(', ')}): not found.\n` +
        'Hint: install Nix (https://nixos.org/download), or set the layer\'s nix-store program to its full path, ' +
        'e.g. /nix/var/nix/profiles/default/bin/nix-store.',
    );
  }

  /**
   * Adds one store path and everything under it. Entries are added in byte order of their names
   * so the same store gives the same tree (and image) whatever order the host's readdir uses.
   * Files that share an inode on the host (an optimised store) share one in the image too.
   */
  private addStorePath(tree: Tree, storePath: string, hardLinks: Map<string, string>): void {
    this.addEntry(tree, storePath, this.lstatOrFail(storePath), hardLinks);
  }

  /**
   * Synchronous fs calls on purpose, as the dir layer's: for the tens of thousands of lstat calls
   * of a large closure they are several times faster than the promise API (0.4 s of a 1 GiB
   * closure's 2.7 s build went to the promise walk).
   */
  private addEntry(tree: Tree, hostPath: string, stats: Stats, hardLinks: Map<string, string>): void {
    // The image path is the host path: store paths embed /nix/store, so they cannot move.
    const path = hostPath;
    const owner = { uid: 0, gid: 0, mtime: 1 };
    if (stats.isDirectory()) {
      tree.add(path, { kind: 'dir', perm: 0o555, ...owner });
      for (const name of this.readdirOrFail(hostPath).sort(compareBytes)) {
        const child = `${hostPath}/${name}`;
        this.addEntry(tree, child, this.lstatOrFail(child), hardLinks);
      }
    } else if (stats.isSymbolicLink()) {
      tree.add(path, { kind: 'symlink', perm: 0o777, ...owner, target: readlinkSync(hostPath) });
    } else if (stats.isFile()) {
      const key = `${stats.dev}:${stats.ino}`;
      const first = stats.nlink > 1 ? hardLinks.get(key) : undefined;
      if (first !== undefined) {
        tree.link(path, first);
        return;
      }
      // A NAR records only "executable or not", so those are the only two modes a store file has.
      const perm = stats.mode & 0o100 ? 0o555 : 0o444;
      tree.add(path, {
        kind: 'file',
        perm,
        ...owner,
        size: stats.size,
        content: stats.size === 0 ? { kind: 'empty' } : { kind: 'file', path: hostPath, offset: 0, length: stats.size },
      });
      if (stats.nlink > 1) hardLinks.set(key, path);
    } else {
      throw new LayerError(
        this.description,
        `${hostPath} is neither a file, a directory nor a symlink; a Nix store holds only those`,
      );
    }
  }

  private lstatOrFail(path: string): Stats {
    try {
      return lstatSync(path);
    } catch (error) {
      throw new LayerError(this.description, `cannot read ${path} from the host's Nix store: ${(error as Error).message}`, { cause: error });
    }
  }

  private readdirOrFail(path: string): string[] {
    try {
      return readdirSync(path);
    } catch (error) {
      throw new LayerError(this.description, `cannot list ${path} in the host's Nix store: ${(error as Error).message}`, { cause: error });
    }
  }
}

/** Adds the registration at `path` and its sha256 at `path.sha256` (read-only, root's, mtime 1). */
export function addRegistration(tree: Tree, registration: NixRegistration, path: string): void {
  const meta = { uid: 0, gid: 0, mtime: 1 };
  const text = Buffer.from(registration.text);
  tree.add(path, { kind: 'file', perm: 0o444, ...meta, size: text.length, content: { kind: 'bytes', data: text } }, meta);
  const hash = Buffer.from(`${registration.sha256}\n`);
  tree.add(`${path}.sha256`, { kind: 'file', perm: 0o444, ...meta, size: hash.length, content: { kind: 'bytes', data: hash } }, meta);
}

/**
 * Each path's NAR size, read from a registration: `--dump-db` prints per path its name, NAR
 * hash, NAR size, deriver, the number of references and the references, one a line.
 */
export function registrationNarSizes(text: string): Map<string, number> {
  const lines = text.split('\n');
  const sizes = new Map<string, number>();
  for (let i = 0; i + 4 < lines.length && lines[i] !== ''; ) {
    sizes.set(lines[i], Number(lines[i + 2]));
    i += 5 + Number(lines[i + 4]);
  }
  return sizes;
}

/** `/nix/store/<name>` with nothing below it. */
function isStorePath(path: string): boolean {
  return path.startsWith(`${NIX_STORE_DIR}/`) && !path.slice(NIX_STORE_DIR.length + 1).includes('/') && path.length > NIX_STORE_DIR.length + 1;
}

function compareBytes(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}
