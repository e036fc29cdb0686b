/**
 * Sizes and durations as people write them in ferry.toml, parsed in one place each so every key
 * accepts the same spellings and every mistake gets the same kind of message.
 *
 * Sizes are binary: "4G", "4GB" and "4GiB" all mean 4 × 2^30 bytes. That is what qemu (`-m 4G`),
 * Lima and Docker do with VM memory and disk sizes, so a value copied from one of them means the
 * same thing here. A bare integer is a number of bytes.
 *
 * Durations are Go-style ("90s", "30m", "1h30m") and come back in milliseconds. "0" is allowed
 * (for the timeouts where it means "never"); any other bare number is refused because its unit
 * would be a guess. Durations are at most MAX_DURATION_MS (24 days): every one of them ends up
 * in a timer, and Node fires a timer of more than 2^31−1 ms (24.86 days) after 1 ms instead —
 * an idle-timeout of "30d" would stop the guest at once.
 */

export type UnitResult = { ok: true; value: number } | { ok: false; message: string };

const SIZE_EXAMPLE = 'a size like "4GiB", "512MiB" or a number of bytes';
const DURATION_EXAMPLE = 'a duration like "90s", "30m", "1h" or "0"';

const SIZE_MULTIPLIERS: Record<string, number> = {
  '': 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
};

/** `"4GiB"` → 4294967296. Accepts K/M/G/T with optional `B` or `iB`, any case, and integer bytes. */
export function parseSize(value: unknown): UnitResult {
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value) && value >= 0) return { ok: true, value };
    return refuse(SIZE_EXAMPLE, value);
  }
  if (typeof value !== 'string') return refuse(SIZE_EXAMPLE, value);
  const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$/i.exec(value.trim());
  if (!match) return refuse(SIZE_EXAMPLE, value);
  const [, amount, prefix, suffix] = match;
  // "4" and "4B" are bytes; "4iB" is not a unit.
  if (prefix === '' && suffix !== undefined && suffix.toLowerCase() !== 'b') return refuse(SIZE_EXAMPLE, value);
  const bytes = Math.floor(Number(amount) * SIZE_MULTIPLIERS[prefix.toLowerCase()]);
  if (!Number.isSafeInteger(bytes)) return refuse(SIZE_EXAMPLE, value);
  return { ok: true, value: bytes };
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** The longest duration accepted: 24 days, the whole days below Node's timer limit of 2^31−1 ms. */
export const MAX_DURATION_MS = 24 * DURATION_UNITS_MS.d;

/** `"1h30m"` → 5400000 (milliseconds). `"0"` and `0` → 0. */
export function parseDuration(value: unknown): UnitResult {
  if (value === 0 || value === '0') return { ok: true, value: 0 };
  if (typeof value !== 'string') return refuse(DURATION_EXAMPLE, value);
  const text = value.trim();
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(text)) return refuse(DURATION_EXAMPLE, value);
  let total = 0;
  for (const part of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) {
    total += Number(part[1]) * DURATION_UNITS_MS[part[2]];
  }
  total = Math.round(total);
  if (total > MAX_DURATION_MS) {
    return { ok: false, message: `expected at most ${formatDuration(MAX_DURATION_MS)} (a longer timer would fire at once), got ${describeValue(value)}` };
  }
  return { ok: true, value: total };
}

/** The shortest exact spelling of a byte count: 4294967296 → "4GiB", 1000 → "1000". */
export function formatSize(bytes: number): string {
  for (const [unit, size] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${unit}`;
  }
  return String(bytes);
}

/** The shortest exact spelling of a duration: 1800000 → "30m", 0 → "0". */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/**
 * How a value from the TOML file is shown in a message: `"4 GB" (string)`, `12.5 (number)`,
 * `["a", 1] (list)`, `a table`. Always says the TOML type, since a wrong type is the usual mistake.
 */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return `${JSON.stringify(value)} (string)`;
  if (typeof value === 'number' || typeof value === 'bigint') return `${String(value)} (number)`;
  if (typeof value === 'boolean') return `${String(value)} (boolean)`;
  if (Array.isArray(value)) return `${abbreviate(value.map(inlineValue).join(', '), '[', ']')} (list)`;
  if (value instanceof Date) return `${value.toISOString()} (date)`;
  if (typeof value === 'object' && value !== null) {
    // smol-toml's TomlDate is a Date subclass; anything else here is a TOML table.
    return 'a table';
  }
  return String(value);
}

function inlineValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (Array.isArray(value)) return '[…]';
  if (typeof value === 'object' && value !== null) return '{…}';
  return String(value);
}

function abbreviate(inner: string, open: string, close: string): string {
  return inner.length > 40 ? `${open}${inner.slice(0, 39)}…${close}` : `${open}${inner}${close}`;
}

function refuse(expected: string, value: unknown): UnitResult {
  return { ok: false, message: `expected ${expected}, got ${describeValue(value)}` };
}
