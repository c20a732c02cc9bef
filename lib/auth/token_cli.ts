/**
 * `deno task token`: mints a token with `AUTH_SECRET` and prints it, then an
 * invite link that carries it.
 *
 * ```sh
 * AUTH_SECRET=... deno task token --sub ann --name Ann --rooms team --ttl 7d
 * ```
 *
 * Errors are one line on standard error, with exit code 2.
 *
 * @module
 */

import { LOBBY } from "../protocol.ts";
import { MAX_TTL_SECONDS, MIN_SECRET_BYTES, mintToken, parseDuration } from "./token.ts";

const USAGE = `Usage: deno task token --sub ID --ttl DURATION [options]

Mints a token signed with AUTH_SECRET; prints it, then an invite link.

  --sub ID          account id, 1 to 64 characters (required)
  --ttl DURATION    lifetime: 90, 90s, 15m, 12h or 7d (required, at most 366d)
  --name NAME       display name, 1 to 32 characters (default: the sub)
  --rooms A,B       room patterns to read and write: team, team-*, *
  --read A,B        room patterns to read only
  --mod A,B         room patterns to moderate
  --url URL         server base for the link (default: PARLEY_URL, else http://localhost:8000)
  --help            this text`;

const OPTIONS = ["sub", "ttl", "name", "rooms", "read", "mod", "url"] as const;
type Option = typeof OPTIONS[number];

/** A mistake in the command line: told in one line, exit code 2. */
class UsageError extends Error {}

/** Reads `--name value` and `--name=value` pairs; each option at most once. */
function parseArgs(args: readonly string[]): Partial<Record<Option, string>> | "help" {
  const values: Partial<Record<Option, string>> = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") return "help";
    const match = /^--([a-z]+)(?:=(.*))?$/s.exec(arg);
    const name = match?.[1] as Option | undefined;
    if (!match || !OPTIONS.includes(name!)) {
      throw new UsageError(`unknown argument ${JSON.stringify(arg)}; see --help`);
    }
    let value = match[2];
    if (value === undefined) {
      if (i + 1 >= args.length || args[i + 1].startsWith("--")) {
        throw new UsageError(`--${name} needs a value`);
      }
      value = args[++i];
    }
    if (values[name!] !== undefined) throw new UsageError(`--${name} is given twice`);
    values[name!] = value;
  }
  return values;
}

function patterns(value: string | undefined): string[] | undefined {
  return value?.split(",").map((item) => item.trim()).filter(Boolean);
}

/** The invite link: the first room of `rooms` that is not a wildcard, else the lobby. */
export function inviteLink(base: string, rooms: readonly string[], token: string): string {
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw new UsageError(`cannot use ${JSON.stringify(base)} as the server URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(`the server URL must be http:// or https://, not ${url.protocol}//`);
  }
  const room = rooms.find((pattern) => !pattern.endsWith("*")) ?? LOBBY;
  url.pathname = `${url.pathname.replace(/\/*$/, "")}/${room}`;
  url.search = "";
  url.hash = `token=${token}`;
  return url.href;
}

/**
 * Runs the command.
 *
 * @returns The lines to print and the exit code.
 */
export async function run(
  args: readonly string[],
  env: (name: string) => string | undefined,
): Promise<{ out: string[]; err: string[]; code: number }> {
  try {
    const options = parseArgs(args);
    if (options === "help") return { out: [USAGE], err: [], code: 0 };
    const secret = env("AUTH_SECRET");
    if (!secret) throw new UsageError("AUTH_SECRET is not set");
    const bytes = new TextEncoder().encode(secret).length;
    if (bytes < MIN_SECRET_BYTES) {
      throw new UsageError(
        `AUTH_SECRET is ${bytes} bytes, at least ${MIN_SECRET_BYTES} are needed`,
      );
    }
    if (options.sub === undefined) throw new UsageError("--sub is required");
    if (options.ttl === undefined) throw new UsageError("--ttl is required, such as --ttl 7d");
    const ttlSeconds = parseDuration(options.ttl);
    if (ttlSeconds < 1 || ttlSeconds > MAX_TTL_SECONDS) {
      throw new UsageError(`--ttl must be from 1s to 366d, not ${options.ttl}`);
    }
    const rooms = patterns(options.rooms);
    const token = await mintToken(secret, {
      sub: options.sub,
      name: options.name,
      rooms,
      read: patterns(options.read),
      mod: patterns(options.mod),
      ttlSeconds,
    });
    const base = options.url ?? (env("PARLEY_URL") || "http://localhost:8000");
    return { out: [token, inviteLink(base, rooms ?? [], token)], err: [], code: 0 };
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    return { out: [], err: [`token: ${message.replace(/\s+/g, " ")}`], code: 2 };
  }
}

if (import.meta.main) {
  const { out, err, code } = await run(Deno.args, (name) => Deno.env.get(name));
  for (const line of out) console.log(line);
  for (const line of err) console.error(line);
  Deno.exit(code);
}
