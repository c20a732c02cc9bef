/**
 * One JSON line per event, filtered by level. Message contents are never
 * passed here.
 *
 * @module
 */

import { LOG_LEVELS, type LogLevel } from "./config.ts";

/** Fields of one log line besides time, level and event name. */
export type LogFields = Record<string, unknown>;

/** A structured logger. */
export interface Logger {
  debug(event: string, fields?: LogFields): void;
  info(event: string, fields?: LogFields): void;
  warn(event: string, fields?: LogFields): void;
  error(event: string, fields?: LogFields): void;
}

/**
 * Makes a logger that writes JSON lines at or above `level`.
 *
 * @param write Where lines go; standard error by default.
 */
export function createLogger(
  level: LogLevel,
  write: (line: string) => void = (line) => console.error(line),
): Logger {
  const min = LOG_LEVELS.indexOf(level);
  const at = (lvl: Exclude<LogLevel, "silent">) => {
    if (LOG_LEVELS.indexOf(lvl) < min) return () => {};
    return (event: string, fields?: LogFields) =>
      write(JSON.stringify({ time: new Date().toISOString(), level: lvl, event, ...fields }));
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

/** A logger that drops everything. */
export const silentLogger: Logger = createLogger("silent");
