/**
 * Integration tests of raw mode: a real server on 127.0.0.1 and real
 * WebSocket clients that offer no subprotocol, so frames are relayed as they
 * are. The last two tests run `main.ts` as a child process.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  Client,
  connect,
  expectSilence,
  type Frame,
  startServer,
  type TestServer,
  waitFor,
} from "./helpers.ts";

const REPO_ROOT = new URL("../", import.meta.url);
const WS_KEY = "dGhlIHNhbXBsZSBub25jZQ==";

/** Headers of a valid WebSocket handshake, for `fetch`. */
const UPGRADE_HEADERS = {
  upgrade: "websocket",
  connection: "Upgrade",
  "sec-websocket-key": WS_KEY,
  "sec-websocket-version": "13",
};

/** Runs `fn` with a fresh server and closes the clients it opened, then the server. */
async function withServer(
  fn: (server: TestServer, open: (path?: string) => Promise<Client>) => Promise<void>,
): Promise<void> {
  const server = await startServer();
  const clients: Client[] = [];
  const open = async (path = "/") => {
    const client = new Client(server.ws + path);
    clients.push(client);
    await client.opened;
    return client;
  };
  try {
    await fn(server, open);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await server.close();
  }
}

/** Opens `count` raw clients in one room and waits until the server holds them all. */
async function openRoom(
  server: TestServer,
  open: (path?: string) => Promise<Client>,
  path: string,
  count: number,
): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < count; i++) clients.push(await open(path));
  const room = path === "/" ? "lobby" : path.slice(1).split("?")[0];
  await waitFor(() => server.app.hub.roomSize(room) === count, 2000, `${count} peers in ${room}`);
  return clients;
}

/** Random bytes; `getRandomValues` fills at most 64 KiB per call. */
function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += 65536) {
    crypto.getRandomValues(bytes.subarray(offset, Math.min(length, offset + 65536)));
  }
  return bytes;
}

/** Takes `count` frames from a client. */
async function take(client: Client, count: number): Promise<Frame[]> {
  const frames: Frame[] = [];
  for (let i = 0; i < count; i++) frames.push(await client.next(2000));
  return frames;
}

/** The response head of a raw TCP client, up to the blank line. */
async function readHead(conn: Deno.Conn): Promise<string> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(4096);
  let head = "";
  while (!head.includes("\r\n\r\n")) {
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`connection ended after ${JSON.stringify(head)}`);
    head += decoder.decode(buffer.subarray(0, n));
  }
  return head;
}

/** A masked client text frame (payload under 126 bytes), as RFC 6455 requires of clients. */
function maskedTextFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  assert.ok(payload.length < 126);
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const frame = new Uint8Array(6 + payload.length);
  frame.set([0x81, 0x80 | payload.length, ...mask]);
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i % 4];
  return frame;
}

