import assert from "node:assert/strict";
import { checkHandshake, clientIp, createHandler, type Upgrade } from "../lib/handler.ts";
import type { ConnectInfo, Connection } from "../lib/hub.ts";
import { makeAsset } from "../lib/static.ts";
import { FakeSocket, makeHub } from "./fakes.ts";
import { startServer } from "./helpers.ts";
import { RawSocket } from "./raw_socket.ts";

const HANDSHAKE = {
  upgrade: "websocket",
  connection: "Upgrade",
  "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
  "sec-websocket-version": "13",
};

async function setup(upgrade?: Upgrade) {
  const hub = makeHub();
  const assets = new Map([
    ["/index.html", await makeAsset("index.html", new TextEncoder().encode("<!doctype html>"))],
    ["/app.js", await makeAsset("app.js", new TextEncoder().encode("export {};"))],
    ["/style.css", await makeAsset("style.css", new TextEncoder().encode("body{}"))],
  ]);
  return createHandler({ hub, assets, upgrade });
}

async function call(path: string, init?: RequestInit, upgrade?: Upgrade) {
  const handler = await setup(upgrade);
  const res = await handler(new Request(`http://localhost${path}`, init));
  const body = await res.text();
  return { res, body };
}

/**
 * Sends a handshake for `path` through a fake upgrade, opens the socket and
 * returns what the hub was told, with the response's status and subprotocol.
 */
async function connectInfo(path: string, headers: Record<string, string> = {}) {
  const hub = makeHub();
  const seen: ConnectInfo[] = [];
  hub.connect = (_socket, info) => {
    seen.push(info);
    return { receive() {}, close() {} } as unknown as Connection;
  };
  const socket = new FakeSocket();
  const handler = createHandler({
    hub,
    assets: new Map(),
    upgrade: () => ({ socket: socket as unknown as WebSocket, response: new Response(null) }),
  });
  const res = await handler(
    new Request(`http://localhost${path}`, { headers: { ...HANDSHAKE, ...headers } }),
  );
  if (res.status === 200) socket.dispatchEvent(new Event("open"));
  await res.body?.cancel();
  return {
    status: res.status,
    protocolHeader: res.headers.get("sec-websocket-protocol"),
    ...seen[0],
  };
}

Deno.test("handler serves the page at / and at room paths", async () => {
  for (const path of ["/", "/dev", "/Team_2-b"]) {
    const { res, body } = await call(path);
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get("content-type"), "text/html; charset=utf-8");
    assert.equal(body, "<!doctype html>");
    assert.match(res.headers.get("content-security-policy") ?? "", /script-src 'self'/);
    assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  }
});

Deno.test("handler serves assets with content types and ETags", async () => {
  const js = await call("/app.js");
  assert.equal(js.res.status, 200);
  assert.equal(js.res.headers.get("content-type"), "text/javascript; charset=utf-8");
  assert.equal(js.body, "export {};");
  const css = await call("/style.css");
  assert.equal(css.res.headers.get("content-type"), "text/css; charset=utf-8");
  assert.match(js.res.headers.get("etag") ?? "", /^"[0-9a-f]+"$/);
  assert.notEqual(js.res.headers.get("etag"), css.res.headers.get("etag"));
});

Deno.test("handler answers 304 on a matching If-None-Match", async () => {
  const first = await call("/app.js");
  const etag = first.res.headers.get("etag")!;
  for (const tag of [etag, `W/${etag}`, `"other", ${etag}`, "*"]) {
    const { res, body } = await call("/app.js", { headers: { "if-none-match": tag } });
    assert.equal(res.status, 304, tag);
    assert.equal(body, "");
    assert.equal(res.headers.get("etag"), etag);
  }
  const stale = await call("/app.js", { headers: { "if-none-match": '"stale"' } });
  assert.equal(stale.res.status, 200);
});

Deno.test("handler answers HEAD without a body", async () => {
  const { res, body } = await call("/app.js", { method: "HEAD" });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("content-length"), "10");
  assert.equal(body, "");
});

Deno.test("handler answers 404 for unknown paths", async () => {
  for (const path of ["/nope.js", "/a/b", "/static/app.js", "/../etc/passwd", "/%2e%2e/a/b.js"]) {
    const { res } = await call(path);
    assert.equal(res.status, 404, path);
  }
});

