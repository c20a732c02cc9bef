/**
 * Integration tests of rich mode (`parley.v1`): joining and replay, presence,
 * resume, dedup, raw and rich clients in one room, and bad input. A real
 * server on 127.0.0.1 and real WebSocket clients.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { Config } from "../lib/config.ts";
import type { Member, Welcome } from "../lib/protocol.ts";
import {
  Client,
  expectSilence,
  type Frame,
  startServer,
  type TestServer,
  waitFor,
} from "./helpers.ts";

const PROTOCOL = "parley.v1";

/** A `message` or `file` envelope from the server. */
interface Stored {
  type: "message" | "file";
  id: number;
  epoch: string;
  ts: number;
  from: Member | null;
  cid?: string;
  text?: string;
  name?: string;
  mime?: string;
  size?: number;
  omitted?: boolean;
}

interface Ack {
  type: "ack";
  cid: string;
  id: number;
  epoch: string;
  duplicate: boolean;
}

interface ErrorEnvelope {
  type: "error";
  code: string;
  message: string;
  cid?: string;
}

/** What a test gets: its server and ways to open clients that are closed for it. */
interface World {
  server: TestServer;
  /** Opens a raw client. */
  raw(path?: string): Promise<Client>;
  /** Opens a rich client without sending `hello`. */
  rich(path?: string): Promise<Client>;
  /** Opens a rich client, sends `hello` and returns it with its `welcome`. */
  join(
    path: string,
    hello: Record<string, unknown>,
  ): Promise<{ client: Client; welcome: Welcome }>;
}

/** Runs `fn` with a fresh server; closes every client, then the server. */
async function withServer(
  overrides: Partial<Config>,
  fn: (world: World) => Promise<void>,
): Promise<void> {
  const server = await startServer(overrides);
  const clients: Client[] = [];
  const open = async (path: string, protocols?: string) => {
    const client = new Client(server.ws + path, protocols);
    clients.push(client);
    await client.opened;
    return client;
  };
  const world: World = {
    server,
    raw: (path = "/") => open(path),
    rich: (path = "/") => open(path, PROTOCOL),
    async join(path, hello) {
      const client = await open(path, PROTOCOL);
      assert.equal(client.socket.protocol, PROTOCOL);
      client.send({ type: "hello", ...hello });
      const welcome = await client.json<Welcome>();
      assert.equal(welcome.type, "welcome", JSON.stringify(welcome));
      return { client, welcome };
    },
  };
  try {
    await fn(world);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  }
}

/** A fresh private client identity. */
function identity(): string {
  return `client-${crypto.randomUUID()}`;
}

/** Sends a message and waits for its ack (skipping the echo). */
async function say(client: Client, cid: string, text: string): Promise<Ack> {
  client.send({ type: "message", cid, text });
  const ack = await client.until<Ack>("ack", 2000);
  assert.equal(ack.cid, cid);
  return ack;
}

/** The next envelope, which must be of `type`. */
async function expectEnvelope<T = Record<string, unknown>>(
  client: Client,
  type: string,
): Promise<T> {
  const envelope = await client.json<T & { type: string }>(2000);
  assert.equal(envelope.type, type, JSON.stringify(envelope));
  return envelope;
}

/** The next envelope, which must be an error of `code` with `cid` (or none). */
async function expectError(client: Client, code: string, cid?: string): Promise<ErrorEnvelope> {
  const error = await expectEnvelope<ErrorEnvelope>(client, "error");
  assert.equal(error.code, code, JSON.stringify(error));
  assert.equal(error.cid, cid, JSON.stringify(error));
  assert.equal(typeof error.message, "string");
  return error;
}

/** Takes `count` stored envelopes (`message` or `file`) that must come next. */
async function takeStored(client: Client, count: number): Promise<Stored[]> {
  const stored: Stored[] = [];
  for (let i = 0; i < count; i++) {
    const envelope = await client.json<Stored>(2000);
    assert.ok(envelope.type === "message" || envelope.type === "file", JSON.stringify(envelope));
    stored.push(envelope);
  }
  return stored;
}

/** Frames that arrive within `ms` (a wait used only to show something is absent). */
async function drain(client: Client, ms = 150): Promise<Frame[]> {
  await new Promise((resolve) => setTimeout(resolve, ms));
  const frames: Frame[] = [];
  while (client.queued.length > 0) frames.push(await client.next());
  return frames;
}

