import assert from "node:assert/strict";
import { Batches } from "../lib/engines/_batches.ts";

/** A `send` that records its batches and answers when told to. */
function recorder() {
  const sent: { key: string; items: string[]; answer(error?: Error): void }[] = [];
  const send = (key: string, items: string[]) =>
    new Promise<string[]>((resolve, reject) => {
      sent.push({
        key,
        items,
        answer: (error) => error ? reject(error) : resolve(items.map((item) => `${item}!`)),
      });
    });
  return { sent, send };
}

const size = (item: string) => item.length;

function settle(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

Deno.test("Batches sends what is added in one turn together, and what comes meanwhile next", async () => {
  const { sent, send } = recorder();
  const batches = new Batches({ send, size, limits: { items: 100, bytes: 1000 } });
  const first = ["a", "b", "c"].map((item) => batches.add("r", item));
  await settle();
  assert.deepEqual(sent.map((s) => s.items), [["a", "b", "c"]]);
  const second = ["d", "e"].map((item) => batches.add("r", item));
  await settle();
  assert.equal(sent.length, 1, "one batch on its way per key");
  sent[0].answer();
  assert.deepEqual(await Promise.all(first), ["a!", "b!", "c!"]);
  await settle();
  assert.deepEqual(sent.map((s) => s.items), [["a", "b", "c"], ["d", "e"]]);
  sent[1].answer();
  assert.deepEqual(await Promise.all(second), ["d!", "e!"]);
});

Deno.test("Batches keeps keys apart and each batch within its limits, the first item whatever its size", async () => {
  const { sent, send } = recorder();
  const batches = new Batches({ send, size, limits: { items: 3, bytes: 10 } });
  const all = [
    ...["a1", "a2", "a3", "a4"].map((item) => batches.add("a", item)),
    batches.add("b", "b".repeat(20)),
    batches.add("b", "b2"),
    batches.add("c", "12345"),
    batches.add("c", "123456"),
  ];
  await settle();
  assert.deepEqual(sent.map((s) => [s.key, s.items]), [
    ["a", ["a1", "a2", "a3"]],
    ["b", ["b".repeat(20)]],
    ["c", ["12345"]],
  ]);
  for (let answered = 0; answered < sent.length; answered++) {
    sent[answered].answer();
    await settle();
  }
  assert.deepEqual(sent.slice(3).map((s) => [s.key, s.items]), [
    ["a", ["a4"]],
    ["b", ["b2"]],
    ["c", ["123456"]],
  ]);
  assert.equal((await Promise.all(all)).length, 8);
});

Deno.test("Batches keeps up to `concurrency` batches of a key on their way", async () => {
  const { sent, send } = recorder();
  const batches = new Batches({ send, size, limits: { items: 2, bytes: 1000 }, concurrency: 2 });
  const all = ["1", "2", "3", "4", "5", "6"].map((item) => batches.add("r", item));
  await settle();
  assert.deepEqual(sent.map((s) => s.items), [["1", "2"], ["3", "4"]]);
  sent[0].answer();
  await settle();
  assert.deepEqual(sent.map((s) => s.items), [["1", "2"], ["3", "4"], ["5", "6"]]);
  sent[1].answer();
  sent[2].answer();
  assert.deepEqual(await Promise.all(all), ["1!", "2!", "3!", "4!", "5!", "6!"]);
});

Deno.test("Batches fails the items of a failed batch only, unless the error is hopeless", async () => {
  const { sent, send } = recorder();
  const hopeless = (error: unknown) => String(error).includes("timed out");
  const batches = new Batches({ send, size, limits: { items: 100, bytes: 1000 }, hopeless });
  const first = [batches.add("r", "a"), batches.add("r", "b")];
  await settle();
  const later = batches.add("r", "c");
  sent[0].answer(new Error("lost"));
  for (const call of first) await assert.rejects(call, /lost/);
  await settle();
  sent[1].answer();
  assert.equal(await later, "c!");
  const stuck = batches.add("r", "d");
  await settle();
  const behind = [batches.add("r", "e"), batches.add("r", "f")];
  sent[2].answer(new Error("Command timed out"));
  for (const call of [stuck, ...behind]) await assert.rejects(call, /timed out/);
  assert.equal(sent.length, 3, "what waited behind a timeout is not sent");
  const next = batches.add("r", "g");
  await settle();
  assert.deepEqual(sent[3]?.items, ["g"], "a later item is sent again");
  sent[3].answer();
  assert.equal(await next, "g!");
});

Deno.test("Batches fails a batch whose answer has the wrong number of results", async () => {
  const batches = new Batches({
    send: () => Promise.resolve(["only one"]),
    size,
    limits: { items: 100, bytes: 1000 },
  });
  const calls = [batches.add("r", "a"), batches.add("r", "b")];
  for (const call of calls) await assert.rejects(call, /Expected 2 results from a batch, got 1/);
});
