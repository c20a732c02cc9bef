/**
 * The lifecycle of a message through the hub: edits, deletes, replies,
 * scroll-back and typing, for rich and raw clients, on the in-memory engine.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Connection, Hub } from "../lib/hub.ts";
import { TYPING_INTERVAL_MS } from "../lib/hub.ts";
import { authorizeChange } from "../lib/lifecycle.ts";
import { ProtocolError } from "../lib/protocol.ts";
import { FakeSocket, makeHub, settle, until, welcomed } from "./fakes.ts";

type Envelope = Record<string, unknown>;

/** A rich client of the hub, joined. */
async function member(hub: Hub, nick: string, room = "r") {
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room, rich: true });
  conn.receive(JSON.stringify({ type: "hello", nick, client: `client-${nick}-0001` }));
  await welcomed(socket);
  return { socket, conn, send: (e: Envelope) => conn.receive(JSON.stringify(e)) };
}

/** Waits for the envelope of `type` (and `cid`, when given) and returns it. */
async function next(socket: FakeSocket, type: string, cid?: string): Promise<Envelope> {
  const find = () =>
    socket.envelopes().find((e) => e.type === type && (cid === undefined || e.cid === cid));
  await until(() => find() !== undefined, `${type} ${cid ?? ""}`);
  return find()!;
}

async function say(
  who: { socket: FakeSocket; send: (e: Envelope) => void },
  cid: string,
  text: string,
) {
  who.send({ type: "message", cid, text });
  return (await next(who.socket, "ack", cid)).id as number;
}

function closeAll(...conns: Connection[]) {
  for (const conn of conns) conn.close();
}

Deno.test("an edit reaches the room as its own event, acked, and a fresh join sees the new text", async () => {
  const hub = makeHub();
  const ann = await member(hub, "ann");
  const bob = await member(hub, "bob");
  const raw = new FakeSocket();
  hub.connect(raw, { room: "r", rich: false });
  await settle();
  const id = await say(ann, "c1", "helo");
  ann.send({ type: "edit", cid: "e1", id, text: "hello" });
  const ack = await next(ann.socket, "ack", "e1");
  const edit = await next(bob.socket, "edit");
  assert.equal(edit.id, ack.id);
  assert.equal(edit.target, id);
  assert.equal(edit.text, "hello");
  assert.deepEqual(edit.from, (await next(ann.socket, "welcome")).you);
  await until(() => raw.sent.length === 2, "two raw lines");
  assert.deepEqual(raw.sent, ["ann: helo", "* ann edited a message: hello"]);
  const late = await member(hub, "cat");
  const welcome = await next(late.socket, "welcome");
  const replay = late.socket.envelopes().filter((e) => e.type === "message" || e.type === "edit");
  assert.equal(welcome.replay, 2);
  assert.equal(replay[0].text, "hello");
  assert.equal(replay[0].edited, edit.ts);
  assert.equal(replay[1].type, "edit");
  closeAll(ann.conn, bob.conn, late.conn);
});

Deno.test("a delete leaves a tombstone; the text is in no later replay", async () => {
  const hub = makeHub();
  const ann = await member(hub, "ann");
  const id = await say(ann, "c1", "oops, a secret");
  ann.send({ type: "edit", cid: "e1", id, text: "still a secret" });
  await next(ann.socket, "ack", "e1");
  ann.send({ type: "delete", cid: "d1", id });
  const ack = await next(ann.socket, "ack", "d1");
  const del = await next(ann.socket, "delete");
  assert.equal(del.target, id);
  assert.equal(del.id, ack.id);
  const late = await member(hub, "cat");
  const after = late.socket.envelopes().filter((e) => e.type !== "welcome" && e.type !== "join");
  assert.ok(!JSON.stringify(after).includes("secret"), JSON.stringify(after));
  assert.deepEqual(after.map((e) => [e.type, e.deleted ?? false]), [
    ["message", true],
    ["edit", true],
    ["delete", false],
  ]);
  const raw = new FakeSocket();
  hub.connect(raw, { room: "r", rich: false, history: 10 });
  await settle();
  assert.deepEqual(raw.sent, [], "raw history shows no tombstone and no lifecycle line");
  ann.send({ type: "delete", cid: "d1", id });
  const acks = () => ann.socket.envelopes().filter((e) => e.cid === "d1" && e.type === "ack");
  await until(() => acks().length === 2, "the resend's ack");
  const again = acks();
  assert.equal(again.at(-1)?.duplicate, true, "a resent delete is deduplicated");
  closeAll(ann.conn, late.conn);
});

