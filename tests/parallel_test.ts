/**
 * `deno serve --parallel` (what `deno task start:parallel` runs): workers in
 * one process share rooms through the KV engine, so every client, on any
 * worker, sees every message of its room once, in the room's one order, and
 * every typing signal and edit.
 */
import assert from "node:assert/strict";
import { type Client, connect } from "./helpers.ts";

const root = new URL("..", import.meta.url).pathname;

Deno.test("parallel workers: every client sees every message once, in one order, with one history, and every signal and edit", async () => {
  const dir = await Deno.makeTempDir();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["serve", "--parallel", "-A", "--host", "127.0.0.1", "--port", "0", "serve.ts"],
    cwd: root,
    env: { KV_PATH: `${dir}/parley.sqlite`, LOG_LEVEL: "info", DENO_JOBS: "2" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const clients: Client[] = [];
  let logs = "";
  const pump = (async () => {
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) logs += chunk;
  })();
  const pumpErr = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) logs += chunk;
  })();
  try {
    const end = Date.now() + 15_000;
    while (!/Listening on http:\/\/127\.0\.0\.1:(\d+)\//.test(logs)) {
      if (Date.now() > end) throw new Error(`deno serve did not start:\n${logs}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const port = /Listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(logs)![1];
    assert.match(logs, /with 2 threads/);
    // The kernel spreads connections over the workers; open them until both
    // workers hold some (at least 6 clients, at most 40).
    const workers = () =>
      new Set([...logs.matchAll(/\[serve-worker-(\d+)\s*\].*"event":"open"/g)].map((m) => m[1]));
    while (clients.length < 6 || (workers().size < 2 && clients.length < 40)) {
      const client = await connect(`ws://127.0.0.1:${port}/par`, "parley.v1");
      client.send({ type: "hello", nick: `c${clients.length}` });
      clients.push(client);
      await client.until("welcome");
    }
    assert.equal(workers().size, 2, `40 connections reached only worker(s) ${[...workers()]}`);
    clients.forEach((c, i) => c.send({ type: "message", cid: `m${i}`, text: `from c${i}` }));
    const orders: string[][] = [];
    for (const client of clients) {
      const texts: string[] = [];
      while (texts.length < clients.length) {
        texts.push((await client.until<{ text: string }>("message", 10_000)).text);
      }
      orders.push(texts);
    }
    for (const order of orders) assert.deepEqual(order, orders[0]);
    assert.deepEqual([...orders[0]].sort(), clients.map((_, i) => `from c${i}`).sort());
    // One history: a newcomer on either worker gets the same replay.
    const late = await connect(`ws://127.0.0.1:${port}/par`, "parley.v1");
    clients.push(late);
    late.send({ type: "hello", nick: "late" });
    const welcome = await late.until<{ replay: number }>("welcome");
    assert.equal(welcome.replay, clients.length - 1);
    const replay: string[] = [];
    for (let i = 0; i < welcome.replay; i++) {
      replay.push((await late.until<{ text: string }>("message")).text);
    }
    assert.deepEqual(replay, orders[0]);
    // A typing signal and an edit reach every client on both workers too.
    const ids = new Map<string, number>();
    for (let i = 0; i < welcome.replay; i++) ids.set(orders[0][i], i + 1);
    const target = ids.get("from c0")!;
    clients[0].send({ type: "typing" });
    for (const client of clients.slice(1)) {
      const typing = await client.until<{ member: { nick: string } }>("typing", 10_000);
      assert.equal(typing.member.nick, "c0");
    }
    clients[0].send({ type: "edit", cid: "e0", id: target, text: "from c0, edited" });
    for (const client of clients) {
      const edit = await client.until<{ target: number; text: string }>("edit", 10_000);
      assert.deepEqual([edit.target, edit.text], [target, "from c0, edited"]);
    }
    late.send({ type: "history", before: 1_000, limit: 200 });
    const page = await late.until<{ messages: { id: number; text: string }[] }>("history");
    assert.equal(page.messages.find((m) => m.id === target)?.text, "from c0, edited");
    assert.equal(page.messages.length, clients.length - 1, "the edit is not a message of a page");
  } finally {
    for (const client of clients) await client.close();
    child.kill("SIGTERM");
    await child.status;
    await pump;
    await pumpErr;
    await Deno.remove(dir, { recursive: true });
  }
});
