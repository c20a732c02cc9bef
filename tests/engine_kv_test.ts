import assert from "node:assert/strict";
import type { Engine, EngineEvent } from "../lib/engine.ts";
import { CHUNK_BYTES, KvEngine, type KvEngineOptions } from "../lib/engines/kv.ts";
import type { StoredMessage } from "../lib/protocol.ts";
import { engineConformance } from "./engine_conformance.ts";
import { until } from "./fakes.ts";

/** Database files of the engines still open, and how many engines use each. */
const users = new Map<string, number>();
const paths = new WeakMap<Engine, string>();

/** A fresh database file in its own temporary directory. */
async function freshPath(): Promise<string> {
  return `${await Deno.makeTempDir({ prefix: "parley-kv-" })}/parley.sqlite`;
}

/** Keeps the directory of `path` until as many `release` calls. */
function retain(path: string) {
  users.set(path, (users.get(path) ?? 0) + 1);
}

/** Removes the directory of `path` once nothing retains it. */
async function release(path: string) {
  const left = users.get(path)! - 1;
  users.set(path, left);
  if (left > 0) return;
  users.delete(path);
  await Deno.remove(path.slice(0, path.lastIndexOf("/")), { recursive: true });
}

/** Opens an engine on `path`, retaining the file until the engine closes. */
async function open(path: string, options: Partial<KvEngineOptions> = {}): Promise<KvEngine> {
  const engine = await KvEngine.open({
    historySize: 100,
    historyBytes: 1 << 20,
    historyFileBytes: 16,
    ...options,
    kvPath: path,
  });
  retain(path);
  paths.set(engine, path);
  const close = engine.close.bind(engine);
  let closed = false;
  engine.close = async () => {
    await close();
    if (closed) return;
    closed = true;
    await release(path);
  };
  return engine;
}

engineConformance({
  name: "kv",
  make: async (options) => open(await freshPath(), options),
  peer: (engine) => open(paths.get(engine)!),
});

function messages(events: EngineEvent[]): StoredMessage[] {
  return events.flatMap((e) => e.type === "message" ? [e.message] : []);
}

/** Keys under a prefix, for checking what is stored. */
async function keys(path: string, prefix: Deno.KvKey): Promise<Deno.KvKey[]> {
  const kv = await Deno.openKv(path);
  try {
    const found: Deno.KvKey[] = [];
    for await (const entry of kv.list({ prefix })) found.push(entry.key);
    return found;
  } finally {
    kv.close();
  }
}

/** Asserts equal bytes (node:assert's deepEqual takes a second per 200 KiB on Deno 2.5). */
function assertBytes(actual: Uint8Array | undefined, expected: Uint8Array, what: string) {
  assert.ok(actual, `${what}: no bytes`);
  assert.equal(actual.byteLength, expected.byteLength, `${what}: length`);
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(at, -1, `${what}: bytes differ at ${at}`);
}

function picture(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i += 65536) crypto.getRandomValues(bytes.subarray(i, i + 65536));
  return bytes;
}

Deno.test("KvEngine keeps a 200 KiB picture in history byte for byte, in chunks", async () => {
  const path = await freshPath();
  const engine = await open(path, { historyFileBytes: 1 << 20 });
  const peer = await open(path, { historyFileBytes: 1 << 20 });
  try {
    const seen: EngineEvent[] = [];
    await peer.subscribe("r", (e) => seen.push(e));
    const data = picture(200 * 1024);
    const { message } = await engine.append("r", {
      from: null,
      data,
      name: "cat.png",
      mime: "image/png",
    });
    const { messages: history } = await peer.read("r", undefined, 10);
    assert.equal(history.length, 1);
    assert.equal(history[0].id, message.id);
    assert.equal(history[0].size, data.byteLength);
    assertBytes(history[0].data, data, "history");
    await until(() => seen.length >= 1, "the picture on the other handle");
    assertBytes(messages(seen)[0].data, data, "live");
    const chunks = await keys(path, ["parley", "r", "blob"]);
    assert.equal(chunks.length, Math.ceil(data.byteLength / CHUNK_BYTES));
  } finally {
    await peer.close();
    await engine.close();
  }
});

