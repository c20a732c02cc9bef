/**
 * The Redis engine: several Parley instances share rooms through one Redis.
 *
 * - A room's total order comes from one Lua script per append: dedup check,
 *   next id, `XADD` to the room's stream (trimmed by count and bytes, like the
 *   in-memory history) and `PUBLISH` on the room's channel, all atomic.
 * - Fan-out is Redis pub/sub on a dedicated connection. Each room feed keeps
 *   the last id it delivered and fills any gap (a lost connection, a skipped
 *   id, a new epoch) from the stream before delivering more.
 * - Presence is a sorted set of connections by expiry, swept by Lua scripts,
 *   so exactly one instance publishes each `leave`; every instance sweeps the
 *   rooms it serves, so a crashed instance's members leave within the TTL.
 * - Commands fail fast while Redis is down (no offline queue, a command
 *   timeout), so nothing is acked that was not stored; the client reconnects
 *   by itself with capped backoff.
 *
 * Keys are `<prefix>{<room>}:<name>`: the hash tag keeps a room's keys in one
 * slot, as Lua scripts need on a Redis Cluster.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { Redis } from "ioredis";
import type {
  AppendResult,
  Engine,
  EngineEvent,
  MessageDraft,
  ReadResult,
  Unsubscribe,
} from "../engine.ts";
import { type Logger, silentLogger } from "../log.ts";
import type { Member, Position, StoredMessage } from "../protocol.ts";
import { newEpoch } from "./memory.ts";

/** Options of {@linkcode RedisEngine}; a Parley `Config` has all the required ones. */
export interface RedisEngineOptions {
  /** The Redis server, such as `redis://127.0.0.1:6379`. */
  redisUrl: string;
  /** Messages kept per room. */
  historySize: number;
  /** Bytes kept per room (text and file contents). */
  historyBytes: number;
  /** Files larger than this are kept without their bytes (live delivery still has them). */
  historyFileBytes: number;
  /**
   * Put before every key and channel, so several deployments (or tests) can
   * share one Redis.
   *
   * @default "parley:"
   */
  keyPrefix?: string;
  /**
   * Clock for message times and presence expiry. Every instance on one Redis
   * must use the same clock.
   *
   * @default Date.now
   */
  now?: () => number;
  /**
   * How often expired presence entries of the rooms this instance serves are
   * swept (and a failed gap fill is tried again), in milliseconds.
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

/**
 * Appends one message. KEYS: meta, log, dedup. ARGV: new epoch, dedup field
 * (empty: none), header JSON, file bytes, kind (`t` text, `f` file kept, `F`
 * file not kept), size for the byte budget, history size, history bytes,
 * channel. Returns `{"dup", epoch, entry}` or `{"new", epoch, id}`.
 */
const APPEND_LUA = `
local meta, log, dedup = KEYS[1], KEYS[2], KEYS[3]
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
local field = ARGV[2]
if field ~= '' then
  local old = redis.call('HGET', dedup, field)
  if old then
    local found = redis.call('XRANGE', log, old .. '-0', old .. '-0')
    if #found > 0 then return {'dup', epoch, found[1]} end
    redis.call('HDEL', dedup, field)
  end
end
local id = redis.call('HINCRBY', meta, 'seq', 1)
local sid = string.format('%d', id)
local entry = {'h', ARGV[3], 'sz', ARGV[6]}
if field ~= '' then
  entry[#entry + 1] = 'k'
  entry[#entry + 1] = field
  redis.call('HSET', dedup, field, sid)
end
if ARGV[5] == 'f' then
  entry[#entry + 1] = 'd'
  entry[#entry + 1] = ARGV[4]
end
redis.call('XADD', log, sid .. '-0', unpack(entry))
local bytes = redis.call('HINCRBY', meta, 'bytes', tonumber(ARGV[6]))
local len = redis.call('XLEN', log)
local maxLen, maxBytes = tonumber(ARGV[7]), tonumber(ARGV[8])
local cut = nil
while len > maxLen or (bytes > maxBytes and len > 1) do
  local start = '-'
  if cut then start = string.format('%d', cut + 1) .. '-0' end
  local oldest = redis.call('XRANGE', log, start, '+', 'COUNT', 1)[1]
  local fields = oldest[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'sz' then
      bytes = bytes - tonumber(fields[i + 1])
    elseif fields[i] == 'k' then
      if redis.call('HGET', dedup, fields[i + 1]) == string.match(oldest[1], '^%d+') then
        redis.call('HDEL', dedup, fields[i + 1])
      end
    end
  end
  len = len - 1
  cut = tonumber(string.match(oldest[1], '^%d+'))
end
if cut then
  redis.call('XTRIM', log, 'MINID', string.format('%d', cut + 1) .. '-0')
  redis.call('HSET', meta, 'bytes', bytes)
end
redis.call('PUBLISH', ARGV[9], 'M' .. sid .. ' ' .. epoch .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4])
return {'new', epoch, sid}
`;

/**
 * Reads history by the in-memory engine's rules. KEYS: meta, log. ARGV: new
 * epoch, asked epoch (empty: none), asked id, limit. Returns `{epoch, head,
 * recovered ("1", "0" or "" for none), entries}`.
 */
const READ_LUA = `
local meta, log = KEYS[1], KEYS[2]
redis.call('HSETNX', meta, 'epoch', ARGV[1])
local epoch = redis.call('HGET', meta, 'epoch')
local head = tonumber(redis.call('HGET', meta, 'seq') or '0')
local oldest = head + 1
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #first > 0 then oldest = tonumber(string.match(first[1][1], '^%d+')) end
local recovered = ''
if ARGV[2] ~= '' then
  local after = tonumber(ARGV[3])
  if ARGV[2] == epoch and after <= head and after >= oldest - 1 then
    local rest = redis.call('XRANGE', log, string.format('%d', after + 1) .. '-0', '+')
    return {epoch, string.format('%d', head), '1', rest}
  end
  recovered = '0'
end
local limit = tonumber(ARGV[4])
local recent = {}
if limit > 0 then recent = redis.call('XREVRANGE', log, '+', '-', 'COUNT', limit) end
return {epoch, string.format('%d', head), recovered, recent}
`;

/**
 * Presence. KEYS: expiry (zset conn -> expiry), conns (hash conn -> member
 * id), members (hash member id -> nick), counts (hash member id -> entries).
 * ARGV: operation, channel, now, then per operation: join (conn, member id,
 * nick, ttl), leave (conn), rename (member id, nick), members, sweep.
 * Returns the members as a flat id, nick list.
 */
const PRESENCE_LUA = `
local expiry, conns, members, counts = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, channel, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function publish(kind, id, nick, old)
  local event = {type = kind, member = {id = id, nick = nick}}
  if old then event.old = old end
  redis.call('PUBLISH', channel, 'P' .. cjson.encode(event))
end
local function remove(conn)
  redis.call('ZREM', expiry, conn)
  local id = redis.call('HGET', conns, conn)
  if not id then return end
  redis.call('HDEL', conns, conn)
  if redis.call('HINCRBY', counts, id, -1) <= 0 then
    redis.call('HDEL', counts, id)
    local nick = redis.call('HGET', members, id)
    redis.call('HDEL', members, id)
    if nick then publish('leave', id, nick) end
  end
end
local function sweep()
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now)) do remove(conn) end
end
if op == 'join' then
  local conn, id, nick, ttl = ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7])
  sweep()
  local prev = redis.call('HGET', conns, conn)
  if prev and prev ~= id then
    remove(conn)
    prev = nil
  end
  redis.call('ZADD', expiry, now + ttl, conn)
  if not prev then
    redis.call('HSET', conns, conn, id)
    redis.call('HINCRBY', counts, id, 1)
  end
  local known = redis.call('HGET', members, id)
  if not known then
    redis.call('HSET', members, id, nick)
    publish('join', id, nick)
  elseif known ~= nick then
    redis.call('HSET', members, id, nick)
    publish('rename', id, nick, known)
  end
  -- Should every instance die, the keys go by themselves.
  local keep = ttl * 2 + 10000
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
  end
elseif op == 'leave' then
  remove(ARGV[4])
elseif op == 'rename' then
  local id, nick = ARGV[4], ARGV[5]
  local old = redis.call('HGET', members, id)
  if old and old ~= nick then
    redis.call('HSET', members, id, nick)
    publish('rename', id, nick, old)
  end
  return {}
elseif op == 'sweep' then
  sweep()
  return {}
else
  sweep()
end
return redis.call('HGETALL', members)
`;

/** A Lua script and the SHA-1 that `EVALSHA` names it by. */
interface Script {
  lua: string;
  sha: string;
}

interface Scripts {
  append: Script;
  read: Script;
  presence: Script;
}

async function script(lua: string): Promise<Script> {
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(lua));
  const sha = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return { lua, sha };
}

