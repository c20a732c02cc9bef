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

import { loadConfig, startupFailure } from "./lib/config.ts";
import { settingsOf } from "./main.ts";
import { createParley, type Parley } from "./mod.ts";

const SERVE_DEFAULTS: Record<string, string> = { ENGINE: "kv", KV_PATH: "parley.sqlite" };

/** Prints one line and ends the process, as `main.ts` does for a failed start. */
function fail(line: string, code: number): never {
  console.error(line);
  Deno.exit(code);
}

let parley: Parley;
try {
  const config = loadConfig((name) => Deno.env.get(name) || SERVE_DEFAULTS[name]);
  if (config.engine === "memory") {
    fail(
      "parley: ENGINE=memory: deno serve --parallel workers share no memory; use kv or redis",
      2,
    );
  }
  parley = await createParley(settingsOf(config));
} catch (error) {
  const { line, code } = startupFailure(error);
  fail(line, code);
}

export default { fetch: parley.fetch } satisfies Deno.ServeDefaultExport;
