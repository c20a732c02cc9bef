/**
 * Deliveries per second of the redis engine over many rooms, on one Redis
 * node against a Redis Cluster of three shards:
 * `deno run -A bench/cluster.ts [--seconds 5] [--rooms 32] [--appenders 64]
 * [--instances 3] [--text-bytes 100] [--rounds 3]`. Standalone (not in
 * `deno task bench`): it starts its own `redis-server` processes on free
 * loopback ports, then measures the two topologies in turn, `--rounds`
 * times each (so that a burst of other work on the machine hits both), and
 * takes the median; about `2 * rounds * (seconds + 1.5)` s plus start-up.
 *
 * For each topology, one engine appends (N appenders, each appending 100-byte
 * texts with a sender and a cid one after the other, spread round robin over
 * the rooms) and `--instances` other engines, as many Parley instances,
 * follow every room. A delivery is one message reaching one instance's
 * listener. After the run it checks that every instance got every room's
 * messages in order, without a gap or a double, and prints appends/s,
 * deliveries/s and the ratio cluster/single.
 *
 * Everything runs in this one process on this machine (the clients, the
 * appender and, for the cluster, three servers): the figures compare the two
 * topologies under the same client, they are not what a cluster of
 * machines would do.
 *
 * @module
 */

import type { Engine } from "../lib/engine.ts";
import { RedisEngine, type RedisEngineOptions } from "../lib/engines/redis.ts";
import { redisUnavailable, startRedis } from "../tests/redis_server.ts";
import { redisCli, startCluster } from "../tests/redis_topology.ts";
import process from "node:process";

/** Settings of one run of this script. */
export interface ClusterBenchOptions {
  /** Seconds each topology is measured. @default 5 */
  seconds: number;
  /** Rooms the appenders are spread over. @default 32 */
  rooms: number;
  /** Appenders running at once, each waiting for its append before the next. @default 64 */
  appenders: number;
  /** Engines that follow every room, as Parley instances would. @default 3 */
  instances: number;
  /** UTF-8 bytes of each text. @default 100 */
  textBytes: number;
  /** Measurements of each topology, taken in turn. @default 3 */
  rounds: number;
}

/** What one topology did. */
export interface TopologyResult {
  name: string;
  appends: number;
  deliveries: number;
  seconds: number;
  /** CPU seconds per second of this process (the appender and the followers). */
  clientCpu: number;
  /** CPU seconds per second of each Redis node. */
  nodeCpu: number[];
  /** Whether every instance got every room's messages once, in order. */
  consistent: boolean;
}

const DEFAULTS: ClusterBenchOptions = {
  seconds: 5,
  rooms: 32,
  appenders: 64,
  instances: 3,
  textBytes: 100,
  rounds: 3,
};
const HISTORY = { historySize: 1000, historyBytes: 16 << 20, historyFileBytes: 2 << 20 };

