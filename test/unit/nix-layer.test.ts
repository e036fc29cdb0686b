/**
 * The nix layer against the host's real Nix store (Debian's nix-bin, local store as root):
 * closures, modes and symlinks as in the store, the registration, and the proof that matters —
 * a fresh store built from the layer's files plus its registration passes `nix-store --verify-path`.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerError } from '../../src/image/layers/layer.js';
import {
  NIX_REGISTRATION_HASH_PATH,
  NIX_REGISTRATION_PATH,
  NIX_REGISTRATION_STAMP_PATH,
  NixLayer,
  nixRegistrationLoadScript,
} from '../../src/image/layers/nix.js';
import { createExecaRunner, ProcessError, type Runner } from '../../src/process/runner.js';
import { Tree, type Inode } from '../../src/image/tree.js';
import {
  addTextToStore,
  buildSmallClosure,
  materializeTree,
  nixStore,
  removeTree,
  requisites,
  type SmallClosure,
} from '../support/nix.js';

const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ext4WriterPath = join(repoRoot, 'src/image/ext4/index.ts');

let closure: SmallClosure;
let text: string;
const scratch: string[] = [];

async function scratchDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-nix-layer-'));
  scratch.push(dir);
  return dir;
}

beforeAll(async () => {
  closure = await buildSmallClosure('nix-layer-test');
  text = await addTextToStore('ferry-nix-layer-note.txt', 'a path with no references\n');
});

afterAll(async () => {
  for (const dir of scratch) await removeTree(dir);
});

/** `find`'s view of a store path: type, mode, size (files), target (symlinks), relative path. */
async function hostListing(storePath: string): Promise<string[]> {
  const { stdout } = await execa('find', [storePath, '-printf', '%y %m %s|%l|%P\n']);
  return stdout
    .split('\n')
    .map((line) => {
      const [head, target, rel] = line.split('|');
      const [type, mode, size] = head.split(' ');
      return type === 'f' ? `f ${mode} ${size} ${rel}` : type === 'l' ? `l ${mode} ${target} ${rel}` : `${type} ${mode} ${rel}`;
    })
    .sort();
}

/** The same listing from the tree, with the checks on owner, mtime and file content. */
function treeListing(tree: Tree, storePath: string): string[] {
  const lines: string[] = [];
  for (const { path, node } of tree.walk()) {
    if (path !== storePath && !path.startsWith(`${storePath}/`)) continue;
    const rel = path.slice(storePath.length + 1);
    expect([node.uid, node.gid, node.mtime], path).toEqual([0, 0, 1]);
    const mode = node.perm.toString(8);
    if (node.kind === 'file') {
      expect(node.content, path).toEqual(node.size === 0 ? { kind: 'empty' } : { kind: 'file', path, offset: 0, length: node.size });
      lines.push(`f ${mode} ${node.size} ${rel}`);
    } else if (node.kind === 'symlink') lines.push(`l ${mode} ${node.target} ${rel}`);
    else if (node.kind === 'dir') lines.push(`d ${mode} ${rel}`);
    else lines.push(`? ${node.kind} ${rel}`);
  }
  return lines.sort();
}

function storeNames(tree: Tree): string[] {
  return [...(tree.lookup('/nix/store')?.children?.keys() ?? [])].map((name) => `/nix/store/${name}`).sort();
}

function fileBytes(node: Inode | undefined): Buffer {
  if (node?.content.kind !== 'bytes') throw new Error('expected a generated file');
  return node.content.data;
}

