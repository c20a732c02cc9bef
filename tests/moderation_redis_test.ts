/**
 * Moderation across instances: two Parley instances in token mode on one
 * Redis. A kick on one closes the member's sockets on the other; a ban made
 * on one refuses the member on the other, and survives a restart.
 *
 * @module
 */
import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { type App, createApp } from "../main.ts";
import { type Config, DEFAULT_CONFIG } from "../lib/config.ts";
import { silentLogger } from "../lib/log.ts";
import type { Member } from "../lib/protocol.ts";
import { Client } from "./helpers.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("moderation_redis_test.ts");
const SECRET = "another-test-secret-that-is-32-bytes-or-more";

function token(sub: string, claims: Record<string, unknown> = { rooms: ["team"] }) {
  return new SignJWT({ sub, name: sub, ...claims }).setProtectedHeader({ alg: "HS256" })
    .setIssuedAt().setExpirationTime(Math.floor(Date.now() / 1000) + 600)
    .sign(new TextEncoder().encode(SECRET));
}

/** One Parley instance in this process, listening on a free port. */
async function instance(redisUrl: string) {
  const config: Config = {
    ...DEFAULT_CONFIG,
    port: 0,
    hostname: "127.0.0.1",
    engine: "redis",
    redisUrl,
    auth: "token",
    authSecret: SECRET,
    logLevel: "silent",
  };
  const app: App = await createApp(config, silentLogger);
  const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, app.handler);
  const { port } = server.addr as Deno.NetAddr;
  return {
    ws: `ws://127.0.0.1:${port}`,
    async close() {
      await app.close();
      await server.shutdown();
    },
  };
}

async function join(ws: string, jwt: string) {
  const client = new Client(`${ws}/team`, "parley.v1");
  await client.opened;
  client.send(JSON.stringify({ type: "hello", token: jwt }));
  const welcome = JSON.parse(await client.text(5000));
  return { client, welcome };
}

async function next(client: Client, type: string): Promise<Record<string, unknown>> {
  for (;;) {
    const envelope = JSON.parse(await client.text(5000));
    if (envelope.type === type) return envelope;
  }
}

Deno.test({
  name: "a kick and a ban made on one instance hold on another, and after a restart",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    let one = await instance(redis.url);
    const two = await instance(redis.url);
    try {
      const mod = await join(one.ws, await token("mo", { mod: ["team"] }));
      assert.equal(mod.welcome.moderator, true);
      const ann = await join(two.ws, await token("ann"));
      const annTab = await join(two.ws, await token("ann"));
      const bob = await join(two.ws, await token("bob"));
      assert.equal(ann.welcome.type, "welcome");
      const annId = (ann.welcome.you as Member).id;

      mod.client.send(JSON.stringify({ type: "kick", member: annId, reason: "off topic" }));
      for (const tab of [ann, annTab]) {
        const closed = await tab.client.closed;
        assert.deepEqual([closed.code, closed.reason], [4403, "kicked: off topic"]);
      }
      const seen = await next(bob.client, "kick");
      assert.equal((seen.member as Member).id, annId);
      assert.equal(seen.until, undefined, "a kick without minutes bans nobody");
      const back = await join(two.ws, await token("ann"));
      assert.equal(back.welcome.type, "welcome", "kicked, not banned: may come back");

      mod.client.send(JSON.stringify({ type: "kick", member: annId, minutes: 5, reason: "again" }));
      assert.equal((await back.client.closed).code, 4403);
      const refused = await join(two.ws, await token("ann"));
      assert.deepEqual([refused.welcome.type, refused.welcome.code], ["error", "forbidden"]);
      assert.equal((await refused.client.closed).code, 4403);

      // A restarted instance reads the ban from Redis.
      await mod.client.close();
      await one.close();
      one = await instance(redis.url);
      const later = await join(one.ws, await token("ann"));
      assert.deepEqual([later.welcome.type, later.welcome.code], ["error", "forbidden"]);
      assert.match(later.welcome.message, /banned/);
      await later.client.closed;
      const carol = await join(one.ws, await token("carol"));
      assert.equal(carol.welcome.type, "welcome", "others are undisturbed");
      await carol.client.close();
      await bob.client.close();
    } finally {
      await one.close();
      await two.close();
      await redis.stop();
    }
  },
});
