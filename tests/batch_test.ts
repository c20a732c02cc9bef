/**
 * Batched fan-out and scalable presence: the batch builder, the presence
 * tick, member paging, and both through the hub. Correctness only: order
 * kept, nothing lost, paging complete.
 *
 * @module
 */
import assert from "node:assert/strict";
import { batchFrame, PendingBatch } from "../lib/batch.ts";
import type { Hub } from "../lib/hub.ts";
import { membersPage, PresenceChanges } from "../lib/presence.ts";
import { FakeSocket, makeHub, settle, until, welcomed } from "./fakes.ts";

type Envelope = Record<string, unknown>;

Deno.test("batchFrame() joins serialised events in order and lists the bytes that follow", () => {
  const data = new Uint8Array([1, 2]);
  const frame = batchFrame([
    { seq: 1, json: '{"type":"message","id":4}', id: 4, epoch: "e" },
    { seq: 2, json: '{"type":"typing"}' },
    { seq: 3, json: '{"type":"file","id":5}', data, id: 5, epoch: "e" },
  ]);
  assert.deepEqual(JSON.parse(frame.frame), {
    type: "batch",
    events: [{ type: "message", id: 4 }, { type: "typing" }, { type: "file", id: 5 }],
  });
  assert.deepEqual(frame.binaries, [data]);
  assert.deepEqual([frame.events, frame.messages, frame.last], [3, 2, { id: 5, epoch: "e" }]);
});

Deno.test("PendingBatch flushes once on the next macrotask and builds each range once", async () => {
  let flushes = 0;
  const pending = new PendingBatch(() => flushes++);
  for (let seq = 1; seq <= 5; seq++) pending.push({ seq, json: `${seq}` });
  assert.equal(flushes, 0, "not before the next macrotask");
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(flushes, 1);
  const all = pending.frame(1, 5)!;
  assert.equal(pending.frame(1, 5), all, "the same string for every peer at that position");
  assert.deepEqual(JSON.parse(pending.frame(3, 4)!.frame).events, [3, 4]);
  assert.equal(pending.frame(6, 9), undefined);
  pending.clear();
  assert.equal(pending.size, 0);
  pending.push({ seq: 6, json: "6" });
  pending.cancel();
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(flushes, 1, "a cancelled batch never flushes");
});

Deno.test("PresenceChanges keeps what each member did last within a tick", () => {
  const changes = new PresenceChanges();
  const ann = { id: "a", nick: "ann" };
  const bob = { id: "b", nick: "bob" };
  const cat = { id: "c", nick: "cat" };
  changes.join(ann);
  changes.join(bob);
  changes.leave(bob); // joined and left: nothing
  changes.leave(cat);
  changes.rename({ id: "d", nick: "dee" }, "dan");
  changes.rename({ id: "a", nick: "annie" }, "ann"); // a join with the new nick
  assert.deepEqual(changes.take(7), {
    type: "presence",
    count: 7,
    joins: [{ id: "a", nick: "annie" }],
    leaves: [cat],
    renames: [{ member: { id: "d", nick: "dee" }, old: "dan" }],
  });
  assert.deepEqual(changes.take(7), { type: "presence", count: 7 }, "forgotten once taken");
  changes.join(ann);
  assert.deepEqual(changes.take(3000, true), { type: "presence", count: 3000 });
});

Deno.test("membersPage() pages every member once, in id order", () => {
  const members = Array.from(
    { length: 23 },
    (_, i) => ({ id: `m${100 + (i * 7) % 23}`, nick: `${i}` }),
  );
  const seen: string[] = [];
  let after: string | undefined;
  for (let i = 0; i < 10; i++) {
    const page = membersPage(members, after, 5);
    seen.push(...page.members.map((m) => m.id));
    if (!page.more) break;
    after = page.members.at(-1)!.id;
  }
  assert.deepEqual(seen, members.map((m) => m.id).sort());
});

/** A rich member of room `r`, with `batch` as given. */
async function member(hub: Hub, nick: string, batch: boolean) {
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room: "r", rich: true });
  conn.receive(JSON.stringify({ type: "hello", nick, client: `client-${nick}-0001`, batch }));
  await welcomed(socket);
  return { socket, conn };
}

/** Every event a socket got, batches unpacked, in order. */
function events(socket: FakeSocket): Envelope[] {
  return socket.envelopes().flatMap((e) => e.type === "batch" ? e.events as Envelope[] : [e]);
}

Deno.test("hub batches a burst for batch clients, in order, none lost, with file bytes after", async () => {
  const hub = makeHub();
  const reader = await member(hub, "reader", true);
  const plain = await member(hub, "plain", false);
  const raw = new FakeSocket();
  const rawConn = hub.connect(raw, { room: "r", rich: false });
  const writer = await member(hub, "writer", false);
  await new Promise((resolve) => setTimeout(resolve, 150)); // the join's presence tick
  const before = reader.socket.sent.length;
  for (let i = 0; i < 50; i++) {
    writer.conn.receive(JSON.stringify({ type: "message", cid: `c${i}`, text: `m${i}` }));
  }
  writer.conn.receive(JSON.stringify({ type: "file", cid: "f", name: "f", mime: "a/b", size: 2 }));
  writer.conn.receive(new Uint8Array([7, 7]));
  await until(() => events(reader.socket).some((e) => e.type === "file"), "the file");
  await settle();
  const texts = events(reader.socket).filter((e) => e.type === "message").map((e) => e.text);
  assert.deepEqual(texts, Array.from({ length: 50 }, (_, i) => `m${i}`));
  const frames = reader.socket.sent.slice(before);
  assert.ok(frames.length < 20, `${frames.length} frames for 51 events: batched`);
  assert.deepEqual([...(frames.at(-1) as Uint8Array)], [7, 7], "the bytes follow their batch");
  assert.equal(
    plain.socket.envelopes().filter((e) => e.type === "message").length,
    50,
    "a client that did not ask gets one frame per message",
  );
  assert.equal(plain.socket.envelopes().filter((e) => e.type === "batch").length, 0);
  await until(() => raw.sent.length === 51, "raw: one frame per message");
  for (const c of [reader, plain, writer]) c.conn.close();
  rawConn.close();
});