describe('NixLayer', () => {
  it('puts the whole closure of the requested paths into /nix/store, and nothing else', async () => {
    const layer = new NixLayer({ paths: [closure.top, text] });
    const tree = new Tree();
    await layer.apply(tree);

    const expected = await requisites([closure.top, text]);
    expect(expected).toEqual([closure.leaf, closure.lib, closure.top, text].sort());
    expect(await layer.closure()).toEqual(expected);
    expect(storeNames(tree)).toEqual(expected);
    expect(tree.lookup('/nix/store')).toMatchObject({ kind: 'dir', perm: 0o1775, uid: 0, gid: 0 });
  });

  it('copies each store path entry by entry as the store has it: modes, sizes, symlinks', async () => {
    const tree = new Tree();
    await new NixLayer({ paths: [closure.top] }).apply(tree);

    for (const path of [closure.top, closure.lib, closure.leaf]) {
      expect(treeListing(tree, path)).toEqual(await hostListing(path));
    }
    // Spot checks, so the comparison above cannot pass by both sides being empty.
    expect(tree.lookup(`${closure.top}/bin/hello`)).toMatchObject({ kind: 'file', perm: 0o555 });
    expect(tree.lookup(`${closure.top}/share/plain`)).toMatchObject({ kind: 'file', perm: 0o444, size: 6 });
    expect(tree.lookup(`${closure.top}/share/empty`)).toMatchObject({ kind: 'file', size: 0, content: { kind: 'empty' } });
    expect(tree.lookup(`${closure.top}/bin/hello-again`)).toMatchObject({ kind: 'symlink', target: 'hello' });
    expect(tree.lookup(`${closure.top}/share/leaf`)).toMatchObject({ kind: 'symlink', target: closure.leaf });
    expect(tree.lookup(`${closure.top}/share/deep/deeper`)).toMatchObject({ kind: 'dir', perm: 0o555 });
    expect(tree.lookup(closure.leaf)).toMatchObject({ kind: 'file', perm: 0o444 });
  });

  it('writes the registration exactly as `nix-store --dump-db` prints it, with its hash beside it', async () => {
    const layer = new NixLayer({ paths: [closure.top] });
    const tree = new Tree();
    await layer.apply(tree);

    const expected = `${await nixStore(['--dump-db', ...(await requisites([closure.top]))])}\n`;
    const registration = fileBytes(tree.lookup(NIX_REGISTRATION_PATH)).toString();
    expect(registration).toBe(expected);
    expect(registration).toContain(`${closure.top}\n`);
    const sha256 = createHash('sha256').update(expected).digest('hex');
    expect((await layer.registration()).sha256).toBe(sha256);
    expect(fileBytes(tree.lookup(NIX_REGISTRATION_HASH_PATH)).toString()).toBe(`${sha256}\n`);
    expect(tree.lookup(NIX_REGISTRATION_PATH)).toMatchObject({ perm: 0o444, uid: 0, gid: 0 });
  });

  it('splits --dump-db over several command lines for big closures, with the same text', async () => {
    const calls: string[][] = [];
    const real = createExecaRunner();
    const runner: Runner = {
      ...real,
      run: (file, args, options) => {
        calls.push([...args]);
        return real.run(file, args, options);
      },
    };
    const whole = await new NixLayer({ paths: [closure.top, text] }).registration();
    const batched = await new NixLayer({ paths: [closure.top, text], runner, maxPathsPerCommand: 3 }).registration();
    expect(batched.text).toBe(whole.text);
    expect(calls.filter((args) => args[0] === '--dump-db').map((args) => args.length - 1)).toEqual([3, 1]);
  });

  it('yields a store that Nix itself accepts: the stage-2 load script once, then --verify-path for every path', async () => {
    const layer = new NixLayer({ paths: [closure.top, text] });
    const tree = new Tree();
    await layer.apply(tree);
    const root = await scratchDir();
    const storeRoot = join(root, 'store-root');
    await extract(tree, storeRoot);

    const store = `local?root=${storeRoot}`;
    // Load it the way stage 2 does, through a nix-store wrapper that counts the loads.
    const log = join(root, 'loads');
    const wrapper = join(root, 'nix-store-wrapper');
    await writeFile(wrapper, `#!/bin/sh\necho "$*" >> '${log}'\nexec nix-store --store '${store}' "$@"\n`, { mode: 0o755 });
    const script = nixRegistrationLoadScript({ nixStore: wrapper, root: storeRoot });
    await execa('sh', ['-ec', script]);
    await execa('sh', ['-ec', script]); // the same image again: nothing to load
    expect(await readFile(log, 'utf8')).toBe('--load-db\n');
    expect(await readFile(join(storeRoot, NIX_REGISTRATION_STAMP_PATH), 'utf8')).toBe(`${(await layer.registration()).sha256}\n`);
    const paths = await layer.closure();
    for (const path of paths) {
      await nixStore(['--store', store, '--verify-path', path]);
      expect(await nixStore(['--store', store, '--query', '--references', path])).toBe(
        await nixStore(['--query', '--references', path]),
      );
    }
    expect((await nixStore(['--store', store, '--query', '--requisites', closure.top])).split('\n').sort()).toEqual(
      await requisites([closure.top]),
    );

    // The check can fail: alter one byte of a copied file and Nix must notice.
    const altered = join(storeRoot, closure.top, 'share/plain');
    await chmod(dirname(altered), 0o755);
    await chmod(altered, 0o644);
    await writeFile(altered, 'PLAIN\n');
    const verify = await execa('nix-store', ['--store', store, '--verify-path', closure.top], { reject: false });
    expect(verify.exitCode).toBe(1);
    expect(verify.stderr).toContain('was modified');
  });

  it('fingerprints by the closure: stable, independent of argument order and spelling, and changes with the paths', async () => {
    const a = await new NixLayer({ paths: [closure.top, text] }).fingerprint();
    const b = await new NixLayer({ paths: [text, `${closure.top}/bin/hello`] }).fingerprint();
    const c = await new NixLayer({ paths: [closure.top] }).fingerprint();
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(b).toBe(a);
    expect(c).not.toBe(a);
  });

  it('names a path that is not valid in the store, with nix-store\'s own words', async () => {
    const bogus = '/nix/store/00000000000000000000000000000000-ferry-not-there';
    const layer = new NixLayer({ paths: [closure.top, bogus] });
    const error = await layer.apply(new Tree()).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as Error).message).toContain(bogus);
    expect((error as Error).message).toContain(`path '${bogus}' is not valid`);

    const outside = await new NixLayer({ paths: ['/etc/hostname'] }).fingerprint().catch((e: unknown) => e);
    expect(outside).toBeInstanceOf(LayerError);
    expect((outside as Error).message).toContain("path '/etc/hostname' is not in the Nix store");
  });

  it('says how to fix a missing nix-store', async () => {
    const layer = new NixLayer({ paths: [closure.top], nixStoreBin: '/nonexistent/bin/nix-store' });
    const error = await layer.fingerprint().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as Error).message).toContain('/nonexistent/bin/nix-store');
    expect((error as Error).message).toMatch(/Hint: install Nix/);
  });

  it('quotes what nix-store said about a path that is not in the store, with the command as the cause', async () => {
    const bogus = '/nix/store/00000000000000000000000000000000-ferry-not-there';
    const error = await new NixLayer({ paths: [bogus] }).fingerprint().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LayerError);
    expect((error as Error).message).toMatch(/nix-store could not query the closure of ".*ferry-not-there": nix-store exited with code 1: error: .*ferry-not-there/);
    const cause = (error as Error).cause as ProcessError;
    expect(cause).toBeInstanceOf(ProcessError);
    expect(cause.args).toEqual(['--query', '--requisites', bogus]);
    expect(cause.status.code).toBe(1);
  });

  it('refuses an empty path list', () => {
    expect(() => new NixLayer({ paths: [] })).toThrow(LayerError);
  });
});