/** Envelopes of a list of frames. */
function envelopes(frames: Frame[]): Record<string, unknown>[] {
  return frames.map((f) => {
    assert.equal(typeof f, "string", "no binary frame expected");
    return JSON.parse(f as string);
  });
}

/** Asserts ids strictly increase. */
function assertIncreasing(ids: number[]): void {
  for (let i = 1; i < ids.length; i++) {
    assert.ok(ids[i] > ids[i - 1], `ids must strictly increase: ${ids.join(", ")}`);
  }
}

/** Sends a well-formed message and checks it reaches its sender (with an ack) and a bystander. */
async function assertUsable(sender: Client, bystander: Client, cid: string): Promise<void> {
  sender.send({ type: "message", cid, text: `ok ${cid}` });
  const echo = await expectEnvelope<Stored>(sender, "message");
  assert.equal(echo.text, `ok ${cid}`);
  const ack = await expectEnvelope<Ack>(sender, "ack");
  assert.equal(ack.cid, cid);
  assert.equal(ack.id, echo.id);
  const seen = await expectEnvelope<Stored>(bystander, "message");
  assert.equal(seen.id, echo.id);
}

function byId(members: Member[]): Member[] {
  return [...members].sort((a, b) => a.id.localeCompare(b.id));
}

Deno.test("hello is answered by welcome: room, epoch, head, you, members, recovered null, replay", async () => {
  await withServer({}, async ({ rich, join }) => {
    const client = identity();
    const ann = await join("/dev", { nick: "  ann  ", client });
    const w = ann.welcome;
    assert.equal(w.room, "dev");
    assert.match(w.epoch, /^[A-Za-z0-9_-]{1,64}$/);
    assert.equal(w.head, 0);
    assert.equal(w.you.nick, "ann", "the nick is trimmed");
    assert.match(w.you.id, /^[0-9a-f]{16}$/);
    assert.ok(
      !w.you.id.includes(client) && !client.includes(w.you.id),
      "id does not reveal client",
    );
    assert.deepEqual(w.members, [w.you]);
    assert.equal(w.recovered, null);
    assert.equal(w.replay, 0);

    const bob = await join("/dev", { nick: "bob" });
    assert.equal(bob.welcome.epoch, w.epoch);
    assert.notEqual(bob.welcome.you.id, w.you.id);
    assert.deepEqual(byId(bob.welcome.members), byId([w.you, bob.welcome.you]));
    const joined = await expectEnvelope<{ member: Member }>(ann.client, "join");
    assert.deepEqual(joined.member, bob.welcome.you);

    // The same client identity is the same member id, in any room.
    const again = await join("/other", { nick: "ann", client });
    assert.equal(again.welcome.you.id, w.you.id);
    assert.equal(again.welcome.room, "other");
    assert.notEqual(again.welcome.epoch, w.epoch, "every room has its own epoch");

    const lobby = await join("/", { nick: "carol" });
    assert.equal(lobby.welcome.room, "lobby");

    // Envelopes sent before the welcome arrives are handled after the join.
    const eager = await rich("/dev");
    eager.send({ type: "hello", nick: "eve" });
    eager.send({ type: "message", cid: "e-1", text: "right away" });
    assert.equal((await expectEnvelope<Welcome>(eager, "welcome")).replay, 0);
    assert.equal((await expectEnvelope<Stored>(eager, "message")).text, "right away");
    assert.equal((await expectEnvelope<Ack>(eager, "ack")).cid, "e-1");

    ann.client.send({ type: "ping" });
    const pong = await ann.client.until<{ ts: number }>("pong", 2000);
    assert.equal(typeof pong.ts, "number");
  });
});

