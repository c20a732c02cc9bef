import assert from "node:assert/strict";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { SLOW_CONSUMER } from "../lib/hub.ts";
import { createLogger } from "../lib/log.ts";
import { FakeSocket, makeHub, settle, until, welcomed } from "./fakes.ts";

Deno.test("hub relays a text frame verbatim to every peer, the sender included", async () => {
  const hub = makeHub();
  const [a, b, c] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(b, { room: "r", rich: false });
  hub.connect(c, { room: "r", rich: false });
  await settle();
  conn.receive("ann: hello");
  for (const s of [a, b, c]) assert.deepEqual(s.sent, ["ann: hello"]);
});

Deno.test("hub counts frames and bytes in, relays and bytes out for /metrics", async () => {
  const hub = makeHub();
  const [a, b, c] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(b, { room: "r", rich: false });
  hub.connect(c, { room: "r", rich: false });
  await settle();
  conn.receive("hello");
  conn.receive(new Uint8Array(10).buffer);
  const { metrics } = hub;
  assert.equal(metrics.get("parley_messages_in_total", { mode: "raw" }), 2);
  assert.equal(metrics.get("parley_messages_in_total", { mode: "rich" }), 0);
  assert.equal(metrics.get("parley_bytes_in_total"), 15);
  assert.equal(metrics.get("parley_relays_total"), 6, "two messages to three peers");
  assert.equal(metrics.get("parley_bytes_out_total"), 45);
  assert.match(metrics.render(), /^parley_relays_total 6$/m);
  assert.match(metrics.render(), /^parley_messages_in_total\{mode="raw"\} 2$/m);
});

Deno.test("hub keeps text as text and binary as binary, byte for byte", async () => {
  const hub = makeHub();
  const [a, b] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(b, { room: "r", rich: false });
  await settle();
  const bytes = new Uint8Array([0, 1, 2, 255]);
  conn.receive(bytes.buffer);
  conn.receive(new ArrayBuffer(0));
  conn.receive("12");
  for (const s of [a, b]) {
    assert.equal(s.sent.length, 3);
    assert.ok(s.sent[0] instanceof Uint8Array);
    assert.deepEqual([...(s.sent[0] as Uint8Array)], [0, 1, 2, 255]);
    assert.ok(s.sent[1] instanceof Uint8Array);
    assert.equal((s.sent[1] as Uint8Array).byteLength, 0);
    assert.equal(s.sent[2], "12");
  }
});

Deno.test("hub skips closing and closed sockets", async () => {
  const hub = makeHub();
  const [a, closing, closed] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(closing, { room: "r", rich: false });
  hub.connect(closed, { room: "r", rich: false });
  await settle();
  closing.readyState = 2;
  closed.readyState = 3;
  conn.receive("x");
  assert.deepEqual(a.sent, ["x"]);
  assert.deepEqual(closing.sent, []);
  assert.deepEqual(closed.sent, []);
});

Deno.test("hub keeps rooms apart", async () => {
  const hub = makeHub();
  const [a, b, lobby] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
  const inA = hub.connect(a, { room: "a", rich: false });
  const inB = hub.connect(b, { room: "b", rich: false });
  hub.connect(lobby, { room: "lobby", rich: false });
  await settle();
  inA.receive("to a");
  inB.receive(new Uint8Array([7]));
  assert.deepEqual(a.sent, ["to a"]);
  assert.equal(b.sent.length, 1);
  assert.deepEqual(lobby.sent, []);
});

Deno.test("hub removes a peer on close, once, and drops the empty room", async () => {
  const hub = makeHub();
  const [a, b] = [new FakeSocket(), new FakeSocket()];
  const connA = hub.connect(a, { room: "r", rich: false });
  const connB = hub.connect(b, { room: "r", rich: false });
  await settle();
  connA.close();
  connA.close(); // onclose can fire twice
  assert.equal(hub.roomSize("r"), 1);
  connB.receive("still here");
  assert.deepEqual(a.sent, []);
  assert.deepEqual(b.sent, ["still here"]);
  connB.close();
  assert.equal(hub.rooms.size, 0);
  assert.equal(hub.connections.size, 0);
});

