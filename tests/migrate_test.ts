/**
 * Moving a room between engines (`lib/migrate.ts` and each engine's
 * `importRoom`): the JSONL format and its validation, round trips between
 * every pair of engines (memory, kv on temp files, redis on a real
 * `redis-server`) that keep ids, epoch, edits, deletes, file bytes and the
 * dedup window, and go on as the source would; refused imports; the API
 * routes; and a rich client that resumes on the new engine.
 *
 * @module
 */
import assert from "node:assert/strict";
import { createApi } from "../lib/api.ts";
import type { Engine, MessageDraft } from "../lib/engine.ts";
import { KvEngine } from "../lib/engines/kv.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import {
  checkImport,
  encodeRoom,
  exportRoom,
  parseRoom,
  readLines,
  type RoomExport,
} from "../lib/migrate.ts";
import { type StoredMessage, SUBPROTOCOL } from "../lib/protocol.ts";
import { makeHub } from "./fakes.ts";
import { type Client, connect, startServer } from "./helpers.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignoreRedis = await redisSkipReason("migrate_test.ts");
const redis = ignoreRedis === undefined ? await startRedis() : undefined;
// One server for the whole file; the process ends right after.
globalThis.addEventListener("unload", () => redis?.kill());

/** One clock for every engine, so the same appends get the same times on the source and the target. */
const now = () => 1_764_662_400_000;
const LIMITS = { historySize: 50, historyBytes: 1 << 20, historyFileBytes: 1000 };
const ROOM = "team";
const ann = { id: "m-ann", nick: "ann" };
const bob = { id: "m-bob", nick: "bob", verified: true };

type Kind = "memory" | "kv" | "redis";

