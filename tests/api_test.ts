/**
 * The server API, called directly with hand-built requests on a hub over the
 * in-memory engine: no network.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type ApiOptions, createApi } from "../lib/api.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import type { Hub } from "../lib/hub.ts";
import type { Logger } from "../lib/log.ts";
import { CloseCode, type Member } from "../lib/protocol.ts";
import { FakeSocket, makeHub, until, welcomed } from "./fakes.ts";

const KEY = "test-api-key-4f1c9a7e2b";
const ORIGIN = "http://parley.test";

type Json = Record<string, unknown>;

interface Answer {
  status: number;
  headers: Headers;
  body: Json | null;
  text: string;
}

interface CallOptions {
  body?: unknown;
  /** The raw body, sent as is (a string or a stream). */
  raw?: BodyInit;
  /** The API key to present; null sends no Authorization header. */
  key?: string | null;
  headers?: Record<string, string>;
}

/** Calls the API as the handler would, and reads the answer. */
async function call(
  api: (req: Request, url: URL) => Promise<Response>,
  method: string,
  path: string,
  options: CallOptions = {},
): Promise<Answer> {
  const headers = new Headers(options.headers);
  const key = options.key === undefined ? KEY : options.key;
  if (key !== null) headers.set("authorization", `Bearer ${key}`);
  let body: BodyInit | undefined = options.raw;
  if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    headers.set("content-type", "application/json");
  }
  const url = new URL(path, ORIGIN);
  const res = await api(new Request(url, { method, headers, body }), url);
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : null, text };
}

/** The `error` object of an answer. */
function errorOf(answer: Answer): { code: string; message: string } {
  assert.ok(answer.body, `expected an error body, got ${answer.status} ${answer.text}`);
  return answer.body.error as { code: string; message: string };
}

function setup(options: Partial<ApiOptions> = {}) {
  const hub = makeHub();
  const api = createApi({ hub, apiKey: KEY, ...options });
  return { hub, api };
}

/** A rich client of the hub, joined to `room`. */
async function member(hub: Hub, nick: string, room = "r") {
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room, rich: true });
  conn.receive(JSON.stringify({ type: "hello", nick, client: `client-${nick}-0001` }));
  await welcomed(socket);
  const you = socket.envelopes().find((e) => e.type === "welcome")!.you as Member;
  return { socket, conn, you };
}

/** A logger that keeps every line, to check what reaches the log. */
function recordingLogger(): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (event: string, fields?: Json) =>
    lines.push(JSON.stringify({ level, event, ...fields }));
  return {
    lines,
    logger: { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") },
  };
}

Deno.test("createApi() refuses a request without a bearer key with 401 and www-authenticate", async () => {
  const { hub, api } = setup();
  const attempts: Record<string, string>[] = [
    {},
    { authorization: `Basic ${btoa(`api:${KEY}`)}` },
    { authorization: "Bearer   " },
  ];
  for (const headers of attempts) {
    const answer = await call(api, "POST", "/api/rooms/r/messages", {
      key: null,
      headers,
      body: { text: "hi", name: "bot" },
    });
    assert.equal(answer.status, 401, JSON.stringify(headers));
    assert.equal(errorOf(answer).code, "unauthorized");
    assert.equal(errorOf(answer).message, "missing Authorization: Bearer <API_KEY>");
    assert.equal(answer.headers.get("www-authenticate"), "Bearer");
    assert.match(answer.headers.get("content-type") ?? "", /^application\/json/);
  }
  const page = await hub.options.engine.history("r", Number.MAX_SAFE_INTEGER, 10);
  assert.equal(page.messages.length, 0, "nothing was posted");
});

Deno.test("createApi() refuses a wrong key with 401, without echoing it or acting", async () => {
  const { hub, api } = setup();
  for (const wrong of [KEY.slice(0, -1), `${KEY}x`, KEY.toUpperCase(), "x"]) {
    const answer = await call(api, "POST", "/api/rooms/r/messages", {
      key: wrong,
      body: { text: "hi", name: "bot" },
    });
    assert.equal(answer.status, 401, wrong);
    assert.equal(errorOf(answer).code, "unauthorized");
    assert.ok(!answer.text.includes(wrong), "the key sent is not echoed");
    assert.ok(!answer.text.includes(KEY), "the real key is not echoed");
    assert.match(answer.headers.get("www-authenticate") ?? "", /^Bearer/);
  }
  // Unknown routes are hidden too, until the key is right.
  assert.equal((await call(api, "GET", "/api/nope", { key: "x" })).status, 401);
  const page = await hub.options.engine.history("r", Number.MAX_SAFE_INTEGER, 10);
  assert.equal(page.messages.length, 0, "nothing was posted");
});

