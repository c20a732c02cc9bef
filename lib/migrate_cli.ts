/**
 * `deno task export` and `deno task import`: move a room's history (ids,
 * epoch, edits, deletes, file bytes, dedup pairs) between engines as JSONL
 * (see `migrate.ts` and `docs/migrate.md`).
 *
 * ```sh
 * KV_PATH=./parley.sqlite deno task export --engine kv --room team > team.jsonl
 * REDIS_URL=redis://10.0.0.5:6379 deno task import --engine redis < team.jsonl
 * deno task export --url http://127.0.0.1:8000 --api-key "$API_KEY" --room team > team.jsonl
 * ```
 *
 * A mistake in the command line is one line on standard error with exit
 * code 2; a refused or failed move, one line with exit code 1. A move that
 * worked says what it moved in one line on standard error.
 *
 * @module
 */

import { ConfigError, loadConfig } from "./config.ts";
import type { Engine } from "./engine.ts";
import { createEngine } from "./engines/mod.ts";
import { silentLogger } from "./log.ts";
import {
  encodeRoom,
  exportRoom,
  type MoveSummary,
  parseRoom,
  readLines,
  type RoomExport,
  summarize,
} from "./migrate.ts";
import { ROOM_PATTERN } from "./protocol.ts";

const USAGE = `Usage: deno task export (--engine kv|redis | --url URL) --room ROOM [options]
       deno task import (--engine kv|redis | --url URL) [--room ROOM] [options]

Moves a room's history (ids, epoch, edits, deletes, file bytes, dedup window)
between engines as JSONL (docs/migrate.md). Export writes to standard output,
import reads standard input, unless --file says otherwise.

  --engine kv|redis   work on the store directly, while no server uses it
  --url URL           work through a running server's API (any engine, memory too)
  --api-key KEY       the server's API_KEY (default: the API_KEY variable)
  --room ROOM         the room (import: default, the room named in the export)
  --file PATH         write the export to, or read the import from, this file
  --kv-path PATH      KV database file (default: KV_PATH)
  --redis-url URL     Redis server (default: REDIS_URL, else redis://127.0.0.1:6379)
  --redis-prefix P    key prefix (default: REDIS_PREFIX, else parley:)
  --help              this text

History limits (HISTORY_SIZE, HISTORY_BYTES, HISTORY_FILE_BYTES) come from the
environment, as for the server; an import that does not fit them is refused.
An import into a room that already has messages is refused.`;

const OPTIONS = [
  "engine",
  "url",
  "api-key",
  "room",
  "file",
  "kv-path",
  "redis-url",
  "redis-prefix",
] as const;
type Option = typeof OPTIONS[number];
type Options = Partial<Record<Option, string>>;

/** A mistake in the command line: told in one line, exit code 2. */
class UsageError extends Error {}

/** Reads `--name value` and `--name=value` pairs; each option at most once. */
function parseArgs(args: readonly string[]): Options | "help" {
  const values: Options = {};
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--help" || arg === "-h") return "help";
    const match = /^--([a-z-]+)(?:=(.*))?$/s.exec(arg);
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

/** Where the move goes: a store opened here, or a server's API. */
type Target = { engine: "kv" | "redis" } | { url: URL; apiKey: string };

function targetOf(options: Options): Target {
  if (options.engine !== undefined && options.url !== undefined) {
    throw new UsageError("give --engine or --url, not both");
  }
  if (options.url !== undefined) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new UsageError(`--url: cannot use ${JSON.stringify(options.url)} as a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new UsageError(`--url must be http:// or https://, not ${url.protocol}//`);
    }
    const apiKey = options["api-key"] ?? Deno.env.get("API_KEY") ?? "";
    if (apiKey === "") throw new UsageError("--url needs --api-key (or API_KEY), the server's key");
    return { url, apiKey };
  }
  if (options.engine === "memory") {
    throw new UsageError(
      "--engine memory: that history lives inside a running server; use --url and --api-key",
    );
  }
  if (options.engine !== "kv" && options.engine !== "redis") {
    throw new UsageError(
      options.engine === undefined
        ? "give --engine kv|redis or --url URL; see --help"
        : `--engine must be kv or redis, not ${JSON.stringify(options.engine)}`,
    );
  }
  for (const name of ["api-key"] as const) {
    if (options[name] !== undefined) throw new UsageError(`--${name} goes with --url only`);
  }
  return { engine: options.engine };
}

function checkRoom(room: string | undefined): string | undefined {
  if (room !== undefined && !ROOM_PATTERN.test(room)) {
    throw new UsageError(
      `--room must be 1 to 64 characters from A-Z a-z 0-9 _ -, not ${JSON.stringify(room)}`,
    );
  }
  return room;
}

