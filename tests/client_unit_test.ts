/**
 * The client SDK without a network: a fake WebSocket plays the server, so
 * each rule of docs/protocol.md a client must follow is checked on its own
 * (close codes, transient and final errors, batches with files, presence),
 * and the small parts (backoff, token bucket, outbox, storage) directly.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Backoff,
  type ChatMessage,
  MemoryStorage,
  ParleyClient,
  type ParleyClientOptions,
  SendError,
  type SocketLike,
  type Status,
  SUBPROTOCOL,
  WebStorage,
} from "../client/mod.ts";
import { TokenBucket } from "../client/pacer.ts";
import { Outbox } from "../client/outbox.ts";
import { Roster } from "../client/presence.ts";
import { waitFor } from "./helpers.ts";

/** A WebSocket whose server side the test plays. */
class FakeSocket implements SocketLike {
  static made: FakeSocket[] = [];
  readyState = 0;
  binaryType = "blob";
  sent: (string | Uint8Array)[] = [];
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: MessageEvent) => void) | null = null;
  onclose: ((event: CloseEvent) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor(readonly url: string, readonly protocols?: string | string[]) {
    FakeSocket.made.push(this);
  }

  /** Envelopes the client sent, parsed. */
  get envelopes(): Record<string, unknown>[] {
    return this.sent.filter((f) => typeof f === "string").map((f) => JSON.parse(f as string));
  }

  send(data: string | ArrayBufferLike | ArrayBufferView): void {
    if (this.readyState !== 1) throw new Error("not open");
    this.sent.push(typeof data === "string" ? data : new Uint8Array(data as ArrayBuffer));
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    queueMicrotask(() => this.onclose?.(new CloseEvent("close", { code, reason })));
  }

  open(): void {
    this.readyState = 1;
    this.onopen?.(new Event("open"));
  }

  receive(envelope: unknown): void {
    this.onmessage?.(new MessageEvent("message", { data: JSON.stringify(envelope) }));
  }

  receiveBytes(bytes: Uint8Array): void {
    this.onmessage?.(new MessageEvent("message", { data: bytes.slice().buffer }));
  }

  /** The server closes (or the network drops, with 1006). */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.(new CloseEvent("close", { code, reason }));
  }
}

const LIMITS = {
  text: 4000,
  bytes: 2097152,
  rate: 5,
  burst: 30,
  queue: 256,
  page: 200,
  typing: 6000,
};

function welcome(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "welcome",
    room: "lobby",
    epoch: "e1",
    head: 0,
    you: { id: "me", nick: "ann", verified: false },
    members: [{ id: "me", nick: "ann" }],
    recovered: null,
    replay: 0,
    access: "write",
    moderator: false,
    count: 1,
    limits: LIMITS,
    ...extra,
  };
}

/** A client on fake sockets, with its statuses recorded. */
function fakeClient(options: ParleyClientOptions = {}) {
  FakeSocket.made = [];
  const statuses: Status[] = [];
  const client = new ParleyClient("ws://parley.test/lobby", {
    nick: "ann",
    WebSocket: FakeSocket,
    backoff: { baseMs: 1, capMs: 2 },
    retryMs: 5,
    ...options,
  });
  client.on("status", (s) => statuses.push(s));
  const socket = (n: number) => FakeSocket.made[n];
  return { client, statuses, socket };
}

/** Connects on fake socket `n` and welcomes it. */
async function join(
  _client: ParleyClient,
  n: number,
  extra: Record<string, unknown> = {},
): Promise<FakeSocket> {
  await waitFor(() => FakeSocket.made.length > n, 1000, `socket ${n}`);
  const ws = FakeSocket.made[n];
  ws.open();
  ws.receive(welcome(extra));
  return ws;
}

