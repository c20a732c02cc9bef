/**
 * What `deno task start` installs: Deno installs every npm package of the
 * root import map and lockfile, whatever the entry point uses
 * (denoland/deno#28999), so those hold only what the server itself may load
 * (jose for tokens, ioredis for Redis). Test and example packages
 * (playwright-core, axe-core, hono) live in `tests/deno.lock`, which
 * `deno task test` and `deno task check` use.
 *
 * @module
 */
import assert from "node:assert/strict";

const ROOT = new URL("../", import.meta.url);
const SERVER_PACKAGES = ["jose", "ioredis"];
const TEST_ONLY = ["playwright-core", "axe-core", "hono", "esbuild"];

/** The package name of a lockfile key such as `@ioredis/commands@2.0.0`. */
function packageOf(key: string): string {
  return key.slice(0, key.indexOf("@", 1));
}

Deno.test("the root import map holds only the server's own packages", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const imports = Object.keys(config.imports ?? {}).sort();
  assert.deepEqual(imports, [...SERVER_PACKAGES].sort());
});

Deno.test("the root lockfile holds no test or example package, so a first start never downloads one", async () => {
  const lock = JSON.parse(await Deno.readTextFile(new URL("deno.lock", ROOT)));
  const packages = Object.keys(lock.npm ?? {}).map(packageOf);
  for (const name of SERVER_PACKAGES) assert.ok(packages.includes(name), `${name} is locked`);
  const strays = packages.filter((name) => TEST_ONLY.includes(name));
  assert.deepEqual(
    strays,
    [],
    "run tests with `deno task test` (it passes --lock=tests/deno.lock), or restore deno.lock",
  );
});
