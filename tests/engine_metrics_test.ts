/**
 * The engines' own metrics, as `/metrics` shows them through the hub: append
 * latency and batch sizes after appends on memory, KV and Redis; presence
 * sweeps; gaps filled after a cut Redis feed; and `parley_engine_up` and
 * the reconnect counter across a Redis outage.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Engine } from "../lib/engine.ts";
import { KvEngine } from "../lib/engines/kv.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import { ENGINE_METRICS, EngineMetrics } from "../lib/engines/_metrics.ts";
import { Hub } from "../lib/hub.ts";
import { startServer, waitFor } from "./helpers.ts";
import { redisCommand, redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("engine_metrics_test.ts");

const LIMITS = { historySize: 1000, historyBytes: 1 << 24, historyFileBytes: 1 << 16 };
const ann = { id: "m-ann", nick: "ann" };

/** A hub on `engine`, whose `/metrics` text is what the test reads. */
function hubOn(engine: Engine): Hub {
  return new Hub({
    engine,
    joinHistory: 10,
    historySize: 100,
    maxMessageBytes: 1 << 20,
    maxTextLength: 1000,
    maxBufferedBytes: 1 << 20,
  });
}

/** The value of one sample line of a rendering; throws when it is missing. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no sample ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

/** Appends `count` messages to `room`, all at once, so that batching engines group them. */
async function appendAll(engine: Engine, room: string, count: number): Promise<void> {
  await Promise.all(
    Array.from({ length: count }, (_, i) => engine.append(room, { from: null, text: `m${i}` })),
  );
}

const m = ENGINE_METRICS;

Deno.test("EngineMetrics declares every engine series, all zero before anything happens", () => {
  const text = new EngineMetrics("memory", () => true).registry.render();
  assert.equal(sample(text, `${m.up}{engine="memory"}`), 1);
  for (const name of [m.reconnects, m.feedGaps, m.gapFilled, m.appendErrors]) {
    assert.match(text, new RegExp(`^# TYPE ${name} counter$`, "m"));
    assert.equal(sample(text, name), 0, name);
  }
  for (const name of [m.appendSeconds, m.sweepSeconds, m.batchSize]) {
    assert.match(text, new RegExp(`^# TYPE ${name} histogram$`, "m"));
    assert.equal(sample(text, `${name}_count`), 0, name);
    assert.equal(sample(text, `${name}_bucket{le="+Inf"}`), 0, name);
  }
  assert.doesNotMatch(text, /room=/, "no room labels");
});

Deno.test("EngineMetrics.timeAppend() observes an answered append and counts a failed one", async () => {
  const stats = new EngineMetrics("memory", () => true);
  assert.equal(await stats.timeAppend(performance.now(), Promise.resolve("ok")), "ok");
  await assert.rejects(stats.timeAppend(performance.now(), Promise.reject(new Error("down"))), {
    message: "down",
  });
  assert.equal(stats.registry.snapshot(m.appendSeconds)!.count, 1);
  assert.equal(stats.registry.get(m.appendErrors), 1);
});

Deno.test("memory engine: /metrics counts every append and sweep, and up turns 0 on close", async () => {
  const engine = new MemoryEngine(LIMITS);
  const hub = hubOn(engine);
  await appendAll(engine, "r", 12);
  await appendAll(engine, "s", 3);
  await engine.append("r", { from: null, text: "again", sender: "c", cid: "1" });
  await engine.append("r", { from: null, text: "again", sender: "c", cid: "1" });
  await engine.join("r", "conn-1", ann, 60_000);
  await engine.members("r");
  let text = hub.metrics.render();
  assert.match(text, /^parley_connections\{mode="raw"\} 0$/m, "the hub's own metrics first");
  assert.equal(sample(text, `${m.appendSeconds}_count`), 17, "duplicates are appends too");
  assert.equal(sample(text, `${m.appendSeconds}_bucket{le="+Inf"}`), 17);
  assert.ok(sample(text, `${m.appendSeconds}_sum`) >= 0);
  assert.ok(sample(text, `${m.sweepSeconds}_count`) >= 1, "members() sweeps the room");
  assert.equal(sample(text, `${m.batchSize}_count`), 0, "the memory engine has no batches");
  assert.equal(sample(text, `${m.up}{engine="memory"}`), 1);
  hub.close();
  await engine.close();
  text = hub.metrics.render();
  assert.equal(sample(text, `${m.up}{engine="memory"}`), 0);
});

Deno.test("kv engine: /metrics counts every append, and its batches add up to them", async () => {
  const dir = await Deno.makeTempDir({ prefix: "parley-kv-metrics-" });
  const engine = await KvEngine.open({ ...LIMITS, kvPath: `${dir}/parley.sqlite` });
  const hub = hubOn(engine);
  try {
    await appendAll(engine, "r", 40);
    await appendAll(engine, "s", 7);
    await engine.join("r", "conn-1", ann, 60_000);
    await engine.members("r");
    const text = hub.metrics.render();
    assert.equal(sample(text, `${m.appendSeconds}_count`), 47);
    assert.equal(sample(text, `${m.batchSize}_sum`), 47, "every append in exactly one batch");
    const batches = sample(text, `${m.batchSize}_count`);
    assert.ok(batches >= 2 && batches < 47, `appends made together were grouped (${batches})`);
    assert.ok(sample(text, `${m.sweepSeconds}_count`) >= 1, "members() sweeps the room");
    assert.equal(sample(text, `${m.appendErrors}`), 0);
    assert.equal(sample(text, `${m.up}{engine="kv"}`), 1);
  } finally {
    hub.close();
    await engine.close();
    await Deno.remove(dir, { recursive: true });
  }
  assert.equal(sample(hub.metrics.render(), `${m.up}{engine="kv"}`), 0);
});