Deno.test("ParleyClient says hello with parley.v1, batch, its client id, nick and last position", async () => {
  const { client } = fakeClient({ clientId: "client-0001" });
  const connected = client.connect();
  const ws = await join(client, 0);
  assert.equal((await connected).epoch, "e1");
  assert.equal(ws.protocols, SUBPROTOCOL);
  assert.equal(ws.binaryType, "arraybuffer");
  assert.deepEqual(ws.envelopes[0], {
    type: "hello",
    client: "client-0001",
    batch: true,
    nick: "ann",
  });
  ws.receive({ type: "message", id: 7, epoch: "e1", ts: 1, from: null, text: "hi" });
  ws.serverClose(1012, "restart");
  const again = await join(client, 1);
  assert.deepEqual(again.envelopes[0].last, { epoch: "e1", id: 7 });
  await client.close();
});

Deno.test("ParleyClient resends after a transient error with the same cid, and resolves on the ack", async () => {
  const { client } = fakeClient();
  client.connect();
  const ws = await join(client, 0);
  const errors: string[] = [];
  client.on("error", (e) => errors.push(e.code));
  const { cid, delivered } = client.send("hello");
  assert.deepEqual(ws.envelopes.at(-1), { type: "message", cid, text: "hello" });
  ws.receive({ type: "error", code: "rate_limited", message: "slow down", cid, retry: true });
  await waitFor(() => ws.envelopes.filter((e) => e.cid === cid).length === 2, 1000, "a resend");
  ws.receive({ type: "ack", cid, id: 1, epoch: "e1", duplicate: false });
  assert.deepEqual(await delivered, { cid, id: 1, epoch: "e1", duplicate: false });
  assert.deepEqual(errors, [], "a transient error of an outbox item is not an error event");
  assert.equal(client.outbox.length, 0);
  await client.close();
});

Deno.test("ParleyClient reports a final error of an outbox item as failed and rejects its promise", async () => {
  const { client } = fakeClient();
  client.connect();
  const ws = await join(client, 0);
  const failed: string[] = [];
  client.on("failed", ({ item, error }) => failed.push(`${item.cid}:${error.code}`));
  const { cid, delivered } = client.edit(3, "new text");
  assert.deepEqual(ws.envelopes.at(-1), { type: "edit", cid, id: 3, text: "new text" });
  ws.receive({ type: "error", code: "forbidden", message: "edit: not yours", cid });
  await assert.rejects(
    delivered,
    (error) => error instanceof SendError && error.code === "forbidden",
  );
  assert.deepEqual(failed, [`${cid}:forbidden`]);
  assert.equal(client.status.state, "open", "an error about one envelope closes nothing");
  await client.close();
});

Deno.test("ParleyClient does not reconnect after 4403 (said in band, the close frame lost as 1006)", async () => {
  const { client, statuses } = fakeClient();
  client.connect();
  const ws = await join(client, 0);
  const pending = client.send("never");
  ws.receive({ type: "error", code: "forbidden", message: "you were removed from this room" });
  ws.serverClose(1006);
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(FakeSocket.made.length, 1, "no new socket");
  assert.deepEqual(statuses.at(-1), {
    state: "closed",
    final: true,
    code: 4403,
    reason: "you were removed from this room",
  });
  await assert.rejects(client.connect(), /closed/);
  assert.equal(client.outbox[0]?.cid, pending.cid, "the unsent message stays in the outbox");
  await client.close();
});

Deno.test("ParleyClient reconnects and resumes after 1001, 1006, 1012, 1013 and 4001", async () => {
  const { client, statuses } = fakeClient();
  client.connect();
  let ws = await join(client, 0);
  let n = 0;
  for (const code of [1001, 1006, 1012, 1013, 4001]) {
    ws.serverClose(code);
    n++;
    ws = await join(client, n);
    const reconnecting = statuses.filter((s) => s.state === "reconnecting").at(-1);
    assert.equal(reconnecting?.state === "reconnecting" && reconnecting.code, code);
  }
  assert.equal(client.status.state, "open");
  await client.close();
});