Deno.test("editing or deleting someone else's message is forbidden, with the cid; others see nothing", async () => {
  const hub = makeHub();
  const ann = await member(hub, "ann");
  const bob = await member(hub, "bob");
  const id = await say(ann, "c1", "mine");
  const before = bob.socket.sent.length;
  bob.send({ type: "edit", cid: "e1", id, text: "yours now" });
  const error = await next(bob.socket, "error", "e1");
  assert.equal(error.code, "forbidden");
  assert.match(error.message as string, /not yours/);
  assert.equal(error.retry, undefined, "final");
  bob.send({ type: "delete", cid: "d1", id });
  assert.equal((await next(bob.socket, "error", "d1")).code, "forbidden");
  bob.send({ type: "delete", cid: "d2", id: 999 });
  assert.equal((await next(bob.socket, "error", "d2")).code, "not_found");
  await settle();
  assert.equal(bob.socket.sent.length, before + 3, "only the three errors");
  assert.equal(ann.socket.envelopes().filter((e) => e.type === "edit").length, 0);
  closeAll(ann.conn, bob.conn);
});

Deno.test("authorizeChange lets a moderator delete any message but edit none", async () => {
  const hub = makeHub();
  const engine = hub.options.engine;
  const { message } = await engine.append("r", { from: { id: "a", nick: "ann" }, text: "x" });
  const mod = { member: { id: "m", nick: "mod" }, moderator: true };
  const draft = await authorizeChange(engine, "r", { kind: "delete", target: message.id }, mod);
  assert.equal(draft.kind, "delete");
  await assert.rejects(
    authorizeChange(engine, "r", { kind: "edit", target: message.id, text: "y" }, mod),
    (e) => e instanceof ProtocolError && e.code === "forbidden",
  );
});

Deno.test("a file cannot be edited; a reply is echoed and kept", async () => {
  const hub = makeHub();
  const ann = await member(hub, "ann");
  ann.send({ type: "file", cid: "f1", name: "a.bin", mime: "a/b", size: 1 });
  ann.conn.receive(new Uint8Array([1]));
  const fileId = (await next(ann.socket, "ack", "f1")).id as number;
  ann.send({ type: "edit", cid: "e1", id: fileId, text: "no" });
  assert.equal((await next(ann.socket, "error", "e1")).code, "bad_envelope");
  ann.send({ type: "message", cid: "r1", text: "about that file", reply_to: fileId });
  const echo = await next(ann.socket, "message", "r1");
  assert.equal(echo.reply_to, fileId);
  const late = await member(hub, "cat");
  const replayed = late.socket.envelopes().find((e) => e.cid === "r1");
  assert.equal(replayed?.reply_to, fileId);
  closeAll(ann.conn, late.conn);
});