Deno.test("a joining rich client gets the recent history in id order before live messages", async () => {
  await withServer({}, async ({ raw, rich, join }) => {
    const writer = await join("/h", { nick: "wes", client: identity() });
    const rawWriter = await raw("/h");
    const texts = ["r1", "r2", "w1", "r3", "w2"];
    const ids: number[] = [];
    for (const text of texts) {
      if (text.startsWith("r")) {
        rawWriter.send(text);
        assert.equal(await rawWriter.text(2000), text);
        ids.push((await writer.client.until<Stored>("message", 2000)).id);
      } else {
        ids.push((await say(writer.client, `c-${text}`, text)).id);
        assert.equal(await rawWriter.text(2000), `wes: ${text}`);
      }
    }
    assertIncreasing(ids);

    const late = await join("/h", { nick: "lou" });
    assert.equal(late.welcome.replay, 5);
    assert.equal(late.welcome.head, ids[4]);
    assert.equal(late.welcome.recovered, null);
    const replay = await takeStored(late.client, 5);
    assert.deepEqual(replay.map((m) => m.id), ids);
    assert.deepEqual(replay.map((m) => m.text), texts);
    for (const m of replay) {
      assert.equal(m.type, "message");
      assert.equal(m.epoch, late.welcome.epoch);
      assert.equal(typeof m.ts, "number");
      assert.deepEqual(m.from, m.text!.startsWith("r") ? null : writer.welcome.you);
    }
    rawWriter.send("live");
    const live = await expectEnvelope<Stored>(late.client, "message");
    assert.equal(live.text, "live");
    assert.ok(live.id > ids[4]);

    // A message racing the join arrives once, after the replay, whichever way the race goes.
    const racer = await rich("/h");
    racer.send({ type: "hello", nick: "ray" });
    rawWriter.send("race");
    const welcome = await expectEnvelope<Welcome>(racer, "welcome");
    assert.ok(welcome.replay === 6 || welcome.replay === 7, `replay ${welcome.replay}`);
    const seen = await takeStored(racer, welcome.replay);
    while (seen.at(-1)?.text !== "race") seen.push(...await takeStored(racer, 1));
    assertIncreasing(seen.map((m) => m.id));
    assert.deepEqual(seen.map((m) => m.text), [...texts, "live", "race"]);
    await expectSilence(racer, 100);
  });
});

Deno.test("JOIN_HISTORY caps the replay of a fresh join", async () => {
  await withServer({ joinHistory: 3 }, async ({ raw, join }) => {
    const writer = await raw("/j");
    for (let i = 1; i <= 5; i++) {
      writer.send(`m${i}`);
      assert.equal(await writer.text(2000), `m${i}`);
    }
    const late = await join("/j", { nick: "lou" });
    assert.equal(late.welcome.replay, 3);
    assert.equal(late.welcome.head, 5);
    const replay = await takeStored(late.client, 3);
    assert.deepEqual(replay.map((m) => m.text), ["m3", "m4", "m5"]);
    assert.deepEqual(replay.map((m) => m.id), [3, 4, 5]);
    await expectSilence(late.client, 50);
  });
});

Deno.test("two tabs of one client are one member: one join, and a leave only with the last tab", async () => {
  await withServer({}, async ({ server, join }) => {
    const observer = await join("/p", { nick: "olga", client: identity() });
    const client = identity();
    const tab1 = await join("/p", { nick: "ann", client });
    const ann = tab1.welcome.you;
    assert.deepEqual(byId(tab1.welcome.members), byId([observer.welcome.you, ann]));
    const joined = await expectEnvelope<{ member: Member }>(observer.client, "join");
    assert.deepEqual(joined.member, ann);

    const tab2 = await join("/p", { nick: "ann", client });
    assert.equal(tab2.welcome.you.id, ann.id);
    assert.deepEqual(byId(tab2.welcome.members), byId([observer.welcome.you, ann]));
    await expectSilence(observer.client);
    await expectSilence(tab1.client, 0);

    const hub = server.app.hub;
    await tab1.client.close();
    // The server has taken the tab out before silence is asserted.
    await waitFor(() => hub.roomSize("p") === 2, 2000, "tab 1 out of room p");
    await expectSilence(observer.client);

    await tab2.client.close();
    const left = await expectEnvelope<{ member: Member }>(observer.client, "leave");
    assert.deepEqual(left.member, ann);
    await expectSilence(observer.client);
  });
});

Deno.test("a nick change is announced to everybody and later messages carry the new nick", async () => {
  await withServer({}, async ({ raw, join }) => {
    const ann = await join("/n", { nick: "ann", client: identity() });
    const bob = await join("/n", { nick: "bob" });
    await expectEnvelope(ann.client, "join");
    const rawPeer = await raw("/n");

    ann.client.send({ type: "nick", nick: "anna" });
    for (const client of [ann.client, bob.client]) {
      const rename = await expectEnvelope<{ member: Member; old: string }>(client, "rename");
      assert.deepEqual(rename.member, { id: ann.welcome.you.id, nick: "anna", verified: false });
      assert.equal(rename.old, "ann");
    }
    ann.client.send({ type: "message", cid: "n-1", text: "hi" });
    const seen = await expectEnvelope<Stored>(bob.client, "message");
    assert.deepEqual(seen.from, { id: ann.welcome.you.id, nick: "anna", verified: false });
    assert.equal(await rawPeer.text(2000), "anna: hi");

    const carol = await join("/n", { nick: "carol" });
    assert.ok(carol.welcome.members.some((m) => m.nick === "anna"));
    assert.ok(!carol.welcome.members.some((m) => m.nick === "ann"));
    await expectSilence(rawPeer, 50);
  });
});

