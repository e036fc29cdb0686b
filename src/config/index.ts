/** ferry.toml and ferry's paths on disk. See load.ts for how a config is read. */
export { loadConfig, parseConfigText, parseConfigFile, defaultConfig, type LoadOptions, type ParseOptions } from './load.js';
export { applyDefaults, DEFAULTS, type DefaultsContext } from './defaults.js';
export { validateConfig } from './validate.js';
export { renderDefaultConfig } from './render.js';
export { ConfigError, formatProblem, type ConfigProblem } from './problems.js';
export { currentHost, type HostInfo } from './host.js';
export { parseSize, parseDuration, formatSize, formatDuration } from './units.js';
export { resolvePaths, assertSocketPathFits, FILE_NAMES, DIR_NAMES, type FerryPaths, type PathOptions } from './paths.js';
export type * from './types.js';
