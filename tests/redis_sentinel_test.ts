/**
 * Redis high availability through Sentinel: a primary, a replica and three
 * sentinels on loopback, a Parley server that finds the primary through the
 * sentinels (`REDIS_SENTINELS`, `REDIS_SENTINEL_NAME`), writers that send
 * all along and resend what was not acked, and a reader that resumes. The
 * primary is killed (SIGKILL) mid-chat; Sentinel promotes the replica and
 * Parley follows by itself: every message reaches the reader once, in order,
 * in the same epoch, and `/readyz` is 200 again once the new primary serves.
 * The test prints the figures (sent, lost, doubled, failover time).
 *
 * @module
 */

import assert from "node:assert/strict";
import { createApp } from "../lib/app.ts";
import { type Config, DEFAULT_CONFIG, loadConfig } from "../lib/config.ts";
import { RedisEngine } from "../lib/engines/redis.ts";
import { type Logger, silentLogger } from "../lib/log.ts";
import { redisSkipReason } from "./redis_server.ts";
import { startSentinels } from "./redis_topology.ts";

const ignore = await redisSkipReason("redis_sentinel_test.ts");

interface Envelope {
  type: string;
  cid?: string;
  code?: string;
  id?: number;
  epoch?: string;
  text?: string;
  duplicate?: boolean;
  replay?: number;
  recovered?: boolean | null;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * A WebSocket that joins `url` as `client` and joins again (after a short
 * pause) whenever it is closed or refused, until `stop()`. `last` gives the
 * position to resume from on each join.
 */
class Session {
  #url: string;
  #client: string;
  #socket?: WebSocket;
  #stopped = false;
  #closed = Promise.resolve();
  #onEnvelope: (envelope: Envelope) => void;
  #last: () => { epoch: string; id: number } | null;
  live = false;
  joins = 0;
  /** Called once per welcome, after which the session is live. */
  onLive = () => {};

  constructor(
    url: string,
    client: string,
    onEnvelope: (envelope: Envelope) => void,
    last: () => { epoch: string; id: number } | null = () => null,
  ) {
    this.#url = url;
    this.#client = client;
    this.#onEnvelope = onEnvelope;
    this.#last = last;
    this.#open();
  }