Deno.test("createApi() accepts the key with a lower-case scheme and refuses an empty key at creation", async () => {
  const { api } = setup();
  const answer = await call(api, "GET", "/api/rooms/r/members", {
    key: null,
    headers: { authorization: `bearer ${KEY}` },
  });
  assert.equal(answer.status, 200);
  assert.throws(() => createApi({ hub: makeHub(), apiKey: "" }), TypeError);
  assert.throws(() => createApi({ hub: makeHub(), apiKey: "  " }), TypeError);
  assert.throws(() => createApi({ hub: makeHub(), apiKey: `${KEY} ` }), /white space/);
});

Deno.test("POST /api/rooms/:room/messages delivers a bot message to the room's members", async () => {
  const { hub, api } = setup();
  const ann = await member(hub, "ann");
  const answer = await call(api, "POST", "/api/rooms/r/messages", {
    body: { text: "build 42 passed", name: "Build bot" },
  });
  assert.equal(answer.status, 201, answer.text);
  assert.match(answer.headers.get("content-type") ?? "", /^application\/json/);
  assert.equal(typeof answer.body?.id, "number");
  assert.equal(typeof answer.body?.epoch, "string");
  await until(
    () => ann.socket.envelopes().some((e) => e.type === "message" && e.id === answer.body?.id),
    "the posted message",
  );
  const message = ann.socket.envelopes().find((e) => e.id === answer.body?.id)!;
  assert.equal(message.text, "build 42 passed");
  assert.equal(message.epoch, answer.body?.epoch);
  const from = message.from as Member;
  assert.equal(from.nick, "Build bot");
  assert.equal(from.bot, true);
  assert.equal(from.verified, true);
  ann.conn.close();
});

Deno.test("POST /api/rooms/:room/messages refuses a bad text or name, naming the field", async () => {
  const { hub, api } = setup();
  const max = hub.options.maxTextLength;
  const cases: [Json, RegExp][] = [
    [{ text: "hi" }, /^name: required/],
    [{ text: "hi", name: "" }, /^name:/],
    [{ text: "hi", name: "   " }, /^name:/],
    [{ text: "hi", name: "x".repeat(33) }, /^name: .*32/],
    [{ text: "hi", name: "bot\nline" }, /^name: .*control/],
    [{ text: "hi", name: "evil\u202ebot" }, /^name: .*bidirectional/],
    [{ text: "hi", name: 7 }, /^name:/],
    [{ name: "bot" }, /^text:/],
    [{ text: "", name: "bot" }, /^text:/],
    [{ text: 5, name: "bot" }, /^text:/],
    [{ text: "x".repeat(max + 1), name: "bot" }, new RegExp(`^text: .*${max}`)],
    [{ text: "hi", name: "bot", nick: "b" }, /"nick": unknown field/],
  ];
  for (const [body, message] of cases) {
    const answer = await call(api, "POST", "/api/rooms/r/messages", { body });
    assert.equal(answer.status, 400, JSON.stringify(body));
    assert.equal(errorOf(answer).code, "bad_request");
    assert.match(errorOf(answer).message, message);
  }
  // Code points, not UTF-16 units: max emoji fit.
  const emoji = await call(api, "POST", "/api/rooms/r/messages", {
    body: { text: "😀".repeat(max), name: "bot" },
  });
  assert.equal(emoji.status, 201, emoji.text);
  const page = await hub.options.engine.history("r", Number.MAX_SAFE_INTEGER, 10);
  assert.equal(page.messages.length, 1, "only the valid message was stored");
});

