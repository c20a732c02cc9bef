import assert from "node:assert/strict";
import { Fifo } from "../lib/engines/_fifo.ts";

Deno.test("Fifo gives items back in the order they were put in, a batch at a time", () => {
  const fifo = new Fifo<number>();
  for (let i = 0; i < 5; i++) fifo.push(i);
  assert.equal(fifo.length, 5);
  assert.deepEqual(fifo.take(2), [0, 1]);
  assert.equal(fifo.at(0), 2);
  assert.equal(fifo.at(2), 4);
  assert.equal(fifo.at(3), undefined);
  assert.equal(fifo.at(-1), undefined);
  fifo.push(5);
  assert.deepEqual(fifo.take(10), [2, 3, 4, 5]);
  assert.equal(fifo.length, 0);
  assert.deepEqual(fifo.take(1), []);
  assert.equal(fifo.at(0), undefined);
});

Deno.test("Fifo keeps order across the compaction of a long queue", () => {
  const fifo = new Fifo<number>();
  let next = 0;
  let expected = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 300; i++) fifo.push(next++);
    for (const item of fifo.take(250)) assert.equal(item, expected++);
  }
  assert.equal(fifo.length, next - expected);
  assert.equal(fifo.at(0), expected);
  for (const item of fifo.take(fifo.length)) assert.equal(item, expected++);
  assert.equal(expected, next);
});