Deno.test("a client that reconnects with last gets exactly what it missed, recovered true", async () => {
  await withServer({}, async ({ server, rich, join }) => {
    const client = identity();
    const a = await join("/res", { nick: "ann", client });
    const b = await join("/res", { nick: "bob", client: identity() });
    await expectEnvelope(a.client, "join");
    await say(b.client, "b-0", "before");
    const before = await expectEnvelope<Stored>(a.client, "message");
    const last = { epoch: before.epoch, id: before.id };

    const conn = [...server.app.hub.connections].find((c) => c.member?.id === a.welcome.you.id);
    assert.ok(conn, "A's connection is in the hub");
    conn.close(4000, "dropped by test");
    assert.equal((await a.client.closed).code, 4000);

    const acks: Ack[] = [];
    for (let i = 1; i <= 5; i++) acks.push(await say(b.client, `b-${i}`, `missed ${i}`));
    assertIncreasing([last.id, ...acks.map((ack) => ack.id)]);

    const back = await join("/res", { nick: "ann", client, last });
    assert.equal(back.welcome.recovered, true);
    assert.equal(back.welcome.replay, 5);
    assert.equal(back.welcome.head, acks[4].id);
    assert.equal(back.welcome.you.id, a.welcome.you.id);
    const replay = await takeStored(back.client, 5);
    assert.deepEqual(replay.map((m) => m.id), acks.map((ack) => ack.id));
    assert.deepEqual(replay.map((m) => m.text), [1, 2, 3, 4, 5].map((i) => `missed ${i}`));
    await expectSilence(back.client);
    await say(b.client, "b-6", "live");
    const live = await expectEnvelope<Stored>(back.client, "message");
    assert.equal(live.text, "live");
    assert.equal(live.id, acks[4].id + 1);
    await expectSilence(back.client, 50);

    // The URL form, used when hello has no last.
    const viaUrl = await rich(`/res?epoch=${last.epoch}&last=${last.id}`);
    viaUrl.send({ type: "hello", nick: "ann2" });
    const welcome = await expectEnvelope<Welcome>(viaUrl, "welcome");
    assert.equal(welcome.recovered, true);
    assert.equal(welcome.replay, 6);
    const urlReplay = await takeStored(viaUrl, 6);
    assert.deepEqual(urlReplay.map((m) => m.text), [
      ...[1, 2, 3, 4, 5].map((i) => `missed ${i}`),
      "live",
    ]);
    await expectSilence(viaUrl, 50);

    // hello.last wins over the URL.
    const both = await rich(`/res?epoch=${last.epoch}&last=0`);
    both.send({ type: "hello", nick: "ann3", last: { epoch: last.epoch, id: acks[4].id } });
    const bothWelcome = await expectEnvelope<Welcome>(both, "welcome");
    assert.equal(bothWelcome.recovered, true);
    assert.equal(bothWelcome.replay, 1);
    assert.equal((await takeStored(both, 1))[0].text, "live");
  });
});

Deno.test("a resume past the history window or from another epoch is recovered false with recent history", async () => {
  await withServer({ historySize: 5 }, async ({ join }) => {
    const client = identity();
    const a = await join("/lost", { nick: "ann", client });
    const b = await join("/lost", { nick: "bob", client: identity() });
    await say(b.client, "b-0", "seen");
    const seen = await a.client.until<Stored>("message", 2000);
    await a.client.close();

    const acks: Ack[] = [];
    for (let i = 1; i <= 10; i++) acks.push(await say(b.client, `b-${i}`, `m${i}`));
    const recent = acks.slice(5).map((ack) => ack.id);

    const back = await join("/lost", {
      nick: "ann",
      client,
      last: { epoch: seen.epoch, id: seen.id },
    });
    assert.equal(back.welcome.recovered, false);
    assert.equal(back.welcome.replay, 5);
    assert.equal(back.welcome.head, acks[9].id);
    const replay = await takeStored(back.client, 5);
    assert.deepEqual(replay.map((m) => m.id), recent);
    assert.deepEqual(replay.map((m) => m.text), ["m6", "m7", "m8", "m9", "m10"]);
    await expectSilence(back.client, 50);

    const other = await join("/lost", {
      nick: "olga",
      last: { epoch: "another-epoch", id: 3 },
    });
    assert.equal(other.welcome.recovered, false);
    assert.notEqual(other.welcome.epoch, "another-epoch");
    assert.equal(other.welcome.replay, 5);
    assert.deepEqual((await takeStored(other.client, 5)).map((m) => m.id), recent);
    await expectSilence(other.client, 50);
  });
});

