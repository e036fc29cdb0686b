/**
 * Reading ferry.toml, in the three steps Lima uses — each pure, each testable on its own:
 *   1. parse:    TOML text → plain data, checked key by key against the schema (schema.ts)
 *   2. defaults: fill in every missing key (defaults.ts)
 *   3. validate: checks across keys and against the host (validate.ts)
 * Every problem found in a step is reported together in one ConfigError. Step 3 runs only once
 * step 1 found nothing: cross-key checks on a half-understood file would mislead.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { applyDefaults } from './defaults.js';
import { currentHost, type HostInfo } from './host.js';
import { locateKey } from './locate.js';
import { ConfigError, problemsFromIssues, type ConfigProblem } from './problems.js';
import { configFileSchema, type ConfigFile } from './schema.js';
import type { FerryConfig } from './types.js';
import { validateConfig } from './validate.js';

export interface ParseOptions {
  /** The host whose defaults and limits apply (default: this machine). */
  readonly host?: HostInfo;
  /** Where relative paths in the file point from (default: the file's directory). */
  readonly baseDir?: string;
}

export interface LoadOptions extends ParseOptions {
  /**
   * A missing file is an error instead of "use the defaults": the user named the file (`--config
   * F`, or FERRY_CONFIG — say which, so the message tells where the name came from).
   */
  readonly mustExist?: boolean | 'argument' | 'FERRY_CONFIG';
}

/** Reads and checks a config file; a missing file gives the defaults unless `mustExist`. */
export async function loadConfig(file: string, options: LoadOptions = {}): Promise<FerryConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && !options.mustExist) return defaultConfig(options);
    const reason = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : String((error as Error).message);
    const namedBy = options.mustExist === 'FERRY_CONFIG' ? ' (named by FERRY_CONFIG)' : '';
    throw new ConfigError([{ file, message: `cannot read the configuration file${namedBy}: ${reason}` }], { cause: error });
  }
  return parseConfigText(text, file, options);
}

/** The configuration when there is no file. */
export function defaultConfig(options: ParseOptions = {}): FerryConfig {
  const host = options.host ?? currentHost();
  return deepFreeze(applyDefaults({}, { host, baseDir: options.baseDir ?? process.cwd(), source: null }));
}

/** Parses, checks and completes the text of a ferry.toml. `fileName` is used in messages and for relative paths. */
export function parseConfigText(text: string, fileName: string, options: ParseOptions = {}): FerryConfig {
  const host = options.host ?? currentHost();
  const file = parseConfigFile(text, fileName);
  const source = path.resolve(fileName);
  const config = applyDefaults(file, { host, baseDir: options.baseDir ?? path.dirname(source), source });
  const problems = validateConfig(config, host, fileName);
  if (problems.length > 0) throw new ConfigError(withLines(problems, text));
  return deepFreeze(config);
}

/** Step 1: TOML syntax, then every key's type and range. Throws a ConfigError listing all problems. */
export function parseConfigFile(text: string, fileName: string): ConfigFile {
  let raw: unknown;
  try {
    raw = parseToml(text);
  } catch (error) {
    if (error instanceof TomlError) {
      // smol-toml's message repeats the offending lines after the first line; keep the first.
      const message = error.message.split('\n')[0].replace(/^Invalid TOML document: /, '');
      throw new ConfigError([{ file: fileName, line: error.line, column: error.column, message: `TOML syntax error: ${message}` }], { cause: error });
    }
    throw error;
  }
  const result = configFileSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(withLines(problemsFromIssues(result.error.issues, raw, fileName, configFileSchema), text));
  return result.data;
}

/** Adds the line of each problem's key, where it can be found in the text. */
function withLines(problems: ConfigProblem[], text: string): ConfigProblem[] {
  return problems.map((problem) => {
    if (problem.key === undefined || problem.line !== undefined) return problem;
    const line = locateKey(text, problem.key);
    return line === undefined ? problem : { ...problem, line };
  });
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}
