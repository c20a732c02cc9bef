/**
 * The browser build of the client SDK: `static/parley-client.js` is the
 * bundle of `client/mod.ts` as `deno task bundle:client` makes it (checked
 * by bundling again), and it runs unchanged in headless Chromium: two
 * clients on one page send and receive, one keeping its state in IndexedDB.
 *
 * Chromium must be at /usr/bin/chromium. Without it the browser test is
 * skipped with a warning on a developer's machine, and fails in CI
 * (`CI=true`).
 *
 * @module
 */

import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { type Browser, chromium } from "npm:playwright-core@1.65.1";
import { startServer } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  "--disable-features=LocalNetworkAccessChecks",
];
const ROOT = new URL("../", import.meta.url);
const BUNDLE = new URL("static/parley-client.js", ROOT);
/** The first line of the bundle: generated code is not held to the linter's rules. */
const HEADER = "// deno-lint-ignore-file\n";

const hasChromium = await Deno.stat(CHROMIUM).then((info) => info.isFile, () => false);
const inCi = Deno.env.get("CI") === "true";
const skipReason = `${CHROMIUM} not found; install it with: apt-get install -y chromium`;
if (!hasChromium && !inCi) console.warn(`Browser test skipped: ${skipReason}`);

async function run(args: string[], stdin?: string): Promise<string> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  const err = new TextDecoder().decode(stderr);
  if (code !== 0) throw new Error(`deno ${args.join(" ")} failed (${code}): ${err}`);
  return new TextDecoder().decode(stdout);
}

Deno.test("static/parley-client.js is the bundle of client/mod.ts (else: deno task bundle:client)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const out = `${dir}/parley-client.js`;
    await run(["bundle", "--quiet", "--platform", "browser", "client/mod.ts", "-o", out]);
    // As the task does: the header, then the bundle, formatted with the project's settings.
    const fresh = await run(["fmt", "--ext", "js", "-"], HEADER + (await Deno.readTextFile(out)));
    const committed = await Deno.readTextFile(BUNDLE);
    assert.ok(committed.startsWith(HEADER), "the bundle starts with its lint header");
    assert.ok(
      committed === fresh,
      "static/parley-client.js is stale: run `deno task bundle:client` and commit it",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "static/parley-client.js in headless Chromium: two clients send and receive, one on IndexedDB",
  ignore: !hasChromium && !inCi,
  async fn() {
    if (!hasChromium) throw new Error(`Cannot run browser tests in CI: ${skipReason}`);
    const server = await startServer();
    let browser: Browser | undefined;
    try {
      browser = await chromium.launch({ executablePath: CHROMIUM, args: LAUNCH_ARGS });
      const page = await browser.newPage();
      page.setDefaultTimeout(10_000);
      const problems: string[] = [];
      page.on("pageerror", (error) => problems.push(error.message));
      // Any page of the server will do: the module is loaded from its origin.
      await page.goto(`${server.url}/parley-client.js`);
      const result = await page.evaluate(async (wsUrl) => {
        const sdk = await import("/parley-client.js");
        const storage = new sdk.IndexedDBStorage("parley-test");
        const ann = new sdk.ParleyClient(`${wsUrl}/browser`, { nick: "ann", storage });
        const bob = new sdk.ParleyClient(`${wsUrl}/browser`, { nick: "bob" });
        const seen: string[] = [];
        const states: string[] = [];
        bob.on("message", (m: { text?: string }) => seen.push(m.text ?? ""));
        ann.on("status", (s: { state: string }) => states.push(s.state));
        await Promise.all([ann.connect(), bob.connect()]);
        const acks = [];
        for (const text of ["one", "two", "three"]) acks.push(ann.send(text).delivered);
        const ids = (await Promise.all(acks)).map((a: { id: number }) => a.id);
        const deadline = Date.now() + 5000;
        // Both have seen the three: bob as messages, ann as her own broadcasts.
        while ((seen.length < 3 || ann.position?.id !== ids[2]) && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        const clientId = ann.clientId;
        await Promise.all([ann.close(), bob.close()]);
        const kept = await storage.get("parley:client");
        const state = JSON.parse(await storage.get(`parley:${wsUrl}/browser`) ?? "null");
        await storage.close();
        return { seen, ids, states, clientId, kept, state };
      }, server.ws);
      assert.deepEqual(result.seen, ["one", "two", "three"]);
      assert.equal(result.ids.length, 3);
      assert.deepEqual(result.states.slice(0, 2), ["connecting", "open"]);
      assert.equal(result.states.at(-1), "closed");
      assert.equal(result.kept, result.clientId, "the client id was kept in IndexedDB");
      assert.deepEqual(result.state.outbox, [], "nothing left to send");
      assert.equal(result.state.last.id, result.ids[2], "the position was kept in IndexedDB");
      assert.deepEqual(problems, []);
    } finally {
      await browser?.close();
      await server.close();
    }
  },
});
