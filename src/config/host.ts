/**
 * The facts about the host that defaults and validation depend on. Passed in explicitly so that
 * the config functions stay pure and tests can ask "what would this mean on an Apple-silicon Mac?"
 *
 * `FERRY_PLATFORM` is the one override of the host's platform, read here only: `darwin/arm64`
 * (also `darwin-arm64`, and `x86_64`/`amd64`/`x64` for an Intel Mac) makes every platform
 * decision — backend selection, defaults, doctor's checks — as on that host; bare `darwin` or
 * `linux` changes the OS and keeps this machine's architecture (install's use since it began).
 * ferry's own paths (state dir, socket limits) stay this machine's: they are where it really runs.
 */
import os from 'node:os';
import { ExitCode, FerryError } from '../errors.js';

export interface HostInfo {
  /** `process.platform`: 'darwin', 'linux', … */
  readonly platform: NodeJS.Platform;
  /** `process.arch`: 'arm64', 'x64', … */
  readonly arch: string;
  readonly cpus: number;
  readonly memoryBytes: number;
  readonly homeDir: string;
}

export interface PlatformOverride {
  platform: NodeJS.Platform;
  /** Absent when only the OS was named. */
  arch?: string;
}

const ARCH_NAMES: Readonly<Record<string, string>> = { arm64: 'arm64', aarch64: 'arm64', x64: 'x64', x86_64: 'x64', amd64: 'x64' };

/** `FERRY_PLATFORM`, parsed: undefined when unset or empty. */
export function platformOverride(env: NodeJS.ProcessEnv = process.env): PlatformOverride | undefined {
  const value = env.FERRY_PLATFORM;
  if (value === undefined || value === '') return undefined;
  const [platform, arch, ...rest] = value.split(/[/-]/);
  const archName = arch === undefined ? undefined : ARCH_NAMES[arch];
  if ((platform !== 'darwin' && platform !== 'linux') || (arch !== undefined && archName === undefined) || rest.length) {
    throw new FerryError(`FERRY_PLATFORM: expected "darwin" or "linux", optionally with an architecture ("darwin/arm64", "darwin/x86_64"), got "${value}"`, {
      exitCode: ExitCode.Usage,
    });
  }
  return { platform, arch: archName };
}

export function currentHost(env: NodeJS.ProcessEnv = process.env): HostInfo {
  const override = platformOverride(env);
  return {
    platform: override?.platform ?? process.platform,
    arch: override?.arch ?? process.arch,
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    homeDir: os.homedir(),
  };
}
