/**
 * Entry point for `deno serve`, which `deno task start:parallel` runs with
 * `--parallel`: one worker per core, each importing this module.
 *
 * Workers share nothing in memory, so the default engine here is `kv` on the
 * local file `parley.sqlite` (every worker opens it; `kv.watch` carries the
 * fan-out between them). `ENGINE=redis` works too; `ENGINE=memory` would split
 * rooms between workers and is refused.
 *
 * @module
 */

import { ConfigError, loadConfig } from "./lib/config.ts";
import { createApp } from "./main.ts";

const SERVE_DEFAULTS: Record<string, string> = { ENGINE: "kv", KV_PATH: "parley.sqlite" };

function fail(message: string): never {
  console.error(`parley: ${message}`);
  Deno.exit(2);
}

let config;
try {
  config = loadConfig((name) => Deno.env.get(name) || SERVE_DEFAULTS[name]);
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  fail(error.message);
}
if (config.engine === "memory") {
  fail("ENGINE=memory: deno serve --parallel workers share no memory; use kv or redis");
}

const app = await createApp(config);

export default { fetch: app.handler } satisfies Deno.ServeDefaultExport;
