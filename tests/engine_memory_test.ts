import assert from "node:assert/strict";
import { MemoryEngine } from "../lib/engines/memory.ts";
import { engineConformance } from "./engine_conformance.ts";

engineConformance({
  name: "memory",
  make: (options) =>
    Promise.resolve(new MemoryEngine({ historyBytes: 1 << 20, historyFileBytes: 16, ...options })),
});

Deno.test("memory: reading the history of a room that never was creates no room", async () => {
  const engine = new MemoryEngine({ historySize: 10, historyBytes: 1 << 20, historyFileBytes: 16 });
  const first = await engine.history("never", 10, 5);
  const again = await engine.history("never", 10, 5);
  assert.deepEqual([first.messages, first.more], [[], false]);
  assert.notEqual(first.epoch, again.epoch, "no room kept its epoch between the two reads");
  await engine.append("real", { from: null, text: "hi" });
  const a = await engine.history("real", 10, 5);
  const b = await engine.history("real", 10, 5);
  assert.equal(a.epoch, b.epoch, "a room that exists keeps its epoch");
  await engine.close();
});