Deno.test("DELETE /api/rooms/:room/messages/:id leaves a tombstone the room sees; unknown ids are 404", async () => {
  const { hub, api } = setup();
  const ann = await member(hub, "ann");
  ann.conn.receive(JSON.stringify({ type: "message", cid: "c1", text: "a secret" }));
  await until(() => ann.socket.envelopes().some((e) => e.type === "ack"), "ack");
  const id = ann.socket.envelopes().find((e) => e.type === "ack")!.id as number;
  const answer = await call(api, "DELETE", `/api/rooms/r/messages/${id}`);
  assert.equal(answer.status, 204, answer.text);
  assert.equal(answer.text, "");
  await until(
    () => ann.socket.envelopes().some((e) => e.type === "delete" && e.target === id),
    "the delete event",
  );
  const page = await call(api, "GET", "/api/rooms/r/messages");
  const messages = page.body?.messages as Json[];
  assert.equal(messages.length, 1);
  assert.equal(messages[0].id, id);
  assert.equal(messages[0].deleted, true);
  assert.ok(!page.text.includes("a secret"), page.text);

  const missing = await call(api, "DELETE", "/api/rooms/r/messages/999");
  assert.equal(missing.status, 404);
  assert.equal(errorOf(missing).code, "not_found");
  assert.match(errorOf(missing).message, /999/);
  for (const bad of ["0", "abc", "1.5", "-1", "99999999999999999"]) {
    const answer = await call(api, "DELETE", `/api/rooms/r/messages/${bad}`);
    assert.equal(answer.status, 400, bad);
    assert.equal(errorOf(answer).code, "bad_request");
  }
  ann.conn.close();
});

Deno.test("GET /api/rooms/:room/messages pages history with before and limit, without file bytes", async () => {
  const { hub, api } = setup();
  const ids: number[] = [];
  for (const text of ["one", "two", "three"]) {
    const answer = await call(api, "POST", "/api/rooms/r/messages", {
      body: { text, name: "bot" },
    });
    ids.push(answer.body?.id as number);
  }
  const { message: file } = await hub.options.engine.append("r", {
    from: { id: "a", nick: "ann" },
    data: new Uint8Array([1, 2, 3]),
    name: "a.bin",
    mime: "application/octet-stream",
  });

  const newest = await call(api, "GET", "/api/rooms/r/messages?limit=2");
  assert.equal(newest.status, 200, newest.text);
  assert.equal(typeof newest.body?.epoch, "string");
  assert.equal(newest.body?.more, true);
  const got = newest.body?.messages as Json[];
  assert.deepEqual(got.map((m) => m.id), [ids[2], file.id]);
  assert.equal(got[0].text, "three");
  assert.equal(got[1].type, "file");
  assert.equal(got[1].omitted, true);
  assert.equal(got[1].data, undefined);

  const older = await call(api, "GET", `/api/rooms/r/messages?before=${ids[2]}&limit=50`);
  assert.deepEqual((older.body?.messages as Json[]).map((m) => m.text), ["one", "two"]);
  assert.equal(older.body?.more, false);

  const all = await call(api, "GET", "/api/rooms/r/messages");
  assert.equal((all.body?.messages as Json[]).length, 4, "the default page holds them all");
  const empty = await call(api, "GET", "/api/rooms/elsewhere/messages");
  assert.deepEqual(empty.body?.messages, []);
});

Deno.test("GET /api/rooms/:room/messages refuses a bad before or limit with 400", async () => {
  const { api } = setup();
  for (
    const query of [
      "limit=0",
      "limit=201",
      "limit=abc",
      "limit=1.5",
      "limit=-1",
      "before=0",
      "before=x",
      "before=99999999999999999",
    ]
  ) {
    const answer = await call(api, "GET", `/api/rooms/r/messages?${query}`);
    assert.equal(answer.status, 400, query);
    assert.equal(errorOf(answer).code, "bad_request");
    assert.match(errorOf(answer).message, new RegExp(`^${query.split("=")[0]}:`));
  }
  assert.equal((await call(api, "GET", "/api/rooms/r/messages?limit=200")).status, 200);
});

Deno.test("GET /api/rooms/:room/members lists the joined members", async () => {
  const { hub, api } = setup();
  const before = await call(api, "GET", "/api/rooms/r/members");
  assert.equal(before.status, 200);
  assert.deepEqual(before.body, { members: [] });
  const ann = await member(hub, "ann");
  const answer = await call(api, "GET", "/api/rooms/r/members");
  assert.equal(answer.status, 200, answer.text);
  const members = answer.body?.members as Member[];
  assert.deepEqual(members.map((m) => [m.id, m.nick]), [[ann.you.id, "ann"]]);
  ann.conn.close();
});

