/**
 * The shape of ferry.toml: every key, its type and the checks that need only that one value.
 * Checks that relate keys to each other, or to the host, live in validate.ts; defaults live in
 * defaults.ts. Every key is optional here — a missing key takes its default later.
 *
 * Keys are kebab-case, like Cargo.toml and nix.conf. Tables are strict: an unknown key is an
 * error (a misspelt key that is silently ignored is a setting the user thinks they made).
 *
 * Messages written here say what was expected; problems.ts adds what was given (at `{got}`, or
 * at the end).
 */
import { z } from 'zod';
import { parseDuration, parseSize } from './units.js';

export const GUEST_SYSTEMS = ['x86_64-linux', 'aarch64-linux'] as const;
/** Systems a guest can build for besides its own: the other architecture (through an interpreter) or i686. */
export const EXTRA_SYSTEMS = ['x86_64-linux', 'aarch64-linux', 'i686-linux'] as const;
export const PRESETS = ['debian', 'nixpkgs'] as const;
/** The Debian releases the debian preset builds from: trixie (Nix 2.26) and bookworm (Nix 2.8). */
export const DEBIAN_SUITES = ['trixie', 'bookworm'] as const;
export const INTERPRETERS = ['rosetta', 'qemu-user', 'none'] as const;
export const BACKENDS = ['auto', 'qemu', 'hyperkit', 'vfkit'] as const;
export const ACCELERATORS = ['auto', 'hvf', 'kvm', 'tcg'] as const;
export const LOOPBACK_ADDRESSES = ['127.0.0.1', '::1'] as const;
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

/** A size string or integer of bytes (units.ts), then range checks with the limit in the message. */
function size(limits: { min?: number; wholeMiB?: boolean } = {}) {
  return z.unknown().transform((value, ctx) => {
    const parsed = parseSize(value);
    if (!parsed.ok) {
      ctx.addIssue({ code: 'custom', message: parsed.message });
      return z.NEVER;
    }
    if (limits.min !== undefined && parsed.value < limits.min) {
      ctx.addIssue({ code: 'custom', message: `expected at least ${formatMiB(limits.min)}` });
      return z.NEVER;
    }
    if (limits.wholeMiB && parsed.value % MiB !== 0) {
      // vfkit and hyperkit take memory in MiB; refusing here beats rounding behind the user's back.
      ctx.addIssue({ code: 'custom', message: 'expected a whole number of MiB' });
      return z.NEVER;
    }
    return parsed.value;
  });
}

function formatMiB(bytes: number): string {
  return bytes % GiB === 0 ? `${bytes / GiB}GiB` : `${bytes / MiB}MiB`;
}

/** A duration string (units.ts), in milliseconds. */
function duration(options: { allowZero: boolean }) {
  return z.unknown().transform((value, ctx) => {
    const parsed = parseDuration(value);
    if (!parsed.ok) {
      ctx.addIssue({ code: 'custom', message: parsed.message });
      return z.NEVER;
    }
    if (!options.allowZero && parsed.value === 0) {
      ctx.addIssue({ code: 'custom', message: 'expected a duration greater than 0, like "5m"' });
      return z.NEVER;
    }
    return parsed.value;
  });
}

/**
 * OpenSSH's MaxStartups: one number N (refuse every new connection while N are waiting to log
 * in) or "start:rate:full" (refuse with probability rate% at `start` waiting, rising linearly to
 * every connection at `full`).
 */
function maxStartups() {
  const expected = 'expected "start:rate:full" like "10:30:100" (start ≤ full, rate 1-100) or one number of connections';
  return z.unknown().transform((value, ctx) => {
    const text = typeof value === 'number' ? String(value) : typeof value === 'string' ? value : undefined;
    const match = text === undefined ? null : /^(\d+)(?::(\d+):(\d+))?$/.exec(text);
    if (match === null) {
      ctx.addIssue({ code: 'custom', message: expected });
      return z.NEVER;
    }
    const start = Number(match[1]);
    const rate = match[2] === undefined ? 100 : Number(match[2]);
    const full = match[3] === undefined ? start : Number(match[3]);
    if (start < 1 || rate < 1 || rate > 100 || full < start) {
      ctx.addIssue({ code: 'custom', message: expected });
      return z.NEVER;
    }
    return { start, rate, full };
  });
}

/** max-startups as the file writes it: "start:rate:full". */
export function formatMaxStartups(limit: { readonly start: number; readonly rate: number; readonly full: number }): string {
  return `${limit.start}:${limit.rate}:${limit.full}`;
}

/** A word that goes into a space- or comma-separated list (nix.conf, /etc/nix/machines). */
const word = z.string().regex(/^[A-Za-z0-9._+-]+$/, {
  message: 'expected a word of letters, digits, ".", "_", "+" or "-" (no spaces or commas)',
});