Deno.test("a resent cid from the same client is acked with the original id and not relayed again", async () => {
  await withServer({}, async ({ join }) => {
    const observer = await join("/d", { nick: "olga", client: identity() });
    const client = identity();
    const a = await join("/d", { nick: "ann", client });
    await expectEnvelope(observer.client, "join");

    a.client.send({ type: "message", cid: "c-1", text: "once" });
    const echo = await expectEnvelope<Stored>(a.client, "message");
    assert.equal(echo.cid, "c-1");
    const ack = await expectEnvelope<Ack>(a.client, "ack");
    assert.deepEqual(ack, {
      type: "ack",
      cid: "c-1",
      id: echo.id,
      epoch: echo.epoch,
      duplicate: false,
    });
    const first = await expectEnvelope<Stored>(observer.client, "message");
    assert.equal(first.id, echo.id);
    await a.client.close();

    const again = await join("/d", { nick: "ann", client });
    assert.equal(again.welcome.replay, 1, "the original is in the replay");
    assert.equal((await takeStored(again.client, 1))[0].id, echo.id);
    again.client.send({ type: "message", cid: "c-1", text: "once" });
    const dupAck = await expectEnvelope<Ack>(again.client, "ack");
    assert.deepEqual(dupAck, { ...ack, duplicate: true });
    await expectSilence(again.client);
    const observed = envelopes(await drain(observer.client));
    assert.deepEqual(observed.map((e) => e.type), ["leave", "join"], JSON.stringify(observed));

    const other = await join("/d", { nick: "carl", client: identity() });
    await takeStored(other.client, 1);
    other.client.send({ type: "message", cid: "c-1", text: "mine" });
    const otherEcho = await expectEnvelope<Stored>(other.client, "message");
    const otherAck = await expectEnvelope<Ack>(other.client, "ack");
    assert.equal(otherAck.duplicate, false);
    assert.equal(otherAck.id, otherEcho.id);
    assert.ok(otherAck.id > echo.id);
    assert.equal((await observer.client.until<Stored>("message", 2000)).text, "mine");
  });
});

Deno.test("raw text reaches rich clients with from null; rich text reaches raw clients as nick: text", async () => {
  await withServer({}, async ({ raw, join }) => {
    const rawPeer = await raw("/mix");
    const ann = await join("/mix", { nick: "ann", client: identity() });
    assert.deepEqual(ann.welcome.members, [ann.welcome.you], "raw clients are not members");

    rawPeer.send("plain  text ✓");
    assert.equal(await rawPeer.text(2000), "plain  text ✓");
    const fromRaw = await expectEnvelope<Stored>(ann.client, "message");
    assert.equal(fromRaw.from, null);
    assert.equal(fromRaw.text, "plain  text ✓");
    assert.equal(fromRaw.cid, undefined);
    assert.equal(fromRaw.epoch, ann.welcome.epoch);

    ann.client.send({ type: "message", cid: "m-1", text: "hi there" });
    assert.equal(await rawPeer.text(2000), "ann: hi there");
    const echo = await expectEnvelope<Stored>(ann.client, "message");
    assert.deepEqual(echo.from, ann.welcome.you);
    assert.equal(echo.id, fromRaw.id + 1);
    await expectEnvelope<Ack>(ann.client, "ack");
    await expectSilence(rawPeer, 50);
  });
});

