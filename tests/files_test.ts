/**
 * Tests of the stored-file route (`lib/files.ts`): `GET /<room>/files/<epoch>/<id>`
 * through the whole handler, without a network: files go straight into the
 * engine, requests are built by hand.
 *
 * @module
 */

import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { type App, createApp } from "../main.ts";
import { type Config, DEFAULT_CONFIG } from "../lib/config.ts";
import { contentDisposition, filePath, isFilePath } from "../lib/files.ts";
import { memberIdOfSub } from "../lib/admission.ts";
import { silentLogger } from "../lib/log.ts";
import type { StoredMessage } from "../lib/protocol.ts";

const PNG = new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3, 4]);
const SECRET = "files-test-secret-that-is-long-enough-0123456789";
const BOB = { id: "b0b0b0b0b0b0b0b0", nick: "bob", verified: false };

async function withApp(
  overrides: Partial<Config>,
  fn: (app: App) => Promise<void>,
): Promise<void> {
  const app = await createApp(
    { ...DEFAULT_CONFIG, logLevel: "silent", ...overrides },
    silentLogger,
  );
  try {
    await fn(app);
  } finally {
    await app.close();
  }
}

function get(app: App, path: string, headers?: HeadersInit, method = "GET") {
  return app.handler(new Request(`http://127.0.0.1:8000${path}`, { method, headers }));
}

async function storeFile(
  app: App,
  room: string,
  data: Uint8Array,
  name = "cat.png",
  mime = "image/png",
): Promise<StoredMessage> {
  const { message } = await app.hub.options.engine.append(room, { from: BOB, data, name, mime });
  return message;
}

function urlOf(m: StoredMessage): string {
  return filePath(m.room, m.epoch, m.id);
}

Deno.test("GET /<room>/files/<epoch>/<id> answers the picture, its ETag and a long cache", async () => {
  await withApp({}, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const response = await get(app, `/team/files/${file.epoch}/${file.id}`);
    assert.equal(response.status, 200);
    assert.deepEqual(new Uint8Array(await response.arrayBuffer()), PNG);
    assert.equal(response.headers.get("content-type"), "image/png");
    assert.equal(response.headers.get("content-length"), String(PNG.byteLength));
    assert.equal(response.headers.get("etag"), `"${file.epoch}.${file.id}"`);
    assert.match(response.headers.get("cache-control") ?? "", /max-age=31536000/);
    assert.match(response.headers.get("cache-control") ?? "", /immutable/);
    assert.match(response.headers.get("cache-control") ?? "", /private/);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff");
    assert.match(response.headers.get("content-disposition") ?? "", /^inline; filename="cat.png"/);
  });
});

Deno.test("the lobby's files are under /lobby, like its page", async () => {
  await withApp({}, async (app) => {
    const file = await storeFile(app, "lobby", PNG);
    const response = await get(app, urlOf(file));
    assert.equal(response.status, 200);
    await response.body?.cancel();
  });
});

Deno.test("HEAD answers the headers of a file without its bytes", async () => {
  await withApp({}, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const response = await get(app, urlOf(file), undefined, "HEAD");
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-length"), String(PNG.byteLength));
    assert.equal(response.body, null);
  });
});

Deno.test("If-None-Match with the file's ETag answers 304 without a body", async () => {
  await withApp({}, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const first = await get(app, urlOf(file));
    const etag = first.headers.get("etag")!;
    await first.body?.cancel();
    const again = await get(app, urlOf(file), { "if-none-match": `W/"other", ${etag}` });
    assert.equal(again.status, 304);
    assert.equal(again.body, null);
    assert.equal(again.headers.get("etag"), etag);
    assert.match(again.headers.get("cache-control") ?? "", /immutable/);
    const other = await get(app, urlOf(file), { "if-none-match": `"${file.epoch}.999"` });
    assert.equal(other.status, 200);
    await other.body?.cancel();
  });
});