Deno.test("hub removes a peer whose send throws; others still get the frame", async () => {
  const hub = makeHub();
  const [a, bad, c] = [new FakeSocket(), new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(bad, { room: "r", rich: false });
  hub.connect(c, { room: "r", rich: false });
  await settle();
  bad.failSend = true;
  conn.receive("x");
  assert.deepEqual(a.sent, ["x"]);
  assert.deepEqual(c.sent, ["x"]);
  assert.equal(hub.roomSize("r"), 2);
  assert.equal(bad.closes[0].code, 1011);
});

Deno.test("hub closes the sender of an oversized frame with 1009 and relays nothing", async () => {
  const hub = makeHub({ maxMessageBytes: 1024 });
  const [a, b] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(b, { room: "r", rich: false });
  await settle();
  conn.receive(new Uint8Array(1025));
  conn.receive("é".repeat(513)); // 1026 bytes in UTF-8, 513 code units
  assert.deepEqual(b.sent, []);
  assert.equal(a.closes[0].code, 1009);
  assert.equal(hub.roomSize("r"), 1);
});

Deno.test("hub counts UTF-8 bytes, not characters, near the cap", async () => {
  const hub = makeHub({ maxMessageBytes: 1024 });
  const [a, b] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(b, { room: "r", rich: false });
  await settle();
  conn.receive("é".repeat(512)); // exactly 1024 bytes: allowed
  assert.equal(b.sent.length, 1);
  conn.receive("é".repeat(400) + "a".repeat(300)); // 1100 bytes in 700 code units
  assert.equal(b.sent.length, 1);
  assert.equal(a.closes[0].code, 1009);
});

Deno.test("hub stops writing to a peer over the watermark and catches it up in order", async () => {
  const hub = makeHub({ lowWatermark: 100, maxBufferedBytes: 1 << 20 });
  const [fast, slow] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(fast, { room: "r", rich: false });
  hub.connect(slow, { room: "r", rich: false });
  await settle();
  slow.stalled = true;
  for (let i = 0; i < 50; i++) conn.receive(`m${i}`);
  assert.equal(fast.sent.length, 50, "the fast reader is not held back");
  assert.equal(slow.sent.length, 1, "one frame queued, then nothing over the watermark");
  slow.drain();
  await until(() => slow.sent.length === 50, "catch-up");
  assert.deepEqual(slow.sent, fast.sent);
  conn.receive("live");
  assert.equal(slow.sent.at(-1), "live");
  assert.equal(slow.closes.length, 0);
});

Deno.test("hub evicts a peer far past the lag bound at once, without waiting for onclose", async () => {
  const hub = makeHub({ lowWatermark: 100, maxBufferedBytes: 1000 });
  const [a, slow] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(slow, { room: "r", rich: false });
  await settle();
  slow.stalled = true;
  let sent = 0;
  while (slow.closes.length === 0 && sent < 200) {
    conn.receive("x".repeat(100));
    sent++;
  }
  assert.equal(slow.closes[0].code, SLOW_CONSUMER);
  assert.match(slow.closes[0].reason ?? "", /slow consumer/);
  assert.ok(sent * 164 > 8000, "only past eight times the bound when it still drains");
  assert.equal(hub.roomSize("r"), 1);
  assert.equal(a.sent.length, sent, "the other peer got everything");
  assert.equal(hub.metrics.get("parley_slow_consumer_evictions_total"), 1);
});

Deno.test("hub evicts a peer past the lag bound once its queue stalls", async () => {
  const hub = makeHub({ lowWatermark: 100, maxBufferedBytes: 1000, stallMs: 30 });
  const [a, slow] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(a, { room: "r", rich: false });
  hub.connect(slow, { room: "r", rich: false });
  await settle();
  slow.stalled = true;
  for (let i = 0; i < 10; i++) conn.receive("x".repeat(100)); // 1640 bytes behind
  assert.equal(slow.closes.length, 0, "not yet: it may still drain");
  await until(() => slow.closes.length > 0, "the eviction after the stall");
  assert.equal(slow.closes[0].code, SLOW_CONSUMER);
  assert.equal(hub.roomSize("r"), 1);
});

Deno.test("hub maps raw text to rich envelopes and rich messages to raw text", async () => {
  const hub = makeHub();
  const [raw, rich] = [new FakeSocket(), new FakeSocket()];
  const rawConn = hub.connect(raw, { room: "r", rich: false });
  const richConn = hub.connect(rich, { room: "r", rich: true });
  richConn.receive(JSON.stringify({ type: "hello", nick: "bob", client: "client-0001" }));
  await welcomed(rich);
  rawConn.receive("plain words");
  richConn.receive(JSON.stringify({ type: "message", cid: "c1", text: "rich words" }));
  await until(() => rich.envelopes().some((e) => e.type === "ack"), "ack");
  assert.deepEqual(raw.sent, ["plain words", "bob: rich words"]);
  const [welcome, fromRaw, fromRich, ack] = rich.envelopes();
  assert.equal(welcome.type, "welcome");
  assert.deepEqual(
    { type: fromRaw.type, from: fromRaw.from, text: fromRaw.text },
    { type: "message", from: null, text: "plain words" },
  );
  assert.equal(fromRich.text, "rich words");
  assert.equal((fromRich.from as { nick: string }).nick, "bob");
  assert.deepEqual(ack, {
    type: "ack",
    cid: "c1",
    id: fromRich.id,
    epoch: fromRich.epoch,
    duplicate: false,
  });
});

Deno.test("hub serialises a message once for all rich peers", async () => {
  const hub = makeHub();
  const sockets = Array.from({ length: 3 }, () => new FakeSocket());
  const conns = sockets.map((s) => hub.connect(s, { room: "r", rich: true }));
  conns.forEach((c, i) => c.receive(JSON.stringify({ type: "hello", nick: `n${i}` })));
  for (const s of sockets) await welcomed(s);
  conns[0].receive(JSON.stringify({ type: "message", cid: "c1", text: "hi" }));
  const last = sockets.map((s) =>
    s.sent.findLast((f) => typeof f === "string" && f.includes('"hi"'))
  );
  assert.ok(last[0]);
  // The very same string object, not three equal ones.
  assert.ok(last.every((f) => f === last[0]));
});

Deno.test("hub announces presence once per member across tabs", async () => {
  const hub = makeHub();
  const observer = new FakeSocket();
  hub.connect(observer, { room: "r", rich: true })
    .receive(JSON.stringify({ type: "hello", nick: "obs" }));
  await welcomed(observer);
  const tabs = [new FakeSocket(), new FakeSocket()];
  const conns = tabs.map((s) => hub.connect(s, { room: "r", rich: true }));
  for (const c of conns) {
    c.receive(JSON.stringify({ type: "hello", nick: "ann", client: "same-client-1" }));
  }
  for (const s of tabs) await welcomed(s);
  const types = () => observer.envelopes().map((e) => e.type).filter((t) => t !== "welcome");
  assert.deepEqual(types(), ["join"]);
  conns[0].close();
  await settle();
  assert.deepEqual(types(), ["join"]);
  conns[1].close();
  conns[1].close();
  await settle();
  assert.deepEqual(types(), ["join", "leave"]);
});

Deno.test("hub paces a resent backlog over the burst: every message acked, no close", async () => {
  const hub = makeHub({ rateLimit: 400, rateBurst: 5 });
  const [sender, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(sender, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f", client: "client-backlog" }));
  await welcomed(sender);
  for (let i = 0; i < 100; i++) {
    conn.receive(JSON.stringify({ type: "message", cid: `c${i}`, text: `m${i}` }));
  }
  await until(() => sender.envelopes().filter((e) => e.type === "ack").length === 100, "acks");
  assert.deepEqual(sender.envelopes().filter((e) => e.type === "error"), []);
  assert.equal(sender.closes.length, 0);
  assert.deepEqual(peer.sent, Array.from({ length: 100 }, (_, i) => `f: m${i}`), "in order");
  assert.equal(hub.metrics.get("parley_rate_limited_total"), 0);
  conn.close();
});

Deno.test("hub drops frames past the rate queue with rate_limited, then closes a flood with 1008", async () => {
  const hub = makeHub({ rateLimit: 0.01, rateBurst: 3, rateQueue: 2 });
  const [flooder, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(flooder, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f" })); // token 1
  await welcomed(flooder);
  for (let i = 0; i < 5; i++) {
    conn.receive(JSON.stringify({ type: "message", cid: `c${i}`, text: "x" }));
  }
  await until(() => flooder.envelopes().filter((e) => e.type === "ack").length === 2, "acks");
  assert.equal(peer.sent.length, 2, "burst of 3 minus the hello; two wait in the queue");
  const limited = flooder.envelopes().filter((e) => e.type === "error");
  assert.deepEqual(limited.map((e) => [e.code, e.cid, e.retry]), [["rate_limited", "c4", true]]);
  assert.equal(flooder.closes.length, 0, "a burst is not a flood");
  for (let i = 5; i < 12; i++) {
    conn.receive(JSON.stringify({ type: "message", cid: `c${i}`, text: "x" }));
  }
  assert.equal(flooder.closes[0]?.code, 1008);
  assert.equal(peer.sent.length, 2);
  assert.equal(hub.roomSize("r"), 1);
  assert.equal(hub.metrics.get("parley_rate_limited_total"), 4);
});

Deno.test("hub treats a file envelope and its bytes as one unit under the rate limit", async () => {
  const hub = makeHub({ rateLimit: 0.01, rateBurst: 2, rateQueue: 0 });
  const [sender, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(sender, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f", client: "client-files" })); // token 1
  await welcomed(sender);
  const file = (cid: string, size: number) =>
    JSON.stringify({ type: "file", cid, name: `${cid}.bin`, mime: "a/b", size });
  conn.receive(file("A", 1)); // token 2, and its bytes ride along
  conn.receive(new Uint8Array([0xa]));
  conn.receive(file("B", 2)); // no token: the envelope and its bytes are dropped
  conn.receive(new Uint8Array([0xb, 0xb]));
  await until(() => sender.envelopes().some((e) => e.type === "ack"), "the ack of A");
  await settle();
  assert.deepEqual(peer.sent.map((f) => [...(f as Uint8Array)]), [[0xa]]);
  const answers = sender.envelopes().filter((e) => e.type === "ack" || e.type === "error");
  assert.deepEqual(answers.map((e) => `${e.type}:${e.cid}:${e.code ?? ""}`).sort(), [
    "ack:A:",
    "error:B:rate_limited",
  ]);
  const stored = await hub.options.engine.read("r", undefined, 10);
  assert.deepEqual(stored.messages.map((m) => [m.cid, m.size]), [["A", 1]]);
});

Deno.test("hub pairs a file envelope only with the binary frame right after it", async () => {
  const hub = makeHub();
  const [sender, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(sender, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f", client: "client-pairs" }));
  await welcomed(sender);
  conn.receive(JSON.stringify({ type: "file", cid: "A", name: "a", mime: "a/b", size: 1 }));
  conn.receive(JSON.stringify({ type: "ping" }));
  conn.receive(new Uint8Array([7])); // not A's: a ping came between
  await until(() => peer.sent.length === 1, "the unannounced file");
  const stored = await hub.options.engine.read("r", undefined, 10);
  assert.deepEqual(stored.messages.map((m) => [m.cid, m.name]), [[undefined, "file"]]);
  assert.equal(sender.envelopes().filter((e) => e.type === "ack").length, 0, "A is never acked");
});

Deno.test("hub reads and drops the bytes of a file refused for its size, up to a cap", async () => {
  const hub = makeHub({ maxMessageBytes: 100 });
  const [sender, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(sender, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f" }));
  await welcomed(sender);
  conn.receive(JSON.stringify({ type: "file", cid: "big", name: "a", mime: "a/b", size: 300 }));
  conn.receive(new Uint8Array(300));
  await settle();
  assert.equal(sender.closes.length, 0, "the connection stays open");
  assert.deepEqual(
    sender.envelopes().filter((e) => e.type === "error").map((e) => [e.code, e.cid]),
    [["bad_envelope", "big"]],
  );
  conn.receive(JSON.stringify({ type: "message", cid: "m", text: "still here" }));
  await until(() => peer.sent.includes("f: still here"), "the next message");
  assert.equal(peer.sent.length, 1);
  conn.receive(JSON.stringify({ type: "file", cid: "huge", name: "a", mime: "a/b", size: 900 }));
  conn.receive(new Uint8Array(401)); // over four times the limit
  assert.equal(sender.closes[0]?.code, 1009);
});

Deno.test("hub drops the binary frame of a refused file envelope", async () => {
  const hub = makeHub();
  const [sender, peer] = [new FakeSocket(), new FakeSocket()];
  const conn = hub.connect(sender, { room: "r", rich: true });
  hub.connect(peer, { room: "r", rich: false });
  conn.receive(JSON.stringify({ type: "hello", nick: "f" }));
  await welcomed(sender);
  conn.receive(JSON.stringify({ type: "file", cid: "f1", name: "x", mime: "nope", size: 1 }));
  conn.receive(new Uint8Array([1]));
  conn.receive(new Uint8Array([2])); // unannounced: a file of its own
  await until(() => peer.sent.length === 1, "the unannounced file");
  assert.deepEqual([...(peer.sent[0] as Uint8Array)], [2]);
  assert.deepEqual(
    sender.envelopes().filter((e) => e.type === "error").map((e) => [e.code, e.cid]),
    [["bad_envelope", "f1"]],
  );
});

Deno.test("hub closes a room's peers with 1013 when the engine cannot subscribe, and recovers", async () => {
  const engine = new MemoryEngine({ historySize: 10, historyBytes: 1 << 20, historyFileBytes: 16 });
  let failing = true;
  const subscribe = engine.subscribe.bind(engine);
  engine.subscribe = (room, listener) =>
    failing ? Promise.reject(new Error("engine down")) : subscribe(room, listener);
  const hub = makeHub({ engine });
  const [raw, rich] = [new FakeSocket(), new FakeSocket()];
  hub.connect(raw, { room: "r", rich: false });
  hub.connect(rich, { room: "r", rich: true })
    .receive(JSON.stringify({ type: "hello", nick: "ann" }));
  await until(() => raw.closes.length > 0 && rich.closes.length > 0, "closes");
  assert.equal(raw.closes[0].code, 1013);
  assert.equal(rich.closes[0].code, 1013);
  assert.equal(hub.rooms.size, 0);
  failing = false;
  const again = new FakeSocket();
  const conn = hub.connect(again, { room: "r", rich: false });
  await settle();
  conn.receive("back");
  assert.deepEqual(again.sent, ["back"]);
});

Deno.test("hub closes every connection with 1001 on shutdown without announcing each leave to the rest", async () => {
  const hub = makeHub();
  const sockets = Array.from({ length: 50 }, () => new FakeSocket());
  sockets.forEach((s, i) =>
    hub.connect(s, { room: "r", rich: true }).receive(
      JSON.stringify({ type: "hello", nick: `n${i}` }),
    )
  );
  for (const s of sockets) await welcomed(s);
  const before = sockets.map((s) => s.sent.length);
  hub.close();
  await settle();
  assert.ok(sockets.every((s) => s.closes[0]?.code === 1001));
  assert.deepEqual(sockets.map((s) => s.sent.length), before, "no leave fan-out during shutdown");
  assert.equal(hub.connections.size, 0);
  assert.equal(hub.rooms.size, 0);
});

Deno.test("hub logs one JSON line per connection event, never message contents", async () => {
  const lines: string[] = [];
  const hub = makeHub({ logger: createLogger("info", (line) => lines.push(line)) });
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room: "r", rich: true });
  conn.receive(JSON.stringify({ type: "hello", nick: "ann" }));
  await welcomed(socket);
  conn.receive(JSON.stringify({ type: "message", cid: "c1", text: "a secret" }));
  await until(() => socket.envelopes().some((e) => e.type === "ack"), "ack");
  conn.close();
  const events = lines.map((line) => JSON.parse(line));
  assert.deepEqual(events.map((e) => e.event), ["open", "join", "close"]);
  assert.equal(events[2].by, "client");
  assert.ok(events.every((e) => typeof e.time === "string" && e.level === "info"));
  assert.ok(!lines.join("\n").includes("a secret"));
  const quiet: string[] = [];
  const warnHub = makeHub({ logger: createLogger("warn", (line) => quiet.push(line)) });
  warnHub.connect(new FakeSocket(), { room: "r", rich: false }).close();
  assert.deepEqual(quiet, [], "LOG_LEVEL=warn hides connection events");
});