Deno.test("files cross modes: raw bytes become file envelopes, rich files become bare bytes", async () => {
  await withServer({}, async ({ raw, join }) => {
    const rawPeer = await raw("/files");
    const ann = await join("/files", { nick: "ann", client: identity() });
    const bob = await join("/files", { nick: "bob" });
    await expectEnvelope(ann.client, "join");

    const png = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]);
    rawPeer.send(png);
    assert.deepStrictEqual(await rawPeer.binary(2000), png);
    for (const client of [ann.client, bob.client]) {
      const file = await expectEnvelope<Stored>(client, "file");
      assert.equal(file.from, null);
      assert.equal(file.mime, "image/png");
      assert.equal(file.name, "file");
      assert.equal(file.size, png.byteLength);
      assert.equal(file.omitted, undefined);
      assert.deepStrictEqual(await client.binary(2000), png);
    }

    const bytes = new TextEncoder().encode("notes");
    ann.client.send({ type: "file", cid: "f-1", name: "notes.txt", mime: "text/plain", size: 5 });
    ann.client.send(bytes);
    assert.deepStrictEqual(await rawPeer.binary(2000), bytes);
    for (const client of [bob.client, ann.client]) {
      const file = await expectEnvelope<Stored>(client, "file");
      assert.deepEqual(file.from, ann.welcome.you);
      assert.equal(file.cid, "f-1");
      assert.equal(file.name, "notes.txt");
      assert.equal(file.mime, "text/plain");
      assert.equal(file.size, 5);
      assert.deepStrictEqual(await client.binary(2000), bytes);
    }
    const ack = await expectEnvelope<Ack>(ann.client, "ack");
    assert.equal(ack.cid, "f-1");
    assert.equal(ack.duplicate, false);
    await Promise.all([rawPeer, ann.client, bob.client].map((c) => expectSilence(c, 50)));
  });
});

Deno.test("frames that are not JSON objects or have an unknown type get an error, and the connection stays usable", async () => {
  await withServer({}, async ({ join }) => {
    const bystander = await join("/bad", { nick: "bea" });
    const a = await join("/bad", { nick: "ann", client: identity() });
    await expectEnvelope(bystander.client, "join");
    const cases: [string, string, string?][] = [
      ["not json", "bad_json"],
      ["[1, 2]", "bad_json"],
      ['"a string"', "bad_json"],
      ["null", "bad_json"],
      ['{"type":"shout"}', "unknown_type"],
      ['{"text":"no type"}', "unknown_type"],
      ['{"type":"shout","cid":"u-1"}', "unknown_type", "u-1"],
    ];
    for (const [index, [frame, code, cid]] of cases.entries()) {
      a.client.send(frame);
      await expectError(a.client, code, cid);
      await assertUsable(a.client, bystander.client, `ok-${index}`);
    }
    await expectSilence(bystander.client, 50);
  });
});

Deno.test("a message without cid, with empty text or with text over MAX_TEXT_LENGTH gets bad_envelope", async () => {
  await withServer({ maxTextLength: 10 }, async ({ join }) => {
    const bystander = await join("/bad", { nick: "bea" });
    const a = await join("/bad", { nick: "ann", client: identity() });
    await expectEnvelope(bystander.client, "join");
    const cases: [Record<string, unknown>, string?][] = [
      [{ type: "message", text: "no cid" }],
      [{ type: "message", cid: "", text: "empty cid" }],
      [{ type: "message", cid: "not a cid!", text: "bad cid" }],
      [{ type: "message", cid: "e-1", text: "" }, "e-1"],
      [{ type: "message", cid: "e-2", text: "x".repeat(11) }, "e-2"],
      [{ type: "message", cid: "e-3", text: 42 }, "e-3"],
      [{ type: "message", cid: "e-4" }, "e-4"],
    ];
    for (const [index, [envelope, cid]] of cases.entries()) {
      a.client.send(envelope);
      await expectError(a.client, "bad_envelope", cid);
      await assertUsable(a.client, bystander.client, `ok-${index}`);
    }
    // Exactly MAX_TEXT_LENGTH is fine.
    await say(a.client, "max", "x".repeat(10));
    assert.equal((await bystander.client.until<Stored>("message", 2000)).text, "x".repeat(10));
    await expectSilence(bystander.client, 50);
  });
});

Deno.test("an empty, 33-character or control-character nick gets bad_nick and changes nothing", async () => {
  await withServer({}, async ({ rich, join }) => {
    const bystander = await join("/nick", { nick: "bea" });
    const a = await join("/nick", { nick: "ann", client: identity() });
    await expectEnvelope(bystander.client, "join");
    for (const [index, nick] of ["", "   ", "x".repeat(33), "a\u0007b", 7].entries()) {
      a.client.send({ type: "nick", nick });
      await expectError(a.client, "bad_nick");
      await assertUsable(a.client, bystander.client, `ok-${index}`);
    }
    await say(a.client, "still", "same nick");
    assert.deepEqual(
      (await expectEnvelope<Stored>(bystander.client, "message")).from,
      a.welcome.you,
    );
    // 32 characters is a nick.
    a.client.send({ type: "nick", nick: "y".repeat(32) });
    const rename = await expectEnvelope<{ member: Member }>(bystander.client, "rename");
    assert.equal(rename.member.nick, "y".repeat(32));

    // In hello, a bad nick is refused and a good hello afterwards joins.
    const late = await rich("/nick");
    late.send({ type: "hello", nick: "z".repeat(33) });
    await expectError(late, "bad_nick");
    late.send({ type: "hello", nick: "zed" });
    assert.equal((await expectEnvelope<Welcome>(late, "welcome")).you.nick, "zed");
    const joined = await expectEnvelope<{ member: Member }>(bystander.client, "join");
    assert.equal(joined.member.nick, "zed");
    await expectSilence(bystander.client, 50);
  });
});

