/**
 * The Redis engine: several Parley instances share rooms through one Redis.
 *
 * - A room's total order comes from a Lua script that runs, for each append,
 *   dedup check, next id, `XADD` to the room's stream (trimmed by count and
 *   bytes, like the in-memory history) and the effect of an edit or delete,
 *   then `PUBLISH`es the new messages on the room's channel, all atomic. The
 *   appends to a room made while its previous calls are on their way go
 *   together in the next one (`_batches.ts`): a command costs the client
 *   far more than Redis's work for one message, so a busy room costs one
 *   call and one channel message per batch, not per message.
 * - Stream entries cannot change, so what edits and deletes do to earlier
 *   messages is a per-room hash of patches (id -> new text, or tombstone),
 *   written by the same script, applied by every read and trimmed with the
 *   stream. An index of edit ids per target lets a delete scrub the edits.
 * - Fan-out is Redis pub/sub on a dedicated connection. Each room feed keeps
 *   the last id it delivered and fills any gap (a lost connection, a skipped
 *   id, a new epoch) from the stream before delivering more. Signals (typing,
 *   kicks) are published on the same channel and never stored.
 * - Presence is a sorted set of connections by expiry, swept by Lua scripts,
 *   so exactly one instance publishes each `leave`; every instance sweeps the
 *   rooms it serves, so a crashed instance's members leave within the TTL.
 *   Each feed keeps the member list it told its listeners (see
 *   `_presence_view.ts`) and, after a cut feed, a lost event or lost keys,
 *   reads the members again and tells only the difference. Each instance
 *   remembers its own connections' entries and puts them back at once when
 *   Redis lost them.
 * - A ban is one key per room and member, holding its end, with a TTL that
 *   ends with it.
 * - Commands fail fast while Redis is down (no offline queue, a command
 *   timeout), so nothing is acked that was not stored. A command that timed
 *   out against a Redis that hangs stays sent and may still run: a failed
 *   append's outcome is unknown, and a resend with the same `cid` is safe.
 *
 * Keys are `<prefix>{<room>}:<name>` (see `_scripts.ts`): the hash tag keeps
 * a room's keys, and its channel, in one slot, as Lua scripts need on a Redis
 * Cluster. Redis is one server, a primary found and followed through Sentinel,
 * or a cluster, whose fan-out is sharded pub/sub (see `redis/_connect.ts`).
 *
 * @module
 */

import type { Buffer } from "node:buffer";
import type {
  AppendResult,
  Engine,
  EngineEvent,
  HistoryPage,
  MessageDraft,
  ReadResult,
  RoomSnapshot,
  Signal,
  Unsubscribe,
} from "../engine.ts";
import { type Logger, silentLogger } from "../log.ts";
import type { Metrics } from "../metrics.ts";
import type { Member, Position } from "../protocol.ts";
import { newEpoch } from "./memory.ts";
import { EngineMetrics, since } from "./_metrics.ts";
import { Batches, type BatchLimits } from "./_batches.ts";
import { checkBanEnd, copyMember, copySignal } from "./_shapes.ts";
import {
  type Header,
  type Incoming,
  message,
  pairs,
  parseEntries,
  parseEntry,
  parseEvents,
  type PresenceStamp,
  sizeOf,
  toBuffer,
  traitsOf,
} from "./redis/_codec.ts";
import { importRoom } from "./redis/_migrate.ts";
import { type PresenceSnapshot, PresenceView } from "./redis/_presence_view.ts";
import {
  type Client,
  type Connections,
  describeTopology,
  DISCONNECT_MS,
  openConnections,
  shut,
  topologyOf,
} from "./redis/_connect.ts";
import {
  APPEND_LUA,
  HISTORY_LUA,
  PRESENCE_LUA,
  READ_LUA,
  type Script,
  script,
  sharded,
} from "./redis/_scripts.ts";

