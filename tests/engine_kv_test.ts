import assert from "node:assert/strict";
import type { Engine, EngineEvent } from "../lib/engine.ts";
import { CHUNK_BYTES, KvEngine, type KvEngineOptions } from "../lib/engines/kv.ts";
import type { StoredMessage } from "../lib/protocol.ts";
import { engineConformance } from "./engine_conformance.ts";
import { until } from "./fakes.ts";

const ann = { id: "m-ann", nick: "ann" };
const bob = { id: "m-bob", nick: "bob" };

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

Deno.test("KvEngine keeps a ban across a reopen on the same file", async () => {
  const path = await freshPath();
  retain(path);
  const first = await open(path);
  const end = Date.now() + 60_000;
  await first.ban("r", ann.id, end);
  await first.close();
  const again = await open(path);
  await release(path);
  try {
    assert.equal(await again.bannedUntil("r", ann.id), end);
    assert.equal(await again.bannedUntil("other", ann.id), undefined);
    await again.ban("r", ann.id, Date.now() - 1);
    assert.deepEqual(await keys(path, ["parley", "r", "ban"]), [], "lifting deletes the key");
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

Deno.test("KvEngine keeps edits and deletes across a reopen, and no signal", async () => {
  const path = await freshPath();
  retain(path);
  const first = await open(path, { historyFileBytes: 1 << 20 });
  const draft = await first.append("r", { from: ann, text: "draft" });
  const file = await first.append("r", {
    from: ann,
    data: picture(70_000),
    name: "secret.png",
    mime: "image/png",
  });
  const edit = await first.append("r", {
    from: ann,
    sender: "s",
    cid: "e1",
    kind: "edit",
    target: draft.message.id,
    text: "final",
  });
  const del = { from: ann, sender: "s", cid: "d1", kind: "delete" as const, target: 2 };
  await first.append("r", del);
  await first.signal("r", { type: "typing", member: ann });
  await first.close();
  const again = await open(path, { historyFileBytes: 1 << 20 });
  await release(path);
  try {
    const { head, messages: history } = await again.read("r", undefined, 10);
    assert.equal(head, 4, "the signal took no id");
    assert.deepEqual(history.map((m) => [m.id, m.kind ?? "message", m.text, m.deleted ?? false]), [
      [1, "message", "final", false],
      [2, "message", undefined, true],
      [3, "edit", "final", false],
      [4, "delete", undefined, false],
    ]);
    assert.equal(history[0].edited, edit.message.ts);
    assert.equal(history[1].data, undefined);
    assert.equal(history[1].name, undefined);
    assert.equal(file.message.id, 2);
    assert.deepEqual(await keys(path, ["parley", "r", "blob"]), [], "the file's chunks are freed");
    const page = await again.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.text, m.deleted ?? false]), [
      [1, "final", false],
      [2, undefined, true],
    ]);
    const resent = await again.append("r", del);
    assert.equal(resent.duplicate, true, "the delete's cid is still known");
    assert.equal(resent.message.id, 4);
    // A new subscriber gets what happens next, and no signal from before.
    const seen: EngineEvent[] = [];
    await again.subscribe("r", (e) => seen.push(e));
    await again.append("r", { from: bob, text: "after" });
    await until(() => seen.length >= 1, "the message after the reopen");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen.map((e) => e.type), ["message"]);
  } finally {
    await again.close();
  }
});

