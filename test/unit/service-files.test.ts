/**
 * `ferry service-files` (what the nix-darwin module's build runs) against `ferry install` under a
 * --root for the same config and home: the same plist and alias bytes, and the machines entry the
 * module is checked against; a missing config is refused with its name, nothing written.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExitCode, FerryError } from '../../src/errors.js';
import { install } from '../../src/install/install.js';
import { writeServiceFiles } from '../../src/install/service-files.js';
import { RecordingRunner } from '../../src/process/runner.js';

let root: string;
let home: string;
let config: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(tmpdir(), 'ferry-service-files-'));
  home = path.join(root, 'Users/alice');
  mkdirSync(home, { recursive: true });
  config = path.join(root, 'ferry.toml');
  writeFileSync(config, '[guest]\nsystem = "x86_64-linux"\ncpus = 2\nextra-systems = ["i686-linux"]\n\n[guest.nix]\nmax-jobs = 3\n\n[daemon]\nport = 31400\n');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('ferry service-files', () => {
  it('writes the plist and alias ferry install writes for the same config and home, and the machines entry', async () => {
    const env = { HOME: home, PATH: process.env.PATH, FERRY_CONFIG: config };
    const result = await writeServiceFiles({ outDir: path.join(root, 'out'), platform: 'darwin', env, homeDir: home });
    await install({ root, platform: 'darwin', env, uid: 501, build: false, runner: new RecordingRunner(), out: () => {} });

    expect(result.installedAt.service).toBe(path.join(home, 'Library/LaunchAgents/dev.ferry.daemon.plist'));
    expect(readFileSync(result.files.service, 'utf8')).toBe(readFileSync(result.installedAt.service, 'utf8'));
    expect(readFileSync(result.files.sshAlias, 'utf8')).toBe(readFileSync(path.join(root, 'etc/ssh/ssh_config.d/ferry.conf'), 'utf8'));
    const line = readFileSync(path.join(root, 'etc/nix/machines'), 'utf8').split('\n').find((l) => l.startsWith('ssh-ng://'))!.split(' ');
    const m = result.buildMachine;
    expect([`${m.protocol}://${m.hostName}`, m.systems.join(','), m.sshKey, String(m.maxJobs), String(m.speedFactor), m.supportedFeatures.join(',')]).toEqual(line.slice(0, 6));
    expect(JSON.parse(readFileSync(result.files.json, 'utf8'))).toEqual(result);
  });

  it('refuses a config file that is not there, naming it, and writes nothing', async () => {
    const missing = path.join(root, 'nope.toml');
    const outDir = path.join(root, 'out');
    const error = await writeServiceFiles({ outDir, platform: 'darwin', env: { FERRY_CONFIG: missing }, homeDir: home }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FerryError);
    expect((error as FerryError).exitCode).toBe(ExitCode.NoInput);
    expect((error as FerryError).message).toContain(missing);
    expect(existsSync(outDir)).toBe(false);
  });
});