Deno.test("handler answers 405 for other methods", async () => {
  for (
    const [path, method] of [["/app.js", "POST"], ["/", "PUT"], ["/room", "DELETE"], [
      "/healthz",
      "POST",
    ]]
  ) {
    const { res } = await call(path, { method });
    assert.equal(res.status, 405, `${method} ${path}`);
    assert.equal(res.headers.get("allow"), "GET, HEAD");
  }
});

Deno.test("handler rejects bad room names with 400 before any upgrade", async () => {
  let upgraded = false;
  const upgrade: Upgrade = () => {
    upgraded = true;
    throw new Error("must not upgrade");
  };
  for (const path of ["/" + "x".repeat(65), "/bad%20room", "/bad!room", "/caf%C3%A9"]) {
    const { res, body } = await call(path, { headers: HANDSHAKE }, upgrade);
    assert.equal(res.status, 400, path);
    assert.match(body, /bad room name/);
  }
  assert.equal(upgraded, false);
});

Deno.test("handler upgrades a valid handshake with 101", async () => {
  const handler = await setup();
  const res = await handler(new Request("http://localhost/dev", { headers: HANDSHAKE }));
  assert.equal(res.status, 101);
  assert.equal(res.headers.get("sec-websocket-protocol"), null);
  const rich = await handler(
    new Request("http://localhost/dev", {
      headers: { ...HANDSHAKE, "sec-websocket-protocol": "chat, parley.v1" },
    }),
  );
  assert.equal(rich.status, 101);
  assert.equal(rich.headers.get("sec-websocket-protocol"), "parley.v1");
});

Deno.test("handler passes room, mode and resume position to the hub", async () => {
  const info = await connectInfo("/dev?epoch=abc&last=5", {
    "sec-websocket-protocol": "parley.v1",
  });
  assert.equal(info.status, 200);
  assert.equal(info.room, "dev");
  assert.equal(info.rich, true);
  assert.deepEqual(info.last, { epoch: "abc", id: 5 });
  assert.equal(info.badLast, undefined);
  assert.equal(info.protocolHeader, "parley.v1");
});

Deno.test("handler selects parley.v1 from any offered list, however it is spaced", async () => {
  const handler = await setup();
  const offers = [
    "parley.v1,chat.v0",
    "chat.v0,parley.v1",
    "chat.v0 , parley.v1",
    " parley.v1 ,chat.v0",
    "parley.v1\t,chat.v0",
    "chat.v0,,parley.v1",
    "chat.v0, parley.v1, other",
    "parley.v1",
  ];
  for (const offer of offers) {
    const res = await handler(
      new Request("http://localhost/dev", {
        headers: { ...HANDSHAKE, "sec-websocket-protocol": offer },
      }),
    );
    assert.equal(res.status, 101, JSON.stringify(offer));
    assert.equal(res.headers.get("sec-websocket-protocol"), "parley.v1", JSON.stringify(offer));
    const info = await connectInfo("/dev", { "sec-websocket-protocol": offer });
    assert.equal(info.rich, true, JSON.stringify(offer));
  }
});

Deno.test("handler treats a list without parley.v1 as raw mode", async () => {
  const handler = await setup();
  for (const offer of ["chat.v0", "chat.v0,chat.v1", "PARLEY.V1", "parley.v10", "parley", ""]) {
    const res = await handler(
      new Request("http://localhost/dev", {
        headers: { ...HANDSHAKE, "sec-websocket-protocol": offer },
      }),
    );
    assert.equal(res.status, 101, JSON.stringify(offer));
    assert.equal(res.headers.get("sec-websocket-protocol"), null, JSON.stringify(offer));
    const info = await connectInfo("/dev", { "sec-websocket-protocol": offer });
    assert.equal(info.rich, false, JSON.stringify(offer));
  }
});

Deno.test("handler answers an upgrade that throws with 400 and the reason, never 500", async () => {
  const hub = makeHub();
  const handler = createHandler({
    hub,
    assets: new Map(),
    upgrade: () => {
      throw new TypeError("Invalid Header: 'upgrade' header must contain 'websocket'");
    },
  });
  const res = await handler(new Request("http://localhost/dev", { headers: HANDSHAKE }));
  assert.equal(res.status, 400);
  assert.equal(
    await res.text(),
    "bad handshake: Invalid Header: 'upgrade' header must contain 'websocket'\n",
  );
  assert.match(hub.metrics.render(), /^parley_rejected_total\{reason="handshake"\} 1$/m);
});