/** Reads the flags of {@linkcode ClusterBenchOptions}. */
export function parseArgs(args: readonly string[]): ClusterBenchOptions {
  const options = { ...DEFAULTS };
  const limits = {
    "--seconds": ["seconds", 0.1, 60],
    "--rooms": ["rooms", 1, 1000],
    "--appenders": ["appenders", 1, 1000],
    "--instances": ["instances", 1, 10],
    "--text-bytes": ["textBytes", 1, 60_000],
    "--rounds": ["rounds", 1, 20],
  } as const;
  for (let i = 0; i < args.length; i++) {
    const [flag, inline] = args[i].split("=", 2);
    if (!(flag in limits)) {
      throw new TypeError(
        `Cannot use ${args[i]}: expected one of ${Object.keys(limits).join(", ")}`,
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

/** Runs one topology: the followers subscribe, the appenders run, the deliveries are checked. */
/** CPU seconds a Redis node has used (`INFO cpu`: user and system, main thread and others). */
async function nodeCpuSeconds(port: number): Promise<number> {
  const info = await redisCli("-p", String(port), "INFO", "cpu");
  let total = 0;
  for (const name of ["used_cpu_sys", "used_cpu_user"]) {
    total += Number(new RegExp(`^${name}:([\\d.]+)`, "m").exec(info)?.[1] ?? NaN);
  }
  return total;
}

/** CPU seconds this process has used. */
function clientCpuSeconds(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1e6;
}

async function measure(
  name: string,
  connection: Pick<RedisEngineOptions, "redisUrl" | "redisCluster">,
  ports: number[],
  options: ClusterBenchOptions,
): Promise<TopologyResult> {
  const settings = { ...HISTORY, ...connection, keyPrefix: `bench-${crypto.randomUUID()}:` };
  const writer = await RedisEngine.connect(settings);
  const followers: Engine[] = [];
  const stops: (() => void)[] = [];
  const rooms = Array.from({ length: options.rooms }, (_, i) => `room-${i}`);
  // Per follower and room: the last id seen, and whether one came out of order.
  const last = new Map<string, number>();
  let deliveries = 0;
  let counting = false;
  let consistent = true;
  try {
    for (let f = 0; f < options.instances; f++) {
      const follower = await RedisEngine.connect(settings);
      followers.push(follower);
      for (const room of rooms) {
        stops.push(
          await follower.subscribe(room, (event) => {
            if (event.type !== "message") return;
            const key = `${f}/${room}`;
            const before = last.get(key) ?? 0;
            if (event.message.id !== before + 1) consistent = false;
            last.set(key, event.message.id);
            if (counting) deliveries++;
          }),
        );
      }
    }
    const text = "x".repeat(options.textBytes);
    const from = { id: "m-bench", nick: "bench" };
    const run = async (seconds: number, tag: string) => {
      const end = performance.now() + seconds * 1000;
      let appends = 0;
      await Promise.all(Array.from({ length: options.appenders }, async (_, appender) => {
        const room = rooms[appender % rooms.length];
        for (let i = 0; performance.now() < end; i++) {
          await writer.append(room, { from, sender: `${tag}-${appender}`, cid: `c${i}`, text });
          appends++;
        }
      }));
      return appends;
    };
    await run(0.5, "warm");
    counting = true;
    const cpuBefore = await Promise.all(ports.map(nodeCpuSeconds));
    const clientBefore = clientCpuSeconds();
    const start = performance.now();
    const appends = await run(options.seconds, "run");
    // Deliveries still on their way count, within a second.
    const expected = deliveries + appends * options.instances;
    const heads = await Promise.all(rooms.map((room) => writer.read(room, undefined, 0)));
    const wait = performance.now() + 1000;
    while (performance.now() < wait) {
      const caughtUp = [...Array(options.instances).keys()].every((f) =>
        rooms.every((room, i) => last.get(`${f}/${room}`) === heads[i].head)
      );
      if (caughtUp) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const seconds = (performance.now() - start) / 1000;
    const clientCpu = (clientCpuSeconds() - clientBefore) / seconds;
    const cpuAfter = await Promise.all(ports.map(nodeCpuSeconds));
    const nodeCpu = cpuAfter.map((after, i) => (after - cpuBefore[i]) / seconds);
    for (let f = 0; f < options.instances; f++) {
      for (const [i, room] of rooms.entries()) {
        if (last.get(`${f}/${room}`) !== heads[i].head) consistent = false;
      }
    }
    counting = false;
    if (deliveries > expected) consistent = false;
    return { name, appends, deliveries, seconds, clientCpu, nodeCpu, consistent };
  } finally {
    for (const stop of stops) stop();
    await Promise.all([writer, ...followers].map((engine) => engine.close()));
  }
}

function formatRate(perSecond: number): string {
  return Math.round(perSecond).toLocaleString("en-US");
}

/** The median of some numbers. */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** Measures one node and three shards in turn, and prints each round, the medians and the ratio. */
export async function main(options: ClusterBenchOptions): Promise<TopologyResult[]> {
  const missing = await redisUnavailable();
  if (missing !== undefined) throw new Error(`Cannot run bench/cluster.ts: ${missing}`);
  const results: TopologyResult[] = [];
  const single = await startRedis();
  try {
    const cluster = await startCluster(3);
    try {
      for (let round = 0; round < options.rounds; round++) {
        results.push(await measure("one node", { redisUrl: single.url }, [single.port], options));
        results.push(
          await measure(
            "cluster, 3 shards",
            { redisUrl: "redis://127.0.0.1", redisCluster: cluster.addresses },
            cluster.nodes.map((node) => node.port),
            options,
          ),
        );
      }
    } finally {
      await cluster.stop();
    }
  } finally {
    await single.stop();
  }
  const { seconds, rooms, appenders, instances, textBytes, rounds } = options;
  console.log(
    `${appenders} appenders of ${textBytes}-byte texts over ${rooms} rooms, ` +
      `${instances} instances following every room, ${seconds} s per measurement, ` +
      `${rounds} round(s)`,
  );
  console.log("CPU: seconds per second of this process (client) and of each Redis node");
  console.log(
    `${"topology".padEnd(20)} ${"appends/s".padStart(11)} ${"deliveries/s".padStart(13)} ` +
      `${"client CPU".padStart(11)}  ${"Redis CPU per node".padEnd(20)} order`,
  );
  for (const r of results) {
    console.log(
      `${r.name.padEnd(20)} ${formatRate(r.appends / r.seconds).padStart(11)} ${
        formatRate(r.deliveries / r.seconds).padStart(13)
      } ${r.clientCpu.toFixed(2).padStart(11)}  ${
        r.nodeCpu.map((c) => c.toFixed(2)).join(" ").padEnd(20)
      } ${r.consistent ? "ok" : "GAP, DOUBLE OR MISSING DELIVERY"}`,
    );
  }
  const rate = (name: string) =>
    median(results.filter((r) => r.name === name).map((r) => r.deliveries / r.seconds));
  const one = rate("one node");
  const three = rate("cluster, 3 shards");
  console.log(
    `median deliveries/s: one node ${formatRate(one)}, cluster ${formatRate(three)}; ` +
      `cluster / one node ${(three / one).toFixed(3)}`,
  );
  return results;
}

if (import.meta.main) {
  const results = await main(parseArgs(Deno.args));
  if (results.some((r) => !r.consistent)) Deno.exit(1);
}