Deno.test("POST /api/rooms/:room/kick closes the member's socket with 4403 and bans it for the minutes given", async () => {
  const { hub, api } = setup();
  const ann = await member(hub, "ann");
  const bob = await member(hub, "bob");
  const start = Date.now();
  const answer = await call(api, "POST", "/api/rooms/r/kick", {
    body: { member: ann.you.id, minutes: 10, reason: "spam" },
  });
  assert.equal(answer.status, 200, answer.text);
  assert.equal((answer.body?.kicked as Member).id, ann.you.id);
  const until_ = answer.body?.until as number;
  assert.ok(until_ >= start + 10 * 60_000 && until_ <= Date.now() + 10 * 60_000, String(until_));
  await until(() => ann.socket.closes.length > 0, "ann's close");
  assert.equal(ann.socket.closes[0].code, CloseCode.forbidden);
  assert.equal(ann.socket.closes[0].reason, "kicked: spam");
  assert.equal(bob.socket.closes.length, 0, "others stay");
  const seen = bob.socket.envelopes().find((e) => e.type === "kick");
  assert.equal(seen?.by, null, "the server API kicked");
  assert.equal(await hub.options.engine.bannedUntil("r", ann.you.id), until_);
  bob.conn.close();
});

Deno.test("POST /api/rooms/:room/kick without minutes kicks without a ban", async () => {
  const { hub, api } = setup();
  const ann = await member(hub, "ann");
  const answer = await call(api, "POST", "/api/rooms/r/kick", { body: { member: ann.you.id } });
  assert.equal(answer.status, 200, answer.text);
  assert.equal(answer.body?.until, undefined);
  await until(() => ann.socket.closes.length > 0, "ann's close");
  assert.equal(ann.socket.closes[0].code, CloseCode.forbidden);
  assert.equal(await hub.options.engine.bannedUntil("r", ann.you.id), undefined);
});

Deno.test("POST /api/rooms/:room/kick refuses a bad member, minutes or reason", async () => {
  const { hub, api } = setup();
  const ann = await member(hub, "ann");
  const cases: [Json, RegExp][] = [
    [{}, /^member:/],
    [{ member: "a b" }, /^member:/],
    [{ member: ann.you.id, minutes: -1 }, /^minutes:/],
    [{ member: ann.you.id, minutes: 1.5 }, /^minutes:/],
    [{ member: ann.you.id, minutes: 525_601 }, /^minutes:/],
    [{ member: ann.you.id, minutes: "10" }, /^minutes:/],
    [{ member: ann.you.id, reason: "x".repeat(201) }, /^reason:/],
    [{ member: ann.you.id, reason: "a\u0000b" }, /^reason:/],
    [{ member: ann.you.id, ban: 10 }, /"ban": unknown field/],
  ];
  for (const [body, message] of cases) {
    const answer = await call(api, "POST", "/api/rooms/r/kick", { body });
    assert.equal(answer.status, 400, JSON.stringify(body));
    assert.match(errorOf(answer).message, message);
  }
  assert.equal(ann.socket.closes.length, 0, "nobody was kicked");
  ann.conn.close();
});

Deno.test("POST /api/tokens passes the claims to mint and answers its token", async () => {
  const calls: unknown[] = [];
  const { api } = setup({
    mint: (claims) => {
      calls.push(claims);
      return Promise.resolve("header.payload.signature");
    },
  });
  const answer = await call(api, "POST", "/api/tokens", {
    body: { sub: "u1", name: "Ann", rooms: ["team-*"], read: ["news"], mod: ["team-a"], ttl: 3600 },
  });
  assert.equal(answer.status, 201, answer.text);
  assert.deepEqual(answer.body, { token: "header.payload.signature" });
  assert.equal(answer.headers.get("cache-control"), "no-store");
  assert.deepEqual(calls, [{
    sub: "u1",
    name: "Ann",
    rooms: ["team-*"],
    read: ["news"],
    mod: ["team-a"],
    ttlSeconds: 3600,
  }]);
  const minimal = await call(api, "POST", "/api/tokens", { body: { sub: "u2", ttl: 60 } });
  assert.equal(minimal.status, 201);
  assert.deepEqual(calls[1], { sub: "u2", ttlSeconds: 60 });
});

Deno.test("POST /api/tokens answers 409 no_secret when there is no mint", async () => {
  const { api } = setup();
  const answer = await call(api, "POST", "/api/tokens", { body: { sub: "u1", ttl: 60 } });
  assert.equal(answer.status, 409);
  assert.deepEqual(answer.body, {
    error: { code: "no_secret", message: "set AUTH_SECRET to mint tokens" },
  });
});

