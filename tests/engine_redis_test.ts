/**
 * The Redis engine: the engine conformance tests against a real
 * `redis-server`, plus what only a shared store shows: gaps filled after a
 * lost feed, new epochs after a flush, presence of a crashed instance,
 * binary safety, parity with the in-memory engine, and Redis being away.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Engine, EngineEvent, MessageDraft } from "../lib/engine.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { RedisEngine, type RedisEngineOptions } from "../lib/engines/redis.ts";
import type { Position } from "../lib/protocol.ts";
import { engineConformance } from "./engine_conformance.ts";
import { until } from "./fakes.ts";
import { redisCommand, redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("engine_redis_test.ts");
const server = ignore === undefined ? await startRedis() : undefined;
// One server for the whole file; the process ends right after.
globalThis.addEventListener("unload", () => server?.kill());

const optionsOf = new WeakMap<Engine, RedisEngineOptions>();

async function open(options: Partial<RedisEngineOptions> = {}): Promise<RedisEngine> {
  const full: RedisEngineOptions = {
    redisUrl: server!.url,
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

/** Another instance on the same Redis and prefix. */
function peer(engine: Engine, options: Partial<RedisEngineOptions> = {}): Promise<RedisEngine> {
  return open({ ...optionsOf.get(engine)!, ...options });
}

engineConformance({ name: "redis", make: (options) => open(options), peer, ignore });

function test(name: string, fn: () => Promise<void>) {
  Deno.test({ name: `RedisEngine ${name}`, ignore: ignore !== undefined, fn });
}

function texts(events: EngineEvent[]): string[] {
  return events.flatMap((e) => e.type === "message" ? [`${e.message.id}:${e.message.text}`] : []);
}

test("fills the gap after its subscriber connection is killed", async () => {
  const one = await open({ historySize: 100 });
  const two = await peer(one);
  const seen: EngineEvent[] = [];
  await one.subscribe("r", (e) => seen.push(e));
  await two.append("r", { from: null, text: "before" });
  await until(() => seen.length === 1, "the first message");
  const killed = await redisCommand(server!.port, "CLIENT", "KILL", "TYPE", "pubsub");
  assert.match(killed, /^:[1-9]/, "at least one subscriber connection was killed");
  for (let i = 0; i < 20; i++) await two.append("r", { from: null, text: `during ${i}` });
  await until(() => seen.length === 21, "every message after the reconnect");
  await two.append("r", { from: null, text: "after" });
  await until(() => seen.length === 22, "the live message after the gap");
  const ids = seen.map((e) => e.type === "message" ? e.message.id : 0);
  assert.deepEqual(ids, Array.from({ length: 22 }, (_, i) => i + 1), "every id once, in order");
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(seen.length, 22, "nothing delivered twice");
  await two.close();
  await one.close();
});

test("a subscription made while the subscriber reconnects waits for it", async () => {
  const engine = await open();
  const other = await peer(engine);
  const seen: EngineEvent[] = [];
  await engine.subscribe("first", () => {});
  await redisCommand(server!.port, "CLIENT", "KILL", "TYPE", "pubsub");
  const stop = await engine.subscribe("second", (e) => seen.push(e));
  await other.append("second", { from: null, text: "hello" });
  await until(() => seen.length === 1, "the message after the reconnection");
  assert.deepEqual(texts(seen), ["1:hello"]);
  stop();
  await other.close();
  await engine.close();
});

test("fills a gap left by a message whose publish was lost", async () => {
  const engine = await open();
  const prefix = optionsOf.get(engine)!.keyPrefix;
  const seen: EngineEvent[] = [];
  await engine.subscribe("r", (e) => seen.push(e));
  await engine.append("r", { from: null, text: "one" });
  // Store id 2 as the append script would, but publish nothing.
  assert.equal(await redisCommand(server!.port, "HINCRBY", `${prefix}{r}:meta`, "seq", "1"), ":2");
  const header = JSON.stringify({ ts: 1, from: null, text: "two" });
  await redisCommand(server!.port, "XADD", `${prefix}{r}:log`, "2-0", "h", header, "sz", "134");
  await engine.append("r", { from: null, text: "three" });
  await until(() => seen.length === 3, "three messages");
  assert.deepEqual(texts(seen), ["1:one", "2:two", "3:three"]);
  await engine.close();
});

test("a flushed Redis starts a new epoch, and subscribers follow it", async () => {
  const engine = await open();
  const seen: EngineEvent[] = [];
  await engine.subscribe("r", (e) => seen.push(e));
  const first = await engine.append("r", { from: null, text: "old" });
  await until(() => seen.length === 1, "the first message");
  assert.match(await redisCommand(server!.port, "FLUSHDB"), /^\+OK/);
  const second = await engine.append("r", { from: null, text: "new" });
  assert.notEqual(second.message.epoch, first.message.epoch);
  assert.equal(second.message.id, 1);
  await until(() => seen.length === 2, "the message of the new epoch");
  const last = seen[1];
  assert.ok(last.type === "message");
  assert.equal(last.message.epoch, second.message.epoch);
  assert.equal(last.message.text, "new");
  await engine.close();
});

test("a crashed instance's members leave within the TTL, announced once", async () => {
  const crashed = await open();
  const one = await peer(crashed);
  const two = await peer(crashed);
  const leaves: string[] = [];
  await one.subscribe("r", (e) => e.type === "leave" && leaves.push(`one:${e.member.nick}`));
  await two.subscribe("r", (e) => e.type === "leave" && leaves.push(`two:${e.member.nick}`));
  await crashed.join("r", "c1", { id: "m-ann", nick: "ann" }, 300);
  await one.join("r", "c2", { id: "m-bob", nick: "bob" }, 60_000);
  await crashed.close(); // no leave: as if the process died
  await until(() => leaves.length >= 2, "ann's leave on both instances");
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(leaves.sort(), ["one:ann", "two:ann"]);
  assert.deepEqual(await two.members("r"), [{ id: "m-bob", nick: "bob" }]);
  await two.close();
  await one.close();
});

