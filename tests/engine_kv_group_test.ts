import assert from "node:assert/strict";
import { Batch, costOf, fits, ROOMS_PER_WRITE, SharedWrites } from "../lib/engines/kv/_group.ts";
import type { MessageRecord } from "../lib/engines/kv/_records.ts";

function record(id: number, text: string): MessageRecord {
  return { epoch: "e", id, ts: id, from: null, text, bytes: 128 + text.length * 2 };
}

async function withKv(fn: (kv: Deno.Kv) => Promise<void>) {
  const kv = await Deno.openKv(":memory:");
  try {
    await fn(kv);
  } finally {
    kv.close();
  }
}

Deno.test("Batch: a later write to a key replaces the earlier one, in what it costs too", () =>
  withKv(async (kv) => {
    const batch = new Batch(kv, "r");
    batch.setRecord(record(1, "short"));
    const one = { ...batch.used };
    assert.equal(one.mutations, 1);
    batch.setRecord(record(1, "x".repeat(1000)));
    assert.equal(batch.used.mutations, 1, "one key, one mutation");
    assert.ok(batch.used.bytes > one.bytes + 1000, "the bigger value counts, not both");
    batch.deleteRecord(1);
    assert.equal(batch.used.mutations, 1);
    assert.ok(batch.used.bytes < one.bytes, "a delete costs its key only");
    const op = kv.atomic();
    batch.addTo(op);
    assert.equal((await op.commit()).ok, true);
    assert.equal((await kv.get(["parley", "r", "msg", 1])).value, null);
  }));

Deno.test("Batch shows stored records and edits through the writes it holds", () =>
  withKv(async (kv) => {
    await kv.atomic()
      .set(["parley", "r", "msg", 1], record(1, "stored"))
      .set(["parley", "r", "msg", 2], record(2, "also stored"))
      .set(["parley", "r", "edits", 1, 5], true)
      .set(["parley", "r", "edits", 1, 6], true)
      .commit();
    const batch = new Batch(kv, "r");
    batch.setRecord(record(2, "rewritten"));
    batch.setRecord(record(3, "new"));
    assert.equal((await batch.record(1))?.text, "stored");
    assert.deepEqual((await batch.records([3, 2, 1, 9])).map((r) => r?.text), [
      "new",
      "rewritten",
      "stored",
      undefined,
    ]);
    assert.equal(batch.written(1), undefined, "written() knows only what the batch writes");
    assert.equal(batch.written(3)?.text, "new");
    batch.index(1, 7, true);
    batch.index(1, 5, false);
    assert.deepEqual(await batch.edits(1), [6, 7]);
    assert.equal(batch.writes(["parley", "r", "edits", 1, 5]), true);
    assert.equal(batch.writes(["parley", "r", "edits", 1, 6]), false);
  }));

Deno.test("costOf counts keys and values from above, and fits() holds every limit", () => {
  const key = ["parley", "room", "msg", 12];
  const value = record(12, "é".repeat(100));
  const cost = costOf(key, value);
  assert.equal(cost.mutations, 1);
  // V8 spends at most two bytes per character; JSON is never shorter than that shape.
  assert.ok(cost.bytes >= JSON.stringify(value).length * 2);
  assert.ok(cost.keyBytes >= new TextEncoder().encode(key.join("")).length);
  const limit = { mutations: 2, bytes: 10_000, keyBytes: 1000 };
  assert.equal(fits(cost, cost, limit), true);
  assert.equal(fits({ ...cost, mutations: 2 }, cost, limit), false);
  assert.equal(fits(cost, { ...cost, bytes: 10_000 }, limit), false);
  assert.equal(fits(cost, { ...cost, keyBytes: 1000 }, limit), false);
});

Deno.test("SharedWrites commits the writes of rooms ready together in one commit, once no room is still building", () =>
  withKv(async (kv) => {
    const writes = new SharedWrites(kv, ROOMS_PER_WRITE);
    const head = (room: string) => kv.get(["parley", room, "head"]);
    const write = (room: string, id: number) => {
      const batch = new Batch(kv, room);
      batch.put(["parley", room, "head"], id);
      return batch;
    };
    writes.start();
    writes.start();
    writes.start();
    const a = writes.commit([await head("a")], write("a", 1));
    const b = writes.commit([await head("b")], write("b", 1));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal((await head("a")).value, null, "waits for the room still building");
    writes.cancel();
    assert.deepEqual(await Promise.all([a, b]), [true, true]);
    const [one, two] = [await head("a"), await head("b")];
    assert.equal(one.versionstamp, two.versionstamp, "one commit");
  }));

Deno.test("SharedWrites commits each write alone when a shared commit fails", () =>
  withKv(async (kv) => {
    const writes = new SharedWrites(kv, ROOMS_PER_WRITE);
    const stale = await kv.get(["parley", "a", "head"]);
    await kv.set(["parley", "a", "head"], 0);
    const fresh = await kv.get(["parley", "b", "head"]);
    const write = (room: string) => {
      const batch = new Batch(kv, room);
      batch.put(["parley", room, "head"], 1);
      return batch;
    };
    writes.start();
    writes.start();
    const results = await Promise.all([
      writes.commit([stale], write("a")),
      writes.commit([fresh], write("b")),
    ]);
    assert.deepEqual(results, [false, true], "the room that lost, and only it");
    assert.equal((await kv.get(["parley", "a", "head"])).value, 0);
    assert.equal((await kv.get(["parley", "b", "head"])).value, 1);
  }));
