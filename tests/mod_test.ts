/**
 * The library entry point: `createParley` checks its options by the rules of
 * the environment, answers only under its `basePath` (the page, its files,
 * health and API there; 404 or the fallback elsewhere), relays WebSockets
 * under the prefix, and lets the app post, kick and delete.
 */
import assert from "node:assert/strict";
import { DEFAULT_CONFIG } from "../lib/config.ts";
import { SECURITY_HEADERS } from "../lib/handler.ts";
import { loadAssets, referencesOf } from "../lib/static.ts";
import { settingsOf } from "../main.ts";
import { createParley, type Parley, type ParleyOptions } from "../mod.ts";
import { connect } from "./helpers.ts";

const quiet: ParleyOptions = { logLevel: "silent" };

/** Builds a chat, runs `body` with it and closes it. */
async function withParley(options: ParleyOptions, body: (p: Parley) => Promise<void>) {
  const parley = await createParley({ ...quiet, ...options });
  try {
    await body(parley);
  } finally {
    await parley.close();
  }
}

/** Serves `parley` on 127.0.0.1 and a free port while `body` runs. */
async function serving(parley: Parley, body: (origin: string) => Promise<void>) {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, parley.fetch);
  try {
    await body(`127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
}

const get = (parley: Parley, path: string, init?: RequestInit) =>
  parley.fetch(new Request(`http://chat.test${path}`, init));

Deno.test("createParley refuses a value its variable would refuse, naming the option", async () => {
  await assert.rejects(
    createParley({ ...quiet, historySize: 0 }),
    (error: Error) =>
      error instanceof RangeError && /historySize is 0; expected an integer/.test(error.message),
  );
  await assert.rejects(
    createParley({ ...quiet, rateLimit: 2.5 }),
    (error: Error) =>
      error instanceof RangeError && /^Cannot create Parley: rateLimit/.test(error.message),
  );
  await assert.rejects(
    createParley({ ...quiet, allowedOrigins: ["not an origin"] }),
    /allowedOrigins is not an origin; expected a comma-separated list of origins/,
  );
});

Deno.test("createParley refuses unknown options and says the app listens itself", async () => {
  await assert.rejects(
    createParley({ ...quiet, historySise: 10 } as ParleyOptions),
    (error: Error) =>
      error instanceof TypeError && /unknown option "historySise"/.test(error.message),
  );
  await assert.rejects(
    createParley({ ...quiet, port: 8000 } as ParleyOptions),
    /unknown option "port" \(your app listens: pass it to Deno.serve\)/,
  );
});

Deno.test("createParley refuses a basePath that is not a plain path", async () => {
  for (const basePath of ["chat", "/chat/../x", "/ch at", "/a//b"]) {
    await assert.rejects(
      createParley({ ...quiet, basePath }),
      (error: Error) => error instanceof RangeError && error.message.includes("basePath is"),
      basePath,
    );
  }
});

Deno.test("createParley normalises basePath: trailing slashes go, / is the root", async () => {
  await withParley({ basePath: "/chat/" }, async (parley) => {
    assert.equal(parley.basePath, "/chat");
    assert.equal((await get(parley, "/chat/healthz")).status, 200);
    await (await get(parley, "/chat/healthz")).body?.cancel();
  });
  await withParley({ basePath: "/" }, async (parley) => {
    assert.equal(parley.basePath, "");
    const res = await get(parley, "/healthz");
    assert.equal(await res.text(), "ok\n");
  });
});

Deno.test("createParley takes every setting of the environment (main.ts's path)", async () => {
  const settings = settingsOf({ ...DEFAULT_CONFIG, logLevel: "silent", historySize: 70 });
  assert.ok(!("port" in settings) && !("hostname" in settings));
  await withParley(settings, async (parley) => {
    const res = await get(parley, "/readyz");
    assert.equal(await res.text(), "ready\n");
  });
});

Deno.test("under a basePath, the page and its files are served under the prefix", async () => {
  await withParley({ basePath: "/chat" }, async (parley) => {
    for (const path of ["/chat/", "/chat/team"]) {
      const page = await get(parley, path);
      assert.equal(page.status, 200, path);
      assert.match(page.headers.get("content-type") ?? "", /^text\/html/);
      // The CSP is the same as at the root, base-uri 'none' included.
      assert.equal(
        page.headers.get("content-security-policy"),
        SECURITY_HEADERS["content-security-policy"],
      );
      const html = await page.text();
      // Relative URLs: they resolve under /chat/ from /chat/ and /chat/team alike.
      assert.match(html, /<script type="module" src="app.js"><\/script>/);
      assert.match(html, /<link rel="stylesheet" href="style.css">/);
      assert.doesNotMatch(html, /(src|href)="\//);
    }
    for (const file of ["app.js", "style.css", "favicon.svg"]) {
      const res = await get(parley, `/chat/${file}`);
      assert.equal(res.status, 200, file);
      await res.body?.cancel();
    }
  });
});

Deno.test("under a basePath, GET of the bare prefix redirects to the folder", async () => {
  await withParley({ basePath: "/chat" }, async (parley) => {
    const res = await get(parley, "/chat?x=1");
    assert.equal(res.status, 308);
    assert.equal(res.headers.get("location"), "/chat/?x=1");
  });
});

Deno.test("under a basePath, other paths are 404 or the fallback's", async () => {
  await withParley({ basePath: "/chat" }, async (parley) => {
    for (const path of ["/", "/healthz", "/app.js", "/chatroom", "/other/chat/"]) {
      const res = await get(parley, path);
      assert.equal(res.status, 404, path);
      await res.body?.cancel();
    }
  });
  const seen: string[] = [];
  const fallback = (req: Request) => {
    seen.push(new URL(req.url).pathname);
    return new Response("host app");
  };
  await withParley({ basePath: "/chat", fallback }, async (parley) => {
    assert.equal(await (await get(parley, "/")).text(), "host app");
    assert.equal(await (await get(parley, "/chatroom")).text(), "host app");
    const res = await get(parley, "/chat/healthz");
    assert.equal(await res.text(), "ok\n");
    assert.deepEqual(seen, ["/", "/chatroom"]);
  });
});

Deno.test("under a basePath, health, metrics and the API move under it", async () => {
  const apiKey = "k".repeat(24);
  await withParley({ basePath: "/chat", apiKey }, async (parley) => {
    assert.equal(await (await get(parley, "/chat/readyz")).text(), "ready\n");
    assert.match(await (await get(parley, "/chat/metrics")).text(), /parley_/);
    const posted = await get(parley, "/chat/api/rooms/team/messages", {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ text: "hello", name: "deploy-bot" }),
    });
    assert.equal(posted.status, 201, await posted.clone().text());
    await posted.body?.cancel();
    const listed = await get(parley, "/chat/api/rooms/team/messages", {
      headers: { authorization: `Bearer ${apiKey}` },
    });
    assert.equal(listed.status, 200);
    assert.match(await listed.text(), /"hello"/);
    const outside = await get(parley, "/api/rooms/team/messages", {
      headers: { authorization: `Bearer ${apiKey}` },
    });
    assert.equal(outside.status, 404);
    await outside.body?.cancel();
  });
});

Deno.test("under a basePath, plain WebSocket clients at /chat/ relay to each other", async () => {
  await withParley({ basePath: "/chat" }, async (parley) => {
    await serving(parley, async (host) => {
      const a = await connect(`ws://${host}/chat/`);
      const b = await connect(`ws://${host}/chat`);
      const other = await connect(`ws://${host}/chat/team`);
      try {
        a.send("hi from a");
        assert.equal(await b.text(), "hi from a");
        assert.equal(await a.text(), "hi from a");
        other.send("team only");
        assert.equal(await other.text(), "team only");
        b.send("lobby again");
        assert.equal(await a.text(), "lobby again");
        assert.equal(parley.hub.roomSize("lobby"), 2);
        assert.equal(parley.hub.connectionCount, 3);
      } finally {
        await Promise.all([a.close(), b.close(), other.close()]);
      }
    });
  });
});

Deno.test("hub.post reaches the room's clients; bad rooms, texts and names are refused", async () => {
  await withParley({ maxTextLength: 10 }, async (parley) => {
    await serving(parley, async (host) => {
      const raw = await connect(`ws://${host}/team`);
      try {
        const message = await parley.hub.post("team", { text: "deployed", name: " ci " });
        assert.equal(message.room, "team");
        assert.equal(message.text, "deployed");
        assert.ok(message.id > 0);
        assert.equal(await raw.text(), "ci: deployed");
        await assert.rejects(parley.hub.post("no room", { text: "x", name: "ci" }), RangeError);
        await assert.rejects(
          parley.hub.post("team", { text: "x".repeat(11), name: "ci" }),
          /text must be 1 to 10 characters, not 11/,
        );
        await assert.rejects(parley.hub.post("team", { text: "x", name: "  " }), RangeError);
        await assert.rejects(
          parley.hub.post("team", { text: "x", name: "a\u202eb" }),
          /bidirectional/,
        );
        await assert.rejects(parley.hub.kick("team", "m1", { minutes: -1 }), RangeError);
        await parley.hub.deleteMessage("team", message.id);
        assert.equal(await raw.text(), "* server deleted a message");
      } finally {
        await raw.close();
      }
    });
  });
});

Deno.test("createParley writes its JSON log lines where `log` says", async () => {
  const lines: string[] = [];
  await withParley({ logLevel: "info", log: (line) => lines.push(line) }, async (parley) => {
    await serving(parley, async (host) => {
      const client = await connect(`ws://${host}/`);
      await client.close();
    });
  });
  assert.ok(lines.length > 0, "no log line");
  for (const line of lines) assert.equal(typeof JSON.parse(line).event, "string");
});

Deno.test("the page's files load from an http(s) folder too, as from a JSR install", async () => {
  const dir = new URL("../static/", import.meta.url);
  const local = await loadAssets(dir);
  const asked: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const name = new URL(req.url).pathname.replace(/^\/static\//, "");
    asked.push(name);
    try {
      return new Response(await Deno.readFile(new URL(name, dir)));
    } catch {
      return new Response("not found", { status: 404 });
    }
  });
  try {
    const remote = await loadAssets(new URL(`http://127.0.0.1:${server.addr.port}/static/`));
    for (const path of ["/index.html", "/app.js", "/style.css", "/favicon.svg"]) {
      assert.ok(remote.has(path), path);
    }
    for (const [path, asset] of remote) assert.equal(asset.etag, local.get(path)?.etag, path);
    // Whatever a fetched file refers to, and static/ has, was fetched too.
    for (const [path, asset] of remote) {
      for (const name of referencesOf(path, new TextDecoder().decode(asset.body))) {
        if (local.has(`/${name}`)) assert.ok(remote.has(`/${name}`), `${path} -> ${name}`);
      }
    }
    assert.equal(asked[0], "index.html");
    assert.equal(new Set(asked).size, asked.length, `a file was fetched twice: ${asked}`);
  } finally {
    await server.shutdown();
  }
});

Deno.test("referencesOf finds a page file's same-folder references and nothing else", () => {
  const html = '<link href="style.css"><script src="./app.js?v=1"></script><a href="/x">' +
    '<img src="https://cdn.test/a.png"><link href="../up.css">';
  assert.deepEqual(referencesOf("index.html", html), ["style.css", "app.js"]);
  const js =
    'import { a } from "./wire.js";\nimport "./side.js";\nconst m = await import("./lazy.js");\n' +
    'import x from "npm:thing";\nconst u = new URL("./icon.svg", import.meta.url);';
  assert.deepEqual(referencesOf("app.js", js), ["wire.js", "side.js", "lazy.js", "icon.svg"]);
  assert.deepEqual(referencesOf("style.css", "a { background: url('bg.png') }"), ["bg.png"]);
  assert.deepEqual(referencesOf("favicon.svg", '<svg href="x.svg">'), []);
});

Deno.test("createParley refuses option names that are Object's own, not settings", async () => {
  await assert.rejects(
    createParley({ ...quiet, constructor: 1 } as unknown as ParleyOptions),
    /unknown option "constructor"/,
  );
});