/** What a message keeps in its stream entry besides id, epoch and bytes. */
interface Header {
  ts: number;
  from: Member | null;
  sender?: string;
  cid?: string;
  text?: string;
  name?: string;
  mime?: string;
  size?: number;
}

type Listener = (event: EngineEvent) => void;

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
  /** Events from the channel, not yet delivered. */
  queue: EngineEvent[];
  pumping: boolean;
  active: Promise<void>;
}

const decoder = new TextDecoder();

function sizeOf(text: string | undefined, kept: number): number {
  return (text?.length ?? 0) * 2 + kept + 128;
}

function toBuffer(data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function message(room: string, epoch: string, id: number, header: Header): StoredMessage {
  const m: StoredMessage = {
    room,
    epoch,
    id,
    ts: header.ts,
    from: header.from ?? null,
    sender: header.sender,
    cid: header.cid,
  };
  if (header.text !== undefined) {
    m.text = header.text;
  } else {
    m.name = header.name;
    m.mime = header.mime;
    m.size = header.size;
  }
  return m;
}

/** Parses a stream entry, `[id, [field, value, ...]]`, read as buffers. */
function parseEntry(room: string, epoch: string, entry: unknown): StoredMessage {
  const [rawId, fields] = entry as [Buffer, Buffer[]];
  let header: Header | undefined;
  let data: Uint8Array | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i].toString();
    if (name === "h") header = JSON.parse(decoder.decode(fields[i + 1]));
    else if (name === "d") data = new Uint8Array(fields[i + 1]);
  }
  if (!header) throw new TypeError(`Cannot read stream entry ${rawId}: it has no header`);
  const m = message(room, epoch, parseInt(rawId.toString(), 10), header);
  if (data && m.text === undefined) m.data = data;
  return m;
}

