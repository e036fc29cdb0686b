/**
 * `ferry service-files`: what `ferry install` would write for the service and the ssh alias, for a
 * given home, config file and platform, into a directory — and nothing else (no keys, no image,
 * no launchctl). It is how the nix-darwin module (nix/darwin-module.nix) gets its LaunchAgent:
 * the module's package build runs this command, so the plist comes from the same template
 * (launchd/ferry-daemon.plist) and the same code (service.ts) as install's, never a second copy.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../atomic-file.js';
import { parseConfigText } from '../config/load.js';
import { BUILDER_ALIAS } from '../daemon/ssh-alias.js';
import { ExitCode, FerryError } from '../errors.js';
import { hostContext, type HostOptions } from './install.js';
import { builderFields, sshAliasText } from './nix-wiring.js';
import { readIfExists } from './files.js';
import { daemonArgv, daemonEnvironment, renderServiceFile } from './service.js';

export interface ServiceFilesOptions extends Pick<HostOptions, 'system' | 'platform' | 'env' | 'homeDir'> {
  /** The directory the files go to (made if absent). */
  outDir: string;
  nodePath?: string;
}

/** What was written, and what the Nix wiring needs from the config (service.json, --json). */
export interface ServiceFilesResult {
  /** The files in outDir, by what they are. */
  files: { service: string; sshAlias: string; json: string };
  /** Where `ferry install` puts each: the plist or unit, and the alias. */
  installedAt: { service: string; sshAlias: string };
  serviceKind: 'launchd' | 'systemd';
  programArguments: string[];
  environment: Record<string, string>;
  configFile: string;
  /** The nix.buildMachines entry, in nix-darwin's option names (no publicHostKey: the alias's known-hosts file pins it). */
  buildMachine: { hostName: string; protocol: 'ssh-ng'; systems: string[]; sshKey: string; maxJobs: number; speedFactor: number; supportedFeatures: string[]; mandatoryFeatures: string[] };
  knownHostsFile: string;
}

export async function writeServiceFiles(options: ServiceFilesOptions): Promise<ServiceFilesResult> {
  const ctx = hostContext({ ...options, root: '/' });
  const { layout } = ctx;
  const { paths } = layout;
  const text = readIfExists(paths.configFile)?.toString('utf8');
  if (text === undefined) {
    throw new FerryError(`${paths.configFile}: no such config file (service-files renders the service for an existing ferry.toml)`, {
      exitCode: ExitCode.NoInput,
      hint: 'name it with --config FILE',
    });
  }
  const config = parseConfigText(text, paths.configFile, { host: ctx.host });
  const argv = daemonArgv(options.nodePath);
  const environment = daemonEnvironment(paths, ctx.env, options.nodePath);
  const fields = builderFields(config, paths.clientKey, '');
  const result: ServiceFilesResult = {
    files: {
      service: path.join(options.outDir, path.basename(layout.serviceFile)),
      sshAlias: path.join(options.outDir, path.basename(layout.sshAlias)),
      json: path.join(options.outDir, 'service.json'),
    },
    installedAt: { service: layout.serviceFile, sshAlias: layout.sshAlias },
    serviceKind: layout.serviceKind,
    programArguments: argv,
    environment,
    configFile: paths.configFile,
    buildMachine: {
      hostName: BUILDER_ALIAS,
      protocol: 'ssh-ng',
      systems: fields.systems,
      sshKey: fields.sshKey,
      maxJobs: fields.maxJobs,
      speedFactor: fields.speedFactor,
      supportedFeatures: fields.features,
      mandatoryFeatures: fields.mandatoryFeatures,
    },
    knownHostsFile: layout.aliasKnownHosts,
  };
  await mkdir(options.outDir, { recursive: true });
  await writeFileAtomic(result.files.service, renderServiceFile(layout.serviceKind, argv, environment, paths));
  await writeFileAtomic(result.files.sshAlias, sshAliasText(config.daemon, paths.clientKey, layout.aliasKnownHosts));
  await writeFileAtomic(result.files.json, `${JSON.stringify(result, null, 2)}\n`);
  return result;
}
