/**
 * Picks the engine the configuration names. Engines other than memory are
 * imported only when selected, so their dependencies load only then.
 *
 * @module
 */

import { type Config, ConfigError } from "../config.ts";
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
      let module: typeof import("./redis.ts");
      try {
        module = await import("./redis.ts");
      } catch (error) {
        if (!(error instanceof Deno.errors.NotCapable)) throw error;
        // ioredis's `debug` dependency reads the whole environment on import.
        throw new ConfigError(
          "ENGINE",
          "redis",
          "--allow-env without a list, which the Redis client needs: run `deno task start:redis`",
        );
      }
      return await module.RedisEngine.connect({ ...config, keyPrefix: config.redisPrefix }, logger);
    }
  }
}
