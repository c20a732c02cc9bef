import assert from "node:assert/strict";
import { Pacer } from "../lib/rate_limit.ts";
import { until } from "./fakes.ts";

/** A pacer on a fake clock that records what passes and what drops. */
function record(options: { rate: number; burst: number; queue?: number; queueBytes?: number }) {
  const clock = { now: 0 };
  const passed: string[] = [];
  const dropped: [string, boolean][] = [];
  const pacer = new Pacer<string>({ ...options, now: () => clock.now }, {
    pass: (frame) => passed.push(frame),
    drop: (frame, flood) => dropped.push([frame, flood]),
  });
  return { pacer, passed, dropped, clock };
}

Deno.test("Pacer passes the burst at once and queues the rest in order", async () => {
  const { pacer, passed, dropped, clock } = record({ rate: 1000, burst: 2 });
  assert.equal(pacer.push("a", 1), "passed");
  assert.equal(pacer.push("b", 1), "passed");
  assert.equal(pacer.push("c", 1), "queued");
  assert.equal(pacer.push("d", 1), "queued");
  assert.deepEqual(passed, ["a", "b"]);
  clock.now = 10; // ten tokens' worth
  await until(() => passed.length === 4, "the queue to drain");
  assert.deepEqual(passed, ["a", "b", "c", "d"]);
  assert.deepEqual(dropped, []);
  assert.equal(pacer.queued, 0);
  pacer.close();
});

Deno.test("Pacer gives a rider the fate of the frame before it, without a token", () => {
  const { pacer, passed, dropped } = record({ rate: 0.001, burst: 1, queue: 0 });
  assert.equal(pacer.push("envelope-a", 1), "passed");
  assert.equal(pacer.push("bytes-a", 1, true), "passed");
  assert.equal(pacer.push("envelope-b", 1), "dropped");
  assert.equal(pacer.push("bytes-b", 1, true), "dropped");
  assert.deepEqual(passed, ["envelope-a", "bytes-a"]);
  assert.deepEqual(dropped, [["envelope-b", false]], "the rider is dropped silently");
  pacer.close();
});

Deno.test("Pacer keeps a queued frame and its rider together", async () => {
  const { pacer, passed, clock } = record({ rate: 1000, burst: 1 });
  pacer.push("x", 1);
  assert.equal(pacer.push("envelope", 1), "queued");
  assert.equal(pacer.push("bytes", 1, true), "queued");
  clock.now = 5;
  await until(() => passed.length === 3, "both released");
  assert.deepEqual(passed, ["x", "envelope", "bytes"]);
  pacer.close();
});

Deno.test("Pacer drops past its frame and byte bounds and calls a sustained overflow a flood", () => {
  const { pacer, dropped } = record({ rate: 0.001, burst: 2, queue: 1, queueBytes: 10 });
  pacer.push("a", 1);
  pacer.push("b", 1);
  assert.equal(pacer.push("big", 11), "dropped", "over the byte bound");
  assert.equal(pacer.push("c", 1), "queued");
  assert.equal(pacer.push("d", 1), "dropped", "over the frame bound");
  assert.equal(pacer.push("e", 1), "dropped");
  assert.deepEqual(dropped.map(([, flood]) => flood), [false, false, true]);
  pacer.close();
});

Deno.test("Pacer.close() drops what waits and leaves no timer behind", () => {
  const { pacer, passed } = record({ rate: 1, burst: 1 });
  pacer.push("a", 1);
  pacer.push("b", 1);
  pacer.close();
  assert.equal(pacer.queued, 0);
  assert.equal(pacer.push("c", 1), "dropped");
  assert.deepEqual(passed, ["a"]);
});
