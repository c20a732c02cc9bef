/**
 * A rolling deploy: three Parley processes on one Redis behind a proxy that
 * sends new connections only to instances whose `/readyz` is 200, 300
 * clients (the SDK) chatting in ten rooms, and each instance in turn stopped
 * with SIGTERM and started again. Each drain turns `/readyz` 503 at once,
 * closes its sockets with 1012 spread over DRAIN_SPREAD_SECONDS and exits 0
 * within the bound the README states. Nothing is lost or doubled, and no
 * instance takes more new connections a second than the README says.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ChatMessage, ParleyClient } from "../client/mod.ts";
import { waitFor } from "./helpers.ts";
import { Proxy, ServerProcess } from "./processes.ts";
import { redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("rolling_restart_test.ts");

const CLIENTS = 300;
const ROOMS = 10;
const DRAIN_SECONDS = 1;
const SPREAD_SECONDS = 5;

/** Polls each instance's `/readyz`; the proxy sends to the ready ones in turn. */
class Readiness {
  #ready = new Set<number>();
  #next = 0;
  #timer: ReturnType<typeof setInterval>;
  constructor(readonly servers: ServerProcess[]) {
    this.#timer = setInterval(() => this.#poll(), 50);
  }

  async #poll() {
    await Promise.all(this.servers.map(async (server) => {
      const port = server.port;
      let ok = false;
      if (server.running) {
        try {
          const res = await fetch(`http://127.0.0.1:${port}/readyz`);
          await res.body?.cancel();
          ok = res.status === 200;
        } catch {
          ok = false;
        }
      }
      if (ok) this.#ready.add(port);
      else this.#ready.delete(port);
    }));
  }

  /** The next ready instance's port, round robin. */
  pick(): number | undefined {
    const ready = [...this.#ready];
    if (ready.length === 0) return undefined;
    return ready[this.#next++ % ready.length];
  }

  stop() {
    clearInterval(this.#timer);
  }
}

/** The most connections an instance took within any one second. */
function peakPerSecond(times: number[]): number {
  let peak = 0;
  let from = 0;
  for (let to = 0; to < times.length; to++) {
    while (times[to] - times[from] >= 1000) from++;
    peak = Math.max(peak, to - from + 1);
  }
  return peak;
}

Deno.test({
  name: "a rolling restart of 3 instances under 300 clients loses and doubles nothing, " +
    "and spreads the reconnects",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const env = {
      ENGINE: "redis",
      REDIS_URL: redis.url,
      DRAIN_SECONDS: String(DRAIN_SECONDS),
      DRAIN_SPREAD_SECONDS: String(SPREAD_SECONDS),
      MAX_CONNECTIONS_PER_IP: "10000",
      RATE_LIMIT: "50",
      RATE_BURST: "100",
    };
    const servers = [0, 1, 2].map(() => new ServerProcess(env));
    const clients: ParleyClient[] = [];
    let proxy: Proxy | undefined;
    let readiness: Readiness | undefined;
    let sending = true;
    try {
      await Promise.all(servers.map((s) => s.start()));
      readiness = new Readiness(servers);
      await waitFor(() => readiness!.pick() !== undefined, 5000, "a ready instance");
      await new Promise((resolve) => setTimeout(resolve, 200)); // every instance polled
      const connects = new Map<number, number[]>();
      proxy = new Proxy(() => readiness!.pick());
      proxy.onConnect = (port) => {
        const list = connects.get(port) ?? [];
        list.push(performance.now());
        connects.set(port, list);
      };
      // Client i is in room i % ROOMS; the first of each room is its reader.
      const sent = new Map<string, string[]>(); // sender nick → texts, in order
      const seen = new Map<number, Map<string, string[]>>(); // room → sender → texts
      const failed: string[] = [];
      const closes: number[] = [];
      for (let i = 0; i < CLIENTS; i++) {
        const room = i % ROOMS;
        const nick = `c${i}`;
        const client = new ParleyClient(`${proxy.url}/roll${room}`, {
          nick,
          backoff: { baseMs: 100, capMs: 1000 },
        });
        client.on("status", (s) => {
          if (s.state === "reconnecting") {
            closes.push(s.code);
          }
        });
        if (i < ROOMS) {
          const bySender = new Map<string, string[]>();
          seen.set(room, bySender);
          client.on("message", (m: ChatMessage) => {
            if (!m.from || m.text === undefined) return;
            const list = bySender.get(m.from.nick) ?? [];
            list.push(m.text);
            bySender.set(m.from.nick, list);
          });
        }
        sent.set(nick, []);
        clients.push(client);
      }
      await Promise.all(clients.map((c) => c.connect()));
      const acked = { count: 0 };
      // Every non-reader sends one message every 2 s, at staggered times.
      const senders = clients.slice(ROOMS).map(async (client, k) => {
        const nick = `c${k + ROOMS}`;
        await new Promise((resolve) => setTimeout(resolve, (k * 37) % 2000));
        for (let n = 0; sending && client.status.state !== "closed"; n++) {
          const text = `${nick}-${n}`;
          sent.get(nick)!.push(text);
          client.send(text).delivered.then(() => acked.count++, (error) => {
            failed.push(`${text}: ${error}`);
          });
          await new Promise((resolve) => setTimeout(resolve, 2000));
        }
      });
      await new Promise((resolve) => setTimeout(resolve, 1500));
      const exits = [];
      const peakFigures: string[] = [];
      for (const server of servers) {
        connects.clear();
        const exit = await server.stop();
        exits.push(exit);
        await server.start(); // the same port
        await waitFor(() => clients.every((c) => c.status.state === "open"), 15_000, "all back");
        const peaks = [...connects.values()].map(peakPerSecond);
        const t0 = Math.min(...[...connects.values()].map((t) => t[0]));
        const shape = [...connects.values()].map((times) => {
          const perSecond: number[] = [];
          for (const t of times) {
            const i = Math.floor((t - t0) / 1000);
            perSecond[i] = (perSecond[i] ?? 0) + 1;
          }
          return Array.from(perSecond, (n) => n ?? 0).join(" ");
        });
        // The drained instance's N clients came back to the k = 2 others:
        // N / (k·S) a second each on average, at most three times that in any
        // one second (a busy machine delays the drain's ticks, and clients'
        // backoff bunches them). Closed all at once it would be N / k.
        const drained = [...connects.values()].reduce((sum, times) => sum + times.length, 0);
        const bound = 3 * drained / (2 * SPREAD_SECONDS);
        assert.ok(
          peaks.every((p) => p <= bound),
          `peak reconnects a second per instance ${peaks} within ${bound} ` +
            `(${drained} drained); per second: ${shape}`,
        );
        peakFigures.push(`${peaks.join("/")} of ${drained}`);
      }
      sending = false;
      await Promise.all(senders);
      const total = [...sent.values()].reduce((sum, texts) => sum + texts.length, 0);
      await waitFor(() => acked.count + failed.length === total, 15_000, "every message acked");
      assert.deepEqual(failed, [], "no message failed");
      // Each reader saw each sender's messages exactly once, in order.
      await waitFor(
        () =>
          [...seen.values()].reduce(
            (sum, bySender) => sum + [...bySender.values()].reduce((s, l) => s + l.length, 0),
            0,
          ) >= total,
        10_000,
        "the readers saw every message",
      );
      await new Promise((resolve) => setTimeout(resolve, 200)); // any double would show now
      for (let i = ROOMS; i < CLIENTS; i++) {
        const nick = `c${i}`;
        assert.deepEqual(seen.get(i % ROOMS)!.get(nick) ?? [], sent.get(nick), nick);
      }
      for (const exit of exits) {
        assert.equal(exit.code, 0, "a drained instance exits 0");
        assert.ok(
          exit.ms < (DRAIN_SECONDS + SPREAD_SECONDS + 5) * 1000,
          `exited in ${Math.round(exit.ms)} ms`,
        );
      }
      assert.ok(closes.filter((c) => c === 1012).length >= CLIENTS / 2, "closed with 1012");
      console.log(
        `rolling restart: ${total} messages sent, 0 lost, 0 doubled; exits in ` +
          `${exits.map((e) => Math.round(e.ms)).join(", ")} ms; peak reconnects a second ` +
          `on the others: ${peakFigures.join(", ")}`,
      );
    } finally {
      sending = false;
      readiness?.stop();
      await Promise.all(clients.map((c) => c.close()));
      await proxy?.close();
      await Promise.all(servers.map((s) => s.kill()));
      await redis.stop();
    }
  },
});