/** Parses a channel message: `M<id> <epoch>\n<header>\n<bytes>` or `P<event JSON>`. */
function parseEvent(room: string, payload: Buffer): EngineEvent {
  if (payload[0] === 0x50 /* P */) {
    const event = JSON.parse(decoder.decode(payload.subarray(1)));
    if (event.type === "rename") {
      return {
        type: "rename",
        member: { id: event.member.id, nick: event.member.nick },
        old: event.old,
      };
    }
    return { type: event.type, member: { id: event.member.id, nick: event.member.nick } };
  }
  if (payload[0] !== 0x4d /* M */) {
    throw new SyntaxError(`Cannot parse channel message: it starts with byte ${payload[0]}`);
  }
  const first = payload.indexOf(0x0a);
  const second = payload.indexOf(0x0a, first + 1);
  if (first < 0 || second < 0) throw new SyntaxError("Cannot parse channel message: no header");
  const [id, epoch] = decoder.decode(payload.subarray(1, first)).split(" ");
  const header: Header = JSON.parse(decoder.decode(payload.subarray(first + 1, second)));
  const m = message(room, epoch, parseInt(id, 10), header);
  if (m.text === undefined) m.data = new Uint8Array(payload.subarray(second + 1));
  return { type: "message", message: m };
}

/** How long a closing socket may take before it is destroyed. */
const DISCONNECT_MS = 50;

/** Closes a client for good and waits until its socket and timers are gone. */
async function shut(client: Redis): Promise<void> {
  const ended = () =>
    new Promise<void>((resolve) => {
      if (client.status === "end") resolve();
      else client.once("end", () => resolve());
    });
  if (client.status === "ready") {
    const done = ended();
    try {
      await client.quit();
      await done;
      return;
    } catch {
      // Not answered: disconnect below.
    }
  }
  if (client.status === "end") return;
  const live = client.status === "connecting" || client.status === "connect" ||
    client.status === "ready";
  // Between attempts there is no socket to wait for, only the client's timer
  // that destroys the previous one.
  const done = live ? ended() : new Promise((resolve) => setTimeout(resolve, DISCONNECT_MS + 10));
  client.disconnect();
  await done;
}

function pairs(flat: unknown): Member[] {
  const list = flat as string[];
  const members: Member[] = [];
  for (let i = 0; i + 1 < list.length; i += 2) members.push({ id: list[i], nick: list[i + 1] });
  return members;
}

/** Keeps rooms in Redis, shared by every instance on the same Redis and prefix. */
export class RedisEngine implements Engine {
  #options: RedisEngineOptions;
  #log: Logger;
  #now: () => number;
  #prefix: string;
  /** Commands. */
  #redis: Redis;
  /** Pub/sub only. */
  #sub: Redis;
  #scripts: Scripts;
  #feeds = new Map<string, Feed>();
  #byChannel = new Map<string, Feed>();
  /** The subscriber is connected and subscribed to every feed's channel. */
  #subActive = false;
  /** Subscriptions waiting for the subscriber to come back. */
  #waiters = new Set<() => void>();
  /** Counts subscriber disconnections: a gap fill read before one is void. */
  #generation = 0;
  #timer?: ReturnType<typeof setInterval>;
  #closed = false;
  #down = false;