Deno.test("KvEngine lets a message borrow a long edit's chunks, and frees them with the delete", async () => {
  const path = await freshPath();
  const engine = await open(path);
  try {
    const long = "é".repeat(20_000);
    const { id } = (await engine.append("r", { from: ann, text: "short" })).message;
    await engine.append("r", { from: ann, kind: "edit", target: id, text: long });
    const blobs = await keys(path, ["parley", "r", "blob"]);
    assert.equal(blobs.length, 1, "one copy of the long text, the edit's");
    assert.equal((await engine.history("r", 99, 1)).messages[0].text, long);
    await engine.append("r", { from: ann, kind: "edit", target: id, text: "short again" });
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.equal(history[0].text, "short again");
    assert.equal(history[1].text, long, "the edit entry keeps its own text");
    assert.deepEqual(await keys(path, ["parley", "r", "blob"]), blobs);
    await engine.append("r", { from: ann, kind: "delete", target: id });
    assert.deepEqual(await keys(path, ["parley", "r", "blob"]), []);
    assert.deepEqual(await keys(path, ["parley", "r", "edits"]), []);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine tombstones every edit of a deleted message, more than one commit holds", async () => {
  const path = await freshPath();
  const engine = await open(path, { historySize: 200 });
  try {
    const { id } = (await engine.append("r", { from: ann, text: "v0" })).message;
    for (let i = 1; i <= 60; i++) {
      await engine.append("r", { from: ann, kind: "edit", target: id, text: `secret v${i}` });
    }
    assert.equal((await keys(path, ["parley", "r", "edits", id])).length, 60);
    assert.equal((await engine.read("r", undefined, 1)).messages[0].text, "secret v60");
    await engine.append("r", { from: ann, kind: "delete", target: id });
    const { messages: history } = await engine.read("r", undefined, 100);
    assert.equal(history.length, 62);
    for (const m of history) assert.ok(!JSON.stringify(m).includes("secret"), `leaked in ${m.id}`);
    assert.equal(history.filter((m) => m.deleted).length, 61);
    assert.deepEqual(await keys(path, ["parley", "r", "edits"]), []);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine trims edit index keys along with their edits", async () => {
  const path = await freshPath();
  const engine = await open(path, { historySize: 2 });
  try {
    const { message } = await engine.append("r", { from: ann, text: "m1" });
    await engine.append("r", { from: ann, kind: "edit", target: message.id, text: "m1!" });
    assert.equal((await keys(path, ["parley", "r", "edits"])).length, 1);
    for (let i = 0; i < 2; i++) await engine.append("r", { from: ann, text: `m${i + 2}` });
    assert.deepEqual(await keys(path, ["parley", "r", "edits"]), []);
    assert.deepEqual(await keys(path, ["parley", "r", "msg"]), [
      ["parley", "r", "msg", 3],
      ["parley", "r", "msg", 4],
    ]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine counts an edited text's new length against historyBytes, not the old one", async () => {
  // 128 bytes an entry plus two a character: 728 for 300 characters.
  const engine = await open(await freshPath(), { historyBytes: 1000 });
  try {
    const { message } = await engine.append("r", { from: ann, text: "x".repeat(300) });
    await engine.append("r", { from: ann, kind: "edit", target: message.id, text: "y" });
    await engine.append("r", { from: ann, text: "z".repeat(300) });
    // 130 + 130 + 728 is under 1000; counting the old text (728) would trim.
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.deepEqual(history.map((m) => m.id), [1, 2, 3]);
    await engine.append("r", { from: ann, text: "w" });
    const after = await engine.read("r", undefined, 10);
    assert.deepEqual(after.messages.map((m) => m.id), [2, 3, 4]);
  } finally {
    await engine.close();
  }
});

/** A handle on `kv` that counts reads (keys and lists) and atomic writes made through it. */
function counting(kv: Deno.Kv) {
  const counts = { keysRead: 0, lists: 0, writes: 0 };
  const proxy = new Proxy(kv, {
    get(target, name) {
      const value = Reflect.get(target, name, target);
      if (typeof value !== "function") return value;
      return (...args: unknown[]) => {
        if (name === "get") counts.keysRead++;
        if (name === "getMany") counts.keysRead += (args[0] as unknown[]).length;
        if (name === "list") counts.lists++;
        if (name === "atomic") counts.writes++;
        return value.apply(target, args);
      };
    },
  });
  return { kv: proxy, counts };
}

Deno.test("KvEngine refreshes a presence entry at the same cost in a room of 1 and of 40", async () => {
  const path = await freshPath();
  retain(path);
  const { kv, counts } = counting(await Deno.openKv(path));
  const engine = new KvEngine(kv, { historySize: 10, historyBytes: 1 << 20, historyFileBytes: 16 });
  try {
    const cost = async (room: string, others: number) => {
      await engine.join(room, "c0", ann, 60_000);
      for (let i = 1; i <= others; i++) {
        await engine.join(room, `c${i}`, { id: `m${i}`, nick: `n${i}` }, 60_000);
      }
      // The first refresh of a room also dates its sweep: measure the second.
      await engine.refresh(room, "c0", ann, 60_000);
      const before = { ...counts };
      await engine.refresh(room, "c0", ann, 60_000);
      return {
        keysRead: counts.keysRead - before.keysRead,
        lists: counts.lists - before.lists,
        writes: counts.writes - before.writes,
      };
    };
    const small = await cost("small", 0);
    const large = await cost("large", 39);
    assert.deepEqual(small, { keysRead: 2, lists: 0, writes: 1 });
    assert.deepEqual(large, small);
    assert.equal((await engine.members("large")).length, 40);
  } finally {
    await engine.close();
    await release(path);
  }
});

Deno.test("KvEngine: a refresh sweeps connections that stopped refreshing, once a TTL", async () => {
  let now = 1_000;
  const engine = await open(await freshPath(), { now: () => now });
  const peer = await open(paths.get(engine)!, { now: () => now });
  try {
    const events: string[] = [];
    await peer.subscribe(
      "r",
      (e) => e.type !== "message" && events.push(`${e.type}:${e.member.nick}`),
    );
    await engine.join("r", "c1", ann, 100);
    await engine.join("r", "c2", bob, 100); // Its instance dies: never refreshed.
    now = 1_060;
    await engine.refresh("r", "c1", ann, 100); // Dates the first sweep: 1160.
    now = 1_120;
    await engine.refresh("r", "c1", ann, 100); // bob expired at 1100; no sweep due.
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(events, ["join:ann", "join:bob"]);
    now = 1_170;
    await engine.refresh("r", "c1", ann, 100);
    await until(() => events.length >= 3, "bob's leave");
    assert.deepEqual(events, ["join:ann", "join:bob", "leave:bob"]);
    assert.deepEqual(await peer.members("r"), [ann]);
  } finally {
    await peer.close();
    await engine.close();
  }
});

Deno.test("KvEngine delivers a signal to subscribers of every handle, and stores it in no history", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const seenOne: EngineEvent[] = [];
    const seenTwo: EngineEvent[] = [];
    await one.subscribe("r", (e) => seenOne.push(e));
    await two.subscribe("r", (e) => seenTwo.push(e));
    await one.signal("r", { type: "typing", member: ann });
    await two.signal("r", { type: "typing", member: bob });
    assert.deepEqual(seenOne[0], { type: "typing", member: ann }, "own signal before resolving");
    await until(() => seenOne.length >= 2 && seenTwo.length >= 2, "both signals on both");
    for (const seen of [seenOne, seenTwo]) {
      assert.deepEqual(seen.map((e) => e.type === "typing" && e.member.nick).sort(), [
        "ann",
        "bob",
      ]);
    }
    assert.deepEqual(await keys(path, ["parley", "r", "msg"]), []);
    assert.deepEqual(await keys(path, ["parley", "r", "presence-event"]), []);
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine skips a signal of the wrong shape in the log and delivers the next", async () => {
  const path = await freshPath();
  const engine = await open(path);
  const kv = await Deno.openKv(path);
  try {
    const seen: EngineEvent[] = [];
    await engine.subscribe("r", (e) => seen.push(e));
    // What a newer or broken writer might leave: a kick without its reason.
    await kv.atomic()
      .set(["parley", "r", "signal", 1], { type: "kick", member: ann, by: null })
      .set(["parley", "r", "signal-head"], { seq: 1 })
      .commit();
    const kick = { type: "kick" as const, member: bob, reason: "spam", by: ann };
    await engine.signal("r", kick);
    await until(() => seen.length >= 1, "the good kick");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, [kick]);
  } finally {
    kv.close();
    await engine.close();
  }
});

Deno.test("KvEngine.history() pages files without reading their bytes", async () => {
  const engine = await open(await freshPath(), { historyFileBytes: 1 << 20 });
  try {
    const data = picture(100_000);
    await engine.append("r", { from: ann, data, name: "cat.png", mime: "image/png" });
    const page = await engine.history("r", 99, 10);
    assert.equal(page.messages[0].data, undefined);
    assert.deepEqual([page.messages[0].name, page.messages[0].size], ["cat.png", 100_000]);
    assertBytes((await engine.read("r", undefined, 1)).messages[0].data, data, "read");
  } finally {
    await engine.close();
  }
});

/** Message keys of a room with the versionstamp of the write that last set each. */
async function stamps(path: string, room: string): Promise<Map<number, string>> {
  const kv = await Deno.openKv(path);
  try {
    const found = new Map<number, string>();
    for await (const entry of kv.list({ prefix: ["parley", room, "msg"] })) {
      found.set(entry.key.at(-1) as number, entry.versionstamp);
    }
    return found;
  } finally {
    kv.close();
  }
}

Deno.test("KvEngine stores appends that wait together in one write, and each alone with groupCommits false", async () => {
  for (const groupCommits of [true, false]) {
    const path = await freshPath();
    const engine = await open(path, { groupCommits });
    try {
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => engine.append("r", { from: ann, text: `m${i}` })),
      );
      assert.deepEqual(
        results.map((r) => r.message.id),
        Array.from({ length: 20 }, (_, i) => i + 1),
        "ids in call order",
      );
      const writes = new Set((await stamps(path, "r")).values()).size;
      if (groupCommits) assert.equal(writes, 1, "one write for twenty appends made at once");
      else assert.equal(writes, 20);
      const { messages: history } = await engine.read("r", undefined, 50);
      assert.deepEqual(history.map((m) => m.text), results.map((r) => r.message.text));
    } finally {
      await engine.close();
    }
  }
});

