/**
 * The client SDK against a real server (in this process, on 127.0.0.1):
 * replies, edits and deletes, files, typing, presence and member pages,
 * scroll-back, a kick, and a stale saved position.
 *
 * @module
 */

import assert from "node:assert/strict";
import { mintToken } from "../lib/auth/token.ts";
import {
  type Change,
  type ChatMessage,
  MemoryStorage,
  ParleyClient,
  type ParleyClientOptions,
  SendError,
} from "../client/mod.ts";
import { startServer, type TestServer, waitFor } from "./helpers.ts";

const FAST = { baseMs: 20, capMs: 200 };

/** Runs `fn` with a server and closes every client it made. */
async function withServer(
  overrides: Parameters<typeof startServer>[0],
  fn: (
    make: (room: string, options: ParleyClientOptions) => ParleyClient,
    server: TestServer,
  ) => Promise<void>,
): Promise<void> {
  const server = await startServer(overrides);
  const clients: ParleyClient[] = [];
  try {
    await fn((room, options) => {
      const client = new ParleyClient(`${server.ws}/${room}`, { backoff: FAST, ...options });
      clients.push(client);
      return client;
    }, server);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await server.close();
  }
}

function messages(client: ParleyClient): ChatMessage[] {
  const seen: ChatMessage[] = [];
  client.on("message", (m) => seen.push(m));
  return seen;
}

Deno.test("ParleyClient replies, edits and deletes; another client sees each in order, and a refusal is final", async () => {
  await withServer({}, async (make) => {
    const ann = make("talk", { nick: "ann" });
    const bob = make("talk", { nick: "bob" });
    const seen = messages(bob);
    const changes: Change[] = [];
    bob.on("edit", (c) => changes.push(c));
    bob.on("delete", (c) => changes.push(c));
    await Promise.all([ann.connect(), bob.connect()]);
    const hello = await ann.send("hello").delivered;
    const reply = await bob.send("hi ann", { replyTo: hello.id }).delivered;
    await ann.edit(hello.id, "hello, everyone").delivered;
    await ann.delete(hello.id).delivered;
    await waitFor(() => changes.length === 2, 2000, "the edit and the delete");
    assert.deepEqual(seen.map((m) => [m.id, m.text, m.replyTo]), [
      [hello.id, "hello", undefined],
      [reply.id, "hi ann", hello.id],
    ]);
    assert.deepEqual(changes.map((c) => [c.kind, c.target, c.text]), [
      ["edit", hello.id, "hello, everyone"],
      ["delete", hello.id, undefined],
    ]);
    const refused = bob.edit(hello.id, "not mine");
    await assert.rejects(refused.delivered, (error) => {
      assert.ok(error instanceof SendError);
      assert.ok(["forbidden", "not_found"].includes(error.code), error.code);
      return true;
    });
    assert.equal(bob.outbox.length, 0);
  });
});

Deno.test("ParleyClient sends a file and the other client gets its bytes with it, in room order", async () => {
  await withServer({}, async (make) => {
    const ann = make("files", { nick: "ann" });
    const bob = make("files", { nick: "bob" });
    const seen = messages(bob);
    await Promise.all([ann.connect(), bob.connect()]);
    const data = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4]);
    ann.send("before");
    const file = ann.sendFile({ name: "dot.png", mime: "image/png", data });
    ann.send("after");
    await file.delivered;
    await waitFor(() => seen.length === 3, 2000, "three messages");
    assert.deepEqual(seen.map((m) => m.text ?? m.file?.name), ["before", "dot.png", "after"]);
    assert.deepEqual(seen[1].file, { name: "dot.png", mime: "image/png", size: 8, data });
  });
});