  private constructor(
    options: RedisEngineOptions,
    logger: Logger,
    scripts: Scripts,
  ) {
    this.#options = options;
    this.#log = logger;
    this.#now = options.now ?? Date.now;
    this.#prefix = options.keyPrefix ?? "parley:";
    this.#scripts = scripts;
    const maxRetryMs = options.maxRetryMs ?? 1000;
    const common = {
      lazyConnect: true,
      protocol: 2 as const,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      autoResubscribe: false,
      commandTimeout: options.commandTimeoutMs ?? 2000,
      connectTimeout: options.commandTimeoutMs ?? 2000,
      disconnectTimeout: DISCONNECT_MS,
      retryStrategy: (attempt: number) =>
        Math.min(maxRetryMs, 50 * 2 ** Math.min(attempt, 10)) + Math.floor(Math.random() * 50),
    };
    this.#redis = new Redis(options.redisUrl, { ...common, connectionName: "parley" });
    this.#sub = new Redis(options.redisUrl, { ...common, connectionName: "parley-sub" });
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
          this.#log.info("redis_reconnected", {});
        }
      });
    }
    this.#sub.on("close", () => {
      this.#subActive = false;
      this.#generation++;
      for (const feed of this.#feeds.values()) feed.stale = true;
    });
    this.#sub.on("ready", () => this.#resubscribe());
    this.#sub.on("messageBuffer", (channel: Buffer, payload: Buffer) => {
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
    const scripts = {
      append: await script(APPEND_LUA),
      read: await script(READ_LUA),
      presence: await script(PRESENCE_LUA),
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
        url: this.#options.redisUrl.replace(/\/\/[^@/]*@/, "//***@"),
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

  async append(room: string, draft: MessageDraft): Promise<AppendResult> {
    const ts = this.#now();
    const isText = draft.text !== undefined;
    const data = isText ? undefined : draft.data ?? new Uint8Array(0);
    const kept = data !== undefined && data.byteLength <= this.#options.historyFileBytes;
    const header: Header = {
      ts,
      from: draft.from,
      sender: draft.sender,
      cid: draft.cid,
    };
    if (isText) {
      header.text = draft.text;
    } else {
      header.name = draft.name ?? "file";
      header.mime = draft.mime ?? "application/octet-stream";
      header.size = data!.byteLength;
    }
    const field = draft.sender !== undefined && draft.cid !== undefined
      ? `${draft.sender}\0${draft.cid}`
      : "";
    const reply = await this.#eval(
      this.#scripts.append,
      [this.#key(room, "meta"), this.#key(room, "log"), this.#key(room, "dedup")],
      [
        newEpoch(),
        field,
        JSON.stringify(header),
        data ? toBuffer(data) : "",
        isText ? "t" : kept ? "f" : "F",
        sizeOf(draft.text, kept ? data!.byteLength : 0),
        this.#options.historySize,
        this.#options.historyBytes,
        this.#channel(room),
      ],
      true,
    ) as [Buffer, Buffer, unknown];
    const epoch = reply[1].toString();
    if (reply[0].toString() === "dup") {
      return { message: parseEntry(room, epoch, reply[2]), duplicate: true };
    }
    const stored = message(room, epoch, parseInt((reply[2] as Buffer).toString(), 10), header);
    if (data) stored.data = data;
    return { message: stored, duplicate: false };
  }

  async read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const reply = await this.#eval(
      this.#scripts.read,
      [this.#key(room, "meta"), this.#key(room, "log")],
      [newEpoch(), after?.epoch ?? "", after?.id ?? 0, Math.max(0, Math.floor(limit))],
      true,
    ) as [Buffer, Buffer, Buffer, unknown[]];
    const epoch = reply[0].toString();
    const flag = reply[2].toString();
    const messages = reply[3].map((entry) => parseEntry(room, epoch, entry));
    if (flag !== "1") messages.reverse();
    return {
      epoch,
      head: parseInt(reply[1].toString(), 10),
      recovered: flag === "1" ? true : flag === "0" ? false : null,
      messages,
    };
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
   * starts. Waits for a reconnecting subscriber up to the command timeout, so
   * a short blip delays a join instead of failing it.
   */
  async #activate(feed: Feed) {
    const deadline = Date.now() + (this.#options.commandTimeoutMs ?? 2000);
    while (true) {
      try {
        await this.#whenActive(deadline - Date.now());
        await this.#sub.subscribe(feed.channel);
        break;
      } catch (error) {
        // The socket may be dead before the client noticed: look again shortly.
        if (this.#closed || Date.now() + 50 >= deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    const { epoch, head } = await this.read(feed.room, undefined, 0);
    feed.epoch = epoch;
    feed.lastId = head;
    feed.ready = true;
    this.#pump(feed);
  }

  #drop(feed: Feed) {
    if (this.#feeds.get(feed.room) !== feed) return;
    this.#feeds.delete(feed.room);
    this.#byChannel.delete(feed.channel);
    feed.queue = [];
    if (this.#sub.status === "ready" && !this.#closed) {
      this.#sub.unsubscribe(feed.channel).catch(() => {});
    }
  }

  /** After the subscriber reconnected: subscribe again, then fill every feed's gap. */
  async #resubscribe() {
    if (this.#closed) return;
    const feeds = [...this.#feeds.values()];
    for (const feed of feeds) feed.stale = true;
    try {
      if (feeds.length > 0) await this.#sub.subscribe(...feeds.map((f) => f.channel));
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
      feed.queue.push(parseEvent(feed.room, payload));
    } catch (error) {
      this.#log.error("redis_bad_event", { room: feed.room, error: String(error) });
      return;
    }
    this.#pump(feed);
  }

  /** Delivers queued events in order; a gap is filled from the stream first. */
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
          const event = feed.queue.shift();
          if (!event) break;
          if (event.type === "message") {
            const m = event.message;
            if (m.epoch === feed.epoch && m.id <= feed.lastId) continue;
            if (m.epoch !== feed.epoch || m.id !== feed.lastId + 1) {
              feed.queue.unshift(event);
              feed.stale = true;
              continue;
            }
            feed.lastId = m.id;
          }
          this.#emit(feed, event);
        }
      } finally {
        feed.pumping = false;
      }
    })().catch((error) => {
      // Stays stale: the next message, reconnection or sweep tries again.
      this.#log.warn("redis_gap_fill_failed", { room: feed.room, error: String(error) });
    });
  }

  /** Delivers what the room's stream holds after the last delivered message. */
  async #catchUp(feed: Feed) {
    const { historySize } = this.#options;
    const generation = this.#generation;
    const result = await this.read(feed.room, { epoch: feed.epoch, id: feed.lastId }, historySize);
    // Read before the subscriber came back: what came between may be missing.
    if (this.#feeds.get(feed.room) !== feed || generation !== this.#generation) return;
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
    for (const m of result.messages) {
      if (!sameEpoch || m.id > lastId) this.#emit(feed, { type: "message", message: m });
    }
    // Messages of an epoch that is gone can never be delivered in order.
    feed.queue = feed.queue.filter((e) => e.type !== "message" || e.message.epoch === feed.epoch);
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
    for (const feed of this.#feeds.values()) {
      if (feed.stale) this.#pump(feed);
      this.#presence(feed.room, "sweep", []).catch((error) =>
        this.#log.debug("redis_sweep_failed", { room: feed.room, error: String(error) })
      );
    }
  }

  async #presence(room: string, op: string, args: (string | number)[]): Promise<Member[]> {
    const reply = await this.#eval(
      this.#scripts.presence,
      [
        this.#key(room, "expiry"),
        this.#key(room, "conns"),
        this.#key(room, "members"),
        this.#key(room, "counts"),
      ],
      [op, this.#channel(room), this.#now(), ...args],
      false,
    );
    return pairs(reply);
  }

  join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    return this.#presence(room, "join", [conn, member.id, member.nick, Math.max(0, ttlMs)]);
  }

  async leave(room: string, conn: string): Promise<void> {
    await this.#presence(room, "leave", [conn]);
  }

  async rename(room: string, memberId: string, nick: string): Promise<void> {
    await this.#presence(room, "rename", [memberId, nick]);
  }

  members(room: string): Promise<Member[]> {
    return this.#presence(room, "members", []);
  }

  async ready(): Promise<boolean> {
    if (this.#closed || this.#sub.status !== "ready" || !this.#subActive) return false;
    try {
      return await this.#redis.ping() === "PONG";
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    for (const wake of [...this.#waiters]) wake();
    for (const feed of this.#feeds.values()) feed.listeners.clear();
    this.#feeds.clear();
    this.#byChannel.clear();
    await Promise.all([this.#redis, this.#sub].map(shut));
  }
}