Deno.test("scroll-back pages down to the start, in order, with edits and deletes applied", async () => {
  const hub = makeHub({ joinHistory: 5 });
  const ann = await member(hub, "ann");
  const ids: number[] = [];
  for (let i = 0; i < 23; i++) ids.push(await say(ann, `c${i}`, `m${i}`));
  ann.send({ type: "edit", cid: "e", id: ids[2], text: "m2 edited" });
  ann.send({ type: "delete", cid: "d", id: ids[3] });
  await next(ann.socket, "ack", "d");
  const seen: Envelope[] = [];
  let before = 10_000;
  for (let page = 0; page < 10; page++) {
    ann.send({ type: "history", before, limit: 10 });
    await until(
      () => ann.socket.envelopes().some((e) => e.type === "history" && e.before === before),
      "a page",
    );
    const answer = ann.socket.envelopes().find((e) => e.type === "history" && e.before === before)!;
    const messages = answer.messages as Envelope[];
    seen.unshift(...messages);
    if (!answer.more) break;
    before = messages[0].id as number;
  }
  assert.deepEqual(seen.map((m) => m.id), ids);
  assert.equal(seen[2].text, "m2 edited");
  assert.equal(seen[3].deleted, true);
  assert.equal(seen[3].text, undefined);
  ann.send({ type: "history", before: ids[1], limit: 5, cid: "page-1" });
  const tagged = await next(ann.socket, "history", "page-1");
  assert.deepEqual((tagged.messages as Envelope[]).map((m) => m.id), [ids[0]]);
  assert.equal(tagged.more, false);
  ann.send({ type: "history", before: 5, limit: 201 });
  const error = await next(ann.socket, "error");
  assert.equal(error.code, "bad_envelope");
  assert.match(error.message as string, /limit/);
  ann.conn.close();
});

Deno.test("typing reaches the other members, not the typist, at most once per interval", async () => {
  const hub = makeHub();
  const ann = await member(hub, "ann");
  const bob = await member(hub, "bob");
  const raw = new FakeSocket();
  hub.connect(raw, { room: "r", rich: false });
  ann.send({ type: "typing" });
  ann.send({ type: "typing" });
  const typing = await next(bob.socket, "typing");
  assert.deepEqual((typing.member as Envelope).nick, "ann");
  assert.ok((typing.ttl as number) > TYPING_INTERVAL_MS, "outlives the interval between signals");
  await settle();
  assert.equal(bob.socket.envelopes().filter((e) => e.type === "typing").length, 1, "throttled");
  assert.equal(ann.socket.envelopes().filter((e) => e.type === "typing").length, 0);
  assert.deepEqual(raw.sent, []);
  const { head } = await hub.options.engine.read("r", undefined, 10);
  assert.equal(head, 0, "never stored");
  closeAll(ann.conn, bob.conn);
});

Deno.test("welcome states the limits a client must respect", async () => {
  const hub = makeHub({ rateLimit: 5, rateBurst: 30, maxTextLength: 4000 });
  const ann = await member(hub, "ann");
  const welcome = await next(ann.socket, "welcome");
  assert.deepEqual(welcome.limits, {
    text: 4000,
    bytes: 1 << 20,
    rate: 5,
    burst: 30,
    queue: 256,
    page: 200,
    typing: 6000,
  });
  ann.conn.close();
});

Deno.test("hello_required carries the cid of the envelope it refuses", async () => {
  const hub = makeHub();
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room: "r", rich: true });
  conn.receive(JSON.stringify({ type: "message", cid: "early", text: "hi" }));
  conn.receive(JSON.stringify({ type: "edit", cid: "early-edit", id: 1, text: "hi" }));
  await settle();
  assert.deepEqual(socket.envelopes().map((e) => [e.code, e.cid]), [
    ["hello_required", "early"],
    ["hello_required", "early-edit"],
  ]);
  conn.close();
});

Deno.test("a malformed URL position is answered bad_last on hello, with no welcome", async () => {
  const hub = makeHub();
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room: "r", rich: true, badLast: "bad resume position: x" });
  conn.receive(JSON.stringify({ type: "hello", nick: "ann" }));
  await until(() => socket.sent.length === 1, "an answer");
  assert.deepEqual(socket.envelopes().map((e) => e.code), ["bad_last"]);
  conn.receive(JSON.stringify({ type: "hello", nick: "ann", last: null }));
  await welcomed(socket);
  conn.close();
});
