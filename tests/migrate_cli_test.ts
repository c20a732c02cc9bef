/**
 * `deno task export` and `deno task import` (`lib/migrate_cli.ts`), run as
 * child processes: kv to redis and redis to kv on a real `redis-server` and
 * temp KV files, a memory server through its API, then a rich client that
 * resumes on the new engine; bad flags, malformed input and refused imports.
 *
 * @module
 */
import assert from "node:assert/strict";
import type { Engine } from "../lib/engine.ts";
import { KvEngine } from "../lib/engines/kv.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import { type StoredMessage, SUBPROTOCOL } from "../lib/protocol.ts";
import { type Client, connect, startServer, type TestServer } from "./helpers.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignoreRedis = await redisSkipReason("migrate_cli_test.ts");
const redis = ignoreRedis === undefined ? await startRedis() : undefined;
// One server for the whole file; the process ends right after.
globalThis.addEventListener("unload", () => redis?.kill());

const ROOM = "team";
const KEY = "migrate-cli-test-key-5678";
const LIMITS = { historySize: 1000, historyBytes: 16 << 20, historyFileBytes: 2 << 20 };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the CLI with `args`; `stdin` is piped in when given. */
async function cli(
  args: string[],
  options: { stdin?: string; env?: Record<string, string> } = {},
): Promise<Run> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "lib/migrate_cli.ts", ...args],
    cwd: new URL("../", import.meta.url),
    // Only what the test says: no API_KEY, KV_PATH or REDIS_URL from outside.
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "",
      HOME: Deno.env.get("HOME") ?? "",
      ...(Deno.env.get("DENO_DIR") ? { DENO_DIR: Deno.env.get("DENO_DIR")! } : {}),
      ...options.env,
    },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(options.stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  const decoder = new TextDecoder();
  return { code, stdout: decoder.decode(stdout), stderr: decoder.decode(stderr) };
}

function redisFlags(prefix: string): string[] {
  return ["--redis-url", redis!.url, "--redis-prefix", prefix];
}

function prefix(): string {
  return `cli-${crypto.randomUUID().slice(0, 8)}:`;
}

/** A message without what engines may show differently (undefined fields, bytes as arrays). */
function normal(m: StoredMessage): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(m)) {
    if (v === undefined || k === "room" || (m.deleted && k === "edited")) continue;
    out[k] = v instanceof Uint8Array ? Array.from(v) : v;
  }
  return out;
}

async function history(engine: Engine, room = ROOM): Promise<Record<string, unknown>[]> {
  return (await engine.read(room, undefined, 1000)).messages.map(normal);
}

/** Opens a rich client in the room and sends `hello`; returns it with its `welcome`. */
async function join(
  ws: string,
  hello: Record<string, unknown>,
): Promise<{ client: Client; welcome: Record<string, unknown> }> {
  const client = await connect(`${ws}/${ROOM}`, SUBPROTOCOL);
  client.send({ type: "hello", ...hello });
  return { client, welcome: await client.until("welcome") };
}

Deno.test("deno task export --help prints the usage and exits 0", async () => {
  const run = await cli(["export", "--help"]);
  assert.equal(run.code, 0);
  assert.match(
    run.stdout,
    /^Usage: deno task export \(--engine kv\|redis \| --url URL\) --room ROOM/,
  );
  assert.equal(run.stderr, "");
});

