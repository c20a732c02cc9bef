/**
 * The member index of a room: lookups by id and nickname key stay right
 * through joins, renames and leaves, and a room this instance follows checks
 * nicknames and builds `welcome` from it instead of the engine's whole list.
 *
 * @module
 */
import assert from "node:assert/strict";
import { MemberIndex } from "../lib/members.ts";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { FakeSocket, makeHub, settle, until, welcomed } from "./fakes.ts";

const member = (id: string, nick: string) => ({ id, nick, verified: false });

Deno.test("MemberIndex finds the holder of a nickname after NFKC and case folding", () => {
  const index = new MemberIndex();
  index.add(member("a", "Ann"));
  index.add(member("b", "bob"));
  assert.equal(index.size, 2);
  assert.equal(index.holderOf("ANN", "x")?.id, "a");
  assert.equal(index.holderOf("\uFF21\uFF4E\uFF4E", "x")?.id, "a");
  assert.equal(index.holderOf("ann", "a"), undefined, "a member never holds a nick against itself");
  assert.equal(index.holderOf("carol", "x"), undefined);
});

Deno.test("MemberIndex follows renames and leaves", () => {
  const index = new MemberIndex();
  index.add(member("a", "ann"));
  index.add(member("a", "annie"));
  assert.equal(index.size, 1);
  assert.equal(index.holderOf("ann", "x"), undefined, "the old nick is free after a rename");
  assert.equal(index.holderOf("Annie", "x")?.nick, "annie");
  index.delete("a");
  index.delete("a");
  assert.equal(index.size, 0);
  assert.equal(index.holderOf("annie", "x"), undefined);
});

Deno.test("MemberIndex keeps two holders of one key apart, as after a race", () => {
  const index = new MemberIndex();
  index.add(member("a", "ann"));
  index.add(member("b", "ANN"));
  assert.equal(index.holderOf("ann", "a")?.id, "b");
  assert.equal(index.holderOf("ann", "b")?.id, "a");
  index.delete("b");
  assert.equal(index.holderOf("ann", "x")?.id, "a");
});

Deno.test("MemberIndex.first() lists at most the limit, in the order members came", () => {
  const index = new MemberIndex();
  for (let i = 0; i < 5; i++) index.add(member(`m${i}`, `nick${i}`));
  assert.deepEqual(index.first(3).map((m) => m.id), ["m0", "m1", "m2"]);
  assert.equal(index.first(10).length, 5);
  assert.deepEqual(index.first(0), []);
});

Deno.test("a room this instance follows admits, refuses and welcomes without the engine's list", async () => {
  const engine = new MemoryEngine({
    historySize: 100,
    historyBytes: 1 << 20,
    historyFileBytes: 1 << 16,
  });
  let lists = 0;
  const members = engine.members.bind(engine);
  engine.members = (room) => {
    lists++;
    return members(room);
  };
  const hub = makeHub({ engine });
  const join = async (nick: string) => {
    const socket = new FakeSocket();
    const conn = hub.connect(socket, { room: "r", rich: true });
    conn.receive(JSON.stringify({ type: "hello", nick }));
    await until(() => socket.sent.length > 0, "an answer");
    return { socket, conn };
  };
  const first = await join("ann");
  const listsAtStart = lists;
  const peers = [];
  for (let i = 0; i < 20; i++) peers.push(await join(`peer${i}`));
  const taken = await join("PEER7");
  assert.equal(taken.socket.envelopes()[0].code, "nick_taken");
  peers[7].conn.receive(JSON.stringify({ type: "nick", nick: "seven" }));
  await until(
    () => first.socket.envelopes().some((e) => e.type === "rename"),
    "the rename reaches ann",
  );
  taken.conn.receive(JSON.stringify({ type: "hello", nick: "peer7" }));
  await welcomed(taken.socket);
  const welcome = taken.socket.envelopes().find((e) => e.type === "welcome")!;
  assert.equal(welcome.count, 22, "ann, 20 peers and the newcomer");
  assert.ok((welcome.members as unknown[]).length <= 100);
  assert.equal(lists, listsAtStart, "no join or rename asked the engine for the whole list");
  for (const { conn } of [first, taken, ...peers]) conn.close();
  await settle();
  hub.close();
});
