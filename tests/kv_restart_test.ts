/**
 * The real server on the KV engine, stopped and started again on the same
 * database: history, ids, epochs, edits and deletes survive (typing signals
 * do not), so a client resumes with `recovered: true`.
 *
 * @module
 */
import assert from "node:assert/strict";
import { SUBPROTOCOL } from "../lib/protocol.ts";
import { type Client, connect, expectSilence } from "./helpers.ts";

/** A server started as a child process. */
interface ServerProcess {
  /** `ws://127.0.0.1:PORT` */
  ws: string;
  /** Sends SIGTERM and waits for the exit; returns the exit code. */
  stop(): Promise<number>;
  /** Kills the process if it still runs and waits for it and its pipes. */
  dispose(): Promise<void>;
}

const LISTENING = /^Parley listening on http:\/\/127\.0\.0\.1:(\d+)\/$/m;

/** Starts `main.ts` on the KV engine with `kvPath`, and waits until it listens. */
async function startServer(kvPath: string): Promise<ServerProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts"],
    cwd: new URL("../", import.meta.url),
    env: {
      ENGINE: "kv",
      KV_PATH: kvPath,
      PORT: "0",
      HOSTNAME: "127.0.0.1",
      LOG_LEVEL: "silent",
      // SIGTERM drains; these tests want the stop at once.
      DRAIN_SECONDS: "0",
      DRAIN_SPREAD_SECONDS: "0",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let running = true;
  const status = child.status.finally(() => running = false);
  // A server that never says it listens is killed, so the test ends.
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  let stdout = "";
  let port: string | undefined;
  try {
    while (port === undefined) {
      const { done, value } = await reader.read();
      if (done) break;
      stdout += value;
      port = LISTENING.exec(stdout)?.[1];
    }
  } finally {
    clearTimeout(timer);
  }
  const drained = (async () => {
    while (!(await reader.read()).done) { /* nothing else is expected */ }
  })();
  const dispose = async () => {
    if (running) child.kill("SIGKILL");
    await status;
    await drained;
    await stderr;
  };
  if (port === undefined) {
    await dispose();
    throw new Error(`the server did not start: ${stdout}${await stderr}`);
  }
  return {
    ws: `ws://127.0.0.1:${port}`,
    async stop() {
      child.kill("SIGTERM");
      const { code } = await status;
      await drained;
      if (code !== 0) throw new Error(`the server exited with ${code}: ${await stderr}`);
      return code;
    },
    dispose,
  };
}

/** Opens a rich client and sends `hello`; returns it with its `welcome`. */
async function join(
  ws: string,
  hello: Record<string, unknown>,
): Promise<{ client: Client; welcome: Record<string, unknown> }> {
  const client = await connect(`${ws}/restart`, SUBPROTOCOL);
  client.send({ type: "hello", ...hello });
  return { client, welcome: await client.until("welcome") };
}

Deno.test("A restarted KV server keeps history, ids, epochs, edits and deletes, and resumes clients", async () => {
  const dir = await Deno.makeTempDir({ prefix: "parley-kv-restart-" });
  const kvPath = `${dir}/parley.sqlite`;
  const clients: Client[] = [];
  const servers: ServerProcess[] = [];
  try {
    const first = await startServer(kvPath);
    servers.push(first);
    const ann = await join(first.ws, { nick: "ann", client: "restart-ann-1" });
    clients.push(ann.client);
    const texts = ["one", "two", "three"];
    let last: { epoch: string; id: number } | undefined;
    for (const [i, text] of texts.entries()) {
      ann.client.send({ type: "message", cid: `c${i}`, text });
      const ack = await ann.client.until<{ epoch: string; id: number }>("ack");
      last = { epoch: ack.epoch, id: ack.id };
    }
    // A picture over one KV value (64 KiB) must survive too.
    const picture = crypto.getRandomValues(new Uint8Array(60_000));
    const bytes = new Uint8Array(100_000);
    bytes.set(picture);
    bytes.set(picture.subarray(0, 40_000), 60_000);
    ann.client.send({ type: "file", cid: "c3", name: "cat.png", mime: "image/png", size: 100_000 });
    ann.client.send(bytes);
    const ack = await ann.client.until<{ epoch: string; id: number }>("ack");
    last = { epoch: ack.epoch, id: ack.id };
    assert.equal(last.id, 4);
    // An edit and a delete must survive as well; a typing signal must not.
    ann.client.send({ type: "edit", cid: "e1", id: 1, text: "one, edited" });
    await ann.client.until("ack");
    ann.client.send({ type: "delete", cid: "d1", id: 2 });
    const deleted = await ann.client.until<{ epoch: string; id: number }>("ack");
    last = { epoch: deleted.epoch, id: deleted.id };
    assert.equal(last.id, 6);
    ann.client.send({ type: "typing" });
    await ann.client.close();
    assert.equal(await first.stop(), 0);

    const second = await startServer(kvPath);
    servers.push(second);
    const resumed = await join(second.ws, { nick: "ann", client: "restart-ann-2", last });
    clients.push(resumed.client);
    assert.equal(resumed.welcome.recovered, true);
    assert.equal(resumed.welcome.epoch, last.epoch);
    assert.equal(resumed.welcome.head, last.id);
    assert.equal(resumed.welcome.replay, 0);

    const fresh = await join(second.ws, { nick: "bob" });
    clients.push(fresh.client);
    assert.equal(fresh.welcome.recovered, null);
    assert.equal(fresh.welcome.replay, 6);
    const replayed = [];
    for (let i = 0; i < texts.length; i++) replayed.push(await fresh.client.json());
    assert.deepEqual(
      replayed.map((m) => [m.type, m.id, m.epoch, m.text, m.deleted]),
      [
        ["message", 1, last.epoch, "one, edited", undefined],
        ["message", 2, last.epoch, undefined, true],
        ["message", 3, last.epoch, "three", undefined],
      ],
    );
    assert.equal(typeof replayed[0].edited, "number");
    const file = await fresh.client.json();
    assert.deepEqual([file.type, file.id, file.size, file.omitted], [
      "file",
      4,
      100_000,
      undefined,
    ]);
    const received = await fresh.client.binary();
    assert.equal(received.byteLength, bytes.byteLength);
    assert.equal(received.findIndex((b, i) => b !== bytes[i]), -1, "the picture's bytes");
    const changes = [await fresh.client.json(), await fresh.client.json()];
    assert.deepEqual(changes.map((m) => [m.type, m.id, m.target, m.text]), [
      ["edit", 5, 1, "one, edited"],
      ["delete", 6, 2, undefined],
    ]);
    await expectSilence(fresh.client);
  } finally {
    for (const client of clients) await client.close();
    for (const server of servers) await server.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