Deno.test("a batch client that falls behind catches up in batch frames, in order, none lost or doubled", async () => {
  const hub = makeHub({ lowWatermark: 200, maxBufferedBytes: 1 << 20 });
  const slow = await member(hub, "slow", true);
  const fast = await member(hub, "fast", true);
  const writer = await member(hub, "writer", false);
  await new Promise((resolve) => setTimeout(resolve, 150)); // the join's presence tick
  const before = slow.socket.sent.length;
  slow.socket.stalled = true;
  for (let i = 0; i < 200; i++) {
    writer.conn.receive(JSON.stringify({ type: "message", cid: `c${i}`, text: `m${i}` }));
    if (i % 50 === 49) await settle(); // a few turns of the event loop, as frames come
  }
  writer.conn.receive(JSON.stringify({ type: "file", cid: "f", name: "f", mime: "a/b", size: 2 }));
  writer.conn.receive(new Uint8Array([9, 9]));
  await until(() => events(fast.socket).some((e) => e.type === "file"), "the fast peer's file");
  slow.socket.drain();
  const want = [...Array.from({ length: 200 }, (_, i) => `m${i}`), "f"];
  const seen = (socket: FakeSocket) =>
    events(socket).filter((e) => e.type === "message" || e.type === "file").map((e) =>
      e.type === "file" ? "f" : e.text
    );
  await until(() => seen(slow.socket).length >= want.length, "the catch-up");
  await settle();
  assert.deepEqual(seen(slow.socket), want);
  assert.deepEqual(seen(fast.socket), want);
  const frames = slow.socket.sent.slice(before);
  assert.ok(frames.length < 50, `${frames.length} frames for 201 events: caught up in batches`);
  assert.deepEqual([...(frames.at(-1) as Uint8Array)], [9, 9], "the bytes follow their batch");
  for (const c of [slow, fast, writer]) c.conn.close();
});

Deno.test("hub coalesces presence for batch clients into one envelope per tick", async () => {
  const hub = makeHub();
  const reader = await member(hub, "reader", true);
  const plain = await member(hub, "plain", false);
  const joined: Awaited<ReturnType<typeof member>>[] = [];
  for (let i = 0; i < 5; i++) joined.push(await member(hub, `m${i}`, false));
  joined[4].conn.close();
  await until(
    () => reader.socket.envelopes().some((e) => e.type === "presence"),
    "a presence envelope",
  );
  await new Promise((resolve) => setTimeout(resolve, 150)); // the last tick
  const presence = reader.socket.envelopes().filter((e) => e.type === "presence");
  const listed = new Set<string>();
  for (const envelope of presence) {
    for (const m of (envelope.joins ?? []) as Envelope[]) listed.add(m.nick as string);
    for (const m of (envelope.leaves ?? []) as Envelope[]) listed.delete(m.nick as string);
  }
  // The first tick may repeat what welcome listed (the reader itself): a set absorbs it.
  assert.deepEqual([...listed].filter((n) => n !== "reader").sort(), [
    "m0",
    "m1",
    "m2",
    "m3",
    "plain",
  ]);
  assert.ok(presence.length < 7, `${presence.length} envelopes for 7 changes`);
  assert.equal(presence.at(-1)!.count, 6);
  assert.equal(reader.socket.envelopes().filter((e) => e.type === "join").length, 0);
  assert.equal(plain.socket.envelopes().filter((e) => e.type === "join").length, 5, "unchanged");
  for (const c of [reader, plain, ...joined]) c.conn.close();
});

Deno.test("hub lists at most 100 members in welcome and pages the rest on request", async () => {
  const hub = makeHub({ largeRoom: 50 });
  const crowd: Awaited<ReturnType<typeof member>>[] = [];
  for (let i = 0; i < 130; i++) {
    crowd.push(await member(hub, `p${String(i).padStart(3, "0")}`, false));
  }
  const late = await member(hub, "late", true);
  const welcome = late.socket.envelopes().find((e) => e.type === "welcome")!;
  assert.equal((welcome.members as Envelope[]).length, 100);
  assert.equal(welcome.count, 131);
  const ids: string[] = [];
  let after: string | undefined;
  for (let page = 0; page < 10; page++) {
    late.conn.receive(JSON.stringify({ type: "members", after, limit: 40 }));
    await until(
      () => late.socket.envelopes().filter((e) => e.type === "members").length === page + 1,
      "a page",
    );
    const answer = late.socket.envelopes().filter((e) => e.type === "members").at(-1)!;
    ids.push(...(answer.members as Envelope[]).map((m) => m.id as string));
    if (!answer.more) break;
    after = ids.at(-1);
  }
  assert.equal(ids.length, 131);
  assert.equal(new Set(ids).size, 131);
  assert.deepEqual(ids, [...ids].sort());
  // Above largeRoom, a plain client gets counts instead of each join and leave.
  const before = crowd[0].socket.envelopes().filter((e) => e.type === "leave").length;
  crowd[1].conn.close();
  await until(
    () => crowd[0].socket.envelopes().some((e) => e.type === "presence" && e.count === 130),
    "a count update",
  );
  assert.equal(crowd[0].socket.envelopes().filter((e) => e.type === "leave").length, before);
  for (const c of [...crowd, late]) c.conn.close();
});
