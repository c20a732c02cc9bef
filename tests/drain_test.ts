/**
 * Draining: sockets close with 1012 in slices spread over the drain, never
 * all at once, and every one is closed by the end.
 *
 * @module
 */
import assert from "node:assert/strict";
import { drainSpread } from "../lib/drain.ts";
import { CloseCode } from "../lib/protocol.ts";

function sockets(n: number) {
  return Array.from({ length: n }, (_, i) => ({
    i,
    closes: [] as { code: number; reason: string }[],
    close(code: number, reason: string) {
      this.closes.push({ code, reason });
    },
  }));
}

Deno.test("drainSpread() closes every socket once with 1012, in slices, in order", async () => {
  const items = sockets(100);
  const slices: number[] = [];
  const done = drainSpread(items, { spreadMs: 200, tickMs: 20, onSlice: (c) => slices.push(c) });
  assert.ok(items.filter((s) => s.closes.length > 0).length < 100, "not all at once");
  await done;
  for (const s of items) assert.deepEqual(s.closes.map((c) => c.code), [CloseCode.serviceRestart]);
  assert.ok(slices.length >= 3, `${slices.length} slices`);
  assert.deepEqual([...slices].sort((a, b) => a - b), slices, "closed counts only grow");
  assert.equal(slices.at(-1), 100);
});

Deno.test("drainSpread() with no spread closes all at once; with no sockets it ends", async () => {
  const items = sockets(5);
  await drainSpread(items, { spreadMs: 0 });
  assert.ok(items.every((s) => s.closes.length === 1));
  await drainSpread([], { spreadMs: 1000 });
});

Deno.test("drainSpread() goes on past a socket whose close throws", async () => {
  const items = sockets(3);
  const broken = {
    close() {
      throw new Error("gone");
    },
  };
  await drainSpread([items[0], broken, items[1], items[2]], { spreadMs: 30, tickMs: 5 });
  assert.ok(items.every((s) => s.closes.length === 1));
});
