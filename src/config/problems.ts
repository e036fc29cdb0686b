/**
 * Everything wrong with a configuration, reported at once: the user fixes the file once, not
 * once per run. Each problem names the file and the key, what was expected and what was given.
 */
import type { z } from 'zod';
import { ExitCode, FerryError } from '../errors.js';
import { closestMatch } from './suggest.js';
import { describeValue } from './units.js';

export interface ConfigProblem {
  /** The configuration file (as the user named it), or a description such as `(defaults)`. */
  readonly file: string;
  /** Dotted key as written in the file, e.g. `guest.memory` or `image.layers[0].path`; absent for syntax errors. */
  readonly key?: string;
  /** 1-based position, when known: the line of the key (or of its table), the column for syntax errors. */
  readonly line?: number;
  readonly column?: number;
  /** What is wrong: `expected …, got …`. */
  readonly message: string;
}

/** `FILE:LINE: key \`guest.memory\`: expected …, got …` (`FILE:LINE:COLUMN: …` for syntax errors). */
export function formatProblem(problem: ConfigProblem): string {
  let where = problem.file;
  if (problem.line !== undefined) where += `:${problem.line}`;
  if (problem.line !== undefined && problem.column !== undefined) where += `:${problem.column}`;
  return problem.key === undefined ? `${where}: ${problem.message}` : `${where}: key \`${problem.key}\`: ${problem.message}`;
}

/** One or more problems in ferry.toml. Exit code 78 (EX_CONFIG), as sysexits(3) prescribes. */
export class ConfigError extends FerryError {
  readonly problems: readonly ConfigProblem[];

  constructor(problems: readonly ConfigProblem[], options: { cause?: unknown } = {}) {
    super(renderProblems(problems), { exitCode: ExitCode.Config, cause: options.cause });
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

function renderProblems(problems: readonly ConfigProblem[]): string {
  if (problems.length === 1) return formatProblem(problems[0]);
  return `${problems.length} problems in the configuration:\n${problems.map((p) => `  ${formatProblem(p)}`).join('\n')}`;
}

export type KeyPath = readonly (string | number)[];

/** `["image", "layers", 0, "path"]` → `image.layers[0].path`. */
export function formatKeyPath(path: KeyPath): string {
  let text = '';
  for (const segment of path) {
    if (typeof segment === 'number') text += `[${segment}]`;
    else text += text === '' ? segment : `.${segment}`;
  }
  return text;
}

/** Turns zod's issues into problems with ferry's wording, looking the given values up in `raw`. */
export function problemsFromIssues(
  issues: readonly z.core.$ZodIssue[],
  raw: unknown,
  file: string,
  schema: z.core.$ZodType,
): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  for (const issue of issues) {
    const path = issue.path.filter((segment): segment is string | number => typeof segment !== 'symbol');
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        problems.push({ file, key: formatKeyPath([...path, key]), message: unknownKeyMessage(schema, path, key, raw) });
      }
      continue;
    }
    problems.push({ file, key: formatKeyPath(path), message: issueMessage(issue, valueAt(raw, path)) });
  }
  return problems;
}

function issueMessage(issue: z.core.$ZodIssue, value: unknown): string {
  const got = `got ${describeValue(value)}`;
  switch (issue.code) {
    case 'invalid_type':
      if (value === undefined) return `required: expected ${describeExpected(issue.expected)}`;
      return `expected ${describeExpected(issue.expected)}, ${got}`;
    case 'invalid_value': {
      const options = issue.values.map((v) => JSON.stringify(v));
      return `expected ${options.length === 1 ? options[0] : `one of ${options.join(', ')}`}, ${got}${suggestValue(value, issue.values)}`;
    }
    case 'invalid_union': {
      // A discriminated union (image layers): name the allowed `type`s.
      const options = (issue as { options?: unknown[] }).options;
      if (options && options.length > 0) {
        const expected = `one of ${options.map((v) => JSON.stringify(v)).join(', ')}`;
        if (value === undefined) return `required: expected ${expected}`;
        return `expected ${expected}, ${got}${suggestValue(value, options)}`;
      }
      return `expected ${describeUnion(issue)}, ${got}`;
    }
    case 'too_small':
      return `expected ${issue.origin === 'array' ? `at least ${issue.minimum} entries` : `at least ${issue.minimum}`}, ${got}`;
    case 'too_big':
      return `expected ${issue.origin === 'array' ? `at most ${issue.maximum} entries` : `at most ${issue.maximum}`}, ${got}`;
    default:
      // Our own messages (schema.ts, units.ts) say what is expected; what was given goes where
      // they put `{got}`, or at the end unless they said it already.
      if (issue.message.includes('{got}')) return issue.message.replace('{got}', got);
      return issue.message.includes(', got ') ? issue.message : `${issue.message}, ${got}`;
  }
}

function describeExpected(expected: string): string {
  switch (expected) {
    case 'string':
      return 'a string';
    case 'int':
    case 'number':
      // Every number in ferry.toml is a count (cpus, jobs, a port); sizes and durations are strings.
      return 'a whole number';
    case 'boolean':
      return 'true or false';
    case 'array':
      return 'a list';
    case 'object':
      return 'a table';
    default:
      return expected;
  }
}