/** Options of {@linkcode RedisEngine}; a Parley `Config` has all the required ones. */
export interface RedisEngineOptions {
  /**
   * The Redis server, such as `redis://127.0.0.1:6379`. With Sentinel or a
   * cluster, only its user, password, database (Sentinel) and `rediss:`
   * (TLS) are used.
   */
  redisUrl: string;
  /**
   * Sentinels (`host:port`) to ask for the primary named
   * `redisSentinelName`; the engine follows a failover by itself.
   */
  redisSentinels?: string[];
  /** The name the sentinels monitor the primary under; with `redisSentinels`. */
  redisSentinelName?: string;
  /**
   * Some nodes (`host:port`) of a Redis Cluster (7 or later: fan-out is
   * sharded pub/sub); the others are discovered. Not with `redisSentinels`.
   */
  redisCluster?: string[];
  /** Messages kept per room. */
  historySize: number;
  /** Bytes kept per room (text and file contents). */
  historyBytes: number;
  /** Files larger than this are kept without their bytes (live delivery still has them). */
  historyFileBytes: number;
  /**
   * Put before every key and channel, so several deployments (or tests) can
   * share one Redis: two prefixes that differ never share a key or a
   * channel, since no prefix may hold `{` and every key goes on with one.
   * (The database number in `redisUrl` does not separate pub/sub channels.)
   *
   * @default "parley:"
   */
  keyPrefix?: string;
  /**
   * Clock for message times, presence expiry and the end of bans. Every
   * instance on one Redis must use the same clock.
   *
   * @default Date.now
   */
  now?: () => number;
  /**
   * How often expired presence entries of the rooms this instance serves are
   * swept, each room feed checks that it missed no presence change (and
   * that Redis still has its presence keys), and a failed gap fill is tried
   * again, in milliseconds. After lost keys, members no instance put back
   * leave after two sweeps and `maxRetryMs`.
   *
   * @default 2000
   */
  sweepMs?: number;
  /**
   * A command without a reply within this many milliseconds fails.
   *
   * @default 2000
   */
  commandTimeoutMs?: number;
  /**
   * Longest wait between two reconnection attempts, in milliseconds.
   *
   * @default 1000
   */
  maxRetryMs?: number;
  /**
   * How long {@linkcode RedisEngine.connect} waits for Redis before it goes on
   * without it (and keeps trying), in milliseconds.
   *
   * @default 5000
   */
  connectWaitMs?: number;
}

interface Scripts {
  append: Script;
  read: Script;
  history: Script;
  presence: Script;
}

type Listener = (event: EngineEvent) => void;

/** The arguments of one entry of the append script (see `APPEND_LUA`). */
type AppendEntry = [string, string, Buffer | string];

/** What the append script answered for one entry, with the room's epoch. */
interface AppendReply {
  epoch: string;
  /** The new entry's id. */
  id?: number;
  /** A duplicate: the entry stored earlier and its patch, as buffers. */
  duplicate?: [unknown, Buffer];
}

/** How many appends go in one script call: enough to pay for the call many times over. */
const APPEND_BATCH: BatchLimits = { items: 256, bytes: 1 << 20 };

/** A channel message waiting in a feed. */
interface Queued extends Incoming {
  /** The feed's `reads` when it arrived: a snapshot read after that includes it. */
  read: number;
}

/** A `join()` waiting until its room's feed has told listeners about it. */
interface Waiter {
  stamp: PresenceStamp;
  done(reached: boolean): void;
}

/** One room's subscription on this instance. */
interface Feed {
  room: string;
  channel: string;
  listeners: Set<Listener>;
  /** Epoch and id of the last message delivered; known once `ready`. */
  epoch: string;
  lastId: number;
  ready: boolean;
  /** Deliver nothing until the stream was read after `lastId`. */
  stale: boolean;
  /** Members as told to listeners; set once `ready`. */
  view?: PresenceView;
  /** Presence snapshots started; a channel message is in every one started after it came. */
  reads: number;
  /** The snapshot (by `reads`) the view was last brought to. */
  covered: number;
  /** Presence as the last sweep saw it: its events must have come by the next one. */
  swept?: PresenceStamp;
  waiters: Set<Waiter>;
  /** Channel messages, not yet delivered. */
  queue: Queued[];
  pumping: boolean;
  active: Promise<void>;
}

/** This instance's own presence entry, to put back when Redis lost it. */
interface LocalEntry {
  member: Member;
  expires: number;
}

/** The prefix of keys and channels when none is given. */
export const DEFAULT_PREFIX = "parley:";

/**
 * A key prefix as given, or a RangeError: a `{` or `}` in it would make the
 * prefix, not the room, the hash tag of Redis Cluster, or break the tag.
 */
function checkPrefix(prefix: string): string {
  if (/[{}]/.test(prefix)) {
    throw new RangeError(
      `Cannot use key prefix ${JSON.stringify(prefix)}: it must not contain { or }`,
    );
  }
  return prefix;
}

function stampOf(reply: unknown): PresenceStamp {
  const [inc, ver] = reply as [string, string];
  return { inc: String(inc), ver: Number(ver) };
}