Deno.test("POST /api/tokens refuses a ttl that is not a number of seconds and bad claims, before minting", async () => {
  let minted = 0;
  const { api } = setup({ mint: () => Promise.resolve(`token-${++minted}`) });
  const cases: [Json, RegExp][] = [
    [{ sub: "u1", ttl: "7d" }, /^ttl: must be a number of seconds.*"7d" are not accepted/],
    [{ sub: "u1" }, /^ttl:/],
    [{ sub: "u1", ttl: 0 }, /^ttl:/],
    [{ sub: "u1", ttl: 31_622_401 }, /^ttl:.*31622400/],
    [{ sub: "u1", ttl: 1.5 }, /^ttl:/],
    [{ ttl: 60 }, /^sub:/],
    [{ sub: "u1", ttl: 60, name: 3 }, /^name:/],
    [{ sub: "u1", ttl: 60, rooms: "r" }, /^rooms:/],
    [{ sub: "u1", ttl: 60, mod: [1] }, /^mod:/],
    [{ sub: "u1", ttlSeconds: 60 }, /"ttlSeconds": unknown field/],
  ];
  for (const [body, message] of cases) {
    const answer = await call(api, "POST", "/api/tokens", { body });
    assert.equal(answer.status, 400, JSON.stringify(body));
    assert.equal(errorOf(answer).code, "bad_request");
    assert.match(errorOf(answer).message, message);
  }
  assert.equal(minted, 0);
  assert.equal(
    (await call(api, "POST", "/api/tokens", { body: { sub: "u", ttl: 1 } })).status,
    201,
  );
});

Deno.test("POST /api/tokens turns a RangeError or TypeError of mint into 400 with its message", async () => {
  for (
    const error of [new RangeError("sub: must be 1 to 64 characters"), new TypeError("name: x")]
  ) {
    const { api } = setup({ mint: () => Promise.reject(error) });
    const answer = await call(api, "POST", "/api/tokens", { body: { sub: "", ttl: 60 } });
    assert.equal(answer.status, 400);
    assert.deepEqual(answer.body, { error: { code: "bad_request", message: error.message } });
  }
});

Deno.test("the API key and minted tokens never reach the log", async () => {
  const { logger, lines } = recordingLogger();
  const hub = makeHub({ logger });
  const token = "eyJhbGciOi.secret-token.sig";
  const api = createApi({ hub, apiKey: KEY, mint: () => Promise.resolve(token) });
  await call(api, "POST", "/api/tokens", { body: { sub: "u1", ttl: 60 } });
  await call(api, "POST", "/api/rooms/r/messages", { body: { text: "hi", name: "bot" } });
  await call(api, "POST", "/api/rooms/r/kick", { body: { member: "someone", minutes: 1 } });
  await call(api, "GET", "/api/rooms/r/messages", { key: "a-wrong-key" });
  const log = lines.join("\n");
  assert.ok(lines.length >= 2, "moderation and minting are logged");
  assert.ok(!log.includes(KEY), log);
  assert.ok(!log.includes("a-wrong-key"), log);
  assert.ok(!log.includes(token), log);
});

Deno.test("an engine failure answers 503 unavailable without its details", async () => {
  class BrokenEngine extends MemoryEngine {
    override members(): Promise<Member[]> {
      return Promise.reject(new Error("redis: connection refused at 10.0.0.5"));
    }
  }
  const { logger, lines } = recordingLogger();
  const hub = makeHub({
    logger,
    engine: new BrokenEngine({ historySize: 10, historyBytes: 1 << 16, historyFileBytes: 1024 }),
  });
  const api = createApi({ hub, apiKey: KEY });
  const answer = await call(api, "GET", "/api/rooms/r/members");
  assert.equal(answer.status, 503);
  assert.equal(errorOf(answer).code, "unavailable");
  assert.ok(!answer.text.includes("10.0.0.5"), answer.text);
  assert.ok(lines.some((l) => l.includes("api_failed") && l.includes("connection refused")));
});