/** E.g. `max-jobs`: `"auto"` or a whole number — from the union's branches. */
function describeUnion(issue: z.core.$ZodIssue): string {
  const branches = (issue as { errors?: z.core.$ZodIssue[][] }).errors ?? [];
  const parts = branches.flatMap((branchIssues) =>
    branchIssues.flatMap((branchIssue) => {
      if (branchIssue.code === 'invalid_value') return branchIssue.values.map((v) => JSON.stringify(v));
      if (branchIssue.code === 'invalid_type') return [describeExpected(branchIssue.expected)];
      if (branchIssue.code === 'too_small') return [`a number of at least ${branchIssue.minimum}`];
      return [branchIssue.message.replace(/^expected /, '')];
    }),
  );
  return [...new Set(parts)].join(' or ');
}

function suggestValue(value: unknown, options: readonly unknown[]): string {
  if (typeof value !== 'string') return '';
  const suggestion = closestMatch(value, options.filter((o): o is string => typeof o === 'string'));
  return suggestion === undefined ? '' : ` (did you mean ${JSON.stringify(suggestion)}?)`;
}

function unknownKeyMessage(schema: z.core.$ZodType, path: KeyPath, key: string, raw: unknown): string {
  const siblings = knownKeysAt(schema, path, raw);
  const close = closestMatch(key, siblings);
  if (close !== undefined) return `unknown key (did you mean \`${formatKeyPath([...path, close])}\`?)`;
  // A right key in the wrong table, e.g. `memory` under [vm].
  const elsewhere = allTableKeys(schema).filter((candidate) => candidate.split('.').at(-1) === key);
  if (elsewhere.length > 0) return `unknown key here (\`${key}\` belongs in \`${elsewhere[0]}\`)`;
  return siblings.length > 0 ? `unknown key (known keys here: ${siblings.join(', ')})` : 'unknown key';
}

// --- Reading zod's schema definitions, to list the keys a table accepts. -----------------------

interface SchemaDef {
  type: string;
  shape?: Record<string, z.core.$ZodType>;
  innerType?: z.core.$ZodType;
  element?: z.core.$ZodType;
  options?: z.core.$ZodType[];
  discriminator?: string;
  in?: z.core.$ZodType;
  values?: unknown[];
}

function defOf(schema: z.core.$ZodType): SchemaDef {
  return schema._zod.def as unknown as SchemaDef;
}

/** Unwraps optional/default/nullable wrappers. */
function unwrap(schema: z.core.$ZodType): z.core.$ZodType {
  let current = schema;
  for (;;) {
    const def = defOf(current);
    if ((def.type === 'optional' || def.type === 'default' || def.type === 'nullable') && def.innerType) current = def.innerType;
    else return current;
  }
}

function knownKeysAt(schema: z.core.$ZodType, path: KeyPath, raw: unknown): string[] {
  let current: z.core.$ZodType | undefined = unwrap(schema);
  let value = raw;
  for (const segment of path) {
    if (current === undefined) return [];
    current = childSchema(current, segment, value);
    value = (value as Record<string | number, unknown> | undefined)?.[segment];
    if (current !== undefined) current = unwrap(current);
  }
  if (current === undefined) return [];
  const resolved = resolveUnion(current, value);
  const def = resolved && defOf(resolved);
  return def?.type === 'object' && def.shape ? Object.keys(def.shape) : [];
}

function childSchema(schema: z.core.$ZodType, segment: string | number, value: unknown): z.core.$ZodType | undefined {
  const resolved = resolveUnion(schema, value);
  if (!resolved) return undefined;
  const def = defOf(resolved);
  if (def.type === 'object' && typeof segment === 'string') return def.shape?.[segment];
  if (def.type === 'array' && typeof segment === 'number') return def.element;
  return undefined;
}

/** For a discriminated union, the branch whose discriminator matches the value's. */
function resolveUnion(schema: z.core.$ZodType, value: unknown): z.core.$ZodType | undefined {
  const def = defOf(schema);
  if (def.type !== 'union') return schema;
  if (!def.discriminator || typeof value !== 'object' || value === null) return undefined;
  const tag = (value as Record<string, unknown>)[def.discriminator];
  return def.options?.find((option) => {
    const field = defOf(option).shape?.[def.discriminator as string];
    return field !== undefined && (defOf(field).values ?? []).includes(tag);
  });
}

/** Every key in every table (not inside lists), dotted: `guest.memory`, `guest.nix.cores`, … */
function allTableKeys(schema: z.core.$ZodType, prefix = ''): string[] {
  const def = defOf(unwrap(schema));
  if (def.type !== 'object' || !def.shape) return [];
  return Object.entries(def.shape).flatMap(([key, child]) => {
    const dotted = prefix === '' ? key : `${prefix}.${key}`;
    return [dotted, ...allTableKeys(child, dotted)];
  });
}

function valueAt(raw: unknown, path: KeyPath): unknown {
  let value = raw;
  for (const segment of path) {
    if (typeof value !== 'object' || value === null) return undefined;
    value = (value as Record<string | number, unknown>)[segment];
  }
  return value;
}