/** Keeps rooms in Redis, shared by every instance on the same Redis and prefix. */
export class RedisEngine implements Engine {
  #options: RedisEngineOptions;
  #log: Logger;
  #now: () => number;
  #prefix: string;
  #commandTimeoutMs: number;
  /** How long members stay after the presence keys were lost, while instances put theirs back. */
  #graceMs: number;
  /** Both connections, for the topology (one server, Sentinel or a cluster). */
  #link: Connections;
  /** Commands. */
  #redis: Client;
  /** Pub/sub only. */
  #sub: Client;
  #scripts: Scripts;
  /** Appends waiting for their room's batch. */
  #appends: Batches<AppendEntry, AppendReply>;
  #feeds = new Map<string, Feed>();
  #byChannel = new Map<string, Feed>();
  /** Presence entries of this instance's connections, by room and connection. */
  #local = new Map<string, Map<string, LocalEntry>>();
  /** The subscriber is connected and subscribed to every feed's channel. */
  #subActive = false;
  /** Subscriptions waiting for the subscriber to come back. */
  #waiters = new Set<() => void>();
  /** Counts subscriber disconnections: a gap fill read before one is void. */
  #generation = 0;
  #timer?: ReturnType<typeof setInterval>;
  #closed = false;
  #down = false;
  #stats = new EngineMetrics("redis", () => !this.#closed && !this.#down);

