/**
 * Engine conformance: every engine must pass these. Each engine's test file
 * calls {@linkcode engineConformance} with a factory.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Engine, EngineEvent, Signal } from "../lib/engine.ts";
import type { Member } from "../lib/protocol.ts";
import { until } from "./fakes.ts";

/** Makes fresh engines for the conformance tests. */
export interface EngineFactory {
  name: string;
  /**
   * A new engine with a new, empty store. `historyFileBytes` is 16 in these
   * tests; `now` is a clock the engine must use for presence expiry and to
   * tell whether a ban has ended.
   */
  make(options: { historySize: number; now?: () => number }): Promise<Engine>;
  /** A second engine on the same store as `engine` (another instance). */
  peer?(engine: Engine): Promise<Engine>;
  /** Skip all tests with this reason (printed), e.g. a missing server. */
  ignore?: string;
}

const ann = { id: "m-ann", nick: "ann" };
const bob = { id: "m-bob", nick: "bob" };
const vera: Member = { id: "m-vera", nick: "vera", verified: true };
const moderator: Member = { id: "m-mod", nick: "mod", verified: true };
const robot: Member = { id: "m-bot", nick: "robot", verified: true, bot: true };

/** Members sorted by id, for engines that list them in another order. */
function byId(members: Member[]): Member[] {
  return [...members].sort((a, b) => a.id.localeCompare(b.id));
}

/** Appends `count` texts `m1`... from ann; returns their ids. */
async function fill(engine: Engine, room: string, count: number): Promise<number[]> {
  const ids: number[] = [];
  for (let i = 1; i <= count; i++) {
    ids.push((await engine.append(room, { from: ann, text: `m${i}` })).message.id);
  }
  return ids;
}

