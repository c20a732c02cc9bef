/**
 * `REDIS_PREFIX`: deployments on one Redis with different prefixes share no
 * room, message, presence entry, signal, ban or history, and every key and
 * channel they use starts with their prefix. The engines are built the way
 * the server builds them, from the environment (`loadConfig`, `createEngine`).
 *
 * @module
 */

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { loadConfig } from "../lib/config.ts";
import type { Engine, EngineEvent } from "../lib/engine.ts";
import { createEngine } from "../lib/engines/mod.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import { silentLogger } from "../lib/log.ts";
import { type Client, connect, startServer, type TestServer, waitFor } from "./helpers.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("redis_prefix_test.ts");

/** An engine as `main.ts` makes it, from these variables. */
function engineFrom(url: string, vars: Record<string, string>): Promise<Engine> {
  const config = loadConfig((name) => ({ ENGINE: "redis", REDIS_URL: url, ...vars })[name]);
  return createEngine(config, silentLogger);
}

/** Every key in the server (`SCAN`) and every active channel (`PUBSUB CHANNELS`). */
async function inventory(url: string): Promise<{ keys: string[]; channels: string[] }> {
  const client = new Redis(url, { lazyConnect: true });
  await client.connect();
  try {
    const keys: string[] = [];
    let cursor = "0";
    do {
      const [next, batch] = await client.scan(cursor, "COUNT", 1000);
      keys.push(...batch);
      cursor = next;
    } while (cursor !== "0");
    const channels = await client.pubsub("CHANNELS", "*") as string[];
    return { keys: keys.sort(), channels: channels.sort() };
  } finally {
    client.disconnect();
  }
}

/** What a listener saw, as short strings: `message:text`, `join:nick`, `typing:nick`... */
function recorder(): { seen: string[]; listener: (event: EngineEvent) => void } {
  const seen: string[] = [];
  return {
    seen,
    listener: (event) => {
      if (event.type === "message") seen.push(`message:${event.message.text}`);
      else seen.push(`${event.type}:${event.member.nick}`);
    },
  };
}

const ann = { id: "m-ann", nick: "ann" };
const bob = { id: "m-bob", nick: "bob" };

Deno.test({
  name: "REDIS_PREFIX a: and b: on one Redis share no room, message, presence, signal or history",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    // Two instances of deployment a (they must share), one of deployment b.
    const a1 = await engineFrom(redis.url, { REDIS_PREFIX: "a:" });
    const a2 = await engineFrom(redis.url, { REDIS_PREFIX: "a:" });
    const b1 = await engineFrom(redis.url, { REDIS_PREFIX: "b:" });
    const stops: (() => void)[] = [];
    try {
      const onA1 = recorder();
      const onA2 = recorder();
      const onB1 = recorder();
      stops.push(await a1.subscribe("lobby", onA1.listener));
      stops.push(await a2.subscribe("lobby", onA2.listener));
      stops.push(await b1.subscribe("lobby", onB1.listener));

      assert.deepEqual((await a1.join("lobby", "conn-a", ann, 60_000)).map((m) => m.nick), [
        "ann",
      ]);
      assert.deepEqual((await b1.join("lobby", "conn-b", bob, 60_000)).map((m) => m.nick), [
        "bob",
      ]);
      const fromA = await a1.append("lobby", { from: ann, text: "from a", sender: "s", cid: "1" });
      const fromB = await b1.append("lobby", { from: bob, text: "from b", sender: "s", cid: "1" });
      // Same room, same sender and cid: each deployment stores its own first message.
      assert.equal(fromA.duplicate, false);
      assert.equal(fromB.duplicate, false);
      assert.equal(fromA.message.id, 1);
      assert.equal(fromB.message.id, 1);
      await a1.signal("lobby", { type: "typing", member: ann });
      await b1.signal("lobby", { type: "kick", member: bob, reason: "test", by: null });
      await a1.ban("lobby", bob.id, Date.now() + 60_000);

      const aEvents = ["join:ann", "message:from a", "typing:ann"];
      const bEvents = ["join:bob", "message:from b", "kick:bob"];
      await waitFor(() => aEvents.every((e) => onA2.seen.includes(e)), 5000, "a's events on a2");
      await waitFor(() => bEvents.every((e) => onB1.seen.includes(e)), 5000, "b's events on b1");
      // The last events of each side are in; give anything stray time to cross.
      await a1.append("lobby", { from: null, text: "end a" });
      await b1.append("lobby", { from: null, text: "end b" });
      await waitFor(() => onA2.seen.includes("message:end a"), 5000, "a's last message");
      await waitFor(() => onB1.seen.includes("message:end b"), 5000, "b's last message");
      await new Promise((resolve) => setTimeout(resolve, 300));

      for (const [name, seen] of [["a1", onA1.seen], ["a2", onA2.seen]] as const) {
        for (const event of [...bEvents, "message:end b"]) {
          assert.ok(!seen.includes(event), `${name} saw ${event}: ${seen}`);
        }
      }
      for (const event of [...aEvents, "message:end a"]) {
        assert.ok(!onB1.seen.includes(event), `b1 saw ${event}: ${onB1.seen}`);
      }

      const texts = async (engine: Engine) =>
        (await engine.read("lobby", undefined, 100)).messages.map((m) => m.text);
      assert.deepEqual(await texts(a2), ["from a", "end a"]);
      assert.deepEqual(await texts(b1), ["from b", "end b"]);
      const page = await b1.history("lobby", Number.MAX_SAFE_INTEGER, 100);
      assert.deepEqual(page.messages.map((m) => m.text), ["from b", "end b"]);
      assert.deepEqual((await a2.members("lobby")).map((m) => m.nick), ["ann"]);
      assert.deepEqual((await b1.members("lobby")).map((m) => m.nick), ["bob"]);
      assert.equal(typeof await a2.bannedUntil("lobby", bob.id), "number", "a's ban holds in a");
      assert.equal(await b1.bannedUntil("lobby", bob.id), undefined, "and not in b");

      const { keys, channels } = await inventory(redis.url);
      const outside = keys.filter((k) => !k.startsWith("a:{") && !k.startsWith("b:{"));
      assert.deepEqual(outside, [], "every key starts with its prefix and the room's hash tag");
      const aKeys = keys.filter((k) => k.startsWith("a:")).map((k) => k.slice(2));
      const bKeys = keys.filter((k) => k.startsWith("b:")).map((k) => k.slice(2));
      for (const name of ["{lobby}:log", "{lobby}:meta", "{lobby}:dedup", "{lobby}:members"]) {
        assert.ok(aKeys.includes(name), `a:${name} in ${keys}`);
        assert.ok(bKeys.includes(name), `b:${name} in ${keys}`);
      }
      assert.ok(aKeys.includes(`{lobby}:ban:${bob.id}`));
      assert.ok(!bKeys.includes(`{lobby}:ban:${bob.id}`));
      assert.deepEqual(channels, ["a:{lobby}:events", "b:{lobby}:events"]);
    } finally {
      for (const stop of stops) stop();
      await Promise.all([a1.close(), a2.close(), b1.close()]);
      await redis.stop();
    }
  },
});

