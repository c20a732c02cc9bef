/**
 * Three Parley processes on one Redis, with rich clients on each: one order
 * of messages everywhere, presence merged across instances, a failover
 * after `kill -9` of one instance with nothing lost or doubled, and a
 * flushed Redis that every instance refills without a word to the clients.
 *
 * @module
 */

import assert from "node:assert/strict";
import { waitFor } from "./helpers.ts";
import { redisCommand, redisSkipReason, startRedis } from "./redis_server.ts";

const ignore = await redisSkipReason("cluster_test.ts");
const ROOM = "cluster";

interface Position {
  epoch: string;
  id: number;
}

interface Member {
  id: string;
  nick: string;
}

/** One Parley child process. */
interface Instance {
  child: Deno.ChildProcess;
  ws: string;
  alive: boolean;
}

/** Starts `deno run -A main.ts` on a free port and reads its address from stdout. */
async function startInstance(redisUrl: string): Promise<Instance> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts"],
    cwd: new URL("..", import.meta.url),
    env: {
      ENGINE: "redis",
      REDIS_URL: redisUrl,
      PORT: "0",
      HOSTNAME: "127.0.0.1",
      LOG_LEVEL: "silent",
      DRAIN_SECONDS: "0",
      DRAIN_SPREAD_SECONDS: "0",
    },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    while (true) {
      const match = /Parley listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      if (match) return { child, ws: `ws://127.0.0.1:${match[1]}`, alive: true };
      const { value, done } = await reader.read();
      if (done) throw new Error(`Parley exited before listening; stdout: ${out}`);
      out += value;
    }
  } finally {
    await reader.cancel();
  }
}

/** A rich client that keeps what it saw, resumes and resends like the chat page. */
class ChatClient {
  socket?: WebSocket;
  closed?: Promise<void>;
  /** Messages in the order received. */
  received: { key: string; cid?: string }[] = [];
  /** Unacked messages by cid. */
  pending = new Map<string, string>();
  acks = new Map<string, number>();
  members = new Map<string, string>();
  /** Presence events that told this client nothing new: a join of a listed member, a leave of an unlisted one. */
  redundant: string[] = [];
  /** Every presence event, as `type:nick`. */
  presence: string[] = [];
  welcome?: { recovered: boolean | null; members: Member[] };
  welcomedAt = 0;
  last?: Position;
  #count = 0;

  constructor(readonly name: string) {}

  get open(): boolean {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Joins through `ws`, resuming from the last message seen, and resends the unacked. */
  async connect(ws: string): Promise<void> {
    const socket = new WebSocket(`${ws}/${ROOM}`, "parley.v1");
    this.socket = socket;
    this.welcome = undefined;
    this.closed = new Promise((resolve) => socket.addEventListener("close", () => resolve()));
    socket.onmessage = (e) => this.#receive(JSON.parse(e.data));
    await new Promise<void>((resolve, reject) => {
      socket.onopen = () => resolve();
      socket.onerror = () => reject(new Error(`${this.name} cannot open ${ws}`));
    });
    socket.send(JSON.stringify({
      type: "hello",
      nick: this.name,
      client: `client-${this.name}`,
      last: this.last,
    }));
    await waitFor(() => this.welcome !== undefined, 5000, `${this.name}'s welcome`);
    for (const [cid, text] of this.pending) this.#write(cid, text);
  }

  // deno-lint-ignore no-explicit-any
  #receive(e: any) {
    switch (e.type) {
      case "welcome":
        this.welcomedAt = performance.now();
        this.members = new Map(e.members.map((m: Member) => [m.id, m.nick]));
        this.welcome = e;
        break;
      case "join":
        if (this.members.has(e.member.id)) this.redundant.push(`join:${e.member.nick}`);
        this.presence.push(`join:${e.member.nick}`);
        this.members.set(e.member.id, e.member.nick);
        break;
      case "rename":
        this.members.set(e.member.id, e.member.nick);
        break;
      case "leave":
        if (!this.members.has(e.member.id)) this.redundant.push(`leave:${e.member.nick}`);
        this.presence.push(`leave:${e.member.nick}`);
        this.members.delete(e.member.id);
        break;
      case "message":
        this.received.push({ key: `${e.epoch}:${e.id}`, cid: e.cid });
        this.last = { epoch: e.epoch, id: e.id };
        break;
      case "ack":
        this.pending.delete(e.cid);
        this.acks.set(e.cid, (this.acks.get(e.cid) ?? 0) + 1);
        break;
    }
  }

  #write(cid: string, text: string) {
    if (this.open) this.socket!.send(JSON.stringify({ type: "message", cid, text }));
  }

  /** Sends a message, kept until acked. */
  send(text: string): string {
    const cid = `${this.name}-${++this.#count}`;
    this.pending.set(cid, text);
    this.#write(cid, text);
    return cid;
  }

  /** Keeps a message to send on the next connect, as if typed while offline. */
  queue(text: string): string {
    const cid = `${this.name}-${++this.#count}`;
    this.pending.set(cid, text);
    return cid;
  }

  async close(): Promise<void> {
    if (this.socket && this.socket.readyState < WebSocket.CLOSING) this.socket.close();
    await this.closed;
  }
}

function sortedMembers(client: ChatClient): string {
  return [...client.members.values()].sort().join(",");
}

