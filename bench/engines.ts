/**
 * Appends per second of each engine, in one process and one session:
 * `deno run -A bench/engines.ts [--seconds 5] [--appenders 32] [--rooms 1]
 * [--text-bytes 100]`. It runs for about four times `--seconds`, plus start-up.
 *
 * For every engine (memory; kv on a temporary file, with and without grouped
 * commits; redis on a `redis-server` this script starts on a free loopback
 * port), N appenders each append 100-byte texts with a sender and a cid, one
 * after the other, for a fixed time, to one room or spread over a few. The
 * engine is the default configuration's (history of 1,000 messages, so the
 * kv and redis engines trim as they go). Then it checks that the room's head
 * is the number of appends (no id lost or doubled) and prints a table and the
 * ratios kv/memory, redis/memory and kv grouped/kv one commit per append.
 *
 * Measured in one process so the figures compare with each other: on a
 * 2-core machine shared with other work they move a lot from run to run (kv,
 * bound by the disk's syncs, by up to half), much less within one run.
 *
 * @module
 */

import type { Engine } from "../lib/engine.ts";
import { KvEngine } from "../lib/engines/kv.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import { type RedisServer, redisUnavailable, startRedis } from "../tests/redis_server.ts";

/** Settings of one run of this script. */
export interface EngineBenchOptions {
  /** Seconds each engine is measured. @default 5 */
  seconds: number;
  /** Appenders running at once, each waiting for its append before the next. @default 32 */
  appenders: number;
  /** Rooms the appenders are spread over, round robin. @default 1 */
  rooms: number;
  /** UTF-8 bytes of each text. @default 100 */
  textBytes: number;
}

/** What one engine did. */
export interface EngineResult {
  name: string;
  appends: number;
  seconds: number;
  perSecond: number;
  /** Whether every room's head equals the appends made to it. */
  consistent: boolean;
}

const DEFAULTS: EngineBenchOptions = { seconds: 5, appenders: 32, rooms: 1, textBytes: 100 };
const HISTORY = { historySize: 1000, historyBytes: 16 << 20, historyFileBytes: 2 << 20 };
/** Seconds of appending before each measurement, so JIT and first writes are not counted. */
const WARMUP_SECONDS = 0.5;

/** Reads `--seconds`, `--appenders`, `--rooms` and `--text-bytes`. */
export function parseArgs(args: readonly string[]): EngineBenchOptions {
  const options = { ...DEFAULTS };
  const limits = {
    "--seconds": ["seconds", 0.1, 20],
    "--appenders": ["appenders", 1, 1000],
    "--rooms": ["rooms", 1, 100],
    "--text-bytes": ["textBytes", 1, 60_000],
  } as const;
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split("=", 2);
    if (!(flag in limits)) {
      throw new TypeError(
        `Cannot use ${args[i]}: expected --seconds, --appenders, --rooms or --text-bytes`,
      );
    }
    const [field, min, max] = limits[flag as keyof typeof limits];
    const value = inline ?? args[++i];
    const number = Number(value);
    if (!(number >= min && number <= max)) {
      throw new RangeError(`Cannot use ${flag} ${value}: expected a number from ${min} to ${max}`);
    }
    options[field] = field === "seconds" ? number : Math.floor(number);
  }
  return options;
}

/** Runs the appenders against `engine` for `seconds`; returns appends made per room. */
async function drive(
  engine: Engine,
  options: EngineBenchOptions,
  seconds: number,
  counts: number[],
  tag: string,
): Promise<number> {
  const text = "x".repeat(options.textBytes);
  const from = { id: "m-bench", nick: "bench" };
  const end = performance.now() + seconds * 1000;
  let appends = 0;
  await Promise.all(Array.from({ length: options.appenders }, async (_, appender) => {
    const room = appender % options.rooms;
    const sender = `${tag}-${appender}`;
    for (let i = 0; performance.now() < end; i++) {
      await engine.append(`r${room}`, { from, sender, cid: `c${i}`, text });
      counts[room]++;
      appends++;
    }
  }));
  return appends;
}

/** Measures one engine: a warm-up, then the timed run, then a check of every room's head. */
async function measure(
  name: string,
  engine: Engine,
  options: EngineBenchOptions,
): Promise<EngineResult> {
  const counts = new Array<number>(options.rooms).fill(0);
  try {
    await drive(engine, options, WARMUP_SECONDS, counts, "warm");
    const start = performance.now();
    const appends = await drive(engine, options, options.seconds, counts, "run");
    const seconds = (performance.now() - start) / 1000;
    let consistent = true;
    for (let room = 0; room < options.rooms; room++) {
      const { head } = await engine.read(`r${room}`, undefined, 0);
      if (head !== counts[room]) consistent = false;
    }
    return { name, appends, seconds, perSecond: appends / seconds, consistent };
  } finally {
    await engine.close();
  }
}

/** A fresh kv engine on a file in a new temporary directory, removed when it closes. */
async function kvEngine(groupCommits: boolean): Promise<Engine> {
  const dir = await Deno.makeTempDir({ prefix: "parley-bench-kv-" });
  const engine = await KvEngine.open({ ...HISTORY, kvPath: `${dir}/bench.sqlite`, groupCommits });
  const close = engine.close.bind(engine);
  engine.close = async () => {
    await close();
    await Deno.remove(dir, { recursive: true });
  };
  return engine;
}

function formatRate(perSecond: number): string {
  return Math.round(perSecond).toLocaleString("en-US");
}

/** Runs every engine and prints the table and the ratios. */
export async function main(options: EngineBenchOptions): Promise<EngineResult[]> {
  const results: EngineResult[] = [];
  results.push(await measure("memory", new MemoryEngine(HISTORY), options));
  results.push(await measure("kv", await kvEngine(true), options));
  results.push(await measure("kv (one commit per append)", await kvEngine(false), options));
  const missing = await redisUnavailable();
  let redis: RedisServer | undefined;
  if (missing === undefined) {
    redis = await startRedis();
    try {
      const engine = await RedisEngine.connect({ ...HISTORY, redisUrl: redis.url });
      results.push(await measure("redis", engine, options));
    } finally {
      await redis.stop();
    }
  }
  const { seconds, appenders, rooms, textBytes } = options;
  console.log(
    `${appenders} appenders of ${textBytes}-byte texts, ${rooms} room(s), ${seconds} s per engine`,
  );
  console.log(`${"engine".padEnd(28)} ${"appends".padStart(9)} ${"appends/s".padStart(11)}  ids`);
  for (const r of results) {
    console.log(
      `${r.name.padEnd(28)} ${String(r.appends).padStart(9)} ${
        formatRate(r.perSecond).padStart(11)
      }  ${r.consistent ? "ok" : "HEAD DIFFERS FROM APPENDS"}`,
    );
  }
  if (missing !== undefined) console.log(`redis: skipped (${missing})`);
  const rate = (name: string) => results.find((r) => r.name === name)?.perSecond;
  const ratio = (a: string, b: string) => {
    const top = rate(a);
    const bottom = rate(b);
    if (top === undefined || bottom === undefined) return;
    console.log(`${`${a} / ${b}`.padEnd(44)} ${(top / bottom).toFixed(3)}`);
  };
  ratio("kv", "memory");
  ratio("redis", "memory");
  ratio("kv", "kv (one commit per append)");
  return results;
}

if (import.meta.main) {
  const results = await main(parseArgs(Deno.args));
  if (results.some((r) => !r.consistent)) Deno.exit(1);
}