/**
 * Gets the layer's files back onto the host through a real ext4 image: written by writeExt4 once
 * the ext4 writer exists (until then by `mke2fs -d` from the tree written to a directory), then
 * read back with `debugfs rdump`, so the check covers what the guest will actually see.
 */
async function extract(tree: Tree, storeRoot: string): Promise<void> {
  const work = dirname(storeRoot);
  const image = join(work, 'image.ext4');
  if (existsSync(ext4WriterPath)) {
    const { writeExt4 } = (await import(ext4WriterPath)) as {
      writeExt4: (tree: Tree, output: string) => Promise<unknown>;
    };
    await writeExt4(tree, image);
  } else {
    const staged = join(work, 'staged');
    await mkdir(staged);
    await materializeTree(tree, staged);
    await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', staged, image, '64M']);
  }
  await execa('e2fsck', ['-fn', image]);
  await mkdir(storeRoot);
  await execa('debugfs', ['-R', `rdump /nix ${storeRoot}`, image]);
  // The registration and its hash go where the guest sees them, below the same root.
  await mkdir(join(storeRoot, dirname(NIX_REGISTRATION_PATH)), { recursive: true });
  for (const file of [NIX_REGISTRATION_PATH, NIX_REGISTRATION_HASH_PATH]) {
    await execa('debugfs', ['-R', `dump ${file} ${join(storeRoot, file)}`, image]);
    if (!existsSync(join(storeRoot, file))) throw new Error(`debugfs dump left no ${file}`);
  }
  if (!existsSync(join(storeRoot, 'nix/store'))) throw new Error(`debugfs rdump left no nix/store in ${storeRoot}`);
}