/** Registers the conformance tests for one engine. */
export function engineConformance(factory: EngineFactory): void {
  const test = (name: string, fn: () => Promise<void>) =>
    Deno.test({ name: `engine ${factory.name}: ${name}`, ignore: !!factory.ignore, fn });

  test("ids strictly increase per room, rooms are independent", async () => {
    const engine = await factory.make({ historySize: 10 });
    const ids: number[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push((await engine.append("a", { from: null, text: `m${i}` })).message.id);
    }
    assert.deepEqual(ids, [1, 2, 3, 4, 5]);
    const other = await engine.append("b", { from: null, text: "x" });
    assert.equal(other.message.id, 1);
    await engine.close();
  });

  test("epochs differ between stores and between rooms", async () => {
    const one = await factory.make({ historySize: 10 });
    const two = await factory.make({ historySize: 10 });
    const a = (await one.append("r", { from: null, text: "x" })).message.epoch;
    const b = (await two.append("r", { from: null, text: "x" })).message.epoch;
    assert.notEqual(a, b);
    assert.equal((await one.read("r", undefined, 1)).epoch, a);
    await one.close();
    await two.close();
  });

  test("read after an id is contiguous and recovered", async () => {
    const engine = await factory.make({ historySize: 10 });
    for (let i = 1; i <= 6; i++) await engine.append("r", { from: null, text: `m${i}` });
    const { epoch } = await engine.read("r", undefined, 0);
    const after = await engine.read("r", { epoch, id: 3 }, 2);
    assert.equal(after.recovered, true);
    assert.deepEqual(after.messages.map((m) => m.text), ["m4", "m5", "m6"]);
    const atHead = await engine.read("r", { epoch, id: 6 }, 2);
    assert.equal(atHead.recovered, true);
    assert.deepEqual(atHead.messages, []);
    const fresh = await engine.read("r", undefined, 2);
    assert.equal(fresh.recovered, null);
    assert.deepEqual(fresh.messages.map((m) => m.id), [5, 6]);
    assert.equal(fresh.head, 6);
    await engine.close();
  });

  test("read says recovered false when the gap left history or the epoch changed", async () => {
    const engine = await factory.make({ historySize: 3 });
    for (let i = 1; i <= 8; i++) await engine.append("r", { from: null, text: `m${i}` });
    const { epoch } = await engine.read("r", undefined, 0);
    const lost = await engine.read("r", { epoch, id: 2 }, 2);
    assert.equal(lost.recovered, false);
    assert.deepEqual(lost.messages.map((m) => m.id), [7, 8]);
    const edge = await engine.read("r", { epoch, id: 5 }, 2);
    assert.equal(edge.recovered, true, "the oldest kept is 6, so after 5 is contiguous");
    assert.deepEqual(edge.messages.map((m) => m.id), [6, 7, 8]);
    const other = await engine.read("r", { epoch: "other", id: 7 }, 1);
    assert.equal(other.recovered, false);
    assert.deepEqual(other.messages.map((m) => m.id), [8]);
    const future = await engine.read("r", { epoch, id: 99 }, 1);
    assert.equal(future.recovered, false);
    await engine.close();
  });

  test("dedup returns the original within the window", async () => {
    const engine = await factory.make({ historySize: 3 });
    const draft = { from: ann, sender: "client-a", cid: "c1", text: "hi" };
    const first = await engine.append("r", draft);
    const again = await engine.append("r", { ...draft, text: "changed" });
    assert.equal(again.duplicate, true);
    assert.equal(again.message.id, first.message.id);
    const otherClient = await engine.append("r", { ...draft, sender: "client-b" });
    assert.equal(otherClient.duplicate, false);
    for (let i = 0; i < 3; i++) await engine.append("r", { from: null, text: "filler" });
    const late = await engine.append("r", draft);
    assert.equal(late.duplicate, false, "out of the window it is new");
    await engine.close();
  });

  test("subscribers get messages in order; duplicates are not published", async () => {
    const engine = await factory.make({ historySize: 10 });
    const seen: EngineEvent[] = [];
    const stop = await engine.subscribe("r", (e) => seen.push(e));
    await engine.append("r", { from: null, text: "1" });
    await engine.append("r", { from: ann, sender: "s", cid: "c", text: "2" });
    await engine.append("r", { from: ann, sender: "s", cid: "c", text: "2" });
    await engine.append("other", { from: null, text: "x" });
    await engine.append("r", { from: null, text: "3" });
    await until(() => seen.length >= 3, "three messages");
    stop();
    await engine.append("r", { from: null, text: "after" });
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(seen.map((e) => e.type === "message" && e.message.text), ["1", "2", "3"]);
    await engine.close();
  });

  test("files above the history cap keep their id but not their bytes", async () => {
    const engine = await factory.make({ historySize: 10 });
    const small = await engine.append("r", {
      from: null,
      data: new Uint8Array(16),
      name: "s",
      mime: "a/b",
    });
    const big = await engine.append("r", {
      from: null,
      data: new Uint8Array(17),
      name: "b",
      mime: "a/b",
    });
    assert.equal(big.message.data?.byteLength, 17, "live delivery gets the bytes");
    const { messages } = await engine.read("r", undefined, 10);
    assert.equal(messages[0].data?.byteLength, 16);
    assert.equal(messages[1].id, big.message.id);
    assert.equal(messages[1].data, undefined);
    assert.equal(messages[1].size, 17);
    assert.equal(small.message.size, 16);
    await engine.close();
  });

  test("presence: one member across connections, join and leave once", async () => {
    const engine = await factory.make({ historySize: 10 });
    const events: string[] = [];
    await engine.subscribe(
      "r",
      (e) => e.type !== "message" && events.push(`${e.type}:${e.member.nick}`),
    );
    await engine.join("r", "c1", ann, 60_000);
    const members = await engine.join("r", "c2", ann, 60_000);
    assert.deepEqual(members, [ann]);
    await engine.leave("r", "c1");
    assert.deepEqual(await engine.members("r"), [ann]);
    await engine.leave("r", "c2");
    await engine.leave("r", "c2");
    assert.deepEqual(await engine.members("r"), []);
    await until(() => events.length >= 2, "join and leave");
    assert.deepEqual(events, ["join:ann", "leave:ann"]);
    await engine.close();
  });

  test("presence: rename is announced with the old nick", async () => {
    const engine = await factory.make({ historySize: 10 });
    const events: EngineEvent[] = [];
    await engine.subscribe("r", (e) => events.push(e));
    await engine.join("r", "c1", ann, 60_000);
    await engine.rename("r", ann.id, "annie");
    await until(() => events.some((e) => e.type === "rename"), "rename");
    assert.deepEqual(events.at(-1), {
      type: "rename",
      member: { id: ann.id, nick: "annie" },
      old: "ann",
    });
    assert.deepEqual(await engine.members("r"), [{ id: ann.id, nick: "annie" }]);
    await engine.close();
  });

  test("presence entries expire when not refreshed", async () => {
    let now = 1_000;
    const engine = await factory.make({ historySize: 10, now: () => now });
    const events: string[] = [];
    await engine.subscribe("r", (e) => e.type !== "message" && events.push(e.type));
    await engine.join("r", "c1", ann, 100);
    now += 50;
    await engine.join("r", "c1", ann, 100); // refresh
    now += 80;
    assert.deepEqual(await engine.members("r"), [ann]);
    now += 100;
    assert.deepEqual(await engine.members("r"), []);
    await until(() => events.length >= 2, "join and leave");
    assert.deepEqual(events, ["join", "leave"]);
    await engine.close();
  });

  test("a second instance on the same store shares ids, history, fan-out and presence", async () => {
    if (!factory.peer) return;
    const one = await factory.make({ historySize: 10 });
    const two = await factory.peer(one);
    const seen: string[] = [];
    await two.subscribe(
      "r",
      (e) => e.type === "message" && seen.push(`${e.message.id}:${e.message.text}`),
    );
    await one.append("r", { from: null, text: "from one" });
    await two.append("r", { from: null, text: "from two" });
    await until(() => seen.length >= 2, "both messages on the second instance");
    assert.deepEqual(seen, ["1:from one", "2:from two"]);
    const history = await one.read("r", undefined, 10);
    assert.deepEqual(history.messages.map((m) => m.text), ["from one", "from two"]);
    await one.join("r", "c1", ann, 60_000);
    await two.join("r", "c2", { id: "m-bob", nick: "bob" }, 60_000);
    const members = (await one.members("r")).map((m) => m.nick).sort();
    assert.deepEqual(members, ["ann", "bob"]);
    await two.close();
    await one.close();
  });
  test("an edit gets its own id and changes its target in read and history", async () => {
    const engine = await factory.make({ historySize: 20 });
    const [one, two] = await fill(engine, "r", 2);
    const edit = await engine.append("r", {
      from: ann,
      sender: "s",
      cid: "e1",
      kind: "edit",
      target: one,
      text: "m1, fixed",
    });
    assert.equal(edit.message.id, 3);
    assert.equal(edit.message.kind, "edit");
    assert.equal(edit.message.target, one);
    assert.equal(edit.message.text, "m1, fixed");
    const { messages } = await engine.read("r", undefined, 10);
    assert.deepEqual(messages.map((m) => [m.id, m.kind ?? "message", m.text]), [
      [one, "message", "m1, fixed"],
      [two, "message", "m2"],
      [3, "edit", "m1, fixed"],
    ]);
    assert.equal(messages[0].edited, edit.message.ts);
    assert.equal(messages[1].edited, undefined);
    const page = await engine.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.text]), [[one, "m1, fixed"], [two, "m2"]]);
    assert.equal(page.more, false);
    await engine.close();
  });

  test("a delete makes tombstones of its target and the target's edits", async () => {
    const engine = await factory.make({ historySize: 20 });
    const [one, two] = await fill(engine, "r", 2);
    await engine.append("r", { from: ann, kind: "edit", target: one, text: "secret v2" });
    const del = await engine.append("r", {
      from: ann,
      sender: "s",
      cid: "d1",
      kind: "delete",
      target: one,
    });
    assert.equal(del.message.kind, "delete");
    assert.equal(del.message.target, one);
    assert.equal(del.message.text, undefined);
    await engine.append("r", { from: ann, kind: "edit", target: one, text: "after delete" });
    const { messages } = await engine.read("r", undefined, 10);
    const byId = new Map(messages.map((m) => [m.id, m]));
    assert.equal(byId.get(one)?.deleted, true);
    assert.equal(byId.get(one)?.text, undefined);
    assert.equal(byId.get(two)?.text, "m2");
    assert.equal(byId.get(3)?.deleted, true, "the earlier edit no longer carries the text");
    assert.equal(byId.get(3)?.text, undefined);
    assert.equal(byId.get(4)?.kind, "delete");
    assert.equal(byId.get(one)?.text, undefined, "an edit after the delete changes nothing");
    for (const m of messages) assert.ok(!JSON.stringify(m).includes("secret"), `leaked in ${m.id}`);
    const page = await engine.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.deleted ?? false, m.text]), [
      [one, true, undefined],
      [two, false, "m2"],
    ]);
    const resumed = await engine.read("r", { epoch: del.message.epoch, id: 2 }, 10);
    assert.equal(resumed.recovered, true);
    assert.deepEqual(resumed.messages.map((m) => m.kind), ["edit", "delete", "edit"]);
    await engine.close();
  });

  test("a deleted file loses its bytes and name", async () => {
    const engine = await factory.make({ historySize: 20 });
    const file = await engine.append("r", {
      from: ann,
      data: new Uint8Array([1, 2, 3]),
      name: "cat.png",
      mime: "image/png",
    });
    await engine.append("r", { from: ann, kind: "delete", target: file.message.id });
    const { messages } = await engine.read("r", undefined, 10);
    assert.equal(messages[0].deleted, true);
    assert.equal(messages[0].data, undefined);
    assert.equal(messages[0].name, undefined);
    await engine.close();
  });

  test("edits and deletes are deduplicated by sender and cid", async () => {
    const engine = await factory.make({ historySize: 20 });
    const [one] = await fill(engine, "r", 1);
    const seen: number[] = [];
    await engine.subscribe("r", (e) => e.type === "message" && seen.push(e.message.id));
    const draft = { from: ann, sender: "s", cid: "e1", kind: "edit" as const, target: one };
    const first = await engine.append("r", { ...draft, text: "v2" });
    const again = await engine.append("r", { ...draft, text: "v2" });
    assert.equal(again.duplicate, true);
    assert.equal(again.message.id, first.message.id);
    const del = { from: ann, sender: "s", cid: "d1", kind: "delete" as const, target: one };
    const gone = await engine.append("r", del);
    const goneAgain = await engine.append("r", del);
    assert.equal(goneAgain.duplicate, true);
    assert.equal(goneAgain.message.id, gone.message.id);
    await until(() => seen.length >= 2, "the edit and the delete");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, [first.message.id, gone.message.id]);
    await engine.close();
  });

  test("a reply keeps the id it answers through read and history", async () => {
    const engine = await factory.make({ historySize: 20 });
    const [one] = await fill(engine, "r", 1);
    const reply = await engine.append("r", { from: bob, text: "yes", replyTo: one });
    assert.equal(reply.message.replyTo, one);
    const { messages } = await engine.read("r", undefined, 10);
    assert.equal(messages[1].replyTo, one);
    assert.equal(messages[0].replyTo, undefined);
    const page = await engine.history("r", 99, 10);
    assert.equal(page.messages[1].replyTo, one);
    await engine.close();
  });

  test("history pages down to the start of the room's history, in order", async () => {
    const engine = await factory.make({ historySize: 40 });
    const ids = await fill(engine, "r", 30);
    // Edit and delete entries take ids but are not messages of a page.
    await engine.append("r", { from: ann, kind: "edit", target: ids[3], text: "m4 edited" });
    await engine.append("r", { from: ann, kind: "delete", target: ids[5] });
    const collected: number[] = [];
    let before = 1_000;
    let pages = 0;
    for (;;) {
      const page = await engine.history("r", before, 7);
      pages++;
      assert.ok(page.messages.length <= 7);
      const got = page.messages.map((m) => m.id);
      assert.deepEqual(got, [...got].sort((a, b) => a - b), "each page in id order");
      assert.ok(page.messages.every((m) => m.kind === undefined));
      collected.unshift(...got);
      if (!page.more) break;
      assert.ok(got.length > 0, "more with an empty page");
      before = got[0];
      assert.ok(pages < 20, "paging ends");
    }
    assert.deepEqual(collected, ids);
    const all = await engine.history("r", 1_000, 200);
    assert.equal(all.messages[3].text, "m4 edited");
    assert.equal(all.messages[5].deleted, true);
    const middle = await engine.history("r", ids[10], 3);
    assert.deepEqual(middle.messages.map((m) => m.id), ids.slice(7, 10));
    assert.equal(middle.more, true);
    const start = await engine.history("r", ids[0], 3);
    assert.deepEqual(start.messages, []);
    assert.equal(start.more, false);
    const empty = await engine.history("nobody", 10, 3);
    assert.deepEqual(empty.messages, []);
    assert.equal(empty.more, false);
    await engine.close();
  });

  test("history stops at what history keeps", async () => {
    const engine = await factory.make({ historySize: 5 });
    const ids = await fill(engine, "r", 12);
    const page = await engine.history("r", 1_000, 50);
    assert.deepEqual(page.messages.map((m) => m.id), ids.slice(7));
    assert.equal(page.more, false);
    assert.equal(page.epoch, (await engine.read("r", undefined, 0)).epoch);
    await engine.close();
  });

  test("a signal reaches subscribers and is never stored", async () => {
    const engine = await factory.make({ historySize: 10 });
    const seen: EngineEvent[] = [];
    await engine.subscribe("r", (e) => seen.push(e));
    await engine.signal("r", { type: "typing", member: ann });
    await until(() => seen.length >= 1, "the typing signal");
    assert.deepEqual(seen, [{ type: "typing", member: ann }]);
    const { head, messages } = await engine.read("r", undefined, 10);
    assert.equal(head, 0);
    assert.deepEqual(messages, []);
    await engine.close();
  });

  test("presence: refresh keeps an entry alive and re-adds a lost one", async () => {
    let now = 1_000;
    const engine = await factory.make({ historySize: 10, now: () => now });
    const events: string[] = [];
    await engine.subscribe("r", (e) => e.type !== "message" && events.push(e.type));
    await engine.join("r", "c1", ann, 100);
    now += 80;
    await engine.refresh("r", "c1", ann, 100);
    now += 80;
    assert.deepEqual(await engine.members("r"), [ann], "refreshed, so still here");
    now += 100;
    assert.deepEqual(await engine.members("r"), []);
    await engine.refresh("r", "c1", ann, 100);
    assert.deepEqual(await engine.members("r"), [ann], "an expired entry comes back");
    await until(() => events.length >= 3, "join, leave, join");
    assert.deepEqual(events, ["join", "leave", "join"]);
    await engine.close();
  });

  test("a second instance sees edits, deletes, history pages and signals", async () => {
    if (!factory.peer) return;
    const one = await factory.make({ historySize: 10 });
    const two = await factory.peer(one);
    const seen: string[] = [];
    await two.subscribe("r", (e) => {
      if (e.type === "typing") seen.push(`typing:${e.member.nick}`);
      if (e.type === "message") seen.push(`${e.message.kind ?? "message"}:${e.message.id}`);
    });
    const [first] = await fill(one, "r", 2);
    await one.append("r", { from: ann, kind: "edit", target: first, text: "v2" });
    await until(() => seen.length >= 3, "messages and the edit");
    await one.signal("r", { type: "typing", member: ann });
    await until(() => seen.includes("typing:ann"), "typing across instances");
    await two.append("r", { from: ann, kind: "delete", target: 2 });
    const page = await one.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.text, m.deleted ?? false]), [
      [1, "v2", false],
      [2, undefined, true],
    ]);
    await until(() => seen.includes("delete:4"), "the delete");
    assert.deepEqual(seen.filter((s) => !s.startsWith("typing")), [
      "message:1",
      "message:2",
      "edit:3",
      "delete:4",
    ]);
    await two.close();
    await one.close();
  });

  test("a ban holds until it ends, per room and member", async () => {
    // Durable engines also expire the ban's key on the real clock: start there.
    let now = Date.now();
    const engine = await factory.make({ historySize: 10, now: () => now });
    const end = now + 10_000;
    await engine.ban("a", "m1", end);
    assert.equal(await engine.bannedUntil("a", "m1"), end);
    assert.equal(await engine.bannedUntil("b", "m1"), undefined, "another room");
    assert.equal(await engine.bannedUntil("a", "m2"), undefined, "another member");
    await engine.ban("a", "m1", now + 60_000);
    assert.equal(await engine.bannedUntil("a", "m1"), now + 60_000, "a later ban extends it");
    await engine.ban("a", "m1", end);
    assert.equal(await engine.bannedUntil("a", "m1"), end, "a later ban shortens it too");
    now = end - 1;
    assert.equal(await engine.bannedUntil("a", "m1"), end, "held until its last millisecond");
    now = end;
    assert.equal(await engine.bannedUntil("a", "m1"), undefined, "over at its end");
    await engine.ban("a", "m2", now + 10_000);
    await engine.ban("a", "m2", now - 1);
    assert.equal(await engine.bannedUntil("a", "m2"), undefined, "an end in the past lifts it");
    await assert.rejects(engine.ban("a", "m3", NaN), RangeError);
    await engine.close();
  });

  test("a second instance sees bans", async () => {
    if (!factory.peer) return;
    const one = await factory.make({ historySize: 10 });
    const two = await factory.peer(one);
    const end = Date.now() + 60_000;
    await one.ban("r", ann.id, end);
    assert.equal(await two.bannedUntil("r", ann.id), end);
    assert.equal(await two.bannedUntil("r", bob.id), undefined);
    await two.ban("r", ann.id, end + 1_000);
    assert.equal(await one.bannedUntil("r", ann.id), end + 1_000, "the later ban, from either");
    await two.ban("r", ann.id, Date.now() - 1);
    assert.equal(await one.bannedUntil("r", ann.id), undefined, "lifted on both");
    await two.close();
    await one.close();
  });

  test("kick signals reach subscribers with every field, and members keep verified and bot", async () => {
    const engine = await factory.make({ historySize: 10 });
    const seen: EngineEvent[] = [];
    await engine.subscribe("r", (e) => seen.push(e));
    const kicks: Signal[] = [
      { type: "kick", member: ann, reason: "spam", by: moderator, until: Date.now() + 60_000 },
      { type: "kick", member: bob, reason: "", by: null },
    ];
    for (const kick of kicks) await engine.signal("r", kick);
    await until(() => seen.filter((e) => e.type === "kick").length >= 2, "both kicks");
    assert.deepEqual(seen.filter((e) => e.type === "kick"), kicks);

    const { message } = await engine.append("r", { from: robot, text: "beep" });
    assert.deepEqual(message.from, robot);
    await until(() => seen.some((e) => e.type === "message"), "the robot's message");
    const live = seen.find((e) => e.type === "message");
    assert.deepEqual(live?.type === "message" && live.message.from, robot);
    assert.deepEqual((await engine.read("r", undefined, 10)).messages[0].from, robot);
    assert.deepEqual((await engine.history("r", 99, 10)).messages[0].from, robot);

    assert.deepEqual(await engine.join("r", "c1", vera, 60_000), [vera]);
    await engine.join("r", "c2", ann, 60_000);
    assert.deepEqual(byId(await engine.members("r")), [ann, vera]);
    await engine.rename("r", vera.id, "v");
    const renamed = { ...vera, nick: "v" };
    assert.deepEqual(byId(await engine.members("r")), [ann, renamed], "a rename keeps verified");
    await engine.leave("r", "c1");
    await until(() => seen.some((e) => e.type === "leave"), "vera's leave");
    assert.deepEqual(seen.filter((e) => e.type !== "message" && e.type !== "kick"), [
      { type: "join", member: vera },
      { type: "join", member: ann },
      { type: "rename", member: renamed, old: "vera" },
      { type: "leave", member: renamed },
    ]);
    await engine.close();
  });

  test("concurrent appends to one room get distinct contiguous ids and are all readable, in id order", async () => {
    const engine = await factory.make({ historySize: 1000 });
    const seen: number[] = [];
    await engine.subscribe("r", (e) => e.type === "message" && seen.push(e.message.id));
    // 200 appends at once: 150 cids, then 50 resends of every third of them.
    const drafts = Array.from({ length: 200 }, (_, i) => {
      const n = i < 150 ? i : (i - 150) * 3;
      return { from: ann, sender: `client-${n % 7}`, cid: `c${n}`, text: `text ${n}` };
    });
    const results = await Promise.all(drafts.map((draft) => engine.append("r", draft)));
    const fresh = results.filter((r) => !r.duplicate).map((r) => r.message);
    assert.equal(fresh.length, 150, "each cid stored once");
    const ids = fresh.map((m) => m.id).sort((a, b) => a - b);
    assert.deepEqual(ids, Array.from({ length: 150 }, (_, i) => i + 1));
    const byCid = new Map(fresh.map((m) => [m.cid, m]));
    results.forEach(({ message }, i) => {
      assert.equal(message.id, byCid.get(drafts[i].cid)?.id, `${drafts[i].cid} has one id`);
      assert.equal(message.text, drafts[i].text);
    });
    const { head, messages } = await engine.read("r", undefined, 1000);
    assert.equal(head, 150);
    assert.deepEqual(messages.map((m) => m.id), ids);
    for (const m of messages) assert.equal(m.text, `text ${m.cid!.slice(1)}`);
    await until(() => seen.length >= 150, "every message published");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, ids, "published once each, in id order");
    await engine.close();
  });

  test("edits and deletes appended at once with their targets apply to them, in call order", async () => {
    const engine = await factory.make({ historySize: 20 });
    const results = await Promise.all([
      engine.append("r", { from: ann, sender: "s", cid: "a", text: "v1" }),
      engine.append("r", { from: ann, sender: "s", cid: "b", kind: "edit", target: 1, text: "v2" }),
      engine.append("r", { from: bob, text: "other" }),
      engine.append("r", { from: bob, kind: "edit", target: 3, text: "other, fixed" }),
      engine.append("r", { from: ann, kind: "delete", target: 1 }),
      engine.append("r", { from: ann, kind: "edit", target: 1, text: "after the delete" }),
      engine.append("r", { from: ann, sender: "s", cid: "b", kind: "edit", target: 1, text: "v2" }),
    ]);
    assert.deepEqual(results.map((r) => [r.message.id, r.duplicate]), [
      [1, false],
      [2, false],
      [3, false],
      [4, false],
      [5, false],
      [6, false],
      [2, true],
    ]);
    const { messages } = await engine.read("r", undefined, 10);
    assert.deepEqual(messages.map((m) => [m.id, m.kind ?? "message", m.text, m.deleted ?? false]), [
      [1, "message", undefined, true],
      [2, "edit", undefined, true],
      [3, "message", "other, fixed", false],
      [4, "edit", "other, fixed", false],
      [5, "delete", undefined, false],
      [6, "edit", "after the delete", false],
    ]);
    assert.equal(messages[2].edited, results[3].message.ts);
    const page = await engine.history("r", 99, 10);
    assert.deepEqual(page.messages.map((m) => [m.id, m.text, m.deleted ?? false]), [
      [1, undefined, true],
      [3, "other, fixed", false],
    ]);
    await engine.close();
  });

  test("concurrent appends from two instances store each cid once, with contiguous ids", async () => {
    if (!factory.peer) return;
    const one = await factory.make({ historySize: 1000 });
    const two = await factory.peer(one);
    const seen: number[] = [];
    await one.subscribe("r", (e) => e.type === "message" && seen.push(e.message.id));
    // The same 50 cids through both instances, as a client resending elsewhere.
    const send = (engine: Engine) =>
      Array.from(
        { length: 50 },
        (_, i) => engine.append("r", { from: ann, sender: "s", cid: `c${i}`, text: `t${i}` }),
      );
    const results = await Promise.all([...send(one), ...send(two)]);
    for (let i = 0; i < 50; i++) {
      assert.equal(results[i].message.id, results[50 + i].message.id, `c${i} has one id`);
      assert.equal(results[i].duplicate !== results[50 + i].duplicate, true, `c${i} stored once`);
    }
    const ids = results.filter((r) => !r.duplicate).map((r) => r.message.id);
    assert.deepEqual(ids.sort((a, b) => a - b), Array.from({ length: 50 }, (_, i) => i + 1));
    const { messages } = await two.read("r", undefined, 100);
    assert.deepEqual(messages.map((m) => m.id), ids);
    await until(() => seen.length >= 50, "every message on the first instance");
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, ids);
    await two.close();
    await one.close();
  });

  test("a kick signal, a verified member and a bot's message cross instances whole", async () => {
    if (!factory.peer) return;
    const one = await factory.make({ historySize: 10 });
    const two = await factory.peer(one);
    const seen: EngineEvent[] = [];
    await two.subscribe("r", (e) => seen.push(e));
    const kick: Signal = { type: "kick", member: ann, reason: "flood", by: moderator, until: 42 };
    await one.signal("r", kick);
    await one.append("r", { from: robot, text: "beep" });
    await one.join("r", "c1", vera, 60_000);
    const arrived = (type: string) => seen.some((e) => e.type === type);
    await until(
      () => arrived("kick") && arrived("message") && arrived("join"),
      "the kick, the message and the join on the second instance",
    );
    assert.deepEqual(seen.find((e) => e.type === "kick"), kick);
    const live = seen.find((e) => e.type === "message");
    assert.deepEqual(live?.type === "message" && live.message.from, robot);
    assert.deepEqual(seen.find((e) => e.type === "join"), { type: "join", member: vera });
    assert.deepEqual(await two.members("r"), [vera]);
    await two.close();
    await one.close();
  });
}
