/**
 * The Redis engine: the engine conformance tests against a real
 * `redis-server`, plus what only a shared store shows: gaps filled after a
 * lost feed, new epochs after a flush, presence of a crashed instance,
 * binary safety, parity with the in-memory engine (edits and deletes
 * included), patches trimmed with the stream, refresh at constant cost,
 * presence that converges after a cut feed, a flushed or a restarted Redis,
 * and Redis being away. The presence view of a feed is tested on its own at
 * the end.
 *
 * @module
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import type { Engine, EngineEvent, MessageDraft, Signal } from "../lib/engine.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { RedisEngine, type RedisEngineOptions } from "../lib/engines/redis.ts";
import { Redis } from "ioredis";
import { parseEvent, parseEvents } from "../lib/engines/redis/_codec.ts";
import { PresenceView } from "../lib/engines/redis/_presence_view.ts";
import type { Member, Position, StoredMessage } from "../lib/protocol.ts";
import { engineConformance } from "./engine_conformance.ts";
import { until } from "./fakes.ts";
import { redisBulk, redisCommand, redisSkipReason, startRedis } from "./redis_server.ts";

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

const ann = { id: "m-ann", nick: "ann" };
const bob = { id: "m-bob", nick: "bob" };
const cat = { id: "m-cat", nick: "cat" };

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Presence events as `type:nick`, in the order a listener got them. */
function presenceLog(): { events: string[]; listener: (e: EngineEvent) => void } {
  const events: string[] = [];
  return {
    events,
    listener: (e) => {
      if (e.type === "join" || e.type === "leave") events.push(`${e.type}:${e.member.nick}`);
      if (e.type === "rename") events.push(`rename:${e.old}>${e.member.nick}`);
    },
  };
}

