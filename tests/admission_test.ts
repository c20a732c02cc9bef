/**
 * Open mode: impersonation made hard. Invisible characters in a nickname are
 * refused, and a nickname another present member holds is taken, compared
 * after NFKC and case folding.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Hub } from "../lib/hub.ts";
import { FakeSocket, makeHub, settle, until, welcomed } from "./fakes.ts";

type Envelope = Record<string, unknown>;

/** Says hello as `nick` and returns the first answer. */
async function hello(hub: Hub, nick: string, client?: string) {
  const socket = new FakeSocket();
  const conn = hub.connect(socket, { room: "r", rich: true });
  conn.receive(JSON.stringify({ type: "hello", nick, client }));
  await until(() => socket.sent.length > 0, "an answer");
  return { socket, conn, first: socket.envelopes()[0] as Envelope };
}

for (
  const [what, nick] of [
    ["a right-to-left override", "ann\u202Egnp.exe"],
    ["a zero-width space", "a\u200Bnn"],
    ["a zero-width joiner", "an\u200Dn"],
    ["a byte order mark inside", "an\uFEFFn"],
    ["a soft hyphen", "an\u00ADn"],
    ["a Hangul filler", "\u3164"],
  ]
) {
  Deno.test(`open mode refuses a nick with ${what}: bad_nick, no welcome`, async () => {
    const hub = makeHub();
    const { first, conn } = await hello(hub, nick);
    assert.equal(first.type, "error");
    assert.equal(first.code, "bad_nick");
    assert.equal(hub.roomSize("r"), 0);
    conn.close();
  });
}

Deno.test("open mode refuses a nick a present member holds, in any case or width", async () => {
  const hub = makeHub();
  const ann = await hello(hub, "Ann", "client-ann-0001");
  assert.equal(ann.first.type, "welcome");
  assert.deepEqual((ann.first.you as Envelope).verified, false);
  for (const taken of ["Ann", "ann", "ANN", "\uFF21\uFF4E\uFF4E", " ann "]) {
    const { first, socket, conn } = await hello(hub, taken);
    assert.deepEqual([first.type, first.code], ["error", "nick_taken"], taken);
    // The same connection may say hello again with another nick.
    conn.receive(JSON.stringify({ type: "hello", nick: `${taken.trim()}2` }));
    await welcomed(socket);
    conn.close();
  }
  const tab = await hello(hub, "ann", "client-ann-0001");
  assert.equal(tab.first.type, "welcome", "the same member in another tab keeps its nick");
  const others = ann.socket.envelopes().filter((e) => e.type === "join");
  assert.equal(others.length, 5, "the refused hellos never joined; their retries did");
  ann.conn.close();
  tab.conn.close();
  await settle();
  const free = await hello(hub, "ANN");
  assert.equal(free.first.type, "welcome", "free again once ann left");
  free.conn.close();
});

Deno.test("open mode refuses a rename to a nick another member holds", async () => {
  const hub = makeHub();
  const ann = await hello(hub, "ann");
  const bob = await hello(hub, "bob");
  bob.conn.receive(JSON.stringify({ type: "nick", nick: "ANN" }));
  await until(() => bob.socket.envelopes().some((e) => e.code === "nick_taken"), "nick_taken");
  assert.equal(ann.socket.envelopes().filter((e) => e.type === "rename").length, 0);
  bob.conn.receive(JSON.stringify({ type: "nick", nick: "bobby" }));
  await until(() => ann.socket.envelopes().some((e) => e.type === "rename"), "the rename");
  ann.conn.close();
  bob.conn.close();
});
