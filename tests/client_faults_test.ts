/**
 * The client SDK against a real Parley process (`deno run -A main.ts`) under
 * faults: the server killed with SIGKILL and started again (memory and kv),
 * connections cut without a close frame (a TCP proxy in between), a backlog
 * over the rate limit, and tokens that expire. The assertion is always the
 * same: every message sent is delivered exactly once and in order, seen by a
 * second client and acked to the sender, or reported failed with a final error.
 *
 * @module
 */

import assert from "node:assert/strict";
import { mintToken } from "../lib/auth/token.ts";
import { type ChatMessage, ParleyClient, type ParleyClientOptions } from "../client/mod.ts";
import { waitFor } from "./helpers.ts";
import { Proxy, ServerProcess } from "./processes.ts";

const FAST = { baseMs: 50, capMs: 400 };

/** A receiver's record: the texts it saw from the sender, and gaps. */
interface Watch {
  texts: string[];
  gaps: number;
}

function watch(client: ParleyClient, fromNick: string): Watch {
  const seen: Watch = { texts: [], gaps: 0 };
  client.on("message", (m: ChatMessage) => {
    if (m.from?.nick === fromNick && m.text !== undefined) seen.texts.push(m.text);
  });
  client.on("gap", () => seen.gaps++);
  return seen;
}

/** A sender's record: what was acked and what failed, by text. */
interface Sent {
  texts: string[];
  acked: string[];
  failed: string[];
  duplicates: number;
}

function send(client: ParleyClient, record: Sent, text: string): void {
  record.texts.push(text);
  client.send(text).delivered.then((delivery) => {
    record.acked.push(text);
    if (delivery.duplicate) record.duplicates++;
  }, () => record.failed.push(text));
}

function newSent(): Sent {
  return { texts: [], acked: [], failed: [], duplicates: 0 };
}

/**
 * The assertion of every test here: each text is acked or failed, never
 * both; the receiver saw the acked ones exactly once, in the order sent.
 */
async function assertExactlyOnce(record: Sent, seen: Watch, ms = 10_000): Promise<void> {
  await waitFor(
    () =>
      record.acked.length + record.failed.length === record.texts.length &&
      seen.texts.length >= record.acked.length,
    ms,
    `every message acked or failed, and seen (${record.acked.length} acked, ` +
      `${record.failed.length} failed, of ${record.texts.length})`,
  );
  // Anything more would be a duplicate: give it a moment to show up.
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.deepEqual(record.failed, [], "no message failed");
  assert.deepEqual(seen.texts, record.texts, "seen exactly once, in order");
  assert.deepEqual([...record.acked].sort(), [...record.texts].sort(), "acked once each");
}

function client(url: string, options: ParleyClientOptions): ParleyClient {
  return new ParleyClient(url, { backoff: FAST, ...options });
}

/**
 * Kills the server while ann sends (mid-burst when `midBurst`; on the memory
 * engine history dies with the process, so there the burst is first seen by
 * bob), sends while it is down, starts it again and sends more.
 */
async function killAndRestart(env: Record<string, string>, midBurst: boolean) {
  const server = new ServerProcess(env);
  await server.start();
  const proxy = new Proxy(() => server.port);
  const ann = client(`${proxy.url}/faults`, { nick: "ann" });
  const bob = client(`${proxy.url}/faults`, { nick: "bob" });
  const statuses: string[] = [];
  ann.on("status", (s) => statuses.push(s.state));
  const seen = watch(bob, "ann");
  const record = newSent();
  try {
    await Promise.all([ann.connect(), bob.connect()]);
    for (let i = 0; i < 10; i++) send(ann, record, `before-${i}`);
    await waitFor(() => seen.texts.length === 10, 5000, "the first ten messages");
    // Mid-burst: some of these are stored, some not, some acked, some not.
    for (let i = 0; i < 20; i++) send(ann, record, `burst-${i}`);
    if (!midBurst) await waitFor(() => seen.texts.length === 30, 5000, "the burst");
    await server.kill();
    for (let i = 0; i < 10; i++) send(ann, record, `down-${i}`);
    await waitFor(() => statuses.includes("reconnecting"), 5000, "a reconnect");
    await server.start();
    for (let i = 0; i < 10; i++) send(ann, record, `after-${i}`);
    await assertExactlyOnce(record, seen);
    return { record, seen, statuses };
  } finally {
    await Promise.all([ann.close(), bob.close()]);
    await proxy.close();
    await server.kill();
  }
}

Deno.test("ParleyClient on kv: a server killed with SIGKILL mid-burst and started again loses and repeats nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { seen, statuses } = await killAndRestart(
      { ENGINE: "kv", KV_PATH: `${dir}/parley.sqlite` },
      true,
    );
    assert.equal(seen.gaps, 0, "history survives on kv: bob resumes without a gap");
    assert.ok(statuses.includes("reconnecting"), "ann reconnected");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ParleyClient on memory: a server killed with SIGKILL and started again (a new epoch) delivers every message once, and says there was a gap", async () => {
  const { seen, record } = await killAndRestart({ ENGINE: "memory" }, false);
  assert.ok(seen.gaps >= 1, "bob was told that messages may be missing (new epoch)");
  assert.equal(record.texts.length, 50);
});