Deno.test("a real server selects parley.v1 from a list sent without spaces", async () => {
  const server = await startServer();
  try {
    for (const offer of ["parley.v1,chat.v0", "chat.v0,parley.v1"]) {
      const socket = await RawSocket.open(server.port, "/dev", { "Sec-WebSocket-Protocol": offer });
      await socket.close();
      assert.equal(socket.status, 101, offer);
      assert.match(socket.head, /^sec-websocket-protocol: parley\.v1$/im, offer);
    }
    const raw = await RawSocket.open(server.port, "/dev", { "Sec-WebSocket-Protocol": "chat.v0" });
    await raw.close();
    assert.equal(raw.status, 101);
    assert.doesNotMatch(raw.head, /sec-websocket-protocol/i);
  } finally {
    await server.close();
  }
});

Deno.test("handler answers bad handshakes with 400 or 426 and a reason, never 500", async () => {
  const cases: [Record<string, string>, number, RegExp][] = [
    [{ ...HANDSHAKE, "sec-websocket-key": "" }, 400, /Sec-WebSocket-Key/],
    [{ ...HANDSHAKE, "sec-websocket-key": "short" }, 400, /Sec-WebSocket-Key/],
    [{ ...HANDSHAKE, "sec-websocket-version": "8" }, 426, /version/i],
    [{ ...HANDSHAKE, connection: "keep-alive" }, 400, /Connection/],
    [{ ...HANDSHAKE, upgrade: "h2c" }, 400, /Upgrade/],
  ];
  for (const [headers, status, reason] of cases) {
    const { res, body } = await call("/", { headers });
    assert.equal(res.status, status, JSON.stringify(headers));
    assert.match(body, reason);
  }
  const noKey: Record<string, string> = { ...HANDSHAKE };
  delete noKey["sec-websocket-key"];
  assert.equal((await call("/", { headers: noKey })).res.status, 400);
  const post = checkHandshake(
    new Request("http://localhost/", { method: "POST", headers: HANDSHAKE }),
  );
  assert.equal(post?.status, 400);
  await post?.body?.cancel();
});

Deno.test("handler answers a ?history that is not an integer with 400 and the value", async () => {
  for (const value of ["abc", "-1", "1.5", "1e3", "", "0x10"]) {
    const { res, body } = await call(`/?history=${encodeURIComponent(value)}`, {
      headers: HANDSHAKE,
    });
    assert.equal(res.status, 400, value);
    assert.equal(
      body,
      `bad history: ${JSON.stringify(value)} is not a non-negative integer; use ?history=N\n`,
    );
  }
});

Deno.test("handler clamps ?history above HISTORY_SIZE to HISTORY_SIZE", async () => {
  // makeHub keeps 100 messages per room.
  for (
    const [value, expected] of [["0", 0], ["7", 7], ["100", 100], ["101", 100], [
      "9".repeat(20),
      100,
    ]]
  ) {
    const info = await connectInfo(`/?history=${value}`);
    assert.equal(info.status, 200, String(value));
    assert.equal(info.history, expected, String(value));
  }
});

Deno.test("handler passes a malformed URL resume position to a rich client's hub as badLast", async () => {
  const cases: [string, string][] = [
    ["?epoch=x&last=abc", "last.id: must be a non-negative integer"],
    ["?epoch=x&last=-1", "last.id: must be a non-negative integer"],
    ["?epoch=x", "last.id: must be a non-negative integer"],
    ["?last=5", "last.epoch: must be an epoch string from the server"],
    ["?epoch=b%20d&last=1", "last.epoch: must be an epoch string from the server"],
  ];
  for (const [query, reason] of cases) {
    const info = await connectInfo(`/r${query}`, { "sec-websocket-protocol": "parley.v1" });
    assert.equal(info.status, 200, query);
    assert.equal(info.rich, true, query);
    assert.equal(info.last, undefined, query);
    assert.equal(info.badLast, `bad resume position: ${reason}; use ?epoch=E&last=N`, query);
  }
});

Deno.test("handler ignores resume parameters of a raw client", async () => {
  for (const query of ["?epoch=x&last=abc", "?last=5", "?epoch=abc&last=5"]) {
    const info = await connectInfo(`/r${query}`);
    assert.equal(info.status, 200, query);
    assert.equal(info.rich, false, query);
    assert.equal(info.last, undefined, query);
    assert.equal(info.badLast, undefined, query);
  }
});