Deno.test("hello rules: hello_required before it, bad_last for a malformed last, already_joined after it", async () => {
  await withServer({}, async ({ rich, join }) => {
    const bystander = await join("/hello", { nick: "bea" });
    const a = await rich("/hello");
    a.send({ type: "message", cid: "early", text: "too soon" });
    await expectError(a, "hello_required", "early");
    a.send({ type: "nick", nick: "ann" });
    await expectError(a, "hello_required");
    a.send(new Uint8Array([1, 2, 3]));
    await expectError(a, "hello_required");
    a.send({ type: "hello", nick: "ann", last: { epoch: "x", id: -1 } });
    await expectError(a, "bad_last");
    a.send({ type: "hello", nick: "ann", last: "41" });
    await expectError(a, "bad_last");
    await expectSilence(bystander.client, 50);

    a.send({ type: "hello", nick: "ann", client: identity() });
    const welcome = await expectEnvelope<Welcome>(a, "welcome");
    assert.equal(welcome.replay, 0, "nothing sent before hello was stored");
    assert.deepEqual(
      (await expectEnvelope<{ member: Member }>(bystander.client, "join")).member,
      welcome.you,
    );
    a.send({ type: "hello", nick: "ann again" });
    await expectError(a, "already_joined");
    await assertUsable(a, bystander.client, "after");
    await expectSilence(bystander.client, 50);
  });
});

Deno.test("a binary frame whose length differs from the announced size gets bad_file and is dropped", async () => {
  await withServer({}, async ({ raw, join }) => {
    const bystander = await join("/file", { nick: "bea" });
    const rawPeer = await raw("/file");
    const a = await join("/file", { nick: "ann", client: identity() });
    await expectEnvelope(bystander.client, "join");
    a.client.send({
      type: "file",
      cid: "f-1",
      name: "a.bin",
      mime: "application/octet-stream",
      size: 5,
    });
    a.client.send(new Uint8Array(4));
    await expectError(a.client, "bad_file", "f-1");
    await expectSilence(bystander.client, 50);
    await expectSilence(rawPeer, 0);

    a.client.send({
      type: "file",
      cid: "f-2",
      name: "b.bin",
      mime: "application/octet-stream",
      size: 3,
    });
    a.client.send(new Uint8Array([7, 8, 9]));
    const file = await expectEnvelope<Stored>(bystander.client, "file");
    assert.equal(file.cid, "f-2");
    assert.deepStrictEqual(await bystander.client.binary(2000), new Uint8Array([7, 8, 9]));
    assert.deepStrictEqual(await rawPeer.binary(2000), new Uint8Array([7, 8, 9]));
    assert.equal((await a.client.until<Ack>("ack", 2000)).cid, "f-2");
    await assertUsable(a.client, bystander.client, "after");
  });
});

Deno.test("a last.id beyond the head of the current epoch gets bad_last and a welcome with recovered false", async () => {
  await withServer({}, async ({ raw, rich }) => {
    const writer = await raw("/ahead");
    for (const text of ["one", "two"]) {
      writer.send(text);
      assert.equal(await writer.text(2000), text);
    }
    const probe = await rich("/ahead");
    probe.send({ type: "hello", nick: "pat" });
    const { epoch, head } = await expectEnvelope<Welcome>(probe, "welcome");
    assert.equal(head, 2);

    const a = await rich("/ahead");
    a.send({ type: "hello", nick: "ann", last: { epoch, id: 99 } });
    await expectError(a, "bad_last");
    const welcome = await expectEnvelope<Welcome>(a, "welcome");
    assert.equal(welcome.recovered, false);
    assert.equal(welcome.replay, 2);
    assert.deepEqual((await takeStored(a, 2)).map((m) => m.text), ["one", "two"]);
  });
});