Deno.test("The migrate CLI refuses bad flags and settings with one line and exit code 2", async () => {
  const cases: [string[], string, Record<string, string>?][] = [
    [["export", "--engine", "kv"], "parley export: export needs --room"],
    [["import", "--bogus", "1"], `parley import: unknown argument "--bogus"; see --help`],
    [["import", "--engine"], "parley import: --engine needs a value"],
    [
      ["export", "--room", "team"],
      "parley export: give --engine kv|redis or --url URL; see --help",
    ],
    [
      ["export", "--engine", "memory", "--room", "team"],
      "parley export: --engine memory: that history lives inside a running server; use --url and --api-key",
    ],
    [
      ["export", "--engine", "kv", "--url", "http://127.0.0.1:1", "--room", "team"],
      "parley export: give --engine or --url, not both",
    ],
    [
      ["export", "--url", "ftp://host", "--api-key", KEY, "--room", "team"],
      "parley export: --url must be http:// or https://, not ftp://",
    ],
    [
      ["export", "--url", "http://127.0.0.1:1", "--room", "team"],
      "parley export: --url needs --api-key (or API_KEY), the server's key",
    ],
    [
      ["export", "--engine", "kv", "--room", "no room!"],
      `parley export: --room must be 1 to 64 characters from A-Z a-z 0-9 _ -, not "no room!"`,
    ],
    [["move"], `parley export: the command must be export or import, not "move"`],
    [
      ["import", "--engine", "kv", "--file", "/nonexistent/team.jsonl"],
      "parley import: --file: cannot read",
    ],
    [["export", "--engine", "kv", "--room", "team"], "HISTORY_SIZE", { HISTORY_SIZE: "lots" }],
  ];
  for (const [args, expected, env] of cases) {
    const run = await cli(args, { env });
    assert.equal(run.code, 2, `${args.join(" ")}: ${run.stderr}`);
    assert.ok(run.stderr.includes(expected), `${args.join(" ")}: ${run.stderr}`);
    assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
  }
});