Deno.test("handler serves /healthz, /readyz and /metrics", async () => {
  const health = await call("/healthz");
  assert.equal(health.res.status, 200);
  const ready = await call("/readyz");
  assert.equal(ready.res.status, 200);
  const metrics = await call("/metrics");
  assert.equal(metrics.res.status, 200);
  assert.match(metrics.body, /^# HELP parley_connections /m);
  assert.match(metrics.body, /^parley_connections\{mode="raw"\} 0$/m);
});

function fakeUpgrade(sockets: FakeSocket[] = []): Upgrade {
  return () => {
    const socket = new FakeSocket();
    sockets.push(socket);
    return { socket: socket as unknown as WebSocket, response: new Response(null) };
  };
}

function handlerWith(options: Partial<Parameters<typeof createHandler>[0]>) {
  return createHandler({ hub: makeHub(), assets: new Map(), upgrade: fakeUpgrade(), ...options });
}

const from = (hostname: string) =>
  ({ remoteAddr: { transport: "tcp", hostname, port: 1234 } }) as Deno.ServeHandlerInfo;

Deno.test("handler checks Origin before the upgrade (CSWSH defence)", async () => {
  const own = handlerWith({});
  const req = (origin?: string) =>
    new Request("http://chat.local:8000/", {
      headers: { ...HANDSHAKE, host: "chat.local:8000", ...(origin ? { origin } : {}) },
    });
  assert.equal((await own(req())).status, 200, "no Origin: a tool");
  assert.equal((await own(req("http://chat.local:8000"))).status, 200, "the page's own origin");
  const evil = await own(req("https://evil.example"));
  assert.equal(evil.status, 403);
  assert.match(await evil.text(), /Origin/);
  const listed = handlerWith({ allowedOrigins: ["https://chat.example.com"] });
  assert.equal((await listed(req("https://chat.example.com"))).status, 200);
  const notListed = await listed(req("http://chat.local:8000"));
  assert.equal(notListed.status, 403, "an explicit list is exact");
  await notListed.body?.cancel();
  const any = handlerWith({ allowedOrigins: ["*"] });
  assert.equal((await any(req("https://evil.example"))).status, 200);
});

Deno.test("handler caps connections globally (503) and per address (429)", async () => {
  const sockets: FakeSocket[] = [];
  const handler = handlerWith({
    upgrade: fakeUpgrade(sockets),
    maxConnections: 3,
    maxConnectionsPerIp: 2,
  });
  const ws = () => new Request("http://localhost/", { headers: HANDSHAKE });
  assert.equal((await handler(ws(), from("10.0.0.1"))).status, 200);
  assert.equal((await handler(ws(), from("10.0.0.1"))).status, 200);
  const perIp = await handler(ws(), from("10.0.0.1"));
  assert.equal(perIp.status, 429);
  await perIp.body?.cancel();
  assert.equal((await handler(ws(), from("10.0.0.2"))).status, 200);
  const full = await handler(ws(), from("10.0.0.3"));
  assert.equal(full.status, 503);
  await full.body?.cancel();
  // A close frees a place, once even if it fires twice.
  sockets[0].dispatchEvent(new Event("close"));
  sockets[0].dispatchEvent(new Event("close"));
  assert.equal((await handler(ws(), from("10.0.0.1"))).status, 200);
  const stillFull = await handler(ws(), from("10.0.0.4"));
  assert.equal(stillFull.status, 503);
  await stillFull.body?.cancel();
});

Deno.test("handler believes X-Forwarded-For only from a trusted proxy", () => {
  const req = new Request("http://localhost/", {
    headers: { "x-forwarded-for": "6.6.6.6, 203.0.113.9, 10.0.0.5" },
  });
  assert.equal(clientIp(req, from("198.51.100.1"), []), "198.51.100.1");
  assert.equal(clientIp(req, from("198.51.100.1"), ["10.0.0.5"]), "198.51.100.1");
  assert.equal(clientIp(req, from("10.0.0.5"), ["10.0.0.5"]), "203.0.113.9");
  assert.equal(clientIp(req, from("127.0.0.1"), ["127.0.0.1", "10.0.0.5"]), "203.0.113.9");
});