test("file bytes survive the stream and the channel unchanged", async () => {
  const engine = await open({ historyFileBytes: 1024 });
  const other = await peer(engine);
  const seen: EngineEvent[] = [];
  await other.subscribe("r", (e) => seen.push(e));
  const bytes = Uint8Array.from({ length: 512 }, (_, i) => (i * 7 + 13) % 256);
  const sent = await engine.append("r", { from: null, data: bytes, name: "b.bin", mime: "a/b" });
  const empty = await engine.append("r", { from: null, data: new Uint8Array(0), name: "e" });
  const big = new Uint8Array(2000).fill(0xff);
  await engine.append("r", { from: null, data: big, name: "big" });
  await until(() => seen.length === 3, "three files");
  const live = seen.map((e) => e.type === "message" ? e.message : undefined);
  assert.deepEqual(live[0]?.data, bytes);
  assert.equal(live[0]?.size, 512);
  assert.deepEqual(live[1]?.data, new Uint8Array(0));
  assert.deepEqual(live[2]?.data, big, "live delivery keeps bytes over the history cap");
  const { messages } = await other.read("r", undefined, 10);
  assert.deepEqual(messages[0].data, bytes);
  assert.equal(messages[0].name, "b.bin");
  assert.equal(messages[0].mime, "a/b");
  assert.deepEqual(messages[1].data, new Uint8Array(0));
  assert.equal(messages[1].mime, "application/octet-stream");
  assert.equal(messages[2].data, undefined);
  assert.equal(messages[2].size, 2000);
  assert.equal(empty.message.id, sent.message.id + 1);
  await other.close();
  await engine.close();
});

test("resume and dedup match the in-memory engine under count and byte limits", async () => {
  const limits = { historySize: 6, historyBytes: 1200, historyFileBytes: 64 };
  const memory = new MemoryEngine(limits);
  const redis = await open(limits);
  const ann = { id: "m-ann", nick: "ann" };
  const drafts: MessageDraft[] = [];
  for (let i = 0; i < 40; i++) {
    const cid = `c${i % 9}`;
    if (i % 5 === 4) {
      drafts.push({ from: ann, sender: "s1", cid, data: new Uint8Array(i * 4), name: `f${i}` });
    } else {
      drafts.push({ from: ann, sender: i % 3 ? "s1" : "s2", cid, text: "x".repeat(i * 7) });
    }
  }
  const epochs = new Map<Engine, string>();
  const summary = async (engine: Engine, draft: MessageDraft) => {
    const { message, duplicate } = await engine.append("r", draft);
    epochs.set(engine, message.epoch);
    return `${message.id}:${duplicate}:${message.data?.byteLength ?? "-"}`;
  };
  for (const draft of drafts) {
    assert.equal(await summary(redis, draft), await summary(memory, draft));
    for (const after of [undefined, 0, 1, 10, 30, 36, 37, 38, 39, 40, 41]) {
      const view = async (engine: Engine) => {
        const position: Position | undefined = after === undefined
          ? undefined
          : { epoch: epochs.get(engine)!, id: after };
        const r = await engine.read("r", position, 3);
        const ids = r.messages.map((m) => `${m.id}/${m.data?.byteLength ?? "-"}`);
        return `${r.head} ${r.recovered} ${ids.join(",")}`;
      };
      assert.equal(await view(redis), await view(memory), `read after ${after}`);
    }
  }
  await memory.close();
  await redis.close();
});

test("ready() is false and calls fail fast while Redis is unreachable", async () => {
  const engine = await RedisEngine.connect({
    redisUrl: "redis://127.0.0.1:1",
    historySize: 10,
    historyBytes: 1 << 20,
    historyFileBytes: 16,
    connectWaitMs: 200,
    commandTimeoutMs: 300,
  });
  assert.equal(await engine.ready(), false);
  const started = Date.now();
  await assert.rejects(engine.append("r", { from: null, text: "x" }));
  await assert.rejects(engine.read("r", undefined, 10));
  await assert.rejects(engine.join("r", "c1", { id: "m-ann", nick: "ann" }, 1000));
  assert.ok(Date.now() - started < 200, "no waiting for a connection");
  // A subscription waits a little for the subscriber to come back, no more.
  await assert.rejects(engine.subscribe("r", () => {}), /Redis is unavailable/);
  await engine.close();
});

test("an engine started before its Redis connects once Redis is up", async () => {
  const late = await startRedis();
  await late.stop();
  const engine = await RedisEngine.connect({
    redisUrl: late.url,
    historySize: 10,
    historyBytes: 1 << 20,
    historyFileBytes: 16,
    connectWaitMs: 100,
  });
  try {
    assert.equal(await engine.ready(), false);
    await late.restart();
    const end = Date.now() + 5000;
    while (!(await engine.ready())) {
      assert.ok(Date.now() < end, "ready() turns true within 5 s");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const seen: EngineEvent[] = [];
    const stop = await engine.subscribe("r", (e) => seen.push(e));
    await engine.append("r", { from: null, text: "at last" });
    await until(() => seen.length === 1, "the message");
    stop();
  } finally {
    await engine.close();
    await late.stop();
  }
});
