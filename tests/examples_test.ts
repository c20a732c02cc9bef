/**
 * The examples, run as a reader would run them: each one as its own process
 * with the permissions its header gives, on a free port. The host app's
 * routes answer, the chat page and its files are served under `/chat/`, and
 * two plain WebSocket clients there relay to each other.
 */
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- not in the import map, so `deno task start` never installs it
import { chromium } from "npm:playwright-core@1.65.1";
import { connect, waitFor } from "./helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const hasChromium = await Deno.stat(CHROMIUM).then((info) => info.isFile, () => false);
const inCi = Deno.env.get("CI") === "true";

/** A running example. */
interface Example {
  child: Deno.ChildProcess;
  origin: string;
  host: string;
}

/** Starts `examples/<file>` on 127.0.0.1 and a free port; resolves once it listens. */
async function startExample(file: string): Promise<Example> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--lock=tests/deno.lock",
      "--allow-net",
      "--allow-read=.",
      "--allow-env=PORT,HOSTNAME",
      `examples/${file}`,
    ],
    cwd: new URL("..", import.meta.url),
    env: { PORT: "0", HOSTNAME: "127.0.0.1" },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    while (true) {
      const match = /Listening on http:\/\/(127\.0\.0\.1:\d+)\//.exec(out);
      if (match) return { child, origin: `http://${match[1]}`, host: match[1] };
      const { value, done } = await reader.read();
      if (done) {
        await child.status;
        throw new Error(`examples/${file} exited before listening; stdout: ${out}`);
      }
      out += value;
    }
  } finally {
    await reader.cancel();
  }
}

/** Stops an example with SIGTERM, as a supervisor would, and returns its exit code. */
async function stop(example: Example): Promise<number> {
  example.child.kill("SIGTERM");
  return (await example.child.status).code;
}

async function checkExample(file: string): Promise<void> {
  const example = await startExample(file);
  let stopped = false;
  try {
    const { origin, host } = example;
    const home = await fetch(`${origin}/`);
    assert.equal(home.status, 200);
    assert.match(await home.text(), /^my app/);
    const health = await fetch(`${origin}/health`);
    assert.equal(health.status, 200);
    assert.equal((await health.json()).ok, true);

    const page = await fetch(`${origin}/chat/`);
    assert.equal(page.status, 200);
    assert.ok(page.headers.get("content-security-policy")?.includes("base-uri 'none'"));
    const html = await page.text();
    const assets = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]);
    assert.ok(assets.includes("app.js"), `the page loads app.js relatively: ${assets}`);
    for (const asset of assets) {
      // What a browser asks for from /chat/ and from a room page alike.
      for (const from of ["/chat/", "/chat/team"]) {
        const url = new URL(asset, origin + from);
        assert.ok(url.pathname.startsWith("/chat/"), `${asset} from ${from} is ${url.pathname}`);
        const res = await fetch(url);
        assert.equal(res.status, 200, url.pathname);
        await res.body?.cancel();
      }
    }
    const bare = await fetch(`${origin}/chat`, { redirect: "manual" });
    assert.equal(bare.status, 308);
    assert.equal(bare.headers.get("location"), "/chat/");
    await bare.body?.cancel();
    const outside = await fetch(`${origin}/app.js`);
    assert.equal(outside.status, 404);
    await outside.body?.cancel();

    const a = await connect(`ws://${host}/chat/`);
    const b = await connect(`ws://${host}/chat/`);
    try {
      a.send("hello from a");
      assert.equal(await b.text(), "hello from a");
      b.send(new Uint8Array([1, 2, 3]));
      assert.equal(await a.text(), "hello from a"); // a room relays to its sender too
      assert.deepEqual([...await a.binary()], [1, 2, 3]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
    stopped = true;
    assert.equal(await stop(example), 0);
  } finally {
    if (!stopped) await stop(example);
  }
}

Deno.test("examples/embed.ts serves its own routes and the chat at /chat/", async () => {
  await checkExample("embed.ts");
});

Deno.test("examples/hono.ts serves its own routes and the chat at /chat/", async () => {
  await checkExample("hono.ts");
});

Deno.test({
  name: "examples/embed.ts: in Chromium, the page at /chat/team loads and joins room team",
  // Skipped without Chromium on a developer's machine, a failure in CI (as tests/browser_test.ts).
  ignore: !hasChromium && !inCi,
  async fn() {
    if (!hasChromium) throw new Error(`Cannot run browser tests in CI: ${CHROMIUM} not found`);
    const example = await startExample("embed.ts");
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ["--headless", "--no-sandbox", "--disable-gpu"],
    });
    try {
      const page = await browser.newPage();
      const problems: string[] = [];
      const sockets: string[] = [];
      page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
      page.on("console", (message) => {
        if (message.type() === "error") problems.push(`console: ${message.text()}`);
      });
      page.on("websocket", (socket) => sockets.push(socket.url()));
      const response = await page.goto(`${example.origin}/chat/team`);
      assert.equal(response?.status(), 200);
      await page.locator("#nick-input").fill("ann");
      await page.locator("#nick-input").press("Enter");
      await waitFor(() => sockets.length > 0, 10_000, "the page's WebSocket");
      assert.equal(sockets[0], `ws://${example.host}/chat/team`);
      assert.equal(await page.locator("#room-name").textContent(), "team");
      // The app's own /health counts the chat's connections: the page's is there.
      let connections = 0;
      for (const end = Date.now() + 10_000; connections !== 1 && Date.now() < end;) {
        connections = (await (await fetch(`${example.origin}/health`)).json()).chatConnections;
        if (connections !== 1) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(connections, 1);
      assert.deepEqual(problems, []);
    } finally {
      await browser.close();
      await stop(example);
    }
  },
});