Deno.test({
  name:
    "REDIS_PREFIX unset: every key and channel starts with parley:, apart from a: on the same Redis",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const plain = await engineFrom(redis.url, {});
    const other = await engineFrom(redis.url, { REDIS_PREFIX: "a:" });
    const seen: string[] = [];
    const stop = await plain.subscribe("lobby", (e) => {
      if (e.type === "message") seen.push(e.message.text!);
    });
    const stopOther = await other.subscribe("lobby", () => {});
    try {
      await other.append("lobby", { from: null, text: "from a" });
      await plain.append("lobby", { from: null, text: "plain" });
      await plain.join("lobby", "conn-1", ann, 60_000);
      await plain.ban("lobby", bob.id, Date.now() + 60_000);
      await waitFor(() => seen.includes("plain"), 5000, "the plain message");
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(seen, ["plain"]);
      const { keys, channels } = await inventory(redis.url);
      const plainKeys = keys.filter((k) => !k.startsWith("a:{"));
      assert.ok(plainKeys.length >= 5, `keys of the plain engine: ${plainKeys}`);
      for (const key of plainKeys) assert.ok(key.startsWith("parley:{lobby}:"), key);
      assert.ok(plainKeys.includes(`parley:{lobby}:ban:${bob.id}`));
      assert.deepEqual(channels, ["a:{lobby}:events", "parley:{lobby}:events"]);
    } finally {
      stop();
      stopOther();
      await plain.close();
      await other.close();
      await redis.stop();
    }
  },
});

/**
 * Sends `warm N` frames from `sender` until `receiver` gets one: the room's
 * feeds are then live on both servers.
 */
async function warmUp(sender: Client, receiver: Client): Promise<void> {
  for (let i = 0;; i++) {
    sender.send(`warm ${i}`);
    try {
      if ((await receiver.text(100)).startsWith("warm")) return;
    } catch (error) {
      if (i >= 50) throw new Error(`the room never went live: ${error}`);
    }
  }
}

/** The text frames a client got, without warm-ups, once nothing more comes for 300 ms. */
async function rest(client: Client): Promise<string[]> {
  await new Promise((resolve) => setTimeout(resolve, 300));
  const frames: string[] = [];
  while (client.queued.length > 0) frames.push(await client.text());
  return frames.filter((f) => !f.startsWith("warm"));
}

Deno.test({
  name:
    "servers with REDIS_PREFIX a: and b: on one Redis relay a room's frames only within a prefix",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const servers: TestServer[] = [];
    const clients: Client[] = [];
    try {
      for (const redisPrefix of ["a:", "a:", "b:"]) {
        servers.push(await startServer({ engine: "redis", redisUrl: redis.url, redisPrefix }));
      }
      for (const server of servers) clients.push(await connect(`${server.ws}/lobby`));
      const [a1, a2, b1] = clients;
      await warmUp(a1, a2);
      await warmUp(b1, b1);
      await rest(a1);
      await rest(a2);
      await rest(b1);
      a1.send("from a");
      b1.send("from b");
      await waitFor(() => a2.queued.includes("from a"), 5000, "a's frame on the other a server");
      await waitFor(() => b1.queued.includes("from b"), 5000, "b's frame back on b");
      assert.deepEqual(await rest(a1), ["from a"]);
      assert.deepEqual(await rest(a2), ["from a"]);
      assert.deepEqual(await rest(b1), ["from b"]);
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      for (const server of servers) await server.close();
      await redis.stop();
    }
  },
});

Deno.test("RedisEngine refuses a key prefix with { or } before connecting", async () => {
  for (const keyPrefix of ["{a}:", "a{", "b}"]) {
    await assert.rejects(
      RedisEngine.connect({
        redisUrl: "redis://127.0.0.1:1",
        historySize: 10,
        historyBytes: 1024,
        historyFileBytes: 16,
        keyPrefix,
      }),
      (error: unknown) =>
        error instanceof RangeError &&
        error.message ===
          `Cannot use key prefix ${JSON.stringify(keyPrefix)}: it must not contain { or }`,
    );
  }
});