/** Opens an engine of `kind` on fresh storage; `dispose` closes it and removes its files. */
async function open(kind: Kind): Promise<{ engine: Engine; dispose(): Promise<void> }> {
  if (kind === "memory") {
    const engine = new MemoryEngine({ ...LIMITS, now });
    return { engine, dispose: () => engine.close() };
  }
  if (kind === "kv") {
    const dir = await Deno.makeTempDir({ prefix: "parley-migrate-" });
    const engine = await KvEngine.open({ ...LIMITS, now, kvPath: `${dir}/parley.sqlite` });
    return {
      engine,
      async dispose() {
        await engine.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
  }
  const engine = await RedisEngine.connect({
    ...LIMITS,
    now,
    redisUrl: redis!.url,
    keyPrefix: `migrate-${crypto.randomUUID().slice(0, 8)}:`,
  });
  return { engine, dispose: () => engine.close() };
}

const bytesOf = (n: number, seed: number) =>
  Uint8Array.from({ length: n }, (_, i) => (i * seed) % 251);

/** A history with every kind of entry: texts, raw lines, files kept and not, edits, deletes, replies, long texts. */
const HISTORY: MessageDraft[] = [
  { from: ann, sender: "s-ann", cid: "c1", text: "one" },
  { from: bob, sender: "s-bob", cid: "c1", text: "two" },
  { from: null, text: "a raw line" },
  {
    from: ann,
    sender: "s-ann",
    cid: "c2",
    data: bytesOf(500, 7),
    name: "a.png",
    mime: "image/png",
  },
  {
    from: ann,
    sender: "s-ann",
    cid: "c3",
    data: bytesOf(3000, 3),
    name: "big.bin",
    mime: "application/octet-stream",
  },
  { from: ann, sender: "s-ann", cid: "c4", kind: "edit", target: 1, text: "one, edited" },
  { from: bob, sender: "s-bob", cid: "c2", text: "re: one", replyTo: 1 },
  { from: bob, sender: "s-bob", cid: "c3", kind: "edit", target: 2, text: "two, edited" },
  { from: bob, sender: "s-bob", cid: "c4", kind: "delete", target: 2 },
  { from: ann, sender: "s-ann", cid: "c5", kind: "edit", target: 1, text: "one, again" },
  { from: ann, sender: "s-ann", cid: "c6", text: "x".repeat(20_000) },
  { from: ann, sender: "s-ann", cid: "c7", kind: "edit", target: 11, text: "y".repeat(17_000) },
  {
    from: ann,
    sender: "s-ann",
    cid: "c8",
    data: new Uint8Array(0),
    name: "empty",
    mime: "text/plain",
  },
];

/** What happens after the move, on the source and the target alike. */
const AFTER: MessageDraft[] = [
  { from: ann, sender: "s-ann", cid: "c9", kind: "delete", target: 1 },
  { from: ann, sender: "s-ann", cid: "c10", kind: "edit", target: 11, text: "short now" },
  { from: bob, sender: "s-bob", cid: "c5", text: "after the move" },
];

/** A message as engines may differ in showing it: no undefined fields, no `edited` on a tombstone. */
function normal(m: StoredMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    if (v === undefined || k === "room" || (m.deleted && k === "edited")) continue;
    out[k] = v instanceof Uint8Array ? Array.from(v) : v;
  }
  return out;
}

async function all(engine: Engine): Promise<Record<string, unknown>[]> {
  const { messages } = await engine.read(ROOM, undefined, 1000);
  return messages.map(normal);
}

/** Encodes and parses again, as a file would carry it. */
async function viaJsonl(snapshot: RoomExport): Promise<RoomExport> {
  const text = [...encodeRoom(snapshot)].map((line) => `${line}\n`).join("");
  return await parseRoom(readLines(new Blob([text]).stream()));
}

const KINDS: Kind[] = ["memory", "kv", "redis"];
for (const from of KINDS) {
  for (const to of KINDS) {
    if (from === to) continue;
    Deno.test({
      name:
        `A room moved from ${from} to ${to} keeps ids, epoch, edits, deletes, file bytes and dedup, and goes on as on ${from}`,
      ignore: (from === "redis" || to === "redis") && ignoreRedis !== undefined,
      async fn() {
        const source = await open(from);
        const target = await open(to);
        try {
          for (const draft of HISTORY) await source.engine.append(ROOM, draft);
          const exported = await exportRoom(source.engine, ROOM);
          assert.equal(exported.head, HISTORY.length);
          const snapshot = await viaJsonl(exported);
          await target.engine.importRoom!(ROOM, snapshot);

          assert.deepEqual(await all(target.engine), await all(source.engine));
          const before = await source.engine.read(ROOM, undefined, 0);
          const after = await target.engine.read(ROOM, { epoch: before.epoch, id: 6 }, 50);
          assert.equal(after.recovered, true);
          assert.equal(after.epoch, before.epoch);
          assert.equal(after.head, HISTORY.length);
          assert.deepEqual(after.messages.map((m) => m.id), [7, 8, 9, 10, 11, 12, 13]);
          const file = (await target.engine.read(ROOM, { epoch: before.epoch, id: 3 }, 1))
            .messages[0];
          assert.deepEqual(Array.from(file.data!), Array.from(bytesOf(500, 7)), "file bytes");

          // Resends of cids sent before the move are duplicates of the originals.
          for (const [i, draft] of HISTORY.entries()) {
            if (!draft.cid) continue;
            const again = await target.engine.append(ROOM, { ...draft, text: "resent" });
            assert.equal(again.duplicate, true, `cid ${draft.sender}/${draft.cid}`);
            assert.equal(again.message.id, i + 1);
          }
          // Both go on alike: a delete scrubs edits made before the move.
          for (const draft of AFTER) {
            const a = await source.engine.append(ROOM, draft);
            const b = await target.engine.append(ROOM, draft);
            assert.deepEqual([b.message.id, b.message.epoch], [a.message.id, a.message.epoch]);
          }
          const moved = await all(target.engine);
          assert.deepEqual(moved, await all(source.engine));
          assert.equal(moved[0].deleted, true);
          assert.equal(moved[5].deleted, true, "the edit made before the move is scrubbed");
          assert.equal(moved[9].deleted, true);
          assert.equal(moved[10].text, "short now");
        } finally {
          await source.dispose();
          await target.dispose();
        }
      },
    });
  }
}

for (const kind of KINDS) {
  Deno.test({
    name: `The ${kind} engine refuses an import into a room that has messages, and changes nothing`,
    ignore: kind === "redis" && ignoreRedis !== undefined,
    async fn() {
      const source = await open("memory");
      const target = await open(kind);
      try {
        for (const draft of HISTORY.slice(0, 3)) await source.engine.append(ROOM, draft);
        await target.engine.append(ROOM, {
          from: ann,
          sender: "s-x",
          cid: "1",
          text: "here first",
        });
        const before = await all(target.engine);
        const snapshot = await exportRoom(source.engine, ROOM);
        await assert.rejects(
          () => target.engine.importRoom!(ROOM, snapshot),
          (error: Error) =>
            error instanceof RangeError &&
            error.message ===
              `Cannot import into room "team": it already has messages (newest id 1); import only into a room without any`,
        );
        assert.deepEqual(await all(target.engine), before);
        // An empty room that was only read (it has an epoch) takes an import.
        await target.engine.read("other", undefined, 10);
        await target.engine.importRoom!("other", snapshot);
        const { messages, epoch } = await target.engine.read("other", undefined, 10);
        assert.equal(epoch, snapshot.epoch);
        assert.deepEqual(messages.map((m) => m.text), ["one", "two", "a raw line"]);
      } finally {
        await source.dispose();
        await target.dispose();
      }
    },
  });
}

Deno.test("checkImport() refuses what the target's history limits would not keep, naming the setting", () => {
  const m = (id: number, extra: Partial<StoredMessage> = {}): StoredMessage => ({
    room: ROOM,
    epoch: "e1",
    id,
    ts: 1,
    from: null,
    text: "hi",
    ...extra,
  });
  const snapshot = { epoch: "e1", head: 3, messages: [m(1), m(2), m(3)] };
  assert.throws(
    () => checkImport(ROOM, snapshot, { ...LIMITS, historySize: 2 }, 0),
    /the export holds 3 messages, HISTORY_SIZE here is 2/,
  );
  assert.throws(
    () => checkImport(ROOM, snapshot, { ...LIMITS, historyBytes: 300 }, 0),
    /the export counts 396 history bytes, HISTORY_BYTES here is 300/,
  );
  const file = {
    epoch: "e1",
    head: 1,
    messages: [m(1, { text: undefined, data: new Uint8Array(10) })],
  };
  assert.throws(
    () => checkImport(ROOM, file, { ...LIMITS, historyFileBytes: 9 }, 0),
    /message 1 is a file of 10 bytes, HISTORY_FILE_BYTES here is 9/,
  );
  checkImport(ROOM, snapshot, LIMITS, 0);
});

/** A valid export, as lines, to break one at a time. */
function validLines(): string[] {
  return [
    `{"parley":"room","version":1,"room":"team","epoch":"abc123","head":3,"messages":2,"dedup":1}`,
    `{"type":"message","id":2,"ts":1000,"from":{"id":"m1","nick":"ann"},"sender":"s1","cid":"c1","text":"hi"}`,
    `{"type":"message","id":3,"ts":1001,"from":null,"name":"f","mime":"text/plain","size":3,"data":"YWJj"}`,
    `{"type":"dedup","sender":"s1","cid":"c1","id":2}`,
  ];
}

Deno.test("parseRoom() reads a valid export", async () => {
  const room = await parseRoom(validLines());
  assert.equal(room.room, "team");
  assert.equal(room.epoch, "abc123");
  assert.equal(room.head, 3);
  assert.equal(room.messages[0].text, "hi");
  assert.deepEqual(Array.from(room.messages[1].data!), [97, 98, 99]);
  assert.deepEqual([...encodeRoom(room)], validLines());
});

Deno.test("parseRoom() refuses a malformed line, naming its number and what is wrong", async () => {
  const cases: [number, string, RegExp][] = [
    [
      0,
      `{"parley":"room","version":2,"room":"team","epoch":"e","head":0,"messages":0,"dedup":0}`,
      /^Cannot import line 1: version 2 cannot be read; this Parley reads version 1$/,
    ],
    [0, `{"type":"message"}`, /^Cannot import line 1: the first line must be the header/],
    [
      1,
      `{"type":"message","id":2,"ts":1000,"from":null,"text":"hi"`,
      /^Cannot import line 2: it is not JSON/,
    ],
    [
      1,
      `{"type":"message","id":2,"ts":1000,"from":null,"text":"hi","colour":"red"}`,
      /^Cannot import line 2: unknown field "colour"$/,
    ],
    [
      1,
      `{"type":"message","id":2,"ts":"soon","from":null,"text":"hi"}`,
      /^Cannot import line 2: ts must be a time in ms, not "soon"$/,
    ],
    [
      1,
      `{"type":"message","id":2,"ts":1,"from":{"nick":"ann"},"text":"hi"}`,
      /^Cannot import line 2: from must be null or/,
    ],
    [
      1,
      `{"type":"message","id":2,"ts":1,"from":null}`,
      /^Cannot import line 2: a message needs text, or a file's name, mime and size$/,
    ],
    [
      1,
      `{"type":"message","id":2,"ts":1,"from":null,"kind":"edit","text":"x"}`,
      /^Cannot import line 2: an edit entry needs target/,
    ],
    [
      2,
      `{"type":"message","id":4,"ts":1001,"from":null,"text":"x"}`,
      /^Cannot import line 3: id must be 3 \(ids are consecutive\), not 4$/,
    ],
    [
      2,
      `{"type":"message","id":3,"ts":1001,"from":null,"name":"f","mime":"text/plain","size":4,"data":"YWJj"}`,
      /^Cannot import line 3: data holds 3 bytes but size says 4$/,
    ],
    [
      2,
      `{"type":"message","id":3,"ts":1001,"from":null,"name":"f","mime":"text/plain","size":3,"data":"YW*j"}`,
      /^Cannot import line 3: data must be base64/,
    ],
    [2, ``, /^Cannot import line 3: it is empty$/],
    [
      3,
      `{"type":"dedup","sender":"s1","cid":"c2","id":2}`,
      /^Cannot import line 4: no message line has this sender and cid \(id 2\)$/,
    ],
    [
      3,
      `{"type":"dedup","sender":"s1","cid":"c1","id":3}`,
      /^Cannot import line 4: this sender and cid are message 2's, not 3's$/,
    ],
  ];
  for (const [index, line, expected] of cases) {
    const lines = validLines();
    lines[index] = line;
    await assert.rejects(() => parseRoom(lines), (error: Error) => {
      assert.ok(error instanceof SyntaxError, `${line}: ${error}`);
      assert.match(error.message, expected);
      return true;
    });
  }
  // A file cut after a whole line is caught by the header's counts.
  await assert.rejects(() => parseRoom(validLines().slice(0, 2)), /announces 2 messages, 1 came/);
  await assert.rejects(
    () => parseRoom(validLines().slice(0, 3)),
    /announces 1 dedup lines, 0 came/,
  );
  await assert.rejects(() => parseRoom([]), /the input is empty/);
  // Invalid UTF-8 is refused with its line.
  const bytes = new Uint8Array([...new TextEncoder().encode(validLines()[0] + "\n"), 0xff, 0x0a]);
  await assert.rejects(
    () => parseRoom(readLines(new Blob([bytes]).stream())),
    /line 2: it is not valid UTF-8/,
  );
});

const KEY = "migrate-test-api-key-1234";

async function call(
  api: (req: Request, url: URL) => Promise<Response>,
  method: string,
  path: string,
  body?: string,
): Promise<Response> {
  const url = new URL(path, "http://parley.test");
  return await api(
    new Request(url, { method, body, headers: { authorization: `Bearer ${KEY}` } }),
    url,
  );
}

Deno.test("GET /api/rooms/:room/export and POST /api/rooms/:room/import move a memory room through the API", async () => {
  const from = makeHub({ engine: new MemoryEngine(LIMITS) });
  const to = makeHub({ engine: new MemoryEngine(LIMITS) });
  const source = createApi({ hub: from, apiKey: KEY });
  const target = createApi({ hub: to, apiKey: KEY, maxImportBytes: 200_000 });
  for (const draft of HISTORY) await from.options.engine.append(ROOM, draft);

  const exported = await call(source, "GET", "/api/rooms/team/export");
  assert.equal(exported.status, 200);
  assert.equal(exported.headers.get("content-type"), "application/x-ndjson; charset=utf-8");
  const text = await exported.text();
  assert.equal(text.split("\n").length, 1 + HISTORY.length + 12 + 1);

  const missing = await call(source, "GET", "/api/rooms/nobody/export");
  assert.equal(missing.status, 404);
  assert.match((await missing.json()).error.message, /room "nobody" has no messages to export/);

  const imported = await call(target, "POST", "/api/rooms/moved/import", text);
  assert.equal(imported.status, 201);
  assert.deepEqual(await imported.json(), { room: "moved", messages: 13, dedup: 12, bytes: 500 });
  const a = await from.options.engine.read(ROOM, undefined, 100);
  const b = await to.options.engine.read("moved", undefined, 100);
  assert.deepEqual(b.messages.map(normal), a.messages.map(normal));
  assert.equal(b.epoch, a.epoch);

  const again = await call(target, "POST", "/api/rooms/moved/import", text);
  assert.equal(again.status, 409);
  assert.match((await again.json()).error.message, /it already has messages \(newest id 13\)/);

  const broken = text.replace(`"id":5,`, `"id":"five",`);
  const bad = await call(target, "POST", "/api/rooms/fresh/import", broken);
  assert.equal(bad.status, 400);
  assert.match(
    (await bad.json()).error.message,
    /^Cannot import line 6: id must be a positive integer, not "five"$/,
  );
  assert.equal((await to.options.engine.read("fresh", undefined, 10)).head, 0, "nothing written");

  const big = await call(target, "POST", "/api/rooms/fresh/import", text + "x".repeat(200_000));
  assert.equal(big.status, 413);
  const noKey = await createApi({ hub: to, apiKey: KEY })(
    new Request("http://parley.test/api/rooms/team/export"),
    new URL("http://parley.test/api/rooms/team/export"),
  );
  assert.equal(noKey.status, 401);
  await from.options.engine.close();
  await to.options.engine.close();
});

/** Opens a rich client in `room` and sends `hello`; returns it with its `welcome`. */
async function join(
  ws: string,
  hello: Record<string, unknown>,
): Promise<{ client: Client; welcome: Record<string, unknown> }> {
  const client = await connect(`${ws}/${ROOM}`, SUBPROTOCOL);
  client.send({ type: "hello", ...hello });
  return { client, welcome: await client.until("welcome") };
}

Deno.test("A rich client resumes with recovered: true on a kv server after its memory server's room moved there", async () => {
  const dir = await Deno.makeTempDir({ prefix: "parley-migrate-" });
  const kvPath = `${dir}/parley.sqlite`;
  const clients: Client[] = [];
  const first = await startServer({ apiKey: KEY });
  let second: Awaited<ReturnType<typeof startServer>> | undefined;
  try {
    const ann = await join(first.ws, { nick: "ann", client: "move-ann" });
    clients.push(ann.client);
    const acks: { epoch: string; id: number }[] = [];
    for (const text of ["one", "two", "three", "four"]) {
      ann.client.send({ type: "message", cid: text, text });
      acks.push(await ann.client.until("ack"));
    }
    const response = await fetch(`${first.url}/api/rooms/${ROOM}/export`, {
      headers: { authorization: `Bearer ${KEY}` },
    });
    const snapshot = await parseRoom(readLines(response.body!));
    await ann.client.close();
    await first.close();

    const kv = await KvEngine.open({ ...LIMITS, kvPath });
    await kv.importRoom(ROOM, snapshot);
    await kv.close();

    second = await startServer({ engine: "kv", kvPath });
    const last = acks[1];
    const resumed = await join(second.ws, { nick: "ann", client: "move-ann", last });
    clients.push(resumed.client);
    assert.equal(resumed.welcome.recovered, true);
    assert.equal(resumed.welcome.epoch, last.epoch);
    assert.equal(resumed.welcome.head, 4);
    assert.equal(resumed.welcome.replay, 2);
    const replayed = [await resumed.client.json(), await resumed.client.json()];
    assert.deepEqual(replayed.map((m) => [m.id, m.text]), [[3, "three"], [4, "four"]]);
    // The client resends what it never saw acked: a duplicate, with the original id.
    resumed.client.send({ type: "message", cid: "two", text: "two" });
    const ack = await resumed.client.until<Record<string, unknown>>("ack");
    assert.deepEqual([ack.id, ack.epoch, ack.duplicate], [2, last.epoch, true]);
    resumed.client.send({ type: "message", cid: "five", text: "five" });
    const next = await resumed.client.until<Record<string, unknown>>("ack");
    assert.deepEqual([next.id, next.epoch, next.duplicate], [5, last.epoch, false]);
  } finally {
    for (const client of clients) await client.close();
    await second?.close();
    await Deno.remove(dir, { recursive: true });
  }
});