Deno.test("a file that is not a picture is served as a download, never as its own type", async () => {
  await withApp({}, async (app) => {
    const html = new TextEncoder().encode("<script>alert(1)</script>");
    const file = await storeFile(app, "team", html, 'ünï "x".html', "text/html");
    const response = await get(app, urlOf(file));
    assert.equal(response.status, 200);
    assert.equal(response.headers.get("content-type"), "application/octet-stream");
    assert.equal(
      response.headers.get("content-disposition"),
      `attachment; filename="_n_ _x_.html"; filename*=UTF-8''%C3%BCn%C3%AF%20%22x%22.html`,
    );
    assert.match(response.headers.get("content-security-policy") ?? "", /sandbox/);
    await response.body?.cancel();
    // SVG can carry scripts: a download too.
    const svg = await storeFile(
      app,
      "team",
      new TextEncoder().encode("<svg/>"),
      "a.svg",
      "image/svg+xml",
    );
    const answer = await get(app, urlOf(svg));
    assert.equal(answer.headers.get("content-type"), "application/octet-stream");
    await answer.body?.cancel();
  });
});

Deno.test("contentDisposition() escapes what a header parser would misread", () => {
  assert.equal(
    contentDisposition("inline", "a;b%c'(d).png"),
    `inline; filename="a_b_c'(d).png"; filename*=UTF-8''a%3Bb%25c%27%28d%29.png`,
  );
});

Deno.test("a deleted file answers 410; a text, an unknown id or an old epoch 404", async () => {
  await withApp({}, async (app) => {
    const engine = app.hub.options.engine;
    const file = await storeFile(app, "team", PNG);
    const { message: said } = await engine.append("team", { from: BOB, text: "hi" });
    const kept = await storeFile(app, "team", PNG);
    await engine.append("team", { from: BOB, kind: "delete", target: file.id });

    const deleted = await get(app, urlOf(file));
    assert.equal(deleted.status, 410);
    assert.equal(await deleted.text(), `gone: message ${file.id} was deleted\n`);
    assert.equal(deleted.headers.get("cache-control"), "no-store");

    const text = await get(app, urlOf(said));
    assert.equal(text.status, 404);
    assert.match(await text.text(), /is not a file/);

    const unknown = await get(app, `/team/files/${kept.epoch}/${kept.id + 5}`);
    assert.equal(unknown.status, 404);
    assert.match(await unknown.text(), /has no message/);

    const zero = await get(app, `/team/files/${kept.epoch}/0`);
    assert.equal(zero.status, 404);
    await zero.body?.cancel();

    const oldEpoch = await get(app, `/team/files/someotherepoch/${kept.id}`);
    assert.equal(oldEpoch.status, 404);
    assert.match(await oldEpoch.text(), /no history someotherepoch/);

    // The delete entry itself is no file either.
    const entry = await get(app, `/team/files/${kept.epoch}/${kept.id + 1}`);
    assert.equal(entry.status, 404);
    await entry.body?.cancel();

    const still = await get(app, urlOf(kept));
    assert.equal(still.status, 200);
    await still.body?.cancel();
  });
});

Deno.test("malformed file paths are answered 400 or 404 with what is wrong, and only GET/HEAD", async () => {
  await withApp({}, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const cases: [string, number, RegExp][] = [
      [`/te.am/files/${file.epoch}/1`, 400, /bad room name/],
      [`/team/files/${file.epoch}/abc`, 400, /bad file id: "abc"/],
      [`/team/files/${file.epoch}/-1`, 400, /bad file id/],
      [`/team/files/${file.epoch}/1234567890123456`, 400, /bad file id/],
      [`/team/files/bad%20epoch/1`, 400, /bad epoch/],
      [`/team/files/${file.epoch}`, 404, /a file is at \/<room>\/files\/<epoch>\/<id>/],
      [`/team/files/${file.epoch}/1/extra`, 404, /a file is at/],
      [`/team/files`, 404, /a file is at/],
      [`/team/files/`, 404, /a file is at/],
    ];
    for (const [path, status, body] of cases) {
      const response = await get(app, path);
      assert.equal(response.status, status, path);
      assert.match(await response.text(), body, path);
    }
    const post = await get(app, urlOf(file), undefined, "POST");
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    await post.body?.cancel();
  });
});

Deno.test("isFilePath() claims /<room>/files paths and nothing else", () => {
  assert.equal(isFilePath("/team/files/e/1"), true);
  assert.equal(isFilePath("/team/files"), true);
  assert.equal(isFilePath("/team"), false);
  assert.equal(isFilePath("/team/filesx/1"), false);
  assert.equal(isFilePath("/files"), false);
});