Deno.test("ParleyClient tracks presence and typing, and pages through the members", async () => {
  await withServer({}, async (make) => {
    const ann = make("crowd", { nick: "ann" });
    await ann.connect();
    const joined: string[] = [];
    ann.on("presence", (p) => joined.push(...p.changes.joined.map((m) => m.nick)));
    const others = ["bob", "cat", "dan", "eve"].map((nick) => make("crowd", { nick }));
    await Promise.all(others.map((c) => c.connect()));
    await waitFor(() => ann.memberCount === 5 && ann.members.size === 5, 2000, "five members");
    assert.deepEqual(joined.sort(), ["bob", "cat", "dan", "eve"]);
    const typing: string[] = [];
    ann.on("typing", ({ member }) => typing.push(member.nick));
    assert.equal(others[0].typing(), true);
    assert.equal(others[0].typing(), false, "at most one signal every 2 s");
    await waitFor(() => typing.length === 1, 2000, "the typing signal");
    assert.deepEqual(ann.typists.map((m) => m.nick), ["bob"]);
    const pages = [await ann.loadMembers({ restart: true, limit: 2 })];
    while (pages.at(-1)!.more) pages.push(await ann.loadMembers({ limit: 2 }));
    assert.equal(pages.length, 3);
    assert.deepEqual(pages.flatMap((p) => p.members.map((m) => m.nick)).sort(), [
      "ann",
      "bob",
      "cat",
      "dan",
      "eve",
    ]);
    await others[3].close();
    await waitFor(() => !ann.members.has(others[3].me!.id), 2000, "eve leaves the list");
    assert.equal(ann.memberCount, 4);
  });
});

Deno.test("ParleyClient scrolls back page by page to the start of the room", async () => {
  await withServer({ joinHistory: 5 }, async (make) => {
    const ann = make("old", { nick: "ann" });
    await ann.connect();
    for (let i = 0; i < 30; i++) ann.send(`m${i}`);
    await waitFor(() => ann.outbox.length === 0, 5000, "thirty acks");
    const carol = make("old", { nick: "carol" });
    const replayed = messages(carol);
    const welcome = await carol.connect();
    assert.equal(welcome.recovered, null);
    await waitFor(() => replayed.length === 5, 2000, "the join history");
    const texts = replayed.map((m) => m.text);
    let page = await carol.loadOlder({ limit: 10 });
    texts.unshift(...page.messages.map((m) => m.text));
    while (page.more) {
      page = await carol.loadOlder({ limit: 10 });
      texts.unshift(...page.messages.map((m) => m.text));
    }
    assert.deepEqual(texts, Array.from({ length: 30 }, (_, i) => `m${i}`));
  });
});

Deno.test("ParleyClient kicked by a moderator (4403) closes for good and does not reconnect", async () => {
  const secret = "a-test-secret-of-at-least-32-bytes-long!";
  await withServer({ auth: "token", authSecret: secret, authSkew: 0 }, async (make, server) => {
    const token = (sub: string, mod: boolean) =>
      mintToken(secret, { sub, name: sub, rooms: ["*"], mod: mod ? ["*"] : [], ttlSeconds: 600 });
    const ann = make("moderated", { token: await token("ann", false) });
    const mo = make("moderated", { token: () => token("mo", true) });
    const statuses: string[] = [];
    ann.on("status", (s) => statuses.push(s.state === "closed" ? `closed:${s.code}` : s.state));
    const kicks: string[] = [];
    mo.on("kick", (k) => kicks.push(`${k.member.nick}:${k.reason}`));
    await Promise.all([ann.connect(), mo.connect()]);
    assert.equal(mo.welcome?.moderator, true);
    mo.kick(ann.me!.id, { reason: "spam" });
    await waitFor(() => statuses.at(-1) === "closed:4403", 2000, "ann closed with 4403");
    await waitFor(() => kicks.length === 1, 2000, "the kick seen by the moderator");
    assert.deepEqual(kicks, ["ann:spam"]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(!statuses.includes("reconnecting"), `no reconnect: ${statuses}`);
    const connections = [...server.app.hub.connections].filter((c) => c.info.room === "moderated");
    assert.equal(connections.length, 1, "only the moderator is connected");
  });
});

Deno.test("ParleyClient with a saved position the server never issued joins afresh and says so", async () => {
  await withServer({}, async (make) => {
    const ann = make("stale", { nick: "ann" });
    const welcome = await ann.connect();
    await ann.send("one").delivered;
    const storage = new MemoryStorage();
    const key = "stale-state";
    await storage.set(key, JSON.stringify({ last: { epoch: welcome.epoch, id: 999 } }));
    const bob = make("stale", { nick: "bob", storage, storageKey: key });
    const gaps: string[] = [];
    bob.on("gap", (gap) => gaps.push(gap.reason));
    const seen = messages(bob);
    await bob.connect();
    await ann.send("two").delivered;
    await waitFor(() => seen.some((m) => m.text === "two"), 2000, "a live message");
    assert.ok(gaps.length >= 1, "a gap was reported");
    assert.equal(bob.status.state, "open");
    assert.equal(seen.filter((m) => m.text === "two").length, 1);
  });
});