  #open() {
    if (this.#stopped) return;
    const socket = new WebSocket(this.#url, "parley.v1");
    this.#socket = socket;
    this.#closed = new Promise((resolve) => {
      socket.addEventListener("close", () => resolve(), { once: true });
    });
    let welcomed = false;
    // A join that gets nothing (Redis is away) is given up and tried again.
    const timer = setTimeout(() => {
      if (!welcomed) this.drop();
    }, 2000);
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({
        type: "hello",
        nick: this.#client,
        client: this.#client,
        last: this.#last(),
      }));
    });
    socket.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      const envelope = JSON.parse(event.data) as Envelope;
      if (envelope.type === "welcome") {
        welcomed = true;
        this.live = true;
        this.joins++;
        this.onLive();
      } else if (envelope.type === "error" && !envelope.cid && !welcomed) {
        this.drop();
      }
      this.#onEnvelope(envelope);
    });
    socket.addEventListener("close", () => {
      clearTimeout(timer);
      this.live = false;
      if (!this.#stopped) setTimeout(() => this.#open(), 200);
    }, { once: true });
  }

  send(envelope: Record<string, unknown>): boolean {
    if (!this.live || this.#socket?.readyState !== WebSocket.OPEN) return false;
    this.#socket.send(JSON.stringify(envelope));
    return true;
  }

  /** Closes the socket; the session joins again. */
  drop() {
    this.live = false;
    if (this.#socket && this.#socket.readyState < WebSocket.CLOSING) this.#socket.close();
  }

  async stop() {
    this.#stopped = true;
    this.drop();
    await this.#closed;
  }
}

/**
 * Sends a message every `everyMs` while running, keeps each until acked,
 * and resends (same `cid`) the ones answered `unavailable` every `resendMs`,
 * and every unacked one after a rejoin.
 */
class Writer {
  readonly session: Session;
  readonly name: string;
  /** Every cid sent, in order of first send. */
  readonly sent: string[] = [];
  readonly unacked = new Map<string, string>();
  /** Unacked cids answered `unavailable`, to send again. */
  readonly failed = new Set<string>();
  /** First send time of each cid, and when its ack came. */
  readonly firstSent = new Map<string, number>();
  readonly ackedAt = new Map<string, number>();
  /** The id each cid was acked with (its first ack). */
  readonly ids = new Map<string, number>();
  /** Acked cids sent again on purpose, and what their new ack said. */
  readonly probes = new Map<string, Envelope | undefined>();
  unavailable = 0;
  duplicates = 0;
  #next = 0;
  #timer?: ReturnType<typeof setInterval>;
  #resend?: ReturnType<typeof setInterval>;

  constructor(url: string, name: string) {
    this.name = name;
    this.session = new Session(url, name, (e) => this.#handle(e));
    this.session.onLive = () => this.#resendAll();
  }

  #handle(envelope: Envelope) {
    if (envelope.type === "ack" && envelope.cid && this.probes.has(envelope.cid)) {
      this.probes.set(envelope.cid, envelope);
    } else if (envelope.type === "ack" && envelope.cid && this.unacked.has(envelope.cid)) {
      this.unacked.delete(envelope.cid);
      this.failed.delete(envelope.cid);
      this.ackedAt.set(envelope.cid, Date.now());
      this.ids.set(envelope.cid, envelope.id!);
      if (envelope.duplicate) this.duplicates++;
    } else if (envelope.type === "error" && envelope.code === "unavailable") {
      this.unavailable++;
      if (envelope.cid && this.unacked.has(envelope.cid)) this.failed.add(envelope.cid);
    }
  }

  #resendAll() {
    this.failed.clear();
    for (const [cid, text] of this.unacked) this.session.send({ type: "message", cid, text });
  }

  #resendFailed() {
    for (const cid of [...this.failed]) {
      if (!this.session.send({ type: "message", cid, text: this.unacked.get(cid)! })) return;
      this.failed.delete(cid);
    }
  }

  start(everyMs: number, resendMs: number) {
    this.#timer = setInterval(() => {
      const cid = `${this.name}-${++this.#next}`;
      const text = `${this.name} says ${this.#next}`;
      this.sent.push(cid);
      this.unacked.set(cid, text);
      this.firstSent.set(cid, Date.now());
      this.session.send({ type: "message", cid, text });
    }, everyMs);
    this.#resend = setInterval(() => this.#resendFailed(), resendMs);
  }

  /** Sends acked messages again, as a client that lost their acks would. */
  probe(cids: string[]) {
    for (const cid of cids) {
      this.probes.set(cid, undefined);
      this.session.send({
        type: "message",
        cid,
        text: `${this.name} says ${cid.split("-").at(-1)}`,
      });
    }
  }

  /** Stops sending new messages; resends go on until `stop()`. */
  pause() {
    clearInterval(this.#timer);
  }

  async stop() {
    clearInterval(this.#timer);
    clearInterval(this.#resend);
    await this.session.stop();
  }
}

async function readyz(url: string): Promise<number> {
  try {
    const response = await fetch(`${url}/readyz`);
    await response.body?.cancel();
    return response.status;
  } catch {
    return 0;
  }
}

async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

Deno.test({
  name: "a Sentinel failover (primary killed) loses and doubles no message, and Parley " +
    "follows the new primary by itself",
  ignore: ignore !== undefined,
  async fn() {
    const setup = await startSentinels({ downAfterMs: 1000 });
    const cleanups: (() => Promise<void>)[] = [];
    try {
      // The settings as an operator gives them, read by loadConfig.
      const fromEnv = loadConfig((name) =>
        ({
          ENGINE: "redis",
          REDIS_SENTINELS: setup.sentinels.map((s) => s.address).join(","),
          REDIS_SENTINEL_NAME: setup.name,
        })[name]
      );
      const config: Config = {
        ...DEFAULT_CONFIG,
        ...fromEnv,
        logLevel: "silent",
        rateLimit: 1000,
        rateBurst: 1000,
      };
      const app = await createApp(config, silentLogger);
      const server = Deno.serve({ port: 0, hostname: "127.0.0.1", onListen() {} }, app.handler);
      cleanups.push(async () => {
        await app.close();
        await server.shutdown();
      });
      const { port } = server.addr as Deno.NetAddr;
      const http = `http://127.0.0.1:${port}`;
      const wsUrl = `ws://127.0.0.1:${port}/failover`;
      assert.equal(await readyz(http), 200);

      // The reader: every message envelope it got, over all its joins.
      const delivered: Envelope[] = [];
      let last: { epoch: string; id: number } | null = null;
      const welcomes: Envelope[] = [];
      const reader = new Session(wsUrl, "reader-0001", (e) => {
        if (e.type === "welcome") welcomes.push(e);
        if (e.type === "message") {
          delivered.push(e);
          last = { epoch: e.epoch!, id: e.id! };
        }
      }, () => last);
      cleanups.push(() => reader.stop());
      await waitFor(() => reader.live, 5000, "the reader's welcome");

      const writers = [new Writer(wsUrl, "writer-aaaa"), new Writer(wsUrl, "writer-bbbb")];
      for (const writer of writers) cleanups.push(() => writer.stop());
      await waitFor(() => writers.every((w) => w.session.live), 5000, "the writers' welcomes");
      for (const writer of writers) writer.start(20, 300);

      const acked = () => writers.reduce((n, w) => n + w.ackedAt.size, 0);
      await waitFor(() => acked() >= 100, 5000, "100 acks before the kill");

      // /readyz as a load balancer sees it, every 100 ms from the kill on.
      const statuses: { at: number; status: number }[] = [];
      let polling = true;
      const poller = (async () => {
        while (polling) {
          statuses.push({ at: Date.now(), status: await readyz(http) });
          await sleep(100);
        }
      })();
      cleanups.push(async () => {
        polling = false;
        await poller;
      });

      const oldPrimary = setup.primary.address;
      const killedAt = Date.now();
      setup.primary.kill();
      // The reader leaves during the switch and resumes from its last message.
      reader.drop();

      // Failover time: the kill to the first ack of a message first sent after it.
      const firstAckAfter = () => {
        let first = Infinity;
        for (const writer of writers) {
          for (const [cid, at] of writer.ackedAt) {
            if (writer.firstSent.get(cid)! > killedAt) first = Math.min(first, at);
          }
        }
        return first;
      };
      await waitFor(() => firstAckAfter() < Infinity, 20_000, "an append after the failover");
      const failoverMs = firstAckAfter() - killedAt;
      const newPrimary = await setup.currentPrimary();
      assert.notEqual(newPrimary, oldPrimary, "Sentinel promoted the replica");
      assert.equal(newPrimary, setup.replica.address);

      // The last messages acked before the kill, sent again: the new primary
      // has their dedup entries (replicated with them), so they are duplicates.
      const probed = writers.map((writer) => {
        const before = [...writer.ackedAt].filter(([, at]) => at < killedAt).map(([cid]) => cid);
        const cids = before.slice(-5);
        writer.probe(cids);
        return cids;
      });
      await waitFor(
        () => writers.every((w) => [...w.probes.values()].every((e) => e !== undefined)),
        5000,
        "the acks of the probes",
      );
      for (const [i, writer] of writers.entries()) {
        for (const cid of probed[i]) {
          const ack = writer.probes.get(cid)!;
          assert.equal(ack.duplicate, true, `${cid} is a duplicate after the failover`);
          assert.equal(ack.id, writer.ids.get(cid), `${cid} keeps its id`);
        }
      }

      // A second of traffic on the new primary, then every message acked.
      await sleep(1000);
      for (const writer of writers) writer.pause();
      await waitFor(
        () => writers.every((w) => w.unacked.size === 0),
        10_000,
        "every message acked",
      );
      const sent = writers.flatMap((w) => w.sent);
      await waitFor(
        () => new Set(delivered.map((e) => e.cid)).size >= sent.length,
        10_000,
        "the reader to get every message",
      );
      await waitFor(() => statuses.at(-1)?.status === 200, 5000, "/readyz 200");
      polling = false;
      await poller;

      // Exactly once, in order, one epoch, ids without a gap.
      const cids = delivered.map((e) => e.cid!);
      const counts = new Map<string, number>();
      for (const cid of cids) counts.set(cid, (counts.get(cid) ?? 0) + 1);
      const doubled = [...counts.values()].filter((n) => n > 1).length;
      const lost = sent.filter((cid) => !counts.has(cid)).length;
      const ids = delivered.map((e) => e.id!);
      const epochs = new Set(delivered.map((e) => e.epoch));
      const notOrdered = ids.findIndex((id, i) => i > 0 && id !== ids[i - 1] + 1);
      const first503 = statuses.find((s) => s.status !== 200);
      const back200 = first503 && statuses.find((s) => s.at > first503.at && s.status === 200);
      const figures = {
        sent: sent.length,
        delivered: delivered.length,
        lost,
        doubled,
        failoverMs,
        readyz503: first503
          ? `from +${Math.max(0, first503.at - killedAt)} ms to +${back200!.at - killedAt} ms`
          : "never",
        unavailable: writers.reduce((n, w) => n + w.unavailable, 0),
        duplicateAcks: writers.reduce((n, w) => n + w.duplicates, 0),
        probedDuplicates: probed.flat().length,
        readerJoins: reader.joins,
        resumed: welcomes.slice(1).map((w) => w.recovered),
      };
      console.log(`sentinel failover: ${JSON.stringify(figures)}`);

      assert.equal(lost, 0, "no message lost");
      assert.equal(doubled, 0, "no message doubled");
      assert.equal(delivered.length, sent.length);
      assert.equal(epochs.size, 1, "the epoch survived the failover (replicated)");
      assert.equal(notOrdered, -1, `ids in order without a gap: ${ids.slice(notOrdered - 2)}`);
      assert.equal(ids[0], 1);
      assert.ok(reader.joins >= 2, "the reader resumed");
      assert.ok(welcomes.slice(1).every((w) => w.recovered === true), "and recovered each time");
      assert.equal(statuses.at(-1)!.status, 200, "/readyz is 200 on the new primary");
      if (first503) assert.ok(back200, "/readyz came back to 200");
    } finally {
      for (const cleanup of cleanups.reverse()) await cleanup();
      await setup.stop();
    }
  },
});

Deno.test({
  name: "with no sentinel answering, the engine starts unready, says where it looked, and closes",
  ignore: ignore !== undefined,
  async fn() {
    const lines: string[] = [];
    const logger: Logger = {
      ...silentLogger,
      error(event, fields) {
        lines.push(`${event} ${JSON.stringify(fields)}`);
      },
    };
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const { port } = listener.addr as Deno.NetAddr;
    listener.close();
    const engine = await RedisEngine.connect({
      redisUrl: "redis://:secret@127.0.0.1",
      redisSentinels: [`127.0.0.1:${port}`],
      redisSentinelName: "nowhere",
      historySize: 10,
      historyBytes: 1 << 20,
      historyFileBytes: 16,
      connectWaitMs: 300,
    }, logger);
    try {
      assert.equal(await engine.ready(), false);
      await assert.rejects(engine.append("room", { from: null, text: "x" }));
      assert.equal(lines.length, 1, lines.join("\n"));
      assert.match(lines[0], new RegExp(`sentinel nowhere via 127\\.0\\.0\\.1:${port}`));
      assert.ok(!lines[0].includes("secret"));
    } finally {
      await engine.close();
      // ioredis gives each sentinel it tried a 2-s timer to destroy a socket
      // that does not close (its default disconnectTimeout, not configurable).
      await new Promise((resolve) => setTimeout(resolve, 2100));
    }
  },
});