Deno.test("KvEngine delivers a file over historyFileBytes live with its bytes, and keeps it without", async () => {
  const path = await freshPath();
  const engine = await open(path, { historyFileBytes: 1024 });
  const peer = await open(path, { historyFileBytes: 1024 });
  try {
    const seen: EngineEvent[] = [];
    await peer.subscribe("r", (e) => seen.push(e));
    const data = picture(100 * 1024);
    await engine.append("r", { from: null, data, name: "big.bin", mime: "a/b" });
    await until(() => seen.length >= 1, "the file on the other handle");
    assertBytes(messages(seen)[0].data, data, "live");
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.equal(history[0].data, undefined);
    assert.equal(history[0].size, data.byteLength);
  } finally {
    await peer.close();
    await engine.close();
  }
});

Deno.test("KvEngine gives one caller's appends ids in call order, a big file first included", async () => {
  const engine = await open(await freshPath(), { historyFileBytes: 1 << 20 });
  try {
    const results = await Promise.all([
      engine.append("r", { from: null, data: picture(300 * 1024), name: "a", mime: "a/b" }),
      engine.append("r", { from: null, text: "after" }),
    ]);
    assert.deepEqual(results.map((r) => r.message.id), [1, 2]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine delivers to its own subscribers before append() resolves", async () => {
  const engine = await open(await freshPath());
  try {
    const seen: EngineEvent[] = [];
    await engine.subscribe("r", (e) => seen.push(e));
    const { message } = await engine.append("r", { from: null, text: "hi" });
    assert.deepEqual(messages(seen).map((m) => m.id), [message.id]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine finds a resent file before writing its bytes again", async () => {
  const path = await freshPath();
  const engine = await open(path, { historyFileBytes: 1 << 20 });
  try {
    const draft = {
      from: null,
      sender: "s",
      cid: "f1",
      data: picture(100_000),
      name: "a",
      mime: "a/b",
    };
    const first = await engine.append("r", draft);
    const again = await engine.append("r", draft);
    assert.equal(again.duplicate, true);
    assert.equal(again.message.id, first.message.id);
    assert.equal((await keys(path, ["parley", "r", "blob"])).length, 2);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine keeps a text longer than one KV value", async () => {
  const engine = await open(await freshPath());
  try {
    const text = "é".repeat(100_000);
    await engine.append("r", { from: null, text });
    const { messages: history } = await engine.read("r", undefined, 1);
    assert.equal(history[0].text, text);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine trims chunks and dedup keys along with the messages", async () => {
  const path = await freshPath();
  const engine = await open(path, { historySize: 2, historyFileBytes: 1 << 20 });
  try {
    await engine.append("r", {
      from: null,
      sender: "s",
      cid: "c1",
      data: picture(70_000),
      name: "a",
      mime: "a/b",
    });
    for (let i = 0; i < 2; i++) await engine.append("r", { from: null, text: `m${i}` });
    assert.deepEqual(await keys(path, ["parley", "r", "blob"]), []);
    assert.deepEqual(await keys(path, ["parley", "r", "dedup"]), []);
    assert.deepEqual(await keys(path, ["parley", "r", "msg"]), [
      ["parley", "r", "msg", 2],
      ["parley", "r", "msg", 3],
    ]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine trims by bytes, keeping at least one message", async () => {
  const engine = await open(await freshPath(), { historyBytes: 1000 });
  try {
    for (let i = 0; i < 5; i++) await engine.append("r", { from: null, text: "x".repeat(300) });
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.deepEqual(history.map((m) => m.id), [5]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine delivers each message once to subscribers of two handles, in one order", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const seenOne: EngineEvent[] = [];
    const seenTwo: EngineEvent[] = [];
    await one.subscribe("r", (e) => seenOne.push(e));
    await two.subscribe("r", (e) => seenTwo.push(e));
    for (let i = 0; i < 10; i++) {
      await (i % 2 ? one : two).append("r", { from: null, text: `m${i}` });
    }
    await until(() => seenOne.length >= 10 && seenTwo.length >= 10, "ten messages on each");
    const texts = Array.from({ length: 10 }, (_, i) => `m${i}`);
    assert.deepEqual(messages(seenOne).map((m) => m.text), texts);
    assert.deepEqual(messages(seenTwo).map((m) => m.text), texts);
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine keeps ids contiguous under concurrent appends from two handles", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const seenOne: number[] = [];
    const seenTwo: number[] = [];
    await one.subscribe("r", (e) => e.type === "message" && seenOne.push(e.message.id));
    await two.subscribe("r", (e) => e.type === "message" && seenTwo.push(e.message.id));
    const results = await Promise.all(
      Array.from(
        { length: 100 },
        (_, i) => (i % 2 ? one : two).append("r", { from: null, text: `m${i}` }),
      ),
    );
    const ids = results.map((r) => r.message.id).sort((a, b) => a - b);
    const all = Array.from({ length: 100 }, (_, i) => i + 1);
    assert.deepEqual(ids, all);
    await until(() => seenOne.length >= 100 && seenTwo.length >= 100, "a hundred on each");
    assert.deepEqual(seenOne, all);
    assert.deepEqual(seenTwo, all);
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine stores a sender's cid once across two handles", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const draft = { from: null, sender: "client-a", cid: "c1", text: "hi" };
    const results = await Promise.all([one.append("r", draft), two.append("r", draft)]);
    assert.deepEqual(results.map((r) => r.duplicate).sort(), [false, true]);
    assert.equal(results[0].message.id, results[1].message.id);
    assert.equal((await one.read("r", undefined, 10)).messages.length, 1);
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine publishes presence changes to subscribers of another handle", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const events: string[] = [];
    await two.subscribe(
      "r",
      (e) => e.type !== "message" && events.push(`${e.type}:${e.member.nick}`),
    );
    await one.join("r", "c1", { id: "m-ann", nick: "ann" }, 60_000);
    await one.join("r", "c2", { id: "m-ann", nick: "annie" }, 60_000);
    await one.leave("r", "c1");
    await one.leave("r", "c2");
    await until(() => events.length >= 3, "join, rename and leave");
    assert.deepEqual(events, ["join:ann", "rename:annie", "leave:annie"]);
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine delivers its own presence events before join() resolves", async () => {
  const engine = await open(await freshPath());
  try {
    const events: string[] = [];
    await engine.subscribe("r", (e) => e.type !== "message" && events.push(e.type));
    await engine.join("r", "c1", { id: "m-ann", nick: "ann" }, 60_000);
    assert.deepEqual(events, ["join"]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine keeps epochs, ids and history when reopened on the same file", async () => {
  const path = await freshPath();
  retain(path);
  const first = await open(path);
  const { message } = await first.append("r", { from: null, text: "before" });
  await first.close();
  const again = await open(path);
  await release(path);
  try {
    const resumed = await again.read("r", { epoch: message.epoch, id: 0 }, 10);
    assert.equal(resumed.recovered, true);
    assert.equal(resumed.epoch, message.epoch);
    assert.deepEqual(resumed.messages.map((m) => m.text), ["before"]);
    const next = await again.append("r", { from: null, text: "after" });
    assert.equal(next.message.id, 2);
    assert.equal(next.message.epoch, message.epoch);
  } finally {
    await again.close();
  }
});

Deno.test("KvEngine stops delivering after unsubscribe and is ready until closed", async () => {
  const engine = await open(await freshPath());
  const seen: EngineEvent[] = [];
  const stop = await engine.subscribe("r", (e) => seen.push(e));
  assert.equal(await engine.ready(), true);
  stop();
  stop();
  await engine.append("r", { from: null, text: "unseen" });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(seen, []);
  await engine.close();
  assert.equal(await engine.ready(), false);
  await assert.rejects(engine.append("r", { from: null, text: "late" }), /closed/);
});