Deno.test("ParleyClient pings an idle connection and reconnects when no answer comes", async () => {
  const { client, statuses } = fakeClient({ pingMs: 20, pongTimeoutMs: 40 });
  client.connect();
  const ws = await join(client, 0);
  await waitFor(() => ws.envelopes.some((e) => e.type === "ping"), 1000, "a ping");
  await join(client, 1);
  const reconnecting = statuses.find((s) => s.state === "reconnecting");
  assert.equal(reconnecting?.state === "reconnecting" && reconnecting.reason, "no answer to ping");
  await client.close();
});

Deno.test("ParleyClient waits for the online event when the browser says it is offline", async () => {
  const had = Object.getOwnPropertyDescriptor(navigator, "onLine");
  Object.defineProperty(navigator, "onLine", { value: false, configurable: true });
  try {
    // A backoff far too long for the test: only the online event can bring it back.
    const { client, statuses } = fakeClient({ backoff: { baseMs: 60_000, capMs: 60_000 } });
    client.connect();
    const ws = await join(client, 0);
    ws.serverClose(1006);
    assert.deepEqual(statuses.at(-1), { state: "offline" });
    Object.defineProperty(navigator, "onLine", { value: true, configurable: true });
    dispatchEvent(new Event("online"));
    await join(client, 1);
    assert.equal(client.status.state, "open");
    await client.close();
  } finally {
    if (had) Object.defineProperty(navigator, "onLine", had);
    else delete (navigator as { onLine?: boolean }).onLine;
  }
});

Deno.test("ParleyClient asks the token function again after 4401, and stops after two refusals in a row", async () => {
  let calls = 0;
  const { client, statuses } = fakeClient({ token: () => `token-${++calls}` });
  client.connect();
  const ws = await join(client, 0);
  assert.equal(ws.envelopes[0].token, "token-1");
  ws.receive({ type: "error", code: "unauthorized", message: "token expired" });
  const second = await waitFor(() => FakeSocket.made.length === 2, 1000, "a reconnect")
    .then(() => FakeSocket.made[1]);
  second.open();
  assert.equal(second.envelopes[0].token, "token-2");
  second.receive({ type: "error", code: "unauthorized", message: "token signature is invalid" });
  second.serverClose(4401);
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(FakeSocket.made.length, 2);
  assert.equal(statuses.at(-1)?.state, "closed");
  await client.close();
});

Deno.test("ParleyClient with a fixed token stops after 4401", async () => {
  const { client, statuses } = fakeClient({ token: "fixed" });
  client.connect();
  const ws = await join(client, 0);
  ws.serverClose(4401, "token expired");
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(FakeSocket.made.length, 1);
  assert.deepEqual(statuses.at(-1), {
    state: "closed",
    final: true,
    code: 4401,
    reason: "token expired",
  });
  await client.close();
});

Deno.test("ParleyClient unpacks a batch in order and holds what follows a file until its bytes come", async () => {
  const { client } = fakeClient();
  client.connect();
  const ws = await join(client, 0);
  const seen: string[] = [];
  let picture: ChatMessage | undefined;
  client.on("message", (m) => {
    seen.push(m.text ?? `file:${m.file?.name}`);
    if (m.file) picture = m;
  });
  client.on("typing", ({ member }) => seen.push(`typing:${member.nick}`));
  client.on("presence", (p) => seen.push(`count:${p.count}`));
  const from = { id: "b", nick: "bob" };
  ws.receive({
    type: "batch",
    events: [
      { type: "message", id: 1, epoch: "e1", ts: 1, from, text: "a" },
      { type: "file", id: 2, epoch: "e1", ts: 2, from, name: "x.png", mime: "image/png", size: 3 },
      { type: "typing", member: from, ttl: 6000 },
      { type: "message", id: 3, epoch: "e1", ts: 3, from, text: "b" },
      { type: "presence", joins: [{ id: "c", nick: "cat" }], count: 3 },
    ],
  });
  assert.deepEqual(seen, ["a"], "the rest waits for the file's bytes");
  ws.receiveBytes(new Uint8Array([1, 2, 3]));
  assert.deepEqual(seen, ["a", "file:x.png", "typing:bob", "b", "count:3"]);
  assert.deepEqual(picture?.file?.data, new Uint8Array([1, 2, 3]));
  assert.deepEqual(client.position, { epoch: "e1", id: 3 });
  assert.ok(client.members.has("c"));
  // The same entries again (a replay after a resume) are not reported twice.
  ws.receive({ type: "message", id: 3, epoch: "e1", ts: 3, from, text: "b" });
  assert.equal(seen.filter((s) => s === "b").length, 1);
  await client.close();
});