/** Reads a child's stdout line by line until one matches, or throws after `ms`. */
async function readLineMatching(
  reader: ReadableStreamDefaultReader<string>,
  pattern: RegExp,
  ms: number,
): Promise<RegExpExecArray> {
  let buffered = "";
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within ${ms} ms`)), ms);
  });
  try {
    while (true) {
      // Only whole lines: a half-written port must not match.
      const lines = buffered.split("\n").slice(0, -1);
      for (const line of lines) {
        const match = pattern.exec(line);
        if (match) return match;
      }
      const { value, done } = await Promise.race([reader.read(), timeout]);
      if (done) throw new Error(`stdout ended without ${pattern}: ${JSON.stringify(buffered)}`);
      buffered += value;
    }
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("a raw text frame reaches every raw client of the room verbatim, the sender included", async () => {
  await withServer(async (server, open) => {
    const clients = await openRoom(server, open, "/", 3);
    const texts = ["hello", "  spaced\tout  \n", '{"type":"message","cid":"x"}', "çà 😀 ✓"];
    for (const text of texts) {
      clients[1].send(text);
      for (const client of clients) assert.equal(await client.text(2000), text);
    }
  });
});

Deno.test("every receiver sees the same order of frames from two interleaved senders", async () => {
  await withServer(async (server, open) => {
    const clients = await openRoom(server, open, "/order", 3);
    const [a, b] = clients;
    const sent: string[] = [];
    for (let i = 0; i < 25; i++) {
      a.send(`a${i}`);
      b.send(`b${i}`);
      sent.push(`a${i}`, `b${i}`);
    }
    const seen = await Promise.all(clients.map((c) => take(c, 50)));
    for (const frames of seen) {
      assert.deepEqual(frames, seen[0], "all receivers see one order");
      assert.deepEqual([...frames].sort(), [...sent].sort(), "each frame exactly once");
      for (const prefix of ["a", "b"]) {
        const mine = frames.filter((f) => String(f).startsWith(prefix));
        assert.deepEqual(mine, sent.filter((f) => f.startsWith(prefix)), `${prefix} in send order`);
      }
    }
    await Promise.all(clients.map((c) => expectSilence(c, 50)));
  });
});

Deno.test("binary frames are relayed byte for byte: empty, small and 1 MiB", async () => {
  await withServer(async (server, open) => {
    const clients = await openRoom(server, open, "/bin", 3);
    const payloads = [
      new Uint8Array(0),
      new Uint8Array([0, 1, 2, 0xff, 0x80]),
      randomBytes(1 << 20),
    ];
    for (const payload of payloads) {
      clients[2].send(payload);
      for (const client of clients) {
        const got = await client.binary(5000);
        assert.equal(got.byteLength, payload.byteLength);
        assert.deepStrictEqual(got, payload);
      }
    }
  });
});

Deno.test("text stays text and binary stays binary, even when the bytes are valid UTF-8", async () => {
  await withServer(async (server, open) => {
    const [sender, receiver] = await openRoom(server, open, "/kinds", 2);
    sender.send("abc");
    sender.send(new TextEncoder().encode("abc"));
    sender.send("123");
    for (const client of [sender, receiver]) {
      assert.equal(await client.next(2000), "abc");
      const bytes = await client.next(2000);
      assert.ok(bytes instanceof Uint8Array, "the binary frame arrives as binary");
      assert.deepStrictEqual(bytes, new TextEncoder().encode("abc"));
      assert.equal(await client.next(2000), "123");
    }
  });
});

Deno.test("rooms are isolated: /a, /b and the lobby never see each other's frames", async () => {
  await withServer(async (server, open) => {
    const a = await openRoom(server, open, "/a", 2);
    const b = await openRoom(server, open, "/b", 2);
    const lobby = await openRoom(server, open, "/", 2);
    const rooms = [a, b, lobby];
    for (const [index, room] of rooms.entries()) {
      room[0].send(`text for ${index}`);
      room[0].send(new Uint8Array([index]));
      for (const client of room) {
        assert.equal(await client.text(2000), `text for ${index}`);
        assert.deepStrictEqual(await client.binary(2000), new Uint8Array([index]));
      }
    }
    await Promise.all(rooms.flat().map((c) => expectSilence(c)));
  });
});

Deno.test("a socket that drops without a close frame leaves its room; the others still relay", async () => {
  await withServer(async (server, open) => {
    const [first, second] = await openRoom(server, open, "/r", 2);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
    let connClosed = false;
    try {
      const request = [
        "GET /r HTTP/1.1",
        `Host: 127.0.0.1:${server.port}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${WS_KEY}`,
        "Sec-WebSocket-Version: 13",
        "",
        "",
      ].join("\r\n");
      await conn.write(new TextEncoder().encode(request));
      const head = await readHead(conn);
      assert.match(head, /^HTTP\/1\.1 101 /);
      await waitFor(() => server.app.hub.roomSize("r") === 3, 2000, "the TCP client in room r");
      // It really is a peer: its frame reaches the others.
      await conn.write(maskedTextFrame("from tcp"));
      assert.equal(await first.text(2000), "from tcp");
      assert.equal(await second.text(2000), "from tcp");
      conn.close();
      connClosed = true;
      await waitFor(() => server.app.hub.roomSize("r") === 2, 2000, "room r back to 2 peers");
      first.send("still here");
      assert.equal(await first.text(2000), "still here");
      assert.equal(await second.text(2000), "still here");
    } finally {
      if (!connClosed) conn.close();
    }
  });
});

Deno.test("a bad room name is refused before the upgrade", async () => {
  await withServer(async (server) => {
    const client = new Client(server.ws + "/bad%20room");
    await assert.rejects(client.opened);
    await client.closed;
    assert.equal(server.app.hub.connections.size, 0);
    for (const path of ["/bad!room", "/" + "x".repeat(65)]) {
      const res = await fetch(server.url + path, { headers: UPGRADE_HEADERS });
      await res.body?.cancel();
      assert.equal(res.status, 400, path);
    }
    // 64 characters is still a room name.
    const longest = await connect(server.ws + "/" + "x".repeat(64));
    await longest.close();
  });
});

Deno.test("a plain GET of a room path serves the chat page", async () => {
  await withServer(async (server) => {
    for (const path of ["/", "/dev"]) {
      const res = await fetch(server.url + path);
      const body = await res.text();
      assert.equal(res.status, 200, path);
      assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
      assert.match(body, /<html/i);
    }
  });
});

Deno.test("?history=N first sends a raw client the last N messages verbatim, then live ones", async () => {
  await withServer(async (server, open) => {
    const sender = await open("/hist");
    for (let i = 1; i <= 5; i++) {
      sender.send(`m${i}`);
      assert.equal(await sender.text(2000), `m${i}`);
    }
    const late = await open("/hist?history=3");
    assert.deepEqual(await take(late, 3), ["m3", "m4", "m5"]);
    sender.send("live");
    assert.equal(await late.text(2000), "live");
    await expectSilence(late, 50);
    // Without ?history, a raw client gets live frames only.
    const plain = await open("/hist");
    await waitFor(() => server.app.hub.roomSize("hist") === 3, 2000, "3 peers in hist");
    sender.send("after");
    assert.equal(await plain.text(2000), "after");
  });
});

Deno.test("?history that is not a number is answered 400 before the upgrade", async () => {
  await withServer(async (server) => {
    const res = await fetch(server.url + "/hist?history=abc", { headers: UPGRADE_HEADERS });
    await res.body?.cancel();
    assert.equal(res.status, 400);
    const client = new Client(server.ws + "/hist?history=abc");
    await assert.rejects(client.opened);
    await client.closed;
  });
});

for (
  const [signal, code, env] of [
    ["SIGINT", 1001, {}],
    ["SIGTERM", 1012, { DRAIN_SECONDS: "1", DRAIN_SPREAD_SECONDS: "0" }],
  ] as const
) {
  const what = signal === "SIGINT"
    ? "closes sockets with 1001 at once"
    : "drains: /readyz 503 at once, sockets closed with 1012 after DRAIN_SECONDS";
  Deno.test(`on ${signal} the server ${what}, and exits 0`, async () => {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", "--allow-read=.", "--allow-env", "main.ts"],
      env: { PORT: "0", HOSTNAME: "127.0.0.1", LOG_LEVEL: "silent", ...env },
      cwd: REPO_ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let exited = false;
    const status = child.status.then((s) => {
      exited = true;
      return s;
    });
    const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const stderr = new Response(child.stderr).text();
    let client: Client | undefined;
    try {
      const match = await readLineMatching(
        stdout,
        /^Parley listening on http:\/\/127\.0\.0\.1:(\d+)\/$/,
        10_000,
      );
      const origin = `127.0.0.1:${match[1]}`;
      client = await connect(`ws://${origin}/`);
      // Make sure the server has the socket in its room before stopping it.
      client.send("ping");
      assert.equal(await client.text(2000), "ping");
      let closedAt = 0;
      client.closed.then(() => closedAt = performance.now());
      const signalledAt = performance.now();
      child.kill(signal);
      if (signal === "SIGTERM") {
        let ready = 200;
        for (let tries = 0; ready !== 503 && tries < 50; tries++) {
          const res = await fetch(`http://${origin}/readyz`);
          await res.body?.cancel();
          ready = res.status;
          if (ready !== 503) await new Promise((resolve) => setTimeout(resolve, 10));
        }
        assert.equal(ready, 503, "/readyz turns 503 as the drain starts");
        assert.equal(closedAt, 0, "the socket stays open until DRAIN_SECONDS");
        client.send("still here");
        assert.equal(await client.text(2000), "still here");
      }
      const event = await client.closed;
      assert.equal(event.code, code);
      if (signal === "SIGTERM") assert.ok(closedAt - signalledAt >= 900, "after DRAIN_SECONDS");
      assert.equal((await status).code, 0);
    } finally {
      await client?.close();
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch {
          // It exited in the meantime.
        }
      }
      await status;
      await stdout.cancel();
      await stderr;
    }
  });
}

Deno.test("a bad PORT stops start-up with one line naming the variable, value and expectation", async () => {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read=.", "--allow-env", "main.ts"],
    env: { PORT: "abc", HOSTNAME: "127.0.0.1", LOG_LEVEL: "silent" },
    cwd: REPO_ROOT,
    stdin: "null",
  }).output();
  const out = new TextDecoder().decode(stdout);
  const err = new TextDecoder().decode(stderr);
  assert.notEqual(code, 0);
  assert.doesNotMatch(out, /listening/i);
  const lines = err.split("\n").filter((line) => line.trim() !== "");
  assert.equal(lines.length, 1, `stderr: ${JSON.stringify(err)}`);
  assert.match(lines[0], /PORT/);
  assert.match(lines[0], /abc/);
  assert.match(lines[0], /expected an integer port/);
});
