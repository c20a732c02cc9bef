/**
 * Token mode through a real server: what raw and rich clients get without
 * the right to be there, read-only rooms, expiry, failed-authentication
 * limits, moderation, and that no token ever reaches the logs.
 *
 * @module
 */
import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { createApp } from "../main.ts";
import { type Config, DEFAULT_CONFIG } from "../lib/config.ts";
import { createLogger } from "../lib/log.ts";
import type { Member, Welcome } from "../lib/protocol.ts";
import { Client, expectSilence, waitFor } from "./helpers.ts";

const SECRET = "a-test-secret-of-at-least-32-bytes-long!";
const PROTOCOL = "parley.v1";

interface Claims {
  sub: string;
  name?: string;
  rooms?: string[];
  read?: string[];
  mod?: string[];
}

/** Signs a token with the test secret; `exp` in seconds from now (null: none). */
function token(claims: Claims, exp: number | null = 3600, secret = SECRET): Promise<string> {
  const jwt = new SignJWT({ ...claims }).setProtectedHeader({ alg: "HS256" }).setIssuedAt();
  if (exp !== null) jwt.setExpirationTime(Math.floor(Date.now() / 1000) + exp);
  return jwt.sign(new TextEncoder().encode(secret));
}

/** A token-mode server whose log lines are kept. */
async function withServer(
  overrides: Partial<Config>,
  fn: (server: { url: string; ws: string; logs: string[] }) => Promise<void>,
) {
  const logs: string[] = [];
  const config: Config = {
    ...DEFAULT_CONFIG,
    port: 0,
    hostname: "127.0.0.1",
    auth: "token",
    authSecret: SECRET,
    ...overrides,
  };
  const app = await createApp(config, createLogger("debug", (line) => logs.push(line)));
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, app.handler);
  const { port } = server.addr as Deno.NetAddr;
  const clients: Client[] = [];
  try {
    await fn({ url: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}`, logs });
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await app.close();
    await server.shutdown();
  }
}

/** Opens a rich client and says hello; returns it with its first answer. */
async function hello(ws: string, room: string, fields: Record<string, unknown>) {
  const client = new Client(`${ws}/${room}`, PROTOCOL);
  await client.opened;
  client.send(JSON.stringify({ type: "hello", ...fields }));
  return { client, first: JSON.parse(await client.text(5000)) as Record<string, unknown> };
}

/** Joins a rich client with a token; fails unless welcomed. */
async function member(ws: string, room: string, jwt: string) {
  const { client, first } = await hello(ws, room, { token: jwt, client: crypto.randomUUID() });
  assert.equal(first.type, "welcome", JSON.stringify(first));
  return { client, welcome: first as unknown as Welcome };
}

/** Next envelope of `type`, skipping others (an error is never skipped when not asked for). */
async function next(client: Client, type: string): Promise<Record<string, unknown>> {
  for (;;) {
    const envelope = JSON.parse(await client.text(5000));
    if (envelope.type === type) return envelope;
    if (envelope.type === "error") {
      throw new Error(`expected ${type}, got ${JSON.stringify(envelope)}`);
    }
  }
}

async function status(url: string, headers: Record<string, string> = {}): Promise<Response> {
  const response = await fetch(url, {
    headers: {
      upgrade: "websocket",
      connection: "Upgrade",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
      ...headers,
    },
  });
  await response.body?.cancel();
  return response;
}

function unsigned(claims: Record<string, unknown>): string {
  const part = (value: unknown) =>
    btoa(JSON.stringify(value)).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
  return `${part({ alg: "none", typ: "JWT" })}.${part(claims)}.`;
}

Deno.test("token mode: a raw client without the right to be there is refused before the upgrade", async () => {
  await withServer({}, async ({ url, ws }) => {
    const bystander = await member(ws, "team", await token({ sub: "bea", rooms: ["team"] }));
    const exp = Math.floor(Date.now() / 1000) + 600;
    const cases: [string, string | undefined, number][] = [
      ["no token", undefined, 401],
      ["a forged signature", await token({ sub: "x", rooms: ["*"] }, 600, "x".repeat(40)), 401],
      ["alg none", unsigned({ sub: "x", rooms: ["*"], exp }), 401],
      ["an expired token", await token({ sub: "x", rooms: ["*"] }, -120), 401],
      ["no exp", await token({ sub: "x", rooms: ["*"] }, null), 401],
      ["a token for another room", await token({ sub: "x", rooms: ["other"] }), 403],
    ];
    for (const [what, jwt, expected] of cases) {
      const query = jwt === undefined ? "" : `?token=${jwt}`;
      const response = await status(`${url}/team${query}`);
      assert.equal(response.status, expected, what);
    }
    await expectSilence(bystander.client, 100);
    const raw = new Client(`${ws}/team?token=${await token({ sub: "r", rooms: ["team"] })}`);
    await raw.opened;
    raw.send("hello from raw");
    assert.equal(await raw.text(), "hello from raw");
    assert.equal((await next(bystander.client, "message")).text, "hello from raw");
    await raw.close();
    await bystander.client.close();
  });
});

Deno.test("token mode: a rich client is told unauthorized or forbidden in band, then closed", async () => {
  await withServer({}, async ({ ws }) => {
    const bystander = await member(ws, "team", await token({ sub: "bea", rooms: ["team"] }));
    const attempts: [string, Record<string, unknown>, string, number][] = [
      ["no token", { nick: "x" }, "unauthorized", 4401],
      ["a bad token", { token: "not.a.token" }, "unauthorized", 4401],
      [
        "HS256 signed with another secret",
        {
          token: await token({ sub: "x", rooms: ["*"] }, 600, "y".repeat(40)),
        },
        "unauthorized",
        4401,
      ],
      ["another room", { token: await token({ sub: "x", rooms: ["b"] }) }, "forbidden", 4403],
    ];
    for (const [what, fields, code, closeCode] of attempts) {
      const { client, first } = await hello(ws, "team", fields);
      assert.equal(first.type, "error", what);
      assert.equal(first.code, code, what);
      const closed = await client.closed;
      assert.equal(closed.code, closeCode, what);
    }
    await expectSilence(bystander.client, 100);
    await bystander.client.close();
  });
});

Deno.test("token mode: identity, verified names, read-only rooms and no nick changes", async () => {
  await withServer({}, async ({ ws }) => {
    const ann = await member(ws, "team", await token({ sub: "ann", name: "Ann", rooms: ["team"] }));
    assert.deepEqual({ ...ann.welcome.you, id: "" }, { id: "", nick: "Ann", verified: true });
    assert.equal(ann.welcome.access, "write");
    const again = await member(
      ws,
      "team",
      await token({ sub: "ann", name: "Ann", rooms: ["team"] }),
    );
    assert.equal(again.welcome.you.id, ann.welcome.you.id, "one member id across devices");
    const reader = await member(ws, "team", await token({ sub: "rea", read: ["team"] }));
    assert.equal(reader.welcome.access, "read");
    reader.client.send(JSON.stringify({ type: "message", cid: "r1", text: "let me in" }));
    const refused = await next(reader.client, "error");
    assert.deepEqual([refused.code, refused.cid], ["forbidden", "r1"]);
    reader.client.send(JSON.stringify({ type: "nick", nick: "someone" }));
    assert.equal((await next(reader.client, "error")).code, "forbidden");
    ann.client.send(JSON.stringify({ type: "message", cid: "a1", text: "hi" }));
    const seen = await next(reader.client, "message");
    assert.equal(seen.text, "hi", "the reader reads; the connection stayed open");
    assert.equal((seen.from as Member).verified, true);
    const rawReader = new Client(`${ws}/team?token=${await token({ sub: "rr", read: ["team"] })}`);
    await rawReader.opened;
    rawReader.send("dropped");
    ann.client.send(JSON.stringify({ type: "message", cid: "a2", text: "after" }));
    assert.equal(await rawReader.text(), "Ann: after", "the raw reader's frame was dropped");
    await Promise.all([ann, again, reader].map((m) => m.client.close()));
    await rawReader.close();
  });
});

Deno.test("token mode: an expiring token closes with 4401, and a fresh one resumes without loss", async () => {
  await withServer({}, async ({ ws }) => {
    const speaker = await member(ws, "team", await token({ sub: "spk", rooms: ["team"] }));
    const short = await token({ sub: "ann", rooms: ["team"] }, 1);
    const ann = await member(ws, "team", short);
    speaker.client.send(JSON.stringify({ type: "message", cid: "s1", text: "one" }));
    const one = await next(ann.client, "message");
    const closed = await ann.client.closed;
    assert.equal(closed.code, 4401);
    assert.equal(closed.reason, "token expired");
    speaker.client.send(JSON.stringify({ type: "message", cid: "s2", text: "two" }));
    await next(speaker.client, "ack");
    const { client, first } = await hello(ws, "team", {
      token: await token({ sub: "ann", rooms: ["team"] }),
      last: { epoch: one.epoch, id: one.id },
    });
    assert.equal(first.type, "welcome");
    assert.equal(first.recovered, true);
    assert.equal((await next(client, "message")).text, "two");
    await client.close();
    await speaker.client.close();
  });
});

Deno.test("token mode: repeated failures from one address are refused with 429 for a while", async () => {
  await withServer({}, async ({ url }) => {
    const bad = await token({ sub: "x", rooms: ["*"] }, 600, "z".repeat(40));
    const statuses: number[] = [];
    for (let i = 0; i < 12; i++) statuses.push((await status(`${url}/team?token=${bad}`)).status);
    assert.deepEqual(statuses.slice(0, 10), Array(10).fill(401));
    assert.deepEqual(statuses.slice(10), [429, 429]);
    const good = await token({ sub: "y", rooms: ["*"] });
    const blocked = await status(`${url}/team?token=${good}`);
    assert.equal(blocked.status, 429, "even a good token, while the address is blocked");
    assert.ok(Number(blocked.headers.get("retry-after")) > 0);
  });
});

Deno.test("token mode: a moderator deletes any message, kicks and bans; the banned cannot rejoin", async () => {
  await withServer({}, async ({ url, ws, logs }) => {
    const mod = await member(ws, "team", await token({ sub: "mod", name: "Mo", mod: ["team"] }));
    assert.equal(mod.welcome.moderator, true);
    const ann = await member(ws, "team", await token({ sub: "ann", name: "Ann", rooms: ["team"] }));
    const bob = await member(ws, "team", await token({ sub: "bob", name: "Bob", rooms: ["team"] }));
    ann.client.send(JSON.stringify({ type: "message", cid: "a1", text: "spam" }));
    const spam = await next(ann.client, "message");
    bob.client.send(JSON.stringify({ type: "delete", cid: "b1", id: spam.id }));
    assert.equal((await next(bob.client, "error")).code, "forbidden", "a member cannot");
    bob.client.send(JSON.stringify({ type: "kick", cid: "b2", member: ann.welcome.you.id }));
    assert.equal((await next(bob.client, "error")).code, "forbidden");
    mod.client.send(JSON.stringify({ type: "delete", cid: "m1", id: spam.id }));
    const deleted = await next(bob.client, "delete");
    assert.equal(deleted.target, spam.id);
    mod.client.send(JSON.stringify({
      type: "kick",
      cid: "m2",
      member: ann.welcome.you.id,
      minutes: 10,
      reason: "spam",
    }));
    const closed = await ann.client.closed;
    assert.equal(closed.code, 4403);
    assert.match(closed.reason, /spam/);
    const kick = await next(bob.client, "kick");
    assert.equal((kick.member as Member).id, ann.welcome.you.id);
    assert.equal((kick.by as Member).nick, "Mo");
    assert.ok((kick.until as number) > Date.now());
    const { client, first } = await hello(ws, "team", {
      token: await token({ sub: "ann", rooms: ["team"] }),
    });
    assert.deepEqual([first.type, first.code], ["error", "forbidden"]);
    assert.match(first.message as string, /banned/);
    assert.equal((await client.closed).code, 4403);
    const raw = await status(`${url}/team?token=${await token({ sub: "ann", rooms: ["team"] })}`);
    assert.equal(raw.status, 403, "a raw connection with the same sub is refused too");
    const moderation = logs.filter((l) => l.includes('"moderation"')).map((l) => JSON.parse(l));
    assert.deepEqual(moderation.map((l) => l.action), ["delete", "ban"]);
    assert.ok(!logs.some((l) => l.includes('spam"') && l.includes("text")), "no contents");
    await Promise.all([mod, bob].map((m) => m.client.close()));
  });
});

Deno.test("token mode: no token ever reaches the logs", async () => {
  await withServer({}, async ({ url, ws, logs }) => {
    const tokens = [
      await token({ sub: "ann", rooms: ["team"] }),
      await token({ sub: "x", rooms: ["*"] }, 600, "q".repeat(40)),
      await token({ sub: "bob", rooms: ["other"] }),
    ];
    for (const jwt of tokens) {
      await status(`${url}/team?token=${jwt}`);
      const { client } = await hello(ws, "team", { token: jwt });
      await client.close();
      const viaUrl = new Client(`${ws}/team?token=${jwt}`, PROTOCOL);
      await viaUrl.opened;
      viaUrl.send(JSON.stringify({ type: "hello" }));
      await viaUrl.text(5000);
      await viaUrl.close();
    }
    await waitFor(() => logs.some((l) => l.includes('"close"')), 2000, "close lines");
    assert.ok(logs.length > 5, "the test logged something to scan");
    for (const jwt of tokens) {
      for (const part of jwt.split(".")) {
        assert.ok(!logs.some((l) => l.includes(part)), "a token part was logged");
      }
    }
  });
});

Deno.test("the server API is 404 without API_KEY, and with it posts to the room as a bot", async () => {
  await withServer({ auth: "open", authSecret: undefined }, async ({ url }) => {
    const response = await fetch(`${url}/api/rooms/team/members`);
    await response.body?.cancel();
    assert.equal(response.status, 404);
  });
  const apiKey = "k".repeat(24);
  await withServer({ apiKey }, async ({ url, ws, logs }) => {
    const ann = await member(ws, "team", await token({ sub: "ann", rooms: ["team"] }));
    const post = (key?: string) =>
      fetch(`${url}/api/rooms/team/messages`, {
        method: "POST",
        headers: key === undefined ? {} : { authorization: `Bearer ${key}` },
        body: JSON.stringify({ text: "build is green", name: "CI" }),
      });
    for (const key of [undefined, "wrong-key-of-some-length"]) {
      const refused = await post(key);
      assert.equal(refused.status, 401);
      assert.equal((await refused.json()).error.code, "unauthorized");
    }
    const created = await post(apiKey);
    assert.equal(created.status, 201);
    const { id } = await created.json();
    const seen = await next(ann.client, "message");
    assert.equal(seen.id, id);
    assert.equal(seen.text, "build is green");
    assert.deepEqual([(seen.from as Member).nick, (seen.from as Member).bot], ["CI", true]);
    const minted = await fetch(`${url}/api/tokens`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ sub: "bob", name: "Bob", rooms: ["team"], ttl: 600 }),
    });
    assert.equal(minted.status, 201);
    const bob = await member(ws, "team", (await minted.json()).token);
    assert.equal(bob.welcome.you.nick, "Bob", "a minted token admits its holder");
    assert.ok(!logs.some((l) => l.includes(apiKey)), "the key is never logged");
    await ann.client.close();
    await bob.client.close();
  });
});
