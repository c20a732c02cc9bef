/**
 * A Redis outage seen from a client: `/readyz` fails, a send gets the error
 * `unavailable` and no ack, and once Redis is back the engine reconnects by
 * itself and the resend is stored once. A Redis that hangs instead of going
 * away may still store what it was sent: `unavailable` means the outcome is
 * unknown, and the resend with the same `cid` is answered as a duplicate.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type Client, connect, startServer, waitFor } from "./helpers.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("redis_outage_test.ts");

interface Envelope {
  type: string;
  cid?: string;
  code?: string;
  id?: number;
  epoch?: string;
  text?: string;
  duplicate?: boolean;
}

/** Collects a client's envelopes as they come. */
function collect(client: Client): Envelope[] {
  const seen: Envelope[] = [];
  client.socket.addEventListener("message", (e) => {
    if (typeof e.data === "string") seen.push(JSON.parse(e.data));
  });
  return seen;
}

async function readyz(url: string): Promise<number> {
  const response = await fetch(`${url}/readyz`);
  await response.body?.cancel();
  return response.status;
}

/** Polls `/readyz` until it answers `status`, and returns how long that took. */
async function readyzBecomes(url: string, status: number, ms: number): Promise<number> {
  const start = Date.now();
  let last = 0;
  while ((last = await readyz(url)) !== status) {
    if (Date.now() - start > ms) {
      throw new Error(`/readyz still answered ${last}, not ${status}, after ${ms} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return Date.now() - start;
}

Deno.test({
  name: "a Redis outage fails readiness and sends, and the engine recovers by itself",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const server = await startServer({ engine: "redis", redisUrl: redis.url });
    const client = await connect(`${server.ws}/outage`, "parley.v1");
    try {
      const seen = collect(client);
      client.send({ type: "hello", nick: "ann", client: "client-outage-1" });
      await waitFor(() => seen.some((e) => e.type === "welcome"), 5000, "welcome");
      assert.equal(await readyz(server.url), 200);

      client.send({ type: "message", cid: "c1", text: "before" });
      await waitFor(() => seen.some((e) => e.type === "ack" && e.cid === "c1"), 5000, "ack of c1");
      await waitFor(() => seen.some((e) => e.type === "message" && e.cid === "c1"), 5000, "c1");

      await redis.stop();
      await readyzBecomes(server.url, 503, 5000);
      client.send({ type: "message", cid: "c2", text: "during" });
      await waitFor(
        () => seen.some((e) => e.type === "error" && e.cid === "c2"),
        5000,
        "an error for c2",
      );
      const error = seen.find((e) => e.type === "error" && e.cid === "c2")!;
      assert.equal(error.code, "unavailable");
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(seen.filter((e) => e.cid === "c2" && e.type !== "error").length, 0, "no ack");

      await redis.restart();
      // Reconnection backs off to at most a second between attempts.
      await readyzBecomes(server.url, 200, 5000);
      client.send({ type: "message", cid: "c2", text: "during" });
      await waitFor(() => seen.some((e) => e.type === "ack" && e.cid === "c2"), 5000, "ack of c2");
      await waitFor(() => seen.some((e) => e.type === "message" && e.cid === "c2"), 5000, "c2");
      await new Promise((resolve) => setTimeout(resolve, 300));
      const acks = seen.filter((e) => e.type === "ack" && e.cid === "c2");
      const delivered = seen.filter((e) => e.type === "message" && e.cid === "c2");
      assert.equal(acks.length, 1, "acked once");
      assert.equal(acks[0].duplicate, false);
      assert.equal(delivered.length, 1, "delivered once");
      assert.equal(delivered[0].id, acks[0].id);
      assert.equal(delivered[0].epoch, acks[0].epoch);
      assert.equal(delivered[0].text, "during");
    } finally {
      await client.close();
      await server.close();
      await redis.stop();
    }
  },
});

Deno.test({
  name: "a message answered unavailable while Redis hangs is delivered once it resumes, " +
    "and its resend is a duplicate",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const server = await startServer({ engine: "redis", redisUrl: redis.url });
    const sender = await connect(`${server.ws}/hang`, "parley.v1");
    const other = await connect(`${server.ws}/hang`, "parley.v1");
    try {
      const sent = collect(sender);
      const seen = collect(other);
      sender.send({ type: "hello", nick: "ann", client: "client-hang-ann" });
      other.send({ type: "hello", nick: "bob", client: "client-hang-bob" });
      await waitFor(() => sent.some((e) => e.type === "welcome"), 5000, "ann's welcome");
      await waitFor(() => seen.some((e) => e.type === "welcome"), 5000, "bob's welcome");
      sender.send({ type: "message", cid: "c1", text: "before" });
      await waitFor(() => seen.some((e) => e.type === "message" && e.cid === "c1"), 5000, "c1");

      redis.pause();
      try {
        sender.send({ type: "message", cid: "c2", text: "while Redis hangs" });
        // The command times out (2 s by default): the client cannot know whether it ran.
        await waitFor(
          () => sent.some((e) => e.type === "error" && e.cid === "c2"),
          5000,
          "an error for c2",
        );
        assert.equal(sent.find((e) => e.type === "error" && e.cid === "c2")!.code, "unavailable");
        assert.equal(seen.filter((e) => e.cid === "c2").length, 0, "nothing delivered yet");
      } finally {
        redis.resume();
      }

      // The hung Redis ran the append it had been sent: stored and delivered.
      await waitFor(
        () => seen.some((e) => e.type === "message" && e.cid === "c2"),
        5000,
        "c2 delivered after Redis resumed",
      );
      const delivered = seen.find((e) => e.type === "message" && e.cid === "c2")!;
      assert.equal(delivered.text, "while Redis hangs");

      // The client resends what was not acked, with the same cid.
      sender.send({ type: "message", cid: "c2", text: "while Redis hangs" });
      await waitFor(() => sent.some((e) => e.type === "ack" && e.cid === "c2"), 5000, "ack of c2");
      await new Promise((resolve) => setTimeout(resolve, 300));
      const acks = sent.filter((e) => e.type === "ack" && e.cid === "c2");
      assert.equal(acks.length, 1, "acked once");
      assert.equal(acks[0].duplicate, true, "the resend is the stored message");
      assert.equal(acks[0].id, delivered.id);
      assert.equal(acks[0].epoch, delivered.epoch);
      const toOther = seen.filter((e) => e.type === "message" && e.cid === "c2");
      const toSender = sent.filter((e) => e.type === "message" && e.cid === "c2");
      assert.equal(toOther.length, 1, "delivered once to the other client");
      assert.equal(toSender.length, 1, "delivered once to the sender");
    } finally {
      await sender.close();
      await other.close();
      await server.close();
      await redis.stop();
    }
  },
});