/** Opens the engine the options name, with the environment's history limits. */
async function openEngine(engine: "kv" | "redis", options: Options): Promise<Engine> {
  const overrides: Record<string, string | undefined> = {
    ENGINE: engine,
    KV_PATH: options["kv-path"],
    REDIS_URL: options["redis-url"],
    REDIS_PREFIX: options["redis-prefix"],
  };
  let config;
  try {
    config = loadConfig((name) => overrides[name] ?? Deno.env.get(name));
  } catch (error) {
    if (error instanceof ConfigError) throw new UsageError(error.message);
    throw error;
  }
  const opened = await createEngine(config, silentLogger);
  if (engine === "redis" && !(await opened.ready())) {
    await opened.close();
    throw new Error(`Cannot reach Redis at ${config.redisUrl.replace(/\/\/[^@/]*@/, "//***@")}`);
  }
  return opened;
}

/** The error a server's API answered, in one line. */
async function apiError(response: Response, what: string): Promise<Error> {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (typeof body?.error?.message === "string") message = body.error.message;
  } catch {
    // Not JSON: the status says it.
  }
  return new Error(`Cannot ${what}: the server answered ${response.status}: ${message}`);
}

function apiUrl(base: URL, room: string, what: string): URL {
  const url = new URL(base);
  url.pathname = `${url.pathname.replace(/\/*$/, "")}/api/rooms/${room}/${what}`;
  return url;
}

async function writeAll(file: Deno.FsFile | typeof Deno.stdout, bytes: Uint8Array) {
  for (let done = 0; done < bytes.byteLength;) {
    done += await file.write(bytes.subarray(done));
  }
}

function describe(summary: MoveSummary): string {
  return `${summary.messages} messages, ${summary.dedup} dedup entries, ${summary.bytes} file bytes`;
}

async function runExport(target: Target, options: Options): Promise<string> {
  const room = checkRoom(options.room);
  if (room === undefined) throw new UsageError("export needs --room");
  let snapshot: RoomExport;
  if ("url" in target) {
    const response = await fetch(apiUrl(target.url, room, "export"), {
      headers: { authorization: `Bearer ${target.apiKey}` },
    });
    if (!response.ok) throw await apiError(response, `export room ${JSON.stringify(room)}`);
    // Checked here too: a file that would not import is not written.
    snapshot = await parseRoom(readLines(response.body!));
  } else {
    const engine = await openEngine(target.engine, options);
    try {
      snapshot = await exportRoom(engine, room);
    } finally {
      await engine.close();
    }
    if (snapshot.head === 0) {
      throw new Error(
        `Cannot export room ${
          JSON.stringify(room)
        }: it has no messages in this ${target.engine} store`,
      );
    }
  }
  const text = [...encodeRoom(snapshot)].map((line) => `${line}\n`).join("");
  const bytes = new TextEncoder().encode(text);
  if (options.file !== undefined) {
    await Deno.writeFile(options.file, bytes);
  } else {
    await writeAll(Deno.stdout, bytes);
  }
  const where = "url" in target ? target.url.host : target.engine;
  return `exported room ${room} from ${where}: ${describe(summarize(snapshot))}`;
}

async function runImport(target: Target, options: Options): Promise<string> {
  const asked = checkRoom(options.room);
  let input: ReadableStream<Uint8Array>;
  if (options.file !== undefined) {
    try {
      input = (await Deno.open(options.file)).readable;
    } catch (error) {
      throw new UsageError(`--file: cannot read ${JSON.stringify(options.file)}: ${error}`);
    }
  } else {
    input = Deno.stdin.readable;
  }
  // The whole export is checked before anything is written.
  const snapshot = await parseRoom(readLines(input));
  const room = asked ?? snapshot.room;
  if ("url" in target) {
    const body = [...encodeRoom(snapshot)].map((line) => `${line}\n`).join("");
    const response = await fetch(apiUrl(target.url, room, "import"), {
      method: "POST",
      headers: {
        authorization: `Bearer ${target.apiKey}`,
        "content-type": "application/x-ndjson",
      },
      body,
    });
    if (!response.ok) throw await apiError(response, `import room ${JSON.stringify(room)}`);
    await response.body?.cancel();
  } else {
    const engine = await openEngine(target.engine, options);
    try {
      if (!engine.importRoom) throw new Error(`The ${target.engine} engine cannot import`);
      await engine.importRoom(room, snapshot);
    } finally {
      await engine.close();
    }
  }
  const where = "url" in target ? target.url.host : target.engine;
  return `imported room ${room} into ${where}: ${describe(summarize(snapshot))}`;
}

/**
 * Runs `export` or `import` with the given arguments.
 *
 * @returns The exit code: 0 done, 1 refused or failed, 2 a mistake in the command line.
 */
export async function main(args: readonly string[]): Promise<number> {
  const [command, ...rest] = args;
  try {
    if (command !== "export" && command !== "import") {
      throw new UsageError(`the command must be export or import, not ${JSON.stringify(command)}`);
    }
    const options = parseArgs(rest);
    if (options === "help") {
      console.log(USAGE);
      return 0;
    }
    const target = targetOf(options);
    const summary = command === "export"
      ? await runExport(target, options)
      : await runImport(target, options);
    console.error(summary);
    return 0;
  } catch (error) {
    const name = `parley ${command === "import" ? "import" : "export"}`;
    if (error instanceof UsageError) {
      console.error(`${name}: ${error.message}`);
      return 2;
    }
    console.error(`${name}: ${error instanceof Error ? error.message : String(error)}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