Deno.test("ParleyClient reports a gap when welcome says recovered: false, and keeps going", async () => {
  const storage = new MemoryStorage();
  await storage.set(
    "parley:ws://parley.test/lobby",
    JSON.stringify({ last: { epoch: "old", id: 9 } }),
  );
  const { client } = fakeClient({ storage });
  const gaps: unknown[] = [];
  client.on("gap", (gap) => gaps.push(gap));
  client.connect();
  const ws = await join(client, 0, { recovered: false, epoch: "e2", head: 4, replay: 1 });
  assert.deepEqual(ws.envelopes[0].last, { epoch: "old", id: 9 });
  assert.deepEqual(gaps, [{
    reason: "epoch_changed",
    previous: { epoch: "old", id: 9 },
    epoch: "e2",
  }]);
  const texts: string[] = [];
  client.on("message", (m) => texts.push(m.text!));
  ws.receive({ type: "message", id: 4, epoch: "e2", ts: 1, from: null, text: "new epoch" });
  assert.deepEqual(texts, ["new epoch"]);
  assert.equal(client.status.state, "open");
  await client.close();
});

Deno.test("ParleyClient drops a message seen again under the same sender and cid in a new epoch", async () => {
  const { client } = fakeClient();
  client.connect();
  let ws = await join(client, 0);
  const texts: string[] = [];
  client.on("message", (m) => texts.push(m.text!));
  const from = { id: "b", nick: "bob" };
  ws.receive({ type: "message", id: 1, epoch: "e1", ts: 1, from, cid: "c-1", text: "once" });
  ws.serverClose(1006);
  ws = await join(client, 1, { epoch: "e2", recovered: false, replay: 1 });
  ws.receive({ type: "message", id: 1, epoch: "e2", ts: 2, from, cid: "c-1", text: "once" });
  ws.receive({ type: "message", id: 2, epoch: "e2", ts: 3, from, cid: "c-2", text: "twice" });
  assert.deepEqual(texts, ["once", "twice"]);
  await client.close();
});

Deno.test("ParleyClient keeps its outbox and position in storage for the next client", async () => {
  const items = new Map<string, string>();
  const storage = new WebStorage({
    getItem: (key) => items.get(key) ?? null,
    setItem: (key, value) => void items.set(key, value),
    removeItem: (key) => void items.delete(key),
  });
  const first = fakeClient({ storage });
  const a = first.client.send("kept 1");
  const b = first.client.send("kept 2");
  await first.client.close();
  assert.ok(items.has("parley:client"), "a client id was made and kept");
  const second = fakeClient({ storage });
  second.client.connect();
  const ws = await join(second.client, 0);
  const messages = ws.envelopes.filter((e) => e.type === "message");
  assert.deepEqual(messages.map((e) => [e.cid, e.text]), [[a.cid, "kept 1"], [b.cid, "kept 2"]]);
  assert.equal(ws.envelopes[0].client, items.get("parley:client"));
  const restored = second.client.delivered(a.cid);
  assert.ok(restored, "a restored item has a promise too");
  ws.receive({ type: "ack", cid: a.cid, id: 1, epoch: "e1", duplicate: true });
  assert.deepEqual(await restored, {
    cid: a.cid,
    id: 1,
    epoch: "e1",
    duplicate: true,
  });
  await second.client.close();
  assert.deepEqual(JSON.parse(items.get("parley:ws://parley.test/lobby")!).outbox.length, 1);
});