Deno.test("a body that is not a JSON object is 400 bad_json", async () => {
  const { hub, api } = setup();
  for (const raw of ["{", "not json", "[]", '"text"', "null", ""]) {
    const answer = await call(api, "POST", "/api/rooms/r/messages", { raw });
    assert.equal(answer.status, 400, raw);
    assert.equal(errorOf(answer).code, "bad_json", raw);
  }
  const invalidUtf8 = await call(api, "POST", "/api/rooms/r/kick", {
    raw: new Uint8Array([0x7b, 0xff, 0x7d]),
  });
  assert.equal(errorOf(invalidUtf8).code, "bad_json");
  const page = await hub.options.engine.history("r", Number.MAX_SAFE_INTEGER, 10);
  assert.equal(page.messages.length, 0);
});

Deno.test("a room name outside ROOM_PATTERN is 400 bad_room on every room route", async () => {
  const { hub, api } = setup();
  const routes: [string, string, Json?][] = [
    ["POST", "messages", { text: "hi", name: "bot" }],
    ["GET", "messages"],
    ["GET", "members"],
    ["POST", "kick", { member: "m1" }],
    ["DELETE", "messages/1"],
  ];
  for (const room of ["a.b", "x".repeat(65), "a%20b", "%C3%A9t%C3%A9"]) {
    for (const [method, rest, body] of routes) {
      const answer = await call(api, method, `/api/rooms/${room}/${rest}`, { body });
      assert.equal(answer.status, 400, `${method} ${room} ${rest}`);
      assert.equal(errorOf(answer).code, "bad_room");
      assert.match(errorOf(answer).message, /^room:/);
    }
  }
  assert.equal((await call(api, "GET", `/api/rooms/${"x".repeat(64)}/members`)).status, 200);
  assert.equal(hub.rooms.size, 0);
});

Deno.test("a method a route does not take is 405 with Allow", async () => {
  const { api } = setup();
  const cases: [string, string, string][] = [
    ["PUT", "/api/rooms/r/messages", "GET, POST"],
    ["DELETE", "/api/rooms/r/messages", "GET, POST"],
    ["GET", "/api/rooms/r/messages/1", "DELETE"],
    ["POST", "/api/rooms/r/members", "GET"],
    ["GET", "/api/rooms/r/kick", "POST"],
    ["GET", "/api/tokens", "POST"],
  ];
  for (const [method, path, allow] of cases) {
    const answer = await call(api, method, path);
    assert.equal(answer.status, 405, `${method} ${path}`);
    assert.equal(answer.headers.get("allow"), allow);
    assert.equal(errorOf(answer).code, "method_not_allowed");
  }
});

Deno.test("an unknown path under /api/ is 404 not_found", async () => {
  const { api } = setup();
  for (
    const path of [
      "/api/",
      "/api/nope",
      "/api/rooms",
      "/api/rooms/r",
      "/api/rooms/r/",
      "/api/rooms/r/messages/1/x",
      "/api/rooms/r/typing",
      "/api/tokens/x",
    ]
  ) {
    const answer = await call(api, "GET", path);
    assert.equal(answer.status, 404, path);
    assert.equal(errorOf(answer).code, "not_found");
  }
});

Deno.test("a body over 64 KiB is 413, whether content-length says so or not", async () => {
  const { hub, api } = setup();
  const big = JSON.stringify({ text: "x".repeat(64 * 1024), name: "bot" });
  const declared = await call(api, "POST", "/api/rooms/r/messages", {
    raw: big,
    headers: { "content-length": String(big.length) },
  });
  assert.equal(declared.status, 413);
  assert.equal(errorOf(declared).code, "too_large");
  assert.equal(
    errorOf(declared).message,
    `the body is ${big.length} bytes; the limit is 65536 bytes`,
    "refused on the declared length, before reading",
  );

  let pulled = 0;
  const chunk = new Uint8Array(16 * 1024).fill(0x20);
  // 160 KiB of blanks without a content-length: only counting while reading catches it.
  const unsized = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (++pulled > 10) controller.close();
      else controller.enqueue(chunk);
    },
  });
  const streamed = await call(api, "POST", "/api/rooms/r/kick", { raw: unsized });
  assert.equal(streamed.status, 413);
  assert.equal(errorOf(streamed).code, "too_large");
  assert.ok(pulled <= 6, `stopped reading early, after ${pulled} chunks`);

  const justFits = JSON.stringify({ member: "m1", reason: "" }).padEnd(64 * 1024, " ");
  const fits = await call(api, "POST", "/api/rooms/r/kick", { raw: justFits });
  assert.equal(fits.status, 200, fits.text);
  const page = await hub.options.engine.history("r", Number.MAX_SAFE_INTEGER, 10);
  assert.equal(page.messages.length, 0);
});
