/**
 * The Redis engine on a Redis Cluster of three primaries (`REDIS_CLUSTER`):
 * the engine conformance suite holds, rooms spread over the shards by their
 * hash tag (every key of a room in one slot, so its scripts run on one
 * shard), and fan-out is sharded pub/sub: each shard carries the channels
 * of its own rooms and no node has a classic pub/sub channel.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Engine, EngineEvent } from "../lib/engine.ts";
import { loadConfig } from "../lib/config.ts";
import { createEngine } from "../lib/engines/mod.ts";
import { ENGINE_METRICS } from "../lib/engines/_metrics.ts";
import { RedisEngine, type RedisEngineOptions } from "../lib/engines/redis.ts";
import { silentLogger } from "../lib/log.ts";
import { engineConformance } from "./engine_conformance.ts";
import { redisSkipReason } from "./redis_server.ts";
import { redisCli, startCluster } from "./redis_topology.ts";

const ignore = await redisSkipReason("redis_cluster_test.ts");
const cluster = ignore === undefined ? await startCluster(3) : undefined;
// One cluster for the whole file; the process ends right after.
globalThis.addEventListener("unload", () => cluster?.kill());

const optionsOf = new WeakMap<Engine, RedisEngineOptions>();

async function open(options: Partial<RedisEngineOptions> = {}): Promise<RedisEngine> {
  const full: RedisEngineOptions = {
    // With a cluster only the URL's credentials and TLS are used.
    redisUrl: "redis://127.0.0.1",
    redisCluster: cluster!.addresses,
    historySize: 10,
    historyBytes: 1 << 20,
    historyFileBytes: 16,
    keyPrefix: `test-${crypto.randomUUID().slice(0, 8)}:`,
    sweepMs: 50,
    ...options,
  };
  const engine = await RedisEngine.connect(full);
  optionsOf.set(engine, full);
  return engine;
}

function peer(engine: Engine): Promise<RedisEngine> {
  return open(optionsOf.get(engine)!);
}

engineConformance({ name: "redis cluster", make: (options) => open(options), peer, ignore });

/** The lines of `redis-cli --raw` on one node. */
async function cli(port: number, ...args: string[]): Promise<string[]> {
  return (await redisCli("-p", String(port), "--raw", ...args)).split("\n").filter(Boolean);
}

/** Every key of every node, by node port. */
async function keysByNode(): Promise<Map<number, string[]>> {
  const found = new Map<number, string[]>();
  for (const node of cluster!.nodes) found.set(node.port, await cli(node.port, "KEYS", "*"));
  return found;
}

Deno.test({
  name: "REDIS_CLUSTER: rooms spread over the three shards, each room's keys in one slot",
  ignore: ignore !== undefined,
  async fn() {
    const prefix = `spread-${crypto.randomUUID().slice(0, 8)}:`;
    const addresses = cluster!.addresses.join(",");
    // Built as the server builds it, from the environment.
    const config = loadConfig((name) =>
      ({ ENGINE: "redis", REDIS_CLUSTER: addresses, REDIS_PREFIX: prefix })[name]
    );
    const engine = await createEngine(config, silentLogger);
    const stops: (() => void)[] = [];
    try {
      const rooms = Array.from({ length: 24 }, (_, i) => `room-${i}`);
      for (const room of rooms) {
        stops.push(await engine.subscribe(room, () => {}));
        await engine.join(room, `conn-${room}`, { id: "m-ann", nick: "ann" }, 60_000);
        await engine.append(room, { from: null, text: `hello ${room}`, sender: "s", cid: "1" });
        await engine.ban(room, "m-bob", Date.now() + 60_000);
      }
      const byNode = await keysByNode();
      const nodeOfRoom = new Map<string, number>();
      for (const [port, keys] of byNode) {
        for (const key of keys.filter((k) => k.startsWith(prefix))) {
          const room = /^[^{]*\{([^}]*)\}:/.exec(key)?.[1];
          assert.ok(room, `${key} has the room as its hash tag`);
          const before = nodeOfRoom.get(room);
          assert.ok(before === undefined || before === port, `every key of ${room} on one node`);
          nodeOfRoom.set(room, port);
        }
      }
      assert.deepEqual([...nodeOfRoom.keys()].sort(), [...rooms].sort());
      const perNode = [...byNode.keys()].map((port) =>
        [...nodeOfRoom.values()].filter((p) => p === port).length
      );
      assert.ok(perNode.every((n) => n > 0), `every shard holds rooms: ${perNode}`);

      // Every key of a room hashes to one slot, the one of its channel.
      const port = cluster!.nodes[0].port;
      for (const room of rooms.slice(0, 4)) {
        const names = ["meta", "log", "dedup", "patches", "edits", "expiry", "conns", "members"]
          .concat(["counts", "presence", "traits", "ban:m-bob", "events"]);
        const slots = new Set<string>();
        for (const name of names) {
          slots.add((await cli(port, "CLUSTER", "KEYSLOT", `${prefix}{${room}}:${name}`))[0]);
        }
        assert.equal(slots.size, 1, `${room}: one slot for all keys and the channel`);
      }

      // Sharded pub/sub: each node carries the channels of its own rooms only.
      for (const node of cluster!.nodes) {
        const shardChannels = await cli(node.port, "PUBSUB", "SHARDCHANNELS", `${prefix}*`);
        const expected = rooms.filter((room) => nodeOfRoom.get(room) === node.port)
          .map((room) => `${prefix}{${room}}:events`);
        assert.deepEqual(shardChannels.sort(), expected.sort(), `shard channels of ${node.port}`);
        assert.deepEqual(await cli(node.port, "PUBSUB", "CHANNELS", `${prefix}*`), []);
      }
    } finally {
      for (const stop of stops) stop();
      await engine.close();
    }
  },
});