Deno.test("KvEngine treats a cid sent twice in one write as a duplicate of the first", async () => {
  const path = await freshPath();
  const engine = await open(path);
  try {
    const seen: number[] = [];
    await engine.subscribe("r", (e) => e.type === "message" && seen.push(e.message.id));
    const draft = { from: ann, sender: "s", cid: "c1", text: "hi" };
    const results = await Promise.all([
      engine.append("r", { from: ann, text: "before" }),
      engine.append("r", draft),
      engine.append("r", { ...draft, text: "resent" }),
      engine.append("r", { ...draft, sender: "other" }),
    ]);
    assert.deepEqual(results.map((r) => [r.message.id, r.duplicate]), [
      [1, false],
      [2, false],
      [2, true],
      [3, false],
    ]);
    assert.equal(results[2].message.text, "hi", "the duplicate gives back the first");
    assert.equal(new Set((await stamps(path, "r")).values()).size, 1, "one write");
    assert.deepEqual(seen, [1, 2, 3], "the duplicate is not published");
    const again = await engine.append("r", draft);
    assert.deepEqual([again.message.id, again.duplicate], [2, true]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine applies edits and deletes to messages stored by the same write", async () => {
  const path = await freshPath();
  const engine = await open(path);
  try {
    const results = await Promise.all([
      engine.append("r", { from: ann, sender: "s", cid: "a", text: "v1" }),
      engine.append("r", { from: ann, sender: "s", cid: "b", kind: "edit", target: 1, text: "v2" }),
      engine.append("r", { from: bob, text: "other" }),
      engine.append("r", { from: bob, kind: "edit", target: 3, text: "other, fixed" }),
      engine.append("r", { from: ann, kind: "delete", target: 1 }),
      engine.append("r", { from: ann, kind: "edit", target: 1, text: "after the delete" }),
    ]);
    assert.deepEqual(results.map((r) => r.message.id), [1, 2, 3, 4, 5, 6]);
    assert.equal(new Set((await stamps(path, "r")).values()).size, 1, "one write");
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.deepEqual(history.map((m) => [m.id, m.kind ?? "message", m.text, m.deleted ?? false]), [
      [1, "message", undefined, true],
      [2, "edit", undefined, true],
      [3, "message", "other, fixed", false],
      [4, "edit", "other, fixed", false],
      [5, "delete", undefined, false],
      [6, "edit", "after the delete", false],
    ]);
    assert.equal(history[2].edited, results[3].message.ts);
    assert.deepEqual(await keys(path, ["parley", "r", "edits"]), [
      ["parley", "r", "edits", 3, 4],
    ]);
    const page = await engine.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.text, m.deleted ?? false]), [
      [1, undefined, true],
      [3, "other, fixed", false],
    ]);
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine groups files with their chunks, and drops the chunks of a copy resent in the same write", async () => {
  const path = await freshPath();
  const engine = await open(path, { historyFileBytes: 1 << 20 });
  try {
    const data = picture(100_000);
    const file = { from: ann, sender: "s", cid: "f1", data, name: "a.bin", mime: "a/b" };
    const results = await Promise.all([
      engine.append("r", { from: ann, text: "first" }),
      engine.append("r", file),
      engine.append("r", file),
      engine.append("r", { from: ann, text: "last" }),
    ]);
    assert.deepEqual(results.map((r) => [r.message.id, r.duplicate]), [
      [1, false],
      [2, false],
      [2, true],
      [3, false],
    ]);
    assertBytes(results[2].message.data, data, "the duplicate");
    const chunks = await keys(path, ["parley", "r", "blob"]);
    assert.equal(chunks.length, Math.ceil(data.byteLength / CHUNK_BYTES), "one copy of the bytes");
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.deepEqual(history.map((m) => m.text ?? m.name), ["first", "a.bin", "last"]);
    assertBytes(history[1].data, data, "history");
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine trims what a write pushes out of history in the same write", async () => {
  const path = await freshPath();
  const engine = await open(path, { historySize: 5 });
  try {
    await engine.append("r", { from: ann, sender: "s", cid: "c0", text: "m0" });
    const results = await Promise.all(
      Array.from(
        { length: 30 },
        (_, i) =>
          engine.append("r", { from: ann, sender: "s", cid: `c${i + 1}`, text: `m${i + 1}` }),
      ),
    );
    assert.equal(results.at(-1)!.message.id, 31);
    assert.deepEqual([...(await stamps(path, "r")).keys()], [27, 28, 29, 30, 31]);
    const dedups = await keys(path, ["parley", "r", "dedup"]);
    assert.deepEqual(dedups.map((k) => k.at(-1)), ["c26", "c27", "c28", "c29", "c30"]);
    const { messages: history } = await engine.read("r", undefined, 10);
    assert.deepEqual(history.map((m) => m.text), ["m26", "m27", "m28", "m29", "m30"]);
    const late = await engine.append("r", { from: ann, sender: "s", cid: "c3", text: "m3" });
    assert.equal(late.duplicate, false, "out of history, a cid is new again");
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine keeps the dedup key of a cid stored again while its first message waits to be trimmed", async () => {
  const path = await freshPath();
  retain(path);
  const big = await open(path, { historySize: 1000 });
  await Promise.all(
    Array.from(
      { length: 600 },
      (_, i) => big.append("r", { from: ann, sender: "s", cid: `c${i + 1}`, text: `m${i + 1}` }),
    ),
  );
  await big.close();
  // History shrunk by a new configuration: trimming catches up over several writes.
  const small = await open(path, { historySize: 3 });
  await release(path);
  try {
    const again = await small.append("r", { from: ann, sender: "s", cid: "c590", text: "anew" });
    assert.deepEqual([again.message.id, again.duplicate], [601, false], "c590 left history");
    const kept = [...(await stamps(path, "r")).keys()];
    assert.ok(kept.includes(590), "message 590 is not trimmed yet");
    await small.append("r", { from: ann, text: "more" });
    assert.deepEqual([...(await stamps(path, "r")).keys()], [600, 601, 602]);
    const resent = await small.append("r", { from: ann, sender: "s", cid: "c590", text: "x" });
    assert.deepEqual([resent.message.id, resent.duplicate], [601, true]);
  } finally {
    await small.close();
  }
});

Deno.test("KvEngine writes that lose to another handle's are built again: each cid once, ids contiguous", async () => {
  const path = await freshPath();
  const one = await open(path);
  const two = await open(path);
  try {
    const seen: number[] = [];
    await two.subscribe("r", (e) => e.type === "message" && seen.push(e.message.id));
    // Both handles send the same 60 cids at once, as a client resending to another instance.
    const send = (engine: Engine) =>
      Array.from(
        { length: 60 },
        (_, i) => engine.append("r", { from: ann, sender: "s", cid: `c${i}`, text: `m${i}` }),
      );
    const results = await Promise.all([...send(one), ...send(two)]);
    const fresh = results.filter((r) => !r.duplicate).map((r) => r.message.id);
    assert.deepEqual(fresh.sort((a, b) => a - b), Array.from({ length: 60 }, (_, i) => i + 1));
    for (let i = 0; i < 60; i++) {
      assert.equal(results[i].message.id, results[60 + i].message.id, `c${i} has one id`);
    }
    const { messages: history } = await one.read("r", undefined, 100);
    assert.equal(history.length, 60);
    assert.deepEqual(
      history.map((m) => m.cid).sort(),
      Array.from({ length: 60 }, (_, i) => `c${i}`).sort(),
    );
    await until(() => seen.length >= 60, "sixty messages on the second handle");
    assert.deepEqual(seen, history.map((m) => m.id));
  } finally {
    await two.close();
    await one.close();
  }
});

Deno.test("KvEngine splits appends made at once over several writes when one would pass Deno KV's limits", async () => {
  const path = await freshPath();
  const engine = await open(path, { historyBytes: 16 << 20 });
  try {
    // Each record is about 16 KiB: far over 800 KiB in all.
    const texts = Array.from({ length: 60 }, (_, i) => `${i}`.padEnd(16_000, "x"));
    const results = await Promise.all(texts.map((text) => engine.append("r", { from: ann, text })));
    assert.deepEqual(results.map((r) => r.message.id), texts.map((_, i) => i + 1));
    const writes = new Set((await stamps(path, "r")).values()).size;
    assert.ok(writes >= 2 && writes < 60, `${writes} writes for 60 appends`);
    const { messages: history } = await engine.read("r", undefined, 100);
    assert.equal(history.length, 60);
    assert.ok(history.every((m, i) => m.text === texts[i]), "every text, in order");
  } finally {
    await engine.close();
  }
});

Deno.test("KvEngine shares one commit among rooms appended to at once, each room's ids its own", async () => {
  const path = await freshPath();
  const engine = await open(path);
  try {
    const results = await Promise.all(
      ["a", "b", "c", "a", "b", "c"].map((room, i) =>
        engine.append(room, { from: ann, sender: "s", cid: `c${i}`, text: `${room}${i}` })
      ),
    );
    assert.deepEqual(results.map((r) => [r.message.room, r.message.id]), [
      ["a", 1],
      ["b", 1],
      ["c", 1],
      ["a", 2],
      ["b", 2],
      ["c", 2],
    ]);
    const writes = new Set<string>();
    for (const room of ["a", "b", "c"]) {
      for (const stamp of (await stamps(path, room)).values()) writes.add(stamp);
    }
    assert.equal(writes.size, 1, "one commit for three rooms");
    for (const room of ["a", "b", "c"]) {
      const { messages: history } = await engine.read(room, undefined, 10);
      assert.deepEqual(
        history.map((m) => m.text),
        results.filter((r) => r.message.room === room)
          .map((r) => r.message.text),
      );
    }
  } finally {
    await engine.close();
  }
});