Deno.test({
  name: "three instances on one Redis: one order, merged presence, failover without loss",
  ignore: ignore !== undefined,
  async fn() {
    const redis = await startRedis();
    const instances: Instance[] = [];
    const clients: ChatClient[] = [];
    try {
      instances.push(...await Promise.all([0, 1, 2].map(() => startInstance(redis.url))));
      const names = ["ann", "bob", "cat", "dan", "eve", "fay"];
      for (const [i, name] of names.entries()) {
        const client = new ChatClient(name);
        clients.push(client);
        await client.connect(instances[Math.floor(i / 2)].ws);
      }

      // (2) Presence: every client sees the six members, whichever instance it is on.
      const everyone = [...names].sort().join(",");
      await waitFor(
        () => clients.every((c) => sortedMembers(c) === everyone),
        5000,
        "every client to see six members",
      );

      // (1) Thirty messages from all clients reach everyone once, in one order.
      for (let round = 0; round < 5; round++) {
        for (const client of clients) client.send(`round ${round} from ${client.name}`);
      }
      await waitFor(
        () => clients.every((c) => c.received.length >= 30 && c.pending.size === 0),
        10_000,
        "thirty messages everywhere",
      );
      const order = clients[0].received.map((m) => m.key).join(" ");
      for (const client of clients) {
        assert.equal(client.received.map((m) => m.key).join(" "), order, `${client.name}'s order`);
      }

      // (3) kill -9 the first instance. Its clients had one message in flight
      // (sent, not acked) and one typed while the connection was going down.
      const [ann, bob] = clients;
      const survivors = clients.slice(2);
      ann.send("in flight when the instance died");
      const killedAt = performance.now();
      instances[0].child.kill("SIGKILL");
      instances[0].alive = false;
      bob.queue("typed during the failover");
      for (const client of survivors) client.send(`during the failover from ${client.name}`);
      await Promise.all([ann.closed, bob.closed]);
      await Promise.all([ann.connect(instances[1].ws), bob.connect(instances[2].ws)]);
      const failoverMs = Math.round(Math.max(ann.welcomedAt, bob.welcomedAt) - killedAt);
      assert.equal(ann.welcome?.recovered, true, "ann resumed where she was");
      assert.equal(bob.welcome?.recovered, true, "bob resumed where he was");
      for (const client of clients) client.send(`after the failover from ${client.name}`);

      const sent = new Set<string>();
      for (const client of clients) {
        for (const cid of client.acks.keys()) sent.add(cid);
        for (const cid of client.pending.keys()) sent.add(cid);
      }
      await waitFor(
        () => clients.every((c) => c.pending.size === 0 && c.received.length >= sent.size),
        10_000,
        "every message everywhere after the failover",
      );
      await new Promise((resolve) => setTimeout(resolve, 300));

      let lost = 0;
      let doubled = 0;
      for (const client of clients) {
        const keys = client.received.map((m) => m.key);
        doubled += keys.length - new Set(keys).size;
        const cids = client.received.map((m) => m.cid!);
        doubled += cids.length - new Set(cids).size;
        for (const cid of sent) if (!cids.includes(cid)) lost++;
      }
      for (const client of clients) {
        for (const count of client.acks.values()) doubled += count - 1;
      }
      const reference = clients[2].received.map((m) => `${m.key}=${m.cid}`).join(" ");
      for (const client of clients) {
        const mine = client.received.map((m) => `${m.key}=${m.cid}`).join(" ");
        assert.equal(mine, reference, `${client.name} saw the one order`);
      }
      console.log(
        `cluster: ${sent.size} messages, ${instances.length} instances, ` +
          `failover ${failoverMs} ms, lost ${lost}, doubled ${doubled}`,
      );
      assert.equal(lost, 0, "lost");
      assert.equal(doubled, 0, "doubled");
      assert.equal(sent.size, 30 + 2 + survivors.length + clients.length);

      // The failed-over members came back under the same identity: no one left.
      assert.ok(clients.every((c) => sortedMembers(c) === everyone), "six members everywhere");
      // A member who closes is gone for everyone, on every instance.
      const fay = clients.at(-1)!;
      await fay.close();
      const rest = names.filter((n) => n !== "fay").sort().join(",");
      await waitFor(
        () => clients.slice(0, -1).every((c) => sortedMembers(c) === rest),
        5000,
        "fay's leave everywhere",
      );

      // (4) A flushed Redis: each instance sees its presence keys gone within
      // a sweep (2 s) and puts its own connections back; clients hear nothing.
      const open = clients.slice(0, -1);
      const heard = open.map((c) => c.presence.length);
      assert.match(await redisCommand(redis.port, "FLUSHALL"), /^\+OK/);
      const end = Date.now() + 6000;
      while (await redisCommand(redis.port, "HLEN", `parley:{${ROOM}}:members`) !== ":5") {
        assert.ok(Date.now() < end, "the five members are back in Redis within 6 s");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (const [i, client] of open.entries()) {
        assert.deepEqual(client.presence.slice(heard[i]), [], `${client.name} heard nothing`);
        assert.equal(sortedMembers(client), rest, `${client.name}'s members`);
      }
      for (const client of clients) {
        assert.deepEqual(client.redundant, [], `${client.name} was told nothing it knew`);
      }
    } finally {
      await Promise.all(clients.map((c) => c.close()));
      for (const instance of instances) {
        if (instance.alive) instance.child.kill("SIGTERM");
      }
      await Promise.all(instances.map((i) => i.child.status));
      await redis.stop();
    }
  },
});