Deno.test("ParleyClient: connections cut without a close frame (1006) mid-burst resume and resend exactly once", async () => {
  const server = new ServerProcess({ ENGINE: "memory" });
  await server.start();
  const proxy = new Proxy(() => server.port);
  const ann = client(`${proxy.url}/cut`, { nick: "ann" });
  const bob = client(`${proxy.url}/cut`, { nick: "bob" });
  const closes: number[] = [];
  ann.on("status", (s) => {
    if (s.state === "reconnecting") closes.push(s.code);
  });
  let resent = 0;
  ann.on("sent", ({ item }) => {
    if (item.attempts > 0) resent++;
  });
  let welcomes = 0;
  ann.on("welcome", () => welcomes++);
  bob.on("welcome", () => welcomes++);
  const seen = watch(bob, "ann");
  const record = newSent();
  try {
    await Promise.all([ann.connect(), bob.connect()]);
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 15; i++) send(ann, record, `r${round}-${i}`);
      // Even rounds: the server stores the burst but its acks are lost, then
      // the connection is cut. Odd rounds: cut while the burst is on the wire.
      proxy.muted = round % 2 === 0;
      await new Promise((resolve) => setTimeout(resolve, round % 2 === 0 ? 200 : 2));
      proxy.cut();
      proxy.muted = false;
      await waitFor(() => welcomes === 2 * (round + 2), 5000, "both welcomed again");
    }
    await assertExactlyOnce(record, seen);
    assert.ok(resent > 0, "some messages were in flight when a connection was cut");
    assert.ok(closes.length >= 4, `ann reconnected after each cut (${closes.length})`);
    assert.ok(closes.every((code) => code === 1006), `dropped, not closed: ${closes}`);
    assert.equal(seen.gaps, 0, "the same server: every resume recovered");
  } finally {
    await Promise.all([ann.close(), bob.close()]);
    await proxy.close();
    await server.kill();
  }
});

Deno.test("ParleyClient: a backlog of 300, more than the server's rate queue holds, is paced by welcome.limits and none is dropped", async () => {
  // Sent at once, 300 would overflow burst (3) + queue (256): 41 rate_limited.
  const server = new ServerProcess({ ENGINE: "memory", RATE_LIMIT: "200", RATE_BURST: "3" });
  await server.start();
  const url = `ws://127.0.0.1:${server.port}/paced`;
  const ann = client(url, { nick: "ann" });
  const bob = client(url, { nick: "bob" });
  const errors: string[] = [];
  ann.on("error", (e) => errors.push(e.code));
  const seen = watch(bob, "ann");
  const record = newSent();
  try {
    await bob.connect();
    // Queued before the connection: the backlog a reconnect resends.
    for (let i = 0; i < 300; i++) send(ann, record, `paced-${i}`);
    const welcome = await ann.connect();
    assert.equal(welcome.limits.rate, 200);
    assert.equal(welcome.limits.burst, 3);
    assert.equal(welcome.limits.queue, 256);
    await assertExactlyOnce(record, seen);
    assert.deepEqual(errors, [], "no rate_limited or other error");
    const metrics = await (await fetch(`http://127.0.0.1:${server.port}/metrics`)).text();
    assert.match(metrics, /^parley_rate_limited_total 0$/m, "nothing dropped for rate");
  } finally {
    await Promise.all([ann.close(), bob.close()]);
    await server.kill();
  }
});

Deno.test("ParleyClient: a token that expires (4401) is replaced by a fresh one from the token function, and nothing is lost", async () => {
  const secret = "a-test-secret-of-at-least-32-bytes-long!";
  const server = new ServerProcess({
    ENGINE: "memory",
    AUTH: "token",
    AUTH_SECRET: secret,
    AUTH_SKEW: "0",
  });
  await server.start();
  const url = `ws://127.0.0.1:${server.port}/expiring`;
  let minted = 0;
  const ann = client(url, {
    token: () => {
      minted++;
      return mintToken(secret, { sub: "ann", name: "ann", rooms: ["*"], ttlSeconds: 1 });
    },
  });
  const bob = client(url, {
    token: await mintToken(secret, { sub: "bob", name: "bob", rooms: ["*"], ttlSeconds: 600 }),
  });
  const refusals: number[] = [];
  ann.on("status", (s) => {
    if (s.state === "reconnecting") refusals.push(s.code);
    if (s.state === "closed") refusals.push(-s.code);
  });
  const seen = watch(bob, "ann");
  const record = newSent();
  try {
    await Promise.all([ann.connect(), bob.connect()]);
    // About three seconds of chat: the 1 s tokens expire twice at least.
    for (let i = 0; i < 30; i++) {
      send(ann, record, `t-${i}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await assertExactlyOnce(record, seen);
    assert.ok(minted >= 3, `the token function was called again after each expiry (${minted})`);
    assert.ok(refusals.filter((code) => code === 4401).length >= 2, `4401s: ${refusals}`);
    assert.ok(refusals.every((code) => code > 0), "never closed for good");
  } finally {
    await Promise.all([ann.close(), bob.close()]);
    await server.kill();
  }
});