Deno.test({
  name:
    "A kv room moved to redis with the CLI resumes clients with recovered: true, and a resend stays a duplicate",
  ignore: ignoreRedis !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "parley-migrate-cli-" });
    const kvPath = `${dir}/parley.sqlite`;
    const file = `${dir}/team.jsonl`;
    const keyPrefix = prefix();
    const clients: Client[] = [];
    const servers: TestServer[] = [];
    try {
      const first = await startServer({ engine: "kv", kvPath });
      servers.push(first);
      const ann = await join(first.ws, { nick: "ann", client: "cli-ann-1" });
      clients.push(ann.client);
      const acks: { epoch: string; id: number }[] = [];
      for (const text of ["one", "two", "three"]) {
        ann.client.send({ type: "message", cid: text, text });
        acks.push(await ann.client.until("ack"));
      }
      const picture = Uint8Array.from({ length: 70_000 }, (_, i) => (i * 31 + (i >> 8)) % 256);
      ann.client.send({
        type: "file",
        cid: "pic",
        name: "cat.png",
        mime: "image/png",
        size: 70_000,
      });
      ann.client.send(picture);
      acks.push(await ann.client.until("ack"));
      ann.client.send({ type: "edit", cid: "fix", id: 3, text: "three, edited" });
      acks.push(await ann.client.until("ack"));
      await ann.client.close();
      clients.length = 0;
      await first.close();
      servers.length = 0;

      const exported = await cli(["export", "--engine", "kv", "--room", ROOM, "--file", file], {
        env: { KV_PATH: kvPath },
      });
      assert.equal(exported.code, 0, exported.stderr);
      assert.equal(
        exported.stderr,
        "exported room team from kv: 5 messages, 5 dedup entries, 70000 file bytes\n",
      );
      assert.equal(exported.stdout, "");
      const imported = await cli([
        "import",
        "--engine",
        "redis",
        ...redisFlags(keyPrefix),
        "--file",
        file,
      ]);
      assert.equal(imported.code, 0, imported.stderr);
      assert.equal(
        imported.stderr,
        "imported room team into redis: 5 messages, 5 dedup entries, 70000 file bytes\n",
      );

      const second = await startServer({
        engine: "redis",
        redisUrl: redis!.url,
        redisPrefix: keyPrefix,
      });
      servers.push(second);
      const last = acks[1];
      const resumed = await join(second.ws, { nick: "ann", client: "cli-ann-1", last });
      clients.push(resumed.client);
      assert.equal(resumed.welcome.recovered, true);
      assert.equal(resumed.welcome.epoch, last.epoch);
      assert.equal(resumed.welcome.head, 5);
      assert.equal(resumed.welcome.replay, 3);
      const three = await resumed.client.json();
      assert.deepEqual([three.id, three.text, typeof three.edited], [3, "three, edited", "number"]);
      const file4 = await resumed.client.json();
      assert.deepEqual([file4.type, file4.id, file4.size], ["file", 4, 70_000]);
      const bytes = await resumed.client.binary();
      assert.equal(bytes.findIndex((b, i) => b !== picture[i]), -1, "the picture's bytes");
      assert.equal(bytes.byteLength, picture.byteLength);
      const edit = await resumed.client.json();
      assert.deepEqual([edit.type, edit.id, edit.target], ["edit", 5, 3]);

      resumed.client.send({ type: "message", cid: "two", text: "two" });
      const dup = await resumed.client.until<Record<string, unknown>>("ack");
      assert.deepEqual([dup.id, dup.epoch, dup.duplicate], [2, last.epoch, true]);
      resumed.client.send({ type: "message", cid: "four", text: "four" });
      const next = await resumed.client.until<Record<string, unknown>>("ack");
      assert.deepEqual([next.id, next.epoch, next.duplicate], [6, last.epoch, false]);
    } finally {
      for (const client of clients) await client.close();
      for (const server of servers) await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "A redis room moves to kv through standard output and input",
  ignore: ignoreRedis !== undefined,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "parley-migrate-cli-" });
    const kvPath = `${dir}/parley.sqlite`;
    const keyPrefix = prefix();
    const source = await RedisEngine.connect({ ...LIMITS, redisUrl: redis!.url, keyPrefix });
    try {
      const ann = { id: "m-ann", nick: "ann" };
      await source.append(ROOM, { from: ann, sender: "s1", cid: "1", text: "hello" });
      await source.append(ROOM, { from: null, text: "raw" });
      await source.append(ROOM, {
        from: ann,
        sender: "s1",
        cid: "2",
        data: new Uint8Array([1, 2, 3]),
        name: "a",
        mime: "x/y",
      });
      await source.append(ROOM, { from: ann, sender: "s1", cid: "3", kind: "delete", target: 1 });
      const exported = await cli(["export", "--engine", "redis", "--room", ROOM], {
        env: { REDIS_URL: redis!.url, REDIS_PREFIX: keyPrefix },
      });
      assert.equal(exported.code, 0, exported.stderr);
      assert.equal(
        exported.stdout.split("\n")[0].startsWith(`{"parley":"room","version":1,"room":"team"`),
        true,
      );
      const imported = await cli(["import", "--engine", "kv", "--kv-path", kvPath], {
        stdin: exported.stdout,
      });
      assert.equal(imported.code, 0, imported.stderr);
      assert.equal(
        imported.stderr,
        "imported room team into kv: 4 messages, 3 dedup entries, 3 file bytes\n",
      );
      const target = await KvEngine.open({ ...LIMITS, kvPath });
      try {
        assert.deepEqual(await history(target), await history(source));
        const dup = await target.append(ROOM, { from: ann, sender: "s1", cid: "2", text: "again" });
        assert.deepEqual([dup.duplicate, dup.message.id], [true, 3]);
      } finally {
        await target.close();
      }
    } finally {
      await source.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("A memory server's room moves to kv with --url, and back into another memory server", async () => {
  const dir = await Deno.makeTempDir({ prefix: "parley-migrate-cli-" });
  const kvPath = `${dir}/parley.sqlite`;
  const first = await startServer({ apiKey: KEY });
  const other = await startServer({ apiKey: KEY });
  try {
    const engine = first.app.hub.options.engine;
    const bob = { id: "m-bob", nick: "bob", verified: true };
    await engine.append(ROOM, { from: bob, sender: "s2", cid: "a", text: "first" });
    await engine.append(ROOM, {
      from: bob,
      sender: "s2",
      cid: "b",
      kind: "edit",
      target: 1,
      text: "first!",
    });
    await engine.append(ROOM, { from: bob, sender: "s2", cid: "c", text: "second", replyTo: 1 });

    const exported = await cli(["export", "--url", first.url, "--room", ROOM], {
      env: { API_KEY: KEY },
    });
    assert.equal(exported.code, 0, exported.stderr);
    assert.equal(
      exported.stderr,
      `exported room team from 127.0.0.1:${first.port}: 3 messages, 3 dedup entries, 0 file bytes\n`,
    );
    const imported = await cli(["import", "--engine", "kv", "--kv-path", kvPath], {
      stdin: exported.stdout,
    });
    assert.equal(imported.code, 0, imported.stderr);
    const kv = await KvEngine.open({ ...LIMITS, kvPath });
    try {
      assert.deepEqual(await history(kv), await history(engine));
    } finally {
      await kv.close();
    }

    const back = await cli(["import", "--url", other.url, "--api-key", KEY, "--room", "copy"], {
      stdin: exported.stdout,
    });
    assert.equal(back.code, 0, back.stderr);
    assert.equal(
      back.stderr,
      `imported room copy into 127.0.0.1:${other.port}: 3 messages, 3 dedup entries, 0 file bytes\n`,
    );
    assert.deepEqual(await history(other.app.hub.options.engine, "copy"), await history(engine));
    const refused = await cli(["import", "--url", other.url, "--api-key", KEY, "--room", "copy"], {
      stdin: exported.stdout,
    });
    assert.equal(refused.code, 1);
    assert.equal(
      refused.stderr,
      `parley import: Cannot import room "copy": the server answered 409: Cannot import into room "copy": it already has messages (newest id 3); import only into a room without any\n`,
    );
    const wrongKey = await cli([
      "export",
      "--url",
      first.url,
      "--api-key",
      "not-the-key-at-all",
      "--room",
      ROOM,
    ]);
    assert.equal(wrongKey.code, 1);
    assert.match(wrongKey.stderr, /the server answered 401: the API key is not valid/);
  } finally {
    await first.close();
    await other.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("import refuses malformed JSONL with its line number and writes nothing; a room with messages is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "parley-migrate-cli-" });
  const kvPath = `${dir}/parley.sqlite`;
  try {
    const lines = [
      `{"parley":"room","version":1,"room":"team","epoch":"abc123","head":2,"messages":2,"dedup":0}`,
      `{"type":"message","id":1,"ts":1000,"from":null,"text":"fine"}`,
      `{"type":"message","id":2,"ts":1001,"from":null,"text":7}`,
    ];
    const bad = await cli(["import", "--engine", "kv", "--kv-path", kvPath], {
      stdin: lines.join("\n"),
    });
    assert.equal(bad.code, 1);
    assert.equal(bad.stderr, "parley import: Cannot import line 3: text must be a string, not 7\n");
    const kv = await KvEngine.open({ ...LIMITS, kvPath });
    try {
      assert.equal((await kv.read(ROOM, undefined, 10)).head, 0, "nothing written");
    } finally {
      await kv.close();
    }

    lines[2] = `{"type":"message","id":2,"ts":1001,"from":null,"text":"also fine"}`;
    const good = await cli(["import", "--engine", "kv", "--kv-path", kvPath], {
      stdin: lines.join("\n"),
    });
    assert.equal(good.code, 0, good.stderr);
    const again = await cli(["import", "--engine", "kv", "--kv-path", kvPath], {
      stdin: lines.join("\n"),
    });
    assert.equal(again.code, 1);
    assert.equal(
      again.stderr,
      `parley import: Cannot import into room "team": it already has messages (newest id 2); import only into a room without any\n`,
    );
    const empty = await cli(["export", "--engine", "kv", "--kv-path", kvPath, "--room", "nobody"]);
    assert.equal(empty.code, 1);
    assert.equal(
      empty.stderr,
      `parley export: Cannot export room "nobody": it has no messages in this kv store\n`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