Deno.test({
  name: "redis engine: /metrics counts appends, batches, sweeps, and a cut feed's gap and refill",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const options = {
      ...LIMITS,
      redisUrl: redis.url,
      keyPrefix: "metrics:",
      sweepMs: 50,
    };
    const engine = await RedisEngine.connect(options);
    const other = await RedisEngine.connect(options);
    const hub = hubOn(engine);
    try {
      await appendAll(engine, "r", 30);
      let text = hub.metrics.render();
      assert.equal(sample(text, `${m.appendSeconds}_count`), 30);
      assert.equal(sample(text, `${m.batchSize}_sum`), 30, "every append in exactly one call");
      assert.ok(sample(text, `${m.batchSize}_count`) < 30, "appends made together were batched");
      assert.equal(sample(text, `${m.up}{engine="redis"}`), 1);
      assert.equal(sample(text, m.reconnects), 0);
      assert.equal(sample(text, m.feedGaps), 0);

      let delivered = 0;
      const stop = await engine.subscribe("r", (e) => {
        if (e.type === "message") delivered++;
      });
      await waitFor(
        () => engine.metrics.snapshot(m.sweepSeconds)!.count >= 1,
        5000,
        "a presence sweep",
      );
      // Store id 31 as the append script would, but publish nothing: 32 then skips an id.
      assert.equal(
        await redisCommand(redis.port, "HINCRBY", "metrics:{r}:meta", "seq", "1"),
        ":31",
      );
      const header = JSON.stringify({ ts: 1, from: null, text: "unpublished" });
      await redisCommand(redis.port, "XADD", "metrics:{r}:log", "31-0", "h", header, "sz", "134");
      await other.append("r", { from: null, text: "after the gap" });
      await waitFor(() => delivered === 2, 5000, "the unpublished message and the next");
      text = hub.metrics.render();
      assert.equal(sample(text, m.feedGaps), 1, "the skipped id is one gap");
      assert.equal(sample(text, m.gapFilled), 2, "both were read from the stream");

      const killed = await redisCommand(redis.port, "CLIENT", "KILL", "TYPE", "pubsub");
      assert.match(killed, /^:[1-9]/, "the subscriber connections were killed");
      await appendAll(other, "r", 10);
      await waitFor(() => delivered === 12, 5000, "the ten messages, live or filled");
      await waitFor(() => engine.metrics.get(m.reconnects) >= 1, 5000, "the reconnection");
      text = hub.metrics.render();
      assert.equal(sample(text, m.feedGaps), 2, "the cut feed is another gap");
      const filled = sample(text, m.gapFilled);
      assert.ok(filled >= 2 && filled <= 12, `at most the ten more were filled (${filled})`);
      assert.equal(sample(text, m.reconnects), 1);
      assert.equal(sample(text, `${m.up}{engine="redis"}`), 1);
      assert.equal(
        sample(text, `${m.appendSeconds}_count`),
        30,
        "the other instance's are its own",
      );
      assert.equal(other.metrics.snapshot(m.appendSeconds)!.count, 11);
      stop();
    } finally {
      hub.close();
      await other.close();
      await engine.close();
      await redis.stop();
    }
    assert.equal(sample(hub.metrics.render(), `${m.up}{engine="redis"}`), 0);
  },
});

/** `GET /metrics` of a test server, as text. */
async function scrape(url: string): Promise<string> {
  const response = await fetch(`${url}/metrics`);
  assert.equal(response.status, 200);
  return await response.text();
}

/** Scrapes until `check` holds for the text, or throws after `ms`. */
async function scrapeUntil(url: string, check: (text: string) => boolean, what: string) {
  const end = Date.now() + 8000;
  let text = "";
  while (!check(text = await scrape(url))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; /metrics:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return text;
}

Deno.test({
  name:
    "GET /metrics: parley_engine_up is 0 while Redis is stopped, and reconnects count its return",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const server = await startServer({ engine: "redis", redisUrl: redis.url });
    try {
      await server.app.hub.post("lobby", { text: "hello", name: "bot" });
      let text = await scrape(server.url);
      assert.equal(sample(text, `${m.up}{engine="redis"}`), 1);
      assert.equal(sample(text, m.reconnects), 0);
      assert.equal(sample(text, `${m.appendSeconds}_count`), 1);
      assert.equal(sample(text, `${m.batchSize}_sum`), 1);

      await redis.stop();
      text = await scrapeUntil(
        server.url,
        (t) => sample(t, `${m.up}{engine="redis"}`) === 0,
        "up to turn 0",
      );
      assert.equal(sample(text, m.reconnects), 0);
      await assert.rejects(server.app.hub.post("lobby", { text: "lost", name: "bot" }));
      assert.equal(sample(await scrape(server.url), m.appendErrors), 1);

      await redis.restart();
      text = await scrapeUntil(
        server.url,
        (t) => sample(t, `${m.up}{engine="redis"}`) === 1,
        "up to turn 1 again",
      );
      assert.equal(sample(text, m.reconnects), 1);
    } finally {
      await server.close();
      await redis.stop();
    }
  },
});