Deno.test("a file over HISTORY_FILE_BYTES answers 404 saying it was too large to keep", async () => {
  await withApp({ historyFileBytes: 8 }, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const response = await get(app, urlOf(file));
    assert.equal(response.status, 404);
    assert.equal(
      await response.text(),
      `not found: file ${file.id} (${PNG.byteLength} bytes) was too large to keep in history\n`,
    );
  });
});

Deno.test("the kv engine, whose history pages have no bytes, serves files too", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await withApp({ engine: "kv", kvPath: `${dir}/files.sqlite` }, async (app) => {
      const first = await storeFile(app, "team", PNG);
      const bigger = new Uint8Array(100_000).map((_, i) => i % 251);
      const second = await storeFile(app, "team", bigger, "noise.bin", "application/octet-stream");
      await app.hub.options.engine.append("team", { from: BOB, text: "after" });
      for (const [file, bytes] of [[first, PNG], [second, bigger]] as const) {
        const response = await get(app, urlOf(file));
        assert.equal(response.status, 200);
        assert.deepEqual(new Uint8Array(await response.arrayBuffer()), bytes);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------- token mode

function sign(claims: Record<string, unknown>, ttl = 600): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttl)
    .sign(new TextEncoder().encode(SECRET));
}

Deno.test("token mode: a file needs a token that may read the room, in a header or ?token=", async () => {
  await withApp({ auth: "token", authSecret: SECRET }, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const path = urlOf(file);

    const none = await get(app, path);
    assert.equal(none.status, 401);
    assert.equal(none.headers.get("www-authenticate"), "Bearer");
    assert.match(await none.text(), /unauthorized: a token is required here.*Authorization/);

    const forged = await get(app, `${path}?token=not.a.token`);
    assert.equal(forged.status, 401);
    await forged.body?.cancel();

    const expired = await sign({ sub: "ann", rooms: ["team"] }, -600);
    const late = await get(app, path, { authorization: `Bearer ${expired}` });
    assert.equal(late.status, 401);
    assert.match(await late.text(), /expired/);

    const elsewhere = await sign({ sub: "ann", rooms: ["other"] });
    const refused = await get(app, path, { authorization: `Bearer ${elsewhere}` });
    assert.equal(refused.status, 403);
    assert.equal(await refused.text(), "forbidden: your token does not allow the room team\n");

    const member = await sign({ sub: "ann", rooms: ["team"] });
    const byHeader = await get(app, path, { authorization: `Bearer ${member}` });
    assert.equal(byHeader.status, 200);
    assert.deepEqual(new Uint8Array(await byHeader.arrayBuffer()), PNG);

    const reader = await sign({ sub: "rae", read: ["team"] });
    const byQuery = await get(app, `${path}?token=${reader}`);
    assert.equal(byQuery.status, 200);
    await byQuery.body?.cancel();

    // A refusal is checked before anything about the file is told.
    const unknown = await get(app, `/team/files/${file.epoch}/999`);
    assert.equal(unknown.status, 401);
    await unknown.body?.cancel();
  });
});

Deno.test("token mode: a member banned from the room gets 403 for its files", async () => {
  await withApp({ auth: "token", authSecret: SECRET }, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const until = Date.now() + 60_000;
    await app.hub.options.engine.ban("team", await memberIdOfSub("ann"), until);
    const token = await sign({ sub: "ann", rooms: ["team"] });
    const response = await get(app, urlOf(file), { authorization: `Bearer ${token}` });
    assert.equal(response.status, 403);
    assert.equal(
      await response.text(),
      `forbidden: banned from this room until ${new Date(until).toISOString()}\n`,
    );
  });
});

Deno.test("token mode: repeated failures from one address get 429 with Retry-After", async () => {
  await withApp({ auth: "token", authSecret: SECRET }, async (app) => {
    const file = await storeFile(app, "team", PNG);
    const info = {
      remoteAddr: { transport: "tcp", hostname: "203.0.113.7", port: 4000 },
    } as Deno.ServeHandlerInfo;
    let last: Response | undefined;
    for (let i = 0; i < 12; i++) {
      last = await app.handler(
        new Request(`http://127.0.0.1:8000${urlOf(file)}?token=bad`),
        info,
      );
      if (last.status === 429) break;
      assert.equal(last.status, 401);
      await last.body?.cancel();
    }
    assert.equal(last?.status, 429);
    assert.ok(Number(last?.headers.get("retry-after")) > 0);
    await last?.body?.cancel();
  });
});