const userName = z.string().regex(/^[a-z_][a-z0-9_-]*$/, {
  message: 'expected a user name (lower-case letters, digits, "_" or "-")',
});

/** RFC 1123 host name label: what `hostname` and the guest's /etc/hosts accept. */
const hostname = z.string().regex(/^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/, {
  message: 'expected a host name of 1-63 letters, digits or "-", not starting or ending with "-"',
});

const nonEmptyPath = z.string().min(1, { message: 'expected a path' });

/** One word of nix.conf's `substituters`: a store URL, never spaces (they separate the list). */
const substituterUrl = z.string().regex(/^[a-z][a-z0-9+.-]*:\/\/\S*$/, {
  message: 'expected a binary cache URL like "https://cache.nixos.org" (no spaces)',
});

/** One word of nix.conf's `trusted-public-keys`: NAME:BASE64 (an ed25519 key, as `nix-store --generate-binary-cache-key` writes it). */
const publicKey = z.string().regex(/^[^\s:]+:[A-Za-z0-9+/]+={0,2}$/, {
  message: 'expected a binary cache public key NAME:BASE64 like "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="',
});

const nixSchema = z.strictObject({
  'max-jobs': z.union([z.literal('auto'), z.int().min(1)]).optional(),
  cores: z.int().min(0).optional(),
  features: z.array(word).optional(),
  'extra-config': z.string().optional(),
  'trusted-users': z.array(userName).optional(),
  // Garbage collection before the state disk fills: "auto" sizes both from the state disk.
  'min-free': z.union([z.literal('auto'), size()]).optional(),
  'max-free': z.union([z.literal('auto'), size()]).optional(),
  // The guest's binary caches: "host" follows the host's Nix (src/config/host-nix-conf.ts).
  substituters: z.union([z.literal('host'), z.array(substituterUrl)]).optional(),
  'trusted-public-keys': z.union([z.literal('host'), z.array(publicKey)]).optional(),
});

const guestSchema = z.strictObject({
  system: z.enum(GUEST_SYSTEMS).optional(),
  preset: z.enum(PRESETS).optional(),
  'debian-suite': z.enum(DEBIAN_SUITES).optional(),
  cpus: z.int().min(1).max(256).optional(),
  memory: size({ min: 256 * MiB, wholeMiB: true }).optional(),
  hostname: hostname.optional(),
  'state-disk-size': size({ min: 1 * GiB }).optional(),
  'extra-systems': z.array(z.enum(EXTRA_SYSTEMS)).optional(),
  interpreter: z.enum(INTERPRETERS).optional(),
  nix: nixSchema.optional(),
});

const layerSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('tar'), path: nonEmptyPath }),
  z.strictObject({ type: z.literal('dir'), path: nonEmptyPath }),
  z.strictObject({ type: z.literal('nix'), paths: z.array(nonEmptyPath).min(1) }),
]);

const imageSchema = z.strictObject({
  size: z.union([z.literal('auto'), size({ min: 64 * MiB })]).optional(),
  layers: z.array(layerSchema).optional(),
});

const vmSchema = z.strictObject({
  backend: z.enum(BACKENDS).optional(),
  accel: z.enum(ACCELERATORS).optional(),
  'kernel-cmdline-extra': z.string().optional(),
});

const daemonSchema = z.strictObject({
  port: z.int().min(1).max(65535).optional(),
  // The SSH front lets the host's nix-daemon in with a key and hands it a root-equivalent
  // builder: it must never be reachable from another machine.
  listen: z
    .string()
    .refine((value) => (LOOPBACK_ADDRESSES as readonly string[]).includes(value), {
      message:
        'expected a loopback address ("127.0.0.1" or "::1"), {got}: the daemon hands a build machine to whoever connects, so it never listens beyond this host',
    })
    .optional(),
  'idle-timeout': duration({ allowZero: true }).optional(),
  'ready-timeout': duration({ allowZero: false }).optional(),
  'ssh-timeout': duration({ allowZero: false }).optional(),
  'image-timeout': duration({ allowZero: false }).optional(),
  'authorized-keys': z.array(nonEmptyPath).optional(),
  // Limits before login, as OpenSSH's LoginGraceTime, MaxAuthTries and MaxStartups.
  'login-grace-time': duration({ allowZero: true }).optional(),
  'max-auth-tries': z.int().min(1).optional(),
  'max-startups': maxStartups().optional(),
  'log-level': z.enum(LOG_LEVELS).optional(),
});

export const configFileSchema = z.strictObject({
  guest: guestSchema.optional(),
  image: imageSchema.optional(),
  vm: vmSchema.optional(),
  daemon: daemonSchema.optional(),
});

/** What ferry.toml said, checked key by key, with sizes in bytes and durations in milliseconds. */
export type ConfigFile = z.output<typeof configFileSchema>;