Deno.test({
  name: "REDIS_CLUSTER: two instances share rooms on every shard, messages and signals",
  ignore: ignore !== undefined,
  async fn() {
    const a = await open();
    const b = await peer(a);
    const stops: (() => void)[] = [];
    try {
      const rooms = Array.from({ length: 12 }, (_, i) => `shared-${i}`);
      const seen = new Map<string, string[]>();
      for (const room of rooms) {
        seen.set(room, []);
        stops.push(
          await b.subscribe(room, (event: EngineEvent) => {
            if (event.type === "message") seen.get(room)!.push(event.message.text!);
            if (event.type === "typing") seen.get(room)!.push(`typing:${event.member.nick}`);
          }),
        );
      }
      for (const room of rooms) {
        await a.append(room, { from: null, text: `one ${room}` });
        await a.signal(room, { type: "typing", member: { id: "m-ann", nick: "ann" } });
        await a.append(room, { from: null, text: `two ${room}` });
      }
      const end = Date.now() + 5000;
      while (rooms.some((room) => seen.get(room)!.length < 3) && Date.now() < end) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      for (const room of rooms) {
        assert.deepEqual(seen.get(room), [`one ${room}`, "typing:ann", `two ${room}`], room);
      }
      assert.equal(await a.ready(), true);
    } finally {
      for (const stop of stops) stop();
      await Promise.all([a.close(), b.close()]);
    }
  },
});

Deno.test({
  name: "REDIS_CLUSTER: feeds whose shard subscriber connections were killed fill the gap " +
    "from the streams and go on, in order",
  ignore: ignore !== undefined,
  async fn() {
    const follower = await open();
    const writer = await peer(follower);
    const stops: (() => void)[] = [];
    try {
      const rooms = Array.from({ length: 9 }, (_, i) => `cut-${i}`);
      const seen = new Map<string, number[]>();
      for (const room of rooms) {
        seen.set(room, []);
        stops.push(
          await follower.subscribe(room, (event: EngineEvent) => {
            if (event.type === "message") seen.get(room)!.push(event.message.id);
          }),
        );
      }
      const appendAll = async (round: number) => {
        for (const room of rooms) await writer.append(room, { from: null, text: `${round}` });
      };
      await appendAll(1);
      // Every node drops its pub/sub clients: the follower's shard subscribers.
      let killed = 0;
      for (const node of cluster!.nodes) {
        killed += Number((await cli(node.port, "CLIENT", "KILL", "TYPE", "pubsub"))[0]);
      }
      assert.ok(killed >= 3, `one shard subscriber per node killed, not ${killed}`);
      for (let round = 2; round <= 5; round++) {
        await appendAll(round);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const end = Date.now() + 10_000;
      while (rooms.some((room) => seen.get(room)!.length < 5) && Date.now() < end) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      for (const room of rooms) assert.deepEqual(seen.get(room), [1, 2, 3, 4, 5], room);
      assert.ok(follower.metrics.get(ENGINE_METRICS.feedGaps) >= rooms.length, "gaps noticed");
      // And the feeds are live again: a new message comes without a gap to fill.
      await appendAll(6);
      const later = Date.now() + 5000;
      while (rooms.some((room) => seen.get(room)!.length < 6) && Date.now() < later) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      for (const room of rooms) assert.deepEqual(seen.get(room), [1, 2, 3, 4, 5, 6], room);
      assert.equal(await follower.ready(), true);
    } finally {
      for (const stop of stops) stop();
      await Promise.all([follower.close(), writer.close()]);
    }
  },
});
