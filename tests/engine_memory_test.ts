import { MemoryEngine } from "../lib/engines/memory.ts";
import { engineConformance } from "./engine_conformance.ts";

engineConformance({
  name: "memory",
  make: (options) =>
    Promise.resolve(new MemoryEngine({ historyBytes: 1 << 20, historyFileBytes: 16, ...options })),
});
