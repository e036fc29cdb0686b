/**
 * The daemon's log: pino JSON lines in the log file (what `ferry logs` reads), and on stdout
 * either human-readable (pino-pretty, on a terminal) or JSON (under launchd/systemd, which keep
 * stdout in their own log).
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';

export function createDaemonLogger(options: { file: string; level: string; pretty?: boolean }): Logger {
  mkdirSync(dirname(options.file), { recursive: true });
  const toFile = pino.destination({ dest: options.file, append: true, mkdir: true, sync: false });
  const toStdout = (options.pretty ?? process.stdout.isTTY)
    ? pretty({ colorize: process.stdout.isTTY, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' })
    : pino.destination(1);
  return pino(
    { level: options.level, base: { pid: process.pid } },
    pino.multistream([
      { level: options.level as pino.Level, stream: toFile },
      { level: options.level as pino.Level, stream: toStdout },
    ]),
  );
}