Deno.test("a malformed resume position in the URL is answered in band with bad_last and no welcome", async () => {
  await withServer({}, async ({ server, join }) => {
    const bystander = await join("/r", { nick: "bea" });
    for (
      const query of ["?epoch=x&last=abc", "?last=5", "?epoch=x&last=-1", "?epoch=b%20d&last=1"]
    ) {
      const client = new Client(`${server.ws}/r${query}`, PROTOCOL);
      await client.opened;
      assert.equal(client.socket.protocol, PROTOCOL, query);
      client.send({ type: "hello", nick: "ann" });
      const error = await expectError(client, "bad_last");
      assert.match(error.message, /resume position/, query);
      // No welcome: the client may say hello again, here asking for a fresh join.
      client.send({ type: "hello", nick: "ann", last: null });
      const welcome = await expectEnvelope<Welcome>(client, "welcome");
      assert.equal(welcome.recovered, null, query);
      await client.close();
      await expectEnvelope(bystander.client, "join");
      await expectEnvelope(bystander.client, "leave");
    }
    // A raw client does not resume: the parameters do not matter to it.
    const raw = new Client(`${server.ws}/r?epoch=x&last=abc`);
    await raw.opened;
    raw.send("still relayed");
    assert.equal(await raw.text(2000), "still relayed");
    await raw.close();
  });
});

Deno.test("a frame over MAX_MESSAGE_BYTES closes its sender with 1009 and reaches nobody", async () => {
  const limit = 64 * 1024;
  await withServer({ maxMessageBytes: limit }, async ({ raw, join }) => {
    const bystander = await join("/big", { nick: "bea" });
    const rawBystander = await raw("/big");
    const other = await raw("/big");
    const richSender = await join("/big", { nick: "ann", client: identity() });
    const rawSender = await raw("/big");
    await expectEnvelope(bystander.client, "join");

    richSender.client.send({ type: "message", cid: "big", text: "x".repeat(limit) });
    assert.equal((await richSender.client.closed).code, 1009);
    rawSender.send(new Uint8Array(limit + 1));
    assert.equal((await rawSender.closed).code, 1009);

    // Exactly the limit still passes.
    other.send(new Uint8Array(limit));
    assert.equal((await rawBystander.binary(2000)).byteLength, limit);
    other.send("next");
    assert.equal(await rawBystander.text(2000), "next");

    const left = await expectEnvelope<{ member: Member }>(bystander.client, "leave");
    assert.deepEqual(left.member, richSender.welcome.you);
    const file = await expectEnvelope<Stored>(bystander.client, "file");
    assert.equal(file.size, limit);
    assert.equal((await bystander.client.binary(2000)).byteLength, limit);
    assert.equal((await expectEnvelope<Stored>(bystander.client, "message")).text, "next");
    await Promise.all([bystander.client, rawBystander].map((c) => expectSilence(c, 50)));
  });
});

Deno.test("a backlog of 100 unacked messages resent at once after a reconnect is all acked, paced, on one connection", async () => {
  await withServer({ rateLimit: 100, rateBurst: 10 }, async ({ join }) => {
    const bystander = await join("/backlog", { nick: "bea" });
    const client = identity();
    const first = await join("/backlog", { nick: "ann", client });
    await expectEnvelope(bystander.client, "join");
    // Ten were stored before the connection dropped; their acks were lost.
    for (let i = 0; i < 10; i++) {
      first.client.send({ type: "message", cid: `c${i}`, text: `m${i}` });
    }
    await takeStored(bystander.client, 10);
    await first.client.close();
    const again = await join("/backlog", { nick: "ann", client });
    assert.equal(again.welcome.limits.burst, 10);
    for (let i = 0; i < 100; i++) {
      again.client.send({ type: "message", cid: `c${i}`, text: `m${i}` });
    }
    const acks: Ack[] = [];
    while (acks.length < 100) {
      const envelope = await again.client.json<Ack & { type: string }>(5000);
      assert.notEqual(envelope.type, "error", JSON.stringify(envelope));
      if (envelope.type === "ack") acks.push(envelope);
    }
    assert.deepEqual(acks.map((a) => a.cid), Array.from({ length: 100 }, (_, i) => `c${i}`));
    assert.equal(acks.filter((a) => a.duplicate).length, 10, "the ten stored before");
    const texts: string[] = [];
    while (texts.length < 90) {
      const envelope = await bystander.client.json<Stored & { type: string }>(5000);
      if (envelope.type === "message") texts.push(envelope.text!);
    }
    assert.deepEqual(texts, Array.from({ length: 90 }, (_, i) => `m${i + 10}`));
    assert.equal(again.client.socket.readyState, WebSocket.OPEN);
  });
});
