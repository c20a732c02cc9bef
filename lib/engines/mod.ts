/**
 * Picks the engine the configuration names. Engines other than memory are
 * imported only when selected, so their dependencies load only then.
 *
 * @module
 */

import type { Config } from "../config.ts";
import type { Engine } from "../engine.ts";
import type { Logger } from "../log.ts";
import { MemoryEngine } from "./memory.ts";

/** Creates and connects the configured engine. */
export async function createEngine(config: Config, logger: Logger): Promise<Engine> {
  switch (config.engine) {
    case "memory":
      return new MemoryEngine(config);
    case "kv": {
      const { KvEngine } = await import("./kv.ts");
      return await KvEngine.open(config, logger);
    }
    case "redis": {
      const { RedisEngine } = await import("./redis.ts");
      return await RedisEngine.connect(config, logger);
    }
  }
}