  private constructor(
    options: RedisEngineOptions,
    logger: Logger,
    scripts: Scripts,
  ) {
    this.#options = options;
    this.#log = logger;
    this.#now = options.now ?? Date.now;
    this.#prefix = checkPrefix(options.keyPrefix ?? DEFAULT_PREFIX);
    this.#scripts = scripts;
    this.#appends = new Batches({
      send: (room, entries) => this.#appendBatch(room, entries),
      size: (entry) => entry[1].length + entry[2].length,
      limits: APPEND_BATCH,
      // Redis runs the next batch while this instance handles the last answer.
      concurrency: 2,
      hopeless: (error) => String(error).includes("timed out"),
    });
    this.#commandTimeoutMs = options.commandTimeoutMs ?? 2000;
    const maxRetryMs = options.maxRetryMs ?? 1000;
    // Every instance notices lost keys within a sweep, or when it reconnects.
    this.#graceMs = 2 * (options.sweepMs ?? 2000) + maxRetryMs;
    this.#link = openConnections(topologyOf(options), {
      commandTimeout: this.#commandTimeoutMs,
      disconnectTimeout: DISCONNECT_MS,
      retryStrategy: (attempt: number) =>
        Math.min(maxRetryMs, 50 * 2 ** Math.min(attempt, 10)) + Math.floor(Math.random() * 50),
    });
    this.#redis = this.#link.commands;
    this.#sub = this.#link.subscriber;
    for (const [client, name] of [[this.#redis, "commands"], [this.#sub, "subscriber"]] as const) {
      client.on("error", (error: Error) => {
        this.#log.debug("redis_error", { connection: name, error: String(error) });
      });
      client.on("close", () => {
        if (this.#closed) return;
        if (!this.#down) this.#log.warn("redis_unavailable", { connection: name });
        this.#down = true;
      });
      client.on("ready", () => {
        if (this.#down && this.#redis.status === "ready" && this.#sub.status === "ready") {
          this.#down = false;
          this.#stats.reconnected();
          this.#log.info("redis_reconnected", {});
        }
      });
    }
    this.#sub.on("close", () => this.#subscriberLost());
    this.#sub.on("ready", () => this.#resubscribe());
    // A cluster's shard subscribers come and go under a subscriber that stays ready.
    this.#link.onShards(() => {
      if (this.#closed) return;
      this.#log.warn("redis_shard_subscriber_lost", {});
      this.#subscriberLost();
    }, () => this.#resubscribe());
    this.#link.onMessage((channel: Buffer, payload: Buffer) => {
      this.#receive(channel.toString(), payload);
    });
  }

  /**
   * Connects to Redis. When Redis cannot be reached within `connectWaitMs`,
   * the engine starts anyway and keeps trying: `ready()` is false and
   * commands fail until it is reached.
   */
  static async connect(
    options: RedisEngineOptions,
    logger: Logger = silentLogger,
  ): Promise<RedisEngine> {
    // A cluster's fan-out is sharded pub/sub, published by the same scripts.
    const publishing = topologyOf(options).kind === "cluster" ? sharded : (lua: string) => lua;
    const scripts = {
      append: await script(publishing(APPEND_LUA)),
      read: await script(READ_LUA),
      history: await script(HISTORY_LUA),
      presence: await script(publishing(PRESENCE_LUA)),
    };
    const engine = new RedisEngine(options, logger, scripts);
    await engine.#start(options.connectWaitMs ?? 5000);
    return engine;
  }

  async #start(waitMs: number) {
    const connected = Promise.all([this.#redis.connect(), this.#sub.connect()]);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${waitMs} ms`)), waitMs);
    });
    try {
      await Promise.race([connected, timeout]);
      this.#subActive = true;
    } catch (error) {
      // Both clients keep retrying on their own.
      connected.catch(() => {});
      this.#down = true;
      this.#log.error("redis_unavailable", {
        redis: describeTopology(this.#link.topology),
        error: String(error),
      });
    } finally {
      clearTimeout(timer);
    }
    this.#timer = setInterval(() => this.#tick(), this.#options.sweepMs ?? 2000);
    Deno.unrefTimer(this.#timer);
  }

  #key(room: string, name: string): string {
    return `${this.#prefix}{${room}}:${name}`;
  }

  #channel(room: string): string {
    return this.#key(room, "events");
  }

  async #eval(
    which: Script,
    keys: string[],
    args: (string | Buffer | number)[],
    binary: boolean,
  ): Promise<unknown> {
    const call = (command: string, head: string) =>
      binary
        ? this.#redis.callBuffer(command, head, keys.length, ...keys, ...args)
        : this.#redis.call(command, head, keys.length, ...keys, ...args);
    try {
      return await call("EVALSHA", which.sha);
    } catch (error) {
      if (!String(error).includes("NOSCRIPT")) throw error;
      return await call("EVAL", which.lua);
    }
  }

  /**
   * Up while both connections are (0 from a lost connection until both are
   * back), reconnections, feed gaps and the messages that filled them, append
   * latency, batch sizes (appends per script call) and presence sweeps.
   */
  get metrics(): Metrics {
    return this.#stats.registry;
  }

  append(room: string, draft: MessageDraft): Promise<AppendResult> {
    return this.#stats.timeAppend(performance.now(), this.#append(room, draft));
  }

  async #append(room: string, draft: MessageDraft): Promise<AppendResult> {
    const ts = this.#now();
    const header: Header = {
      ts,
      from: draft.from && copyMember(draft.from),
      sender: draft.sender,
      cid: draft.cid,
    };
    if (draft.replyTo !== undefined) header.replyTo = draft.replyTo;
    let data: Uint8Array | undefined;
    let kind: string;
    if (draft.kind !== undefined) {
      header.kind = draft.kind;
      header.target = draft.target;
      if (draft.kind === "edit") header.text = draft.text ?? "";
      kind = draft.kind === "edit" ? "e" : "x";
    } else if (draft.text !== undefined) {
      header.text = draft.text;
      kind = "t";
    } else {
      data = draft.data ?? new Uint8Array(0);
      header.name = draft.name ?? "file";
      header.mime = draft.mime ?? "application/octet-stream";
      header.size = data.byteLength;
      kind = data.byteLength <= this.#options.historyFileBytes ? "f" : "F";
    }
    const field = draft.sender !== undefined && draft.cid !== undefined
      ? `${draft.sender}\0${draft.cid}`
      : "";
    const target = draft.kind !== undefined && Number.isSafeInteger(draft.target) &&
        draft.target! > 0
      ? String(draft.target)
      : "";
    const size = sizeOf(header.text, kind === "f" ? data!.byteLength : 0);
    const patch = kind === "e" ? JSON.stringify({ text: header.text, edited: ts }) : "";
    const { epoch, id, duplicate } = await this.#appends.add(room, [
      `${kind} ${size} ${target}\n${patch}\n${field}`,
      JSON.stringify(header),
      data ? toBuffer(data) : "",
    ]);
    if (duplicate) {
      return {
        message: parseEntry(room, epoch, duplicate[0], duplicate[1].toString()),
        duplicate: true,
      };
    }
    const stored = message(room, epoch, id!, header);
    if (data) stored.data = data;
    return { message: stored, duplicate: false };
  }

  /**
   * Runs the append script for a batch of entries of one room (see
   * `_batches.ts`): one call, and one channel message for all new entries.
   */
  async #appendBatch(room: string, entries: AppendEntry[]): Promise<AppendReply[]> {
    const reply = await this.#eval(
      this.#scripts.append,
      [
        this.#key(room, "meta"),
        this.#key(room, "log"),
        this.#key(room, "dedup"),
        this.#key(room, "patches"),
        this.#key(room, "edits"),
      ],
      [
        newEpoch(),
        this.#options.historySize,
        this.#options.historyBytes,
        this.#channel(room),
        ...entries.flat(),
      ],
      true,
    ) as [Buffer, Buffer, Buffer[]];
    this.#stats.batch(entries.length);
    const epoch = reply[0].toString();
    let next = parseInt(reply[1].toString(), 10);
    const dups = new Map<number, [unknown, Buffer]>();
    for (let i = 0; i + 2 < reply[2].length; i += 3) {
      dups.set(parseInt(reply[2][i].toString(), 10), [reply[2][i + 1], reply[2][i + 2]]);
    }
    return entries.map((_, i) => {
      const dup = dups.get(i);
      return dup ? { epoch, duplicate: dup } : { epoch, id: next++ };
    });
  }

  async read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const reply = await this.#eval(
      this.#scripts.read,
      [this.#key(room, "meta"), this.#key(room, "log"), this.#key(room, "patches")],
      [newEpoch(), after?.epoch ?? "", after?.id ?? 0, Math.max(0, Math.floor(limit))],
      true,
    ) as [Buffer, Buffer, Buffer, unknown[], unknown[]];
    const epoch = reply[0].toString();
    const flag = reply[2].toString();
    const messages = parseEntries(room, epoch, reply[3], reply[4]);
    if (flag !== "1") messages.reverse();
    return {
      epoch,
      head: parseInt(reply[1].toString(), 10),
      recovered: flag === "1" ? true : flag === "0" ? false : null,
      messages,
    };
  }

  async history(room: string, before: number, limit: number): Promise<HistoryPage> {
    const last = Number.isNaN(before) ? 0 : Math.min(Math.floor(before), Number.MAX_SAFE_INTEGER);
    const reply = await this.#eval(
      this.#scripts.history,
      [this.#key(room, "meta"), this.#key(room, "log"), this.#key(room, "patches")],
      [newEpoch(), Math.max(0, last), Math.max(0, Math.floor(limit))],
      true,
    ) as [Buffer, Buffer, unknown[], unknown[]];
    const epoch = reply[0].toString();
    const messages = parseEntries(room, epoch, reply[2], reply[3]).reverse();
    return { epoch, messages, more: reply[1].toString() === "1" };
  }

  async signal(room: string, event: Signal): Promise<void> {
    const payload = JSON.stringify(copySignal(event));
    await this.#link.publish(this.#channel(room), `T${payload}`);
  }

  async subscribe(room: string, listener: Listener): Promise<Unsubscribe> {
    if (this.#closed) throw new Error(`Cannot subscribe to room ${room}: the engine is closed`);
    let feed = this.#feeds.get(room);
    if (!feed) {
      const created: Feed = {
        room,
        channel: this.#channel(room),
        listeners: new Set(),
        epoch: "",
        lastId: 0,
        ready: false,
        stale: false,
        reads: 0,
        covered: 0,
        waiters: new Set(),
        queue: [],
        pumping: false,
        active: Promise.resolve(),
      };
      feed = created;
      this.#feeds.set(room, created);
      this.#byChannel.set(created.channel, created);
      created.active = this.#activate(created).catch((error) => {
        this.#drop(created);
        throw error;
      });
    }
    const current = feed;
    current.listeners.add(listener);
    try {
      await current.active;
    } catch (error) {
      current.listeners.delete(listener);
      throw new Error(`Cannot subscribe to room ${room}: Redis is unavailable (${error})`);
    }
    return () => {
      current.listeners.delete(listener);
      if (current.listeners.size === 0) this.#drop(current);
    };
  }

  /**
   * Subscribes a new feed, then takes the room's head as where delivery
   * starts and its members as what listeners know. Waits for a reconnecting
   * subscriber up to the command timeout, so a short blip delays a join
   * instead of failing it.
   */
  async #activate(feed: Feed) {
    const deadline = Date.now() + this.#commandTimeoutMs;
    while (true) {
      try {
        await this.#whenActive(deadline - Date.now());
        await this.#link.subscribe([feed.channel]);
        break;
      } catch (error) {
        // The socket may be dead before the client noticed: look again shortly.
        if (this.#closed || Date.now() + 50 >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    const read = ++feed.reads;
    const [{ epoch, head }, snapshot] = await Promise.all([
      this.read(feed.room, undefined, 0),
      this.#snapshot(feed.room),
    ]);
    feed.epoch = epoch;
    feed.lastId = head;
    feed.view = new PresenceView(snapshot);
    feed.covered = read;
    feed.ready = true;
    this.#pump(feed);
  }

  #drop(feed: Feed) {
    if (this.#feeds.get(feed.room) !== feed) return;
    this.#feeds.delete(feed.room);
    this.#byChannel.delete(feed.channel);
    feed.queue = [];
    for (const waiter of [...feed.waiters]) waiter.done(false);
    if (this.#sub.status === "ready" && !this.#closed) {
      this.#link.unsubscribe(feed.channel).catch(() => {});
    }
  }

  #markStale(feed: Feed) {
    if (feed.ready && !feed.stale) this.#stats.feedGap();
    feed.stale = true;
    if (feed.view) feed.view.stale = true;
  }

  /** The subscriber (or a shard's) went away: what comes until it is back may be missed. */
  #subscriberLost() {
    this.#subActive = false;
    this.#generation++;
    for (const feed of this.#feeds.values()) this.#markStale(feed);
  }

  /** After the subscriber reconnected: subscribe again, then fill every feed's gap. */
  async #resubscribe() {
    if (this.#closed) return;
    const feeds = [...this.#feeds.values()];
    for (const feed of feeds) this.#markStale(feed);
    try {
      if (feeds.length > 0) await this.#link.subscribe(feeds.map((f) => f.channel));
    } catch (error) {
      // The next `ready` tries again.
      this.#log.warn("redis_resubscribe_failed", { error: String(error) });
      return;
    }
    this.#subActive = true;
    for (const wake of [...this.#waiters]) wake();
    for (const feed of this.#feeds.values()) this.#pump(feed);
  }

  /** Resolves when the subscriber is connected, waiting at most `ms`. */
  #whenActive(ms: number): Promise<void> {
    if (this.#subActive) return Promise.resolve();
    if (this.#closed) return Promise.reject(new Error("the engine closed"));
    return new Promise((resolve, reject) => {
      const done = (error?: Error) => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
        if (error) reject(error);
        else resolve();
      };
      const wake = () => done(this.#closed ? new Error("the engine closed") : undefined);
      const timer = setTimeout(
        () => done(new Error(`not connected within ${Math.max(0, ms)} ms`)),
        Math.max(0, ms),
      );
      this.#waiters.add(wake);
    });
  }

  #receive(channel: string, payload: Buffer) {
    const feed = this.#byChannel.get(channel);
    if (!feed) return;
    try {
      for (const { event, stamp } of parseEvents(feed.room, payload)) {
        feed.queue.push({ event, stamp, read: feed.reads });
      }
    } catch (error) {
      this.#log.error("redis_bad_event", { room: feed.room, error: String(error) });
      return;
    }
    this.#pump(feed);
  }

  /**
   * Delivers queued events in order; a gap is filled from the stream first,
   * and presence read again when events were missed.
   */
  #pump(feed: Feed) {
    if (feed.pumping || !feed.ready || !this.#subActive || this.#closed) return;
    feed.pumping = true;
    (async () => {
      // The flag drops in the same turn when nothing was awaited, so an event
      // that arrives right after is pumped at once.
      try {
        while (this.#feeds.get(feed.room) === feed && this.#subActive && !this.#closed) {
          if (feed.stale) {
            await this.#catchUp(feed);
            continue;
          }
          if (feed.view!.stale) {
            await this.#resyncPresence(feed);
            continue;
          }
          const item = feed.queue.shift();
          if (!item) break;
          const { event } = item;
          if (event.type === "message") {
            const m = event.message;
            if (m.epoch === feed.epoch && m.id <= feed.lastId) continue;
            if (m.epoch !== feed.epoch || m.id !== feed.lastId + 1) {
              feed.queue.unshift(item);
              this.#stats.feedGap();
              feed.stale = true;
              continue;
            }
            feed.lastId = m.id;
            this.#emit(feed, event);
          } else if (event.type === "typing" || event.type === "kick") {
            this.#emit(feed, event);
          } else if (item.read >= feed.covered) {
            const told = feed.view!.apply(event, item.stamp);
            if (told) this.#emit(feed, told);
            this.#settle(feed);
          }
        }
      } finally {
        feed.pumping = false;
      }
    })().catch((error) => {
      // Stays stale: the next message, reconnection or sweep tries again.
      this.#log.warn("redis_gap_fill_failed", { room: feed.room, error: String(error) });
    });
  }

  /** Whether a read started at `generation` may still be used for `feed`. */
  #current(feed: Feed, generation: number): boolean {
    return this.#feeds.get(feed.room) === feed && generation === this.#generation &&
      !this.#closed;
  }

  /** Delivers what the room's stream holds after the last delivered message. */
  async #catchUp(feed: Feed) {
    const { historySize } = this.#options;
    const generation = this.#generation;
    const result = await this.read(feed.room, { epoch: feed.epoch, id: feed.lastId }, historySize);
    // Read before the subscriber came back: what came between may be missing.
    if (!this.#current(feed, generation)) return;
    if (result.recovered === false) {
      this.#log.warn("redis_feed_gap", {
        room: feed.room,
        epoch: result.epoch,
        from: feed.lastId,
        head: result.head,
      });
    }
    const sameEpoch = result.epoch === feed.epoch;
    const lastId = feed.lastId;
    feed.epoch = result.epoch;
    feed.lastId = result.head;
    feed.stale = false;
    let filled = 0;
    for (const m of result.messages) {
      if (!sameEpoch || m.id > lastId) {
        filled++;
        this.#emit(feed, { type: "message", message: m });
      }
    }
    this.#stats.gapFilled(filled);
    // Messages of an epoch that is gone can never be delivered in order.
    feed.queue = feed.queue.filter(({ event }) =>
      event.type !== "message" || event.message.epoch === feed.epoch
    );
  }

  /**
   * Reads the room's members and tells listeners the difference. When the
   * presence keys were lost, first puts this instance's entries back, and
   * keeps the members it cannot see yet for a grace period.
   */
  async #resyncPresence(feed: Feed) {
    const generation = this.#generation;
    const view = feed.view!;
    let read = ++feed.reads;
    let snapshot = await this.#snapshot(feed.room);
    if (!this.#current(feed, generation)) return;
    if (view.lost(snapshot)) {
      if (view.size > 0) this.#log.warn("redis_presence_lost", { room: feed.room });
      view.suspectAll(this.#now() + this.#graceMs);
      await this.#restore(feed.room);
      read = ++feed.reads;
      snapshot = await this.#snapshot(feed.room);
      if (!this.#current(feed, generation)) return;
    }
    feed.covered = read;
    for (const event of view.resync(snapshot, this.#now())) this.#emit(feed, event);
    this.#settle(feed);
  }

  /** Puts back this instance's live presence entries of a room. */
  async #restore(room: string) {
    const entries = this.#local.get(room);
    if (!entries) return;
    const now = this.#now();
    const calls: Promise<unknown>[] = [];
    for (const [conn, { member, expires }] of entries) {
      if (expires <= now) {
        entries.delete(conn);
        continue;
      }
      calls.push(this.#presence(room, "refresh", [
        conn,
        member.id,
        member.nick,
        expires - now,
        traitsOf(member),
      ]));
    }
    if (entries.size === 0) this.#local.delete(room);
    await Promise.all(calls);
  }

  /** Resolves the `join()` calls whose change the feed's listeners now know. */
  #settle(feed: Feed) {
    for (const waiter of [...feed.waiters]) {
      if (feed.view!.reached(waiter.stamp)) waiter.done(true);
    }
  }

  /** Waits until the feed's listeners know of the change stamped `stamp`; false on timeout. */
  #caughtUp(feed: Feed, stamp: PresenceStamp): Promise<boolean> {
    if (feed.view!.reached(stamp)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter: Waiter = {
        stamp,
        done: (reached) => {
          clearTimeout(timer);
          feed.waiters.delete(waiter);
          resolve(reached);
        },
      };
      const timer = setTimeout(() => waiter.done(false), this.#commandTimeoutMs);
      feed.waiters.add(waiter);
    });
  }

  #emit(feed: Feed, event: EngineEvent) {
    for (const listener of [...feed.listeners]) {
      try {
        listener(event);
      } catch (error) {
        this.#log.error("listener_failed", { room: feed.room, error: String(error) });
      }
    }
  }

  #tick() {
    if (this.#closed || this.#redis.status !== "ready") return;
    // A resubscription that failed while the subscriber stayed connected.
    if (!this.#subActive && this.#sub.status === "ready") this.#resubscribe();
    for (const feed of this.#feeds.values()) {
      if (!feed.ready) continue;
      if (feed.stale || feed.view!.stale) this.#pump(feed);
      const start = performance.now();
      this.#presence(feed.room, "sweep", []).then((reply) => {
        this.#stats.swept(since(start));
        this.#check(feed, stampOf(reply));
      })
        .catch((error) =>
          this.#log.debug("redis_sweep_failed", { room: feed.room, error: String(error) })
        );
    }
  }

  /**
   * After a sweep: reads the members again when the keys changed under the
   * feed (flushed, expired), when events the previous sweep saw never came,
   * or when a suspect is due.
   */
  #check(feed: Feed, stamp: PresenceStamp) {
    if (this.#feeds.get(feed.room) !== feed || this.#closed) return;
    const view = feed.view!;
    const swept = feed.swept;
    feed.swept = stamp;
    const missed = swept !== undefined && swept.inc === view.inc && view.ver < swept.ver;
    if (stamp.inc !== view.inc || missed || view.nextDeadline() <= this.#now()) {
      view.stale = true;
      this.#pump(feed);
    }
  }

  async #presence(room: string, op: string, args: (string | number)[]): Promise<unknown> {
    return await this.#eval(
      this.#scripts.presence,
      [
        this.#key(room, "expiry"),
        this.#key(room, "conns"),
        this.#key(room, "members"),
        this.#key(room, "counts"),
        this.#key(room, "presence"),
        this.#key(room, "traits"),
      ],
      [op, this.#channel(room), this.#now(), newEpoch(), ...args],
      false,
    );
  }

  async #snapshot(room: string): Promise<PresenceSnapshot> {
    const reply = await this.#presence(room, "members", []) as unknown[];
    return { ...stampOf(reply), members: pairs(reply[2], reply[3]) };
  }

  #remember(room: string, conn: string, member: Member, ttlMs: number) {
    let entries = this.#local.get(room);
    if (!entries) this.#local.set(room, entries = new Map());
    entries.set(conn, { member: copyMember(member), expires: this.#now() + ttlMs });
  }

  async join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    const ttl = Math.max(0, ttlMs);
    this.#remember(room, conn, member, ttl);
    const feed = this.#feeds.get(room);
    const following = feed?.ready === true;
    const reply = await this.#presence(room, "join", [
      conn,
      member.id,
      member.nick,
      ttl,
      following ? "0" : "1",
      traitsOf(member),
    ]) as unknown[];
    if (!following) return pairs(reply[2], reply[3]);
    // Answer with what this room's listeners were told once they know of this
    // join, so the caller's list and the events after it fit together.
    if (this.#feeds.get(room) === feed && await this.#caughtUp(feed!, stampOf(reply))) {
      return feed!.view!.members();
    }
    return await this.members(room);
  }

  async refresh(room: string, conn: string, member: Member, ttlMs: number): Promise<void> {
    const ttl = Math.max(0, ttlMs);
    this.#remember(room, conn, member, ttl);
    await this.#presence(room, "refresh", [conn, member.id, member.nick, ttl, traitsOf(member)]);
  }

  async leave(room: string, conn: string): Promise<void> {
    const entries = this.#local.get(room);
    if (entries?.delete(conn) && entries.size === 0) this.#local.delete(room);
    await this.#presence(room, "leave", [conn]);
  }

  async rename(room: string, memberId: string, nick: string): Promise<void> {
    for (const entry of this.#local.get(room)?.values() ?? []) {
      if (entry.member.id === memberId) entry.member = { ...entry.member, nick };
    }
    await this.#presence(room, "rename", [memberId, nick]);
  }

  async members(room: string): Promise<Member[]> {
    return (await this.#snapshot(room)).members;
  }

  /** Sets the ban's key to its end with a TTL that ends with it; an end already past deletes it. */
  async ban(room: string, memberId: string, until: number): Promise<void> {
    checkBanEnd(until);
    const banKey = this.#key(room, `ban:${memberId}`);
    const left = Math.ceil(until - this.#now());
    if (left > 0) await this.#redis.set(banKey, String(until), "PX", left);
    else await this.#redis.del(banKey);
  }

  async bannedUntil(room: string, memberId: string): Promise<number | undefined> {
    const value = await this.#redis.get(this.#key(room, `ban:${memberId}`));
    const until = value === null ? NaN : Number(value);
    // The key outlives the ban when this clock runs ahead of Redis's.
    return Number.isFinite(until) && until > this.#now() ? until : undefined;
  }

  /** Takes a room's history from another engine (see `redis/_migrate.ts`). */
  importRoom(room: string, snapshot: RoomSnapshot): Promise<void> {
    const key = (name: string, part: string) => this.#key(name, part);
    return importRoom({ redis: this.#redis, key, limits: this.#options }, room, snapshot);
  }

  async ready(): Promise<boolean> {
    if (this.#closed || this.#sub.status !== "ready" || !this.#subActive) return false;
    try {
      return await this.#link.ping();
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    for (const wake of [...this.#waiters]) wake();
    for (const feed of this.#feeds.values()) {
      feed.listeners.clear();
      for (const waiter of [...feed.waiters]) waiter.done(false);
    }
    this.#feeds.clear();
    this.#byChannel.clear();
    this.#local.clear();
    await Promise.all([this.#redis, this.#sub].map(shut));
  }
}