function nicks(members: Member[]): string[] {
  return members.map((m) => m.nick).sort();
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

test("stores appends made together with one script call, published in one channel message", async () => {
  const engine = await open({ historySize: 100, historyFileBytes: 1024 });
  const prefix = optionsOf.get(engine)!.keyPrefix;
  const listener = new Redis(server!.url, { lazyConnect: true });
  await listener.connect();
  const payloads: Buffer[] = [];
  listener.on("messageBuffer", (_channel: Buffer, payload: Buffer) => payloads.push(payload));
  await listener.subscribe(`${prefix}{r}:events`);
  try {
    const seen: StoredMessage[] = [];
    await engine.subscribe("r", (e) => e.type === "message" && seen.push(e.message));
    const bytes = new Uint8Array([0x0a, 0x20, 0x4e, 0, 255, 0x0a]);
    const drafts: MessageDraft[] = [
      ...Array.from(
        { length: 18 },
        (_, i) => ({ from: ann, sender: "s", cid: `c${i}`, text: `m${i}` }),
      ),
      { from: ann, sender: "s", cid: "c3", text: "resent" },
      { from: bob, data: bytes, name: "a.bin", mime: "a/b" },
      { from: bob, sender: "s 2\n", cid: "c\n3 ", text: "odd cid" },
      { from: bob, sender: "s 2\n", cid: "c\n3 ", text: "odd cid, resent" },
    ];
    const results = await Promise.all(drafts.map((draft) => engine.append("r", draft)));
    assert.deepEqual(
      results.map((r) => [r.message.id, r.duplicate]),
      [
        ...Array.from({ length: 18 }, (_, i) => [i + 1, false]),
        [4, true],
        [19, false],
        [20, false],
        [20, true],
      ],
    );
    assert.equal(results[18].message.text, "m3", "the duplicate gives back the first");
    await until(() => seen.length === 20 && payloads.length >= 1, "every message");
    assert.equal(payloads.length, 1, "one channel message");
    assert.equal(String.fromCharCode(payloads[0][0]), "N");
    assert.deepEqual(seen.map((m) => m.id), Array.from({ length: 20 }, (_, i) => i + 1));
    assert.deepEqual(seen[18].data, bytes, "a file's bytes cross whole");
    const resent = await engine.append("r", {
      from: bob,
      sender: "s 2\n",
      cid: "c\n3 ",
      text: "x",
    });
    assert.deepEqual([resent.message.id, resent.duplicate], [20, true], "any cid dedups");
    const single = await engine.append("r", { from: null, text: "alone" });
    assert.equal(single.message.id, 21);
    await until(() => payloads.length === 2, "the single message");
    assert.equal(String.fromCharCode(payloads[1][0]), "M", "one message keeps the older format");
  } finally {
    listener.disconnect();
    await engine.close();
  }
});

test("fails a batch that Redis does not answer, and the appends behind it, then goes on", async () => {
  const engine = await open({ commandTimeoutMs: 1000 });
  try {
    // Loads the script: a NOSCRIPT answer after a timeout would go unheard.
    await engine.append("r", { from: null, text: "first" });
    server!.pause();
    const sent = Array.from(
      { length: 5 },
      (_, i) => engine.append("r", { from: null, text: `m${i}` }),
    );
    await sleep(50);
    // These wait behind the batch on its way (for a second), and fail with it: never sent.
    const behind = Array.from({ length: 3 }, () => engine.append("r", { from: null, text: "x" }));
    const failed = await Promise.allSettled([...sent, ...behind]);
    assert.deepEqual(failed.map((r) => r.status), Array(8).fill("rejected"));
    server!.resume();
    // The timed-out batch still runs once Redis goes on: its ids are taken.
    let head = 0;
    for (let i = 0; i < 50 && head < 6; i++) {
      await sleep(20);
      head = (await engine.read("r", undefined, 0)).head;
    }
    assert.equal(head, 6, "the late batch, and nothing behind it");
    const after = await engine.append("r", { from: null, text: "after" });
    assert.equal(after.message.id, 7);
  } finally {
    server!.resume();
    await engine.close();
  }
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

test("edits and deletes match the in-memory engine under count and byte limits", async () => {
  let clock = 1_000;
  const now = () => clock;
  // The byte limit binds long before the count: what an edit or delete does
  // to a message's size decides what is trimmed.
  const limits = { historySize: 40, historyBytes: 4000, historyFileBytes: 64, now };
  const memory = new MemoryEngine(limits);
  const redis = await open(limits);
  // A fixed pseudo-random walk over every kind of entry and target.
  let seed = 7;
  const random = (n: number) => {
    // mulberry32
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
  const messages: number[] = [];
  let head = 0;
  /** Mostly a recent message; sometimes any recent id, an edit or one not issued yet. */
  const target = () =>
    random(4) === 0 || messages.length === 0
      ? Math.max(1, head - random(6) + 2)
      : messages[Math.max(0, messages.length - 1 - random(6))];
  const next = (i: number): MessageDraft => {
    const cid = random(4) === 0 ? { sender: "s", cid: `c${random(12)}` } : {};
    const roll = random(10);
    if (roll < 3) {
      return { from: ann, ...cid, kind: "edit", target: target(), text: "e".repeat(random(400)) };
    }
    if (roll < 5) return { from: ann, ...cid, kind: "delete", target: target() };
    if (roll < 6) return { from: ann, ...cid, data: new Uint8Array(random(100)), name: `f${i}` };
    return { from: bob, ...cid, text: "t".repeat(random(400)), replyTo: target() };
  };
  const shape = (m: StoredMessage) =>
    [
      m.id,
      m.kind ?? "-",
      m.target ?? "-",
      m.replyTo ?? "-",
      m.text?.length ?? "-",
      m.data?.byteLength ?? "-",
      m.name ?? "-",
      m.deleted ? "deleted" : "-",
      // A tombstone says nothing of edits (the in-memory one keeps the time).
      m.deleted ? "-" : m.edited ?? "-",
    ].join("/");
  const view = async (engine: Engine) => {
    const { head, messages } = await engine.read("r", undefined, 100);
    const page = await engine.history("r", 1_000, 5);
    return [
      `head ${head}`,
      ...messages.map(shape),
      `page ${page.more}`,
      ...page.messages.map(shape),
    ].join("\n");
  };
  const seen = { edited: 0, deleted: 0, trimmedByBytes: 0 };
  for (let i = 0; i < 200; i++) {
    clock++;
    const draft = next(i);
    const a = await memory.append("r", draft);
    const b = await redis.append("r", draft);
    assert.equal(`${b.message.id}:${b.duplicate}`, `${a.message.id}:${a.duplicate}`, `draft ${i}`);
    head = a.message.id;
    if (!a.duplicate && draft.kind === undefined) messages.push(a.message.id);
    assert.equal(await view(redis), await view(memory), `after draft ${i}`);
    const kept = (await memory.read("r", undefined, 100)).messages;
    seen.edited += kept.filter((m) => m.edited).length;
    seen.deleted += kept.filter((m) => m.deleted).length;
    if (kept.length < limits.historySize && kept[0].id > 1) seen.trimmedByBytes++;
  }
  // The walk did what it is for.
  assert.ok(seen.edited > 50 && seen.deleted > 50, JSON.stringify(seen));
  assert.ok(seen.trimmedByBytes > 100, JSON.stringify(seen));
  await memory.close();
  await redis.close();
});

test("patches and the edit index are trimmed with the stream", async () => {
  const engine = await open({ historySize: 4 });
  const prefix = optionsOf.get(engine)!.keyPrefix;
  const hlen = (name: string) => redisCommand(server!.port, "HLEN", `${prefix}{r}:${name}`);
  const kept = (await engine.append("r", { from: ann, text: "kept" })).message.id;
  const secret = (await engine.append("r", { from: ann, text: "secret" })).message.id;
  await engine.append("r", { from: ann, kind: "edit", target: kept, text: "kept v2" });
  await engine.append("r", { from: ann, kind: "delete", target: secret });
  assert.equal(await hlen("patches"), ":2", "kept's new text, secret's tombstone");
  assert.equal(await hlen("edits"), ":1", "the edit of kept");
  for (let i = 0; i < 4; i++) await engine.append("r", { from: ann, text: `later ${i}` });
  assert.equal(await hlen("patches"), ":0");
  assert.equal(await hlen("edits"), ":0");
  await engine.close();
});

test("refresh reads no member list and sweeps nothing, whatever the room's size", async () => {
  const engine = await open({ sweepMs: 60_000 });
  const members = Array.from({ length: 300 }, (_, i) => ({ id: `m-${i}`, nick: `n${i}` }));
  for (const [i, member] of members.entries()) {
    await engine.join("r", `c${i}`, member, 60_000);
  }
  assert.match(await redisCommand(server!.port, "CONFIG", "RESETSTAT"), /^\+OK/);
  for (const [i, member] of members.entries()) {
    await engine.refresh("r", `c${i}`, member, 60_000);
  }
  const stats = await redisBulk(server!.port, "INFO", "commandstats");
  const calls = (name: string) =>
    Number(new RegExp(`cmdstat_${name}:calls=(\\d+)`).exec(stats)?.[1] ?? 0);
  assert.equal(calls("evalsha"), members.length, "one script call per refresh");
  assert.equal(calls("hgetall"), 0, "no member list was read");
  assert.equal(calls("zrangebyscore"), 0, "no sweep ran");
  assert.equal((await engine.members("r")).length, members.length);
  await engine.close();
});

test("presence converges after its subscriber connection is killed, without a second join", async () => {
  const one = await open({ maxRetryMs: 200 });
  const two = await peer(one);
  const { events, listener } = presenceLog();
  await one.subscribe("r", listener);
  await one.join("r", "c-ann", ann, 60_000);
  await two.join("r", "c-bob", bob, 60_000);
  await until(() => events.length === 2, "ann and bob join");
  const killed = await redisCommand(server!.port, "CLIENT", "KILL", "TYPE", "pubsub");
  assert.match(killed, /^:[1-9]/, "at least one subscriber connection was killed");
  // While instance one hears nothing: cat joins and bob leaves.
  await two.join("r", "c-cat", cat, 60_000);
  await two.leave("r", "c-bob");
  assert.equal(
    await redisBulk(server!.port, "CLIENT", "LIST", "TYPE", "pubsub"),
    "",
    "the changes were made while no subscriber was connected",
  );
  // Ann opens a second tab on instance one while it reconnects.
  assert.deepEqual(nicks(await one.join("r", "c-ann-2", ann, 60_000)), ["ann", "cat"]);
  await until(() => events.length >= 4, "the missed join and leave");
  await sleep(200);
  assert.deepEqual(events, ["join:ann", "join:bob", "join:cat", "leave:bob"]);
  assert.deepEqual(nicks(await one.members("r")), ["ann", "cat"]);
  await two.close();
  await one.close();
});

test("presence events lost without a disconnection reach listeners by the next sweeps", async () => {
  const engine = await open();
  const prefix = optionsOf.get(engine)!.keyPrefix;
  const { events, listener } = presenceLog();
  await engine.subscribe("r", listener);
  await engine.join("r", "c-ann", ann, 60_000);
  await until(() => events.length === 1, "ann joins");
  // Add bob as the join script would, but publish nothing.
  const key = (name: string) => `${prefix}{r}:${name}`;
  await redisCommand(server!.port, "ZADD", key("expiry"), String(Date.now() + 60_000), "c-bob");
  await redisCommand(server!.port, "HSET", key("conns"), "c-bob", bob.id);
  await redisCommand(server!.port, "HSET", key("counts"), bob.id, "1");
  await redisCommand(server!.port, "HSET", key("members"), bob.id, bob.nick);
  await redisCommand(server!.port, "HINCRBY", key("presence"), "ver", "1");
  await until(() => events.length === 2, "bob's join, found by a sweep");
  assert.deepEqual(events, ["join:ann", "join:bob"]);
  await engine.close();
});

test("after a flushed Redis, members come back without a second join and the gone leave", async () => {
  const one = await open({ maxRetryMs: 100 });
  const two = await peer(one);
  const crashed = await peer(one);
  const { events, listener } = presenceLog();
  const dan = { id: "m-dan", nick: "dan" };
  await one.subscribe("r", listener);
  await two.subscribe("r", () => {});
  await one.join("r", "c-ann", ann, 60_000);
  await two.join("r", "c-bob", bob, 60_000);
  await two.join("r", "c-dan", dan, 60_000);
  await crashed.join("r", "c-cat", cat, 60_000);
  await until(() => events.length === 4, "four joins");
  await crashed.close(); // no leave: as if the process died
  assert.match(await redisCommand(server!.port, "FLUSHALL"), /^\+OK/);
  // A refresh period: the hub refreshes ann and bob. Dan's refresh is not
  // due yet; his instance puts him back by itself.
  await one.refresh("r", "c-ann", ann, 60_000);
  await two.refresh("r", "c-bob", bob, 60_000);
  const end = Date.now() + 2000;
  while (nicks(await one.members("r")).join() !== "ann,bob,dan") {
    assert.ok(Date.now() < end, "ann, bob and dan are back within 2 s");
    await sleep(20);
  }
  await sleep(100);
  assert.equal(events.filter((e) => e.startsWith("join")).length, 4, "no second join");
  await until(() => events.length === 5, "cat, whom nobody put back, leaves");
  await sleep(200);
  assert.deepEqual(events, ["join:ann", "join:bob", "join:dan", "join:cat", "leave:cat"]);
  await two.close();
  await one.close();
});

test("after a restarted, empty Redis, members come back without a leave or a second join", async () => {
  const redis = await startRedis();
  const options = { redisUrl: redis.url, maxRetryMs: 100 };
  const one = await open(options);
  const two = await peer(one);
  try {
    const { events, listener } = presenceLog();
    await one.subscribe("r", listener);
    await two.subscribe("r", () => {});
    await one.join("r", "c-ann", ann, 60_000);
    await two.join("r", "c-bob", bob, 60_000);
    await until(() => events.length === 2, "two joins");
    await redis.restart();
    const end = Date.now() + 3000;
    while (nicks(await one.members("r").catch(() => [])).join() !== "ann,bob") {
      assert.ok(Date.now() < end, "ann and bob are back within 3 s");
      await sleep(20);
    }
    await two.join("r", "c-cat", cat, 60_000);
    await until(() => events.length === 3, "a join after the restart");
    await sleep(400);
    assert.deepEqual(events, ["join:ann", "join:bob", "join:cat"]);
  } finally {
    await two.close();
    await one.close();
    await redis.stop();
  }
});

test("keeps a ban across closing and reopening the engine", async () => {
  const first = await open();
  const end = Date.now() + 60_000;
  await first.ban("r", ann.id, end);
  await first.close();
  const again = await peer(first);
  try {
    assert.equal(await again.bannedUntil("r", ann.id), end);
    assert.equal(await again.bannedUntil("r", bob.id), undefined);
  } finally {
    await again.close();
  }
});

test("a ban's key expires when the ban ends, and lifting it deletes the key", async () => {
  const engine = await open();
  const key = `${optionsOf.get(engine)!.keyPrefix}{r}:ban:${ann.id}`;
  await engine.ban("r", ann.id, Date.now() + 5_000);
  const ttl = Number((await redisCommand(server!.port, "PTTL", key)).slice(1));
  assert.ok(ttl > 0 && ttl <= 5_000, `PTTL ${ttl}`);
  await engine.ban("r", ann.id, Date.now() - 1);
  assert.equal(await redisCommand(server!.port, "EXISTS", key), ":0");
  await engine.close();
});

test("after a flushed Redis, a verified bot comes back with its traits", async () => {
  const engine = await open({ maxRetryMs: 100 });
  const robot: Member = { id: "m-robot", nick: "robot", verified: true, bot: true };
  await engine.subscribe("r", () => {});
  await engine.join("r", "c-robot", robot, 60_000);
  await engine.join("r", "c-ann", ann, 60_000);
  assert.match(await redisCommand(server!.port, "FLUSHALL"), /^\+OK/);
  const end = Date.now() + 3000;
  while (nicks(await engine.members("r")).join() !== "ann,robot") {
    assert.ok(Date.now() < end, "both are back within 3 s");
    await sleep(20);
  }
  const members = await engine.members("r");
  assert.deepEqual(members.find((m) => m.id === robot.id), robot);
  assert.deepEqual(members.find((m) => m.id === ann.id), ann, "no traits for a plain member");
  await engine.close();
});

Deno.test("PresenceView tells each change once and only what listeners do not know", () => {
  const view = new PresenceView({ inc: "i1", ver: 3, members: [ann] });
  const stamp = (ver: number) => ({ inc: "i1", ver });
  assert.equal(
    view.apply({ type: "join", member: ann }, stamp(3)),
    null,
    "already in the snapshot",
  );
  assert.deepEqual(view.apply({ type: "join", member: bob }, stamp(4)), {
    type: "join",
    member: bob,
  });
  assert.equal(view.apply({ type: "join", member: bob }, stamp(5)), null, "bob is listed");
  assert.deepEqual(
    view.apply({ type: "rename", member: { ...bob, nick: "b" }, old: "x" }, stamp(6)),
    {
      type: "rename",
      member: { ...bob, nick: "b" },
      old: "bob",
    },
  );
  assert.equal(view.apply({ type: "leave", member: cat }, stamp(7)), null, "cat is not listed");
  assert.equal(view.stale, false);
  assert.equal(view.apply({ type: "leave", member: ann }, stamp(9)), null, "8 was missed");
  assert.equal(view.stale, true);
  assert.deepEqual(view.resync({ inc: "i1", ver: 9, members: [cat, { ...bob, nick: "b" }] }, 0), [
    { type: "join", member: cat },
    { type: "leave", member: ann },
  ]);
  assert.equal(view.reached(stamp(9)), true);
  assert.equal(view.reached({ inc: "i2", ver: 1 }), false);
});

Deno.test("PresenceView keeps members through lost keys until their deadline", () => {
  const view = new PresenceView({ inc: "i1", ver: 5, members: [ann, bob] });
  const empty = { inc: "", ver: 0, members: [] };
  assert.equal(view.lost(empty), true);
  view.suspectAll(100);
  assert.deepEqual(view.resync(empty, 10), [], "nobody leaves before the deadline");
  assert.equal(view.apply({ type: "join", member: ann }, { inc: "i2", ver: 1 }), null);
  assert.equal(view.lost({ inc: "i2", ver: 1 }), false, "new keys after none are no loss");
  assert.equal(view.nextDeadline(), 100, "bob is still a suspect");
  assert.deepEqual(view.resync({ inc: "i2", ver: 1, members: [ann] }, 100), [
    { type: "leave", member: bob },
  ]);
  assert.equal(view.nextDeadline(), Infinity);
});

Deno.test("parseEvents reads the messages of one append script call, bytes and all", () => {
  const json = JSON.stringify([
    { ts: 5, from: ann, text: "é \n" },
    { ts: 6, from: null, name: "f", mime: "a/b", size: 3 },
    { ts: 7, from: bob, sender: "s", cid: "c", kind: "delete", target: 7 },
  ]);
  const bytes = [0x0a, 0x20, 0xff];
  const batch = (head: string, tail = bytes) =>
    Buffer.concat([Buffer.from(`${head}\n${json}`), Buffer.from(tail)]);
  const payload = batch(`N7 ep1 ${Buffer.byteLength(json)}`);
  const base = { room: "r", epoch: "ep1", sender: undefined, cid: undefined };
  assert.deepEqual(parseEvents("r", payload).map((incoming) => incoming.event), [
    { type: "message", message: { ...base, id: 7, ts: 5, from: ann, text: "é \n" } },
    {
      type: "message",
      message: {
        ...base,
        id: 8,
        ts: 6,
        from: null,
        name: "f",
        mime: "a/b",
        size: 3,
        data: new Uint8Array(bytes),
      },
    },
    {
      type: "message",
      message: {
        ...base,
        id: 9,
        ts: 7,
        from: bob,
        sender: "s",
        cid: "c",
        kind: "delete",
        target: 7,
      },
    },
  ]);
  const one = JSON.stringify({ ts: 1, from: null, text: "x" });
  assert.equal(parseEvents("r", Buffer.from(`M1 ep\n${one}\n`)).length, 1, "one message");
  for (
    const bad of [
      batch(`N7 ep1 ${Buffer.byteLength(json)}`, bytes.slice(1)),
      batch(`N7 ep1 ${Buffer.byteLength(json)}`, [...bytes, 0]),
      batch(`N7 ep1 ${Buffer.byteLength(json) - 1}`),
      batch(`Nx ep1 ${Buffer.byteLength(json)}`),
      Buffer.from(`N1 ep 2\n{}`),
    ]
  ) {
    assert.throws(() => parseEvents("r", bad), SyntaxError, bad.toString());
  }
});

Deno.test("parseEvent reads every signal and rejects one of the wrong shape", () => {
  const robot: Member = { id: "m-robot", nick: "robot", verified: true, bot: true };
  const kick: Signal = { type: "kick", member: ann, reason: "spam", by: robot, until: 42 };
  const payload = (value: unknown) => Buffer.from(`T${JSON.stringify(value)}`);
  assert.deepEqual(parseEvent("r", payload(kick)).event, kick);
  const typing = { type: "typing", member: robot };
  assert.deepEqual(parseEvent("r", payload(typing)).event, typing);
  const bare = { type: "kick", member: ann, reason: "", by: null };
  assert.deepEqual(parseEvent("r", payload({ ...bare, extra: 1 })).event, bare);
  for (
    const bad of [
      { type: "wave", member: ann },
      { type: "kick", member: ann, by: null },
      { type: "kick", member: ann, reason: "x" },
      { type: "kick", member: ann, reason: "x", by: null, until: "soon" },
      { type: "kick", member: { id: "m" }, reason: "x", by: null },
      { type: "typing", member: { ...ann, verified: "yes" } },
      { type: "typing" },
    ]
  ) {
    assert.throws(() => parseEvent("r", payload(bad)), TypeError, JSON.stringify(bad));
  }
  assert.throws(() => parseEvent("r", Buffer.from("T{")), SyntaxError);
});