Deno.test("ParleyClient resends only after the replay, which may show some items stored already", async () => {
  const { client } = fakeClient();
  const first = client.send("stored before the drop");
  const second = client.send("never arrived");
  client.connect();
  const ws = await join(client, 0, { replay: 1, head: 1 });
  const sent = () => ws.envelopes.filter((e) => e.type === "message").map((e) => e.cid);
  assert.deepEqual(sent(), [], "nothing is resent while the replay comes");
  const me = { id: "me", nick: "ann" };
  ws.receive({ type: "message", id: 1, epoch: "e1", ts: 1, from: me, cid: first.cid, text: "x" });
  assert.equal((await first.delivered).id, 1, "the replay acked it");
  assert.deepEqual(sent(), [second.cid], "only the other one is resent");
  await client.close();
});

Deno.test("ParleyClient paces a backlog with the welcome's rate and burst", async () => {
  const { client } = fakeClient();
  for (let i = 0; i < 6; i++) client.send(`m${i}`);
  client.connect();
  const ws = await join(client, 0, { limits: { ...LIMITS, rate: 50, burst: 2, queue: 256 } });
  const count = () => ws.envelopes.filter((e) => e.type === "message").length;
  assert.equal(count(), 2, "the burst goes at once");
  await waitFor(() => count() === 6, 2000, "the rest, paced");
  await client.close();
});

Deno.test("Backoff grows a jittered ceiling up to the cap and starts over after reset()", () => {
  const backoff = new Backoff({ baseMs: 100, capMs: 1000, random: () => 0.999 });
  assert.deepEqual([1, 2, 3, 4, 5, 6].map(() => backoff.next()), [99, 199, 399, 799, 999, 999]);
  backoff.reset();
  assert.equal(backoff.next(), 99);
  assert.throws(() => new Backoff({ baseMs: 0 }), RangeError);
});

Deno.test("TokenBucket gives the burst at once, then a token per 1/rate seconds", () => {
  let now = 0;
  const bucket = new TokenBucket(2, 3, () => now);
  assert.deepEqual([1, 2, 3, 4].map(() => bucket.take()), [true, true, true, false]);
  assert.equal(bucket.wait(), 500);
  now = 500;
  assert.equal(bucket.take(), true);
  assert.equal(new TokenBucket(null, null).take(), true);
});

Deno.test("Outbox keeps order, requeues in-flight items and stores no files", () => {
  const outbox = new Outbox();
  const base = { createdAt: 0, attempts: 0, state: "queued" as const };
  outbox.add({ ...base, cid: "a", kind: "message", text: "x" });
  outbox.add({
    ...base,
    cid: "f",
    kind: "file",
    file: { name: "f", mime: "text/plain", size: 1, data: new Uint8Array(1) },
  });
  assert.throws(() => outbox.add({ ...base, cid: "a", kind: "message", text: "y" }), RangeError);
  outbox.next()!.state = "sent";
  assert.equal(outbox.next()?.cid, "f");
  assert.deepEqual(outbox.requeue(1).map((item) => item.cid), ["a"]);
  const restored = new Outbox();
  assert.equal(restored.restore(JSON.parse(JSON.stringify(outbox.toJSON()))), 1);
  assert.equal(restored.next()?.cid, "a");
});

Deno.test("Roster applies presence as sets and marks a list that only counts came for", () => {
  const roster = new Roster();
  const me = { id: "m", nick: "me" };
  roster.welcome([me], 1, me);
  const joined = { joins: [{ id: "b", nick: "bob" }, me], leaves: [], renames: [], count: 2 };
  assert.deepEqual(roster.apply({ ...joined, listed: true }).joined.map((m) => m.id), ["b"]);
  assert.equal(roster.count, 2);
  assert.equal(roster.incomplete, false);
  roster.apply({ joins: [], leaves: [], renames: [], count: 1500, listed: false });
  assert.equal(roster.count, 1500);
  assert.equal(roster.incomplete, true);
  // A count-only leave lowers the count below those still listed: the count is the server's.
  roster.apply({ joins: [], leaves: [], renames: [], count: 1, listed: false });
  assert.equal(roster.members.size, 2);
  assert.equal(roster.count, 1);
});
