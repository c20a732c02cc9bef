/**
 * The room hub: keeps the sockets of each room and relays what the engine
 * publishes to them, in raw or rich form.
 *
 * The hub only needs {@linkcode Socket}, a small part of `WebSocket`, so tests
 * can hand it plain objects.
 *
 * @module
 */

import type { Engine, EngineEvent, MessageDraft, Unsubscribe } from "./engine.ts";
import { authorizeChange, type Change } from "./lifecycle.ts";
import { type Logger, silentLogger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import {
  cidOf,
  type ClientEnvelope,
  CloseCode,
  encode,
  type ErrorCode,
  type Limits,
  MAX_PAGE,
  type Member,
  messageEnvelope,
  messageObject,
  parseClientEnvelope,
  type Position,
  ProtocolError,
  rawText,
  type ServerEvent,
  type StoredMessage,
  TRANSIENT_ERRORS,
} from "./protocol.ts";
import { DEFAULT_QUEUE, Pacer } from "./rate_limit.ts";

/** The part of a WebSocket the hub uses. */
export interface Socket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

const OPEN = 1;

/**
 * Memory, in bytes, that one queued frame costs Deno beyond its payload (an
 * async write op and its buffers), as measured with short frames on Deno 2.9.
 */
export const FRAME_OVERHEAD = 1024;

/** Close code for a peer that does not read fast enough. */
export const SLOW_CONSUMER = CloseCode.slowConsumer;

/** How long a typing indicator lasts unless renewed, in ms. */
export const TYPING_TTL_MS = 6000;
/** A connection's typing signals closer together than this are dropped, in ms. */
export const TYPING_INTERVAL_MS = 2000;
/**
 * The binary frame of a `file` envelope refused for its size is read and
 * dropped, leaving the connection open, up to this many times
 * `maxMessageBytes`; a larger one closes the connection with 1009.
 */
export const REFUSED_FILE_FACTOR = 4;

/** Options of {@linkcode Hub}. */
export interface HubOptions {
  engine: Engine;
  /** Messages a rich client gets on a fresh join. */
  joinHistory: number;
  /** Most messages a raw client may ask for with `?history=N`. */
  historySize: number;
  maxMessageBytes: number;
  maxTextLength: number;
  /**
   * A peer that falls this many bytes behind its room and stops draining is
   * closed with {@linkcode SLOW_CONSUMER} (it resumes from its last id).
   */
  maxBufferedBytes: number;
  /**
   * While a peer's queue is over this, the hub stops writing to it and keeps
   * its place in the room's buffer instead (default 256 KiB). The queue is
   * counted as `bufferedAmount` plus {@linkcode FRAME_OVERHEAD} per queued
   * frame: each pending send costs Deno about that much memory whatever its
   * size, so a queue of short frames must stay short.
   */
  lowWatermark?: number;
  /**
   * A peer over `maxBufferedBytes` behind is evicted once its queue has not
   * drained for this long (default 2000 ms).
   */
  stallMs?: number;
  /** Messages per second a connection may send on average (no limit when unset). */
  rateLimit?: number;
  /** Messages a connection may send at once. */
  rateBurst?: number;
  /**
   * Frames over the burst that wait their turn instead of being dropped
   * (a client resending its backlog after a reconnect). @default 256
   */
  rateQueue?: number;
  /** Bytes of such frames. @default 16 MiB */
  rateQueueBytes?: number;
  /** Presence entries expire this long after their last refresh. */
  presenceTtlMs?: number;
  /** Refresh presence entries this often (no timer when unset). */
  presenceRefreshMs?: number;
  logger?: Logger;
  metrics?: Metrics;
}

/** How a socket joins. */
export interface ConnectInfo {
  room: string;
  /** True for the `parley.v1` subprotocol. */
  rich: boolean;
  /** Raw mode: messages of history to send first. */
  history?: number;
  /** Rich mode: last position seen, from the URL (the `hello` envelope overrides it). */
  last?: Position;
  /**
   * Rich mode: why the URL's resume position (`?epoch=&last=`) did not parse.
   * A `hello` without its own `last` is then answered `bad_last` in band.
   */
  badLast?: string;
  /** Client address, for logs. */
  ip?: string;
}

/** Makes the public member id of a private client identity. */
async function memberId(client: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(client));
  return Array.from(new Uint8Array(digest).slice(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/** The `cid` of a text frame that was not parsed yet, if it has a well-formed one. */
function cidOfFrame(frame: string): string | undefined {
  try {
    const value: unknown = JSON.parse(frame);
    return typeof value === "object" && value !== null
      ? cidOf(value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

/** Guesses a media type from the first bytes of a file. */
export function sniffMime(data: Uint8Array): string {
  const starts = (...sig: number[]) => sig.every((b, i) => data[i] === b);
  if (starts(0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x47, 0x49, 0x46, 0x38)) return "image/gif";
  if (starts(0x52, 0x49, 0x46, 0x46) && data[8] === 0x57 && data[9] === 0x45) return "image/webp";
  return "application/octet-stream";
}

/** Wire forms of one message, each built at most once per fan-out. */
class Outgoing {
  #envelope?: string;
  #raw?: string | null;
  constructor(readonly message: StoredMessage) {}
  get envelope(): string {
    return this.#envelope ??= messageEnvelope(this.message);
  }
  /** The raw client's text frame, or null when it gets none. */
  get raw(): string | null {
    if (this.#raw === undefined) this.#raw = rawText(this.message) ?? null;
    return this.#raw;
  }
}

/** One event in a room's buffer, kept while a lagging peer still needs it. */
interface Entry {
  seq: number;
  event: EngineEvent;
  out?: Outgoing;
  /** Bytes of all room events before this one. */
  before: number;
}

/** Bytes an event costs a peer, for the lag bound. */
function costOf(event: EngineEvent): number {
  if (event.type !== "message") return 64;
  const m = event.message;
  return 64 + (m.text?.length ?? 0) + (m.data?.byteLength ?? 0);
}

class Room {
  readonly peers = new Set<Connection>();
  /**
   * Events not yet sent to every lagging peer, oldest first, from index
   * `head`. One copy per event, whatever the number of peers.
   */
  entries: Entry[] = [];
  head = 0;
  /** Sequence number of the newest event, and buffer bytes up to it. */
  seq = 0;
  total = 0;
  /** Peers whose place (`cursor`) is behind `seq`. */
  readonly lagging = new Set<Connection>();
  timer?: ReturnType<typeof setTimeout>;
  /** Resolves once the engine subscription is active. */
  ready!: Promise<void>;
  unsubscribe?: Unsubscribe;
  /** Set when the room emptied: an unsubscribe still to come must run at once. */
  dropped = false;
  constructor(readonly name: string) {}
}

let connectionCounter = 0;
const instance = crypto.randomUUID().slice(0, 8);

/** One socket in one room. */
export class Connection {
  readonly #number = ++connectionCounter;
  /** Rich mode: the member, once `hello` was accepted. */
  member?: Member;
  #client?: string;
  #state: "greeting" | "joining" | "live" | "closed";
  /** Inbound frames held while joining. */
  #inbox: (string | Uint8Array)[] | null = null;
  /** Outbound events held while the replay is read. */
  #backlog: EngineEvent[] | null = null;
  /** Highest message id sent, to skip overlaps between replay and live. */
  #lastId = 0;
  #epoch?: string;
  #pendingFile?: Extract<ClientEnvelope, { type: "file" }>;
  /** A `file` envelope was refused: its binary frame is dropped too. */
  #dropNextBinary = false;
  /** The last frame received was text: a binary frame now belongs to it. */
  #afterText = false;
  /** When this connection last signalled typing (`performance.now()`). */
  #typingAt = -Infinity;
  /** Sequence number of the last room event this peer got, while lagging. */
  cursor = 0;
  /** When this lagging peer last had room in its queue (`performance.now()`). */
  progressAt = 0;
  /** Frames and bytes sent so far, for the average frame size. */
  #framesSent = 0;
  #bytesSent = 0;
  /** Queue cost at the last reading, and cost of what was sent since. */
  #cost = 0;
  #unread = 0;
  /** In its room's `lagging` set. */
  lagging = false;
  /** The rate limit, when there is one. */
  #pacer?: Pacer<string | Uint8Array>;

  constructor(
    readonly hub: Hub,
    readonly socket: Socket,
    readonly info: ConnectInfo,
  ) {
    this.#state = info.rich ? "greeting" : "live";
    const { rateLimit, rateBurst, rateQueue, rateQueueBytes } = hub.options;
    if (rateLimit && rateBurst) {
      this.#pacer = new Pacer({
        rate: rateLimit,
        burst: rateBurst,
        queue: rateQueue,
        queueBytes: rateQueueBytes,
      }, {
        pass: (frame) => this.#accept(frame),
        drop: (frame, flood) => this.#limited(frame, flood),
      });
    }
  }

  /** Unique in this process and across instances (built when asked: it is mostly unused). */
  get id(): string {
    return `${instance}-${this.#number}`;
  }

  get rich(): boolean {
    return this.info.rich;
  }

  get closed(): boolean {
    return this.#state === "closed";
  }

  /**
   * Sends, unless the socket is not open. Room traffic reaches here only
   * while the peer's queue is under the low watermark (see `Hub.#fanOut`).
   */
  #send(data: string | Uint8Array): boolean {
    if (this.#state === "closed" || this.socket.readyState !== OPEN) return false;
    try {
      this.socket.send(data);
      const size = typeof data === "string" ? data.length : data.byteLength;
      this.#framesSent++;
      this.#bytesSent += size;
      this.#unread += size + FRAME_OVERHEAD;
      this.hub.traffic.bytesOut += size;
      return true;
    } catch (error) {
      this.hub.log.warn("send_failed", { conn: this.id, error: String(error) });
      this.close(CloseCode.internal, "send failed");
      return false;
    }
  }

  #event(event: ServerEvent) {
    this.#send(encode(event));
  }

  #error(code: ErrorCode, message: string, cid?: string) {
    this.#event({
      type: "error",
      code,
      message,
      cid,
      retry: TRANSIENT_ERRORS.has(code) || undefined,
    });
  }

  #sendMessage(out: Outgoing) {
    const m = out.message;
    if (m.epoch === this.#epoch && m.id <= this.#lastId) return;
    this.#epoch = m.epoch;
    this.#lastId = m.id;
    this.hub.traffic.relays++;
    if (this.rich) {
      if (!this.#send(out.envelope)) return;
      if (m.data) this.#send(m.data);
    } else if (out.raw !== null) {
      this.#send(out.raw);
    } else if (m.data && m.kind === undefined) {
      this.#send(m.data);
    }
  }

  /**
   * What this peer's socket queue costs: its `bufferedAmount` plus
   * {@linkcode FRAME_OVERHEAD} for each frame it likely holds, estimated from
   * the average size of the frames sent to it.
   */
  #queueCost(): number {
    const buffered = this.socket.bufferedAmount;
    this.#unread = 0;
    if (buffered === 0) return this.#cost = 0;
    const average = this.#framesSent > 0 ? this.#bytesSent / this.#framesSent : buffered;
    return this.#cost = buffered + (buffered / Math.max(1, average)) * FRAME_OVERHEAD;
  }

  /**
   * Whether the queue costs at most `limit`. The queue only grows by what
   * this connection sends, so the last reading plus what was sent since is an
   * upper bound: while that is under the limit, Deno is not asked (an op
   * call per copy sent, the hub's largest cost after `send` itself). With
   * `ask` false, only the bound is used: within one synchronous loop Deno
   * cannot drain the queue (its writes complete on the event loop), so asking
   * again would only cost.
   */
  queueWithin(limit: number, ask = true): boolean {
    return this.#cost + this.#unread <= limit || (ask && this.#queueCost() <= limit);
  }

  /** Delivers one engine event (the room builds `out` once for all peers). */
  deliver(event: EngineEvent, out?: Outgoing): void {
    if (this.#state === "closed") return;
    if (this.#backlog) {
      this.#backlog.push(event);
      return;
    }
    if (event.type === "message") {
      this.#sendMessage(out ?? new Outgoing(event.message));
      return;
    }
    if (!this.rich || !this.member) return;
    if (event.type === "typing") {
      if (event.member.id !== this.member.id) {
        this.#event({ type: "typing", member: event.member, ttl: TYPING_TTL_MS });
      }
      return;
    }
    if (event.type === "rename" && event.member.id === this.member.id) {
      this.member = { ...event.member };
    }
    this.#event(event);
  }

  /** Takes one frame from the socket. */
  receive(data: string | ArrayBuffer | Uint8Array): void {
    if (this.#state === "closed") return;
    const frame = typeof data === "string" || data instanceof Uint8Array
      ? data
      : new Uint8Array(data);
    const size = this.hub.frameSize(frame);
    const { maxMessageBytes } = this.hub.options;
    const { traffic } = this.hub;
    if (this.rich) traffic.richIn++;
    else traffic.rawIn++;
    traffic.bytesIn += size;
    // In rich mode a binary frame right after a text frame belongs to it (the
    // bytes of a `file` envelope): they pass, wait or are dropped together.
    const rider = this.rich && typeof frame !== "string" && this.#afterText;
    this.#afterText = this.rich && typeof frame === "string";
    if (size > maxMessageBytes && !(rider && size <= REFUSED_FILE_FACTOR * maxMessageBytes)) {
      this.hub.metrics.inc("parley_drops_total", { reason: "too_big" });
      this.close(CloseCode.tooBig, `message too big: the limit is ${maxMessageBytes} bytes`);
      return;
    }
    if (this.#pacer) this.#pacer.push(frame, size, rider);
    else this.#accept(frame);
  }

  /** Takes a frame whose turn has come. */
  #accept(frame: string | Uint8Array) {
    if (this.#state === "closed") return;
    if (this.#inbox) {
      this.#inbox.push(frame);
      return;
    }
    this.#handle(frame);
  }

  /**
   * Answers a frame dropped because the rate queue is full; closes a sender
   * that keeps overflowing it (a flood, not a paste or a resent backlog).
   */
  #limited(frame: string | Uint8Array, flood: boolean) {
    this.hub.metrics.inc("parley_rate_limited_total");
    this.hub.metrics.inc("parley_drops_total", { reason: "rate" });
    if (flood) {
      this.close(CloseCode.policy, "flood: too many messages; slow down");
      return;
    }
    if (!this.rich) return;
    const cid = typeof frame === "string" ? cidOfFrame(frame) : undefined;
    const { rateLimit, rateBurst } = this.hub.options;
    this.#error(
      "rate_limited",
      `too many messages: at most ${rateLimit} a second, ${rateBurst} at once, ` +
        `${this.hub.options.rateQueue ?? DEFAULT_QUEUE} waiting; this one was dropped`,
      cid,
    );
  }

  /** The limits this connection must respect, for `welcome`. */
  #limits(): Limits {
    const { maxTextLength, maxMessageBytes, rateLimit, rateBurst, rateQueue } = this.hub.options;
    const limited = this.#pacer !== undefined;
    return {
      text: maxTextLength,
      bytes: maxMessageBytes,
      rate: limited ? rateLimit! : null,
      burst: limited ? rateBurst! : null,
      queue: limited ? rateQueue ?? DEFAULT_QUEUE : null,
      page: MAX_PAGE,
      typing: TYPING_TTL_MS,
    };
  }

  #handle(frame: string | Uint8Array) {
    const { engine } = this.hub.options;
    const room = this.info.room;
    if (!this.rich) {
      const draft: MessageDraft = typeof frame === "string"
        ? { from: null, text: frame }
        : { from: null, data: frame, name: "file", mime: sniffMime(frame) };
      this.#append(draft);
      return;
    }
    if (typeof frame !== "string") {
      this.#binary(frame);
      return;
    }
    let envelope: ClientEnvelope;
    try {
      envelope = parseClientEnvelope(frame, this.hub.options);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.hub.metrics.inc("parley_protocol_errors_total", { code: error.code });
      if (error.type === "file") this.#dropNextBinary = true;
      this.#error(error.code, error.message, error.cid);
      return;
    }
    // A file's bytes must come right after its envelope: anything else in
    // between orphans the envelope, so it can never pair with other bytes.
    if (envelope.type !== "file") this.#pendingFile = undefined;
    if (envelope.type === "hello") {
      if (this.#state !== "greeting") {
        this.#error("already_joined", "hello: this connection has already joined");
      } else {
        this.#join(envelope).catch((error) => this.#failed("join", error));
      }
      return;
    }
    if (!this.member) {
      if (envelope.type === "file") this.#dropNextBinary = true;
      this.#error(
        "hello_required",
        `${envelope.type}: send hello first`,
        "cid" in envelope ? envelope.cid : undefined,
      );
      return;
    }
    switch (envelope.type) {
      case "message":
        this.#append({
          from: this.member,
          sender: this.#client,
          cid: envelope.cid,
          text: envelope.text,
          replyTo: envelope.replyTo,
        }, envelope.cid);
        break;
      case "file":
        this.#pendingFile = envelope;
        this.#dropNextBinary = false;
        break;
      case "edit":
        this.#change({
          kind: "edit",
          target: envelope.id,
          text: envelope.text,
          cid: envelope.cid,
        });
        break;
      case "delete":
        this.#change({ kind: "delete", target: envelope.id, cid: envelope.cid });
        break;
      case "history":
        this.#history(envelope.before, envelope.limit, envelope.cid);
        break;
      case "typing":
        this.#typing();
        break;
      case "nick":
        engine.rename(room, this.member.id, envelope.nick).catch((error) =>
          this.#failed("rename", error)
        );
        break;
      case "ping":
        this.#event({ type: "pong", ts: Date.now() });
        break;
    }
  }

  #binary(data: Uint8Array) {
    if (!this.member) {
      this.#error("hello_required", "binary frame: send hello first");
      return;
    }
    if (this.#dropNextBinary) {
      this.#dropNextBinary = false;
      this.hub.metrics.inc("parley_drops_total", { reason: "refused_file" });
      return;
    }
    const file = this.#pendingFile;
    this.#pendingFile = undefined;
    const { maxMessageBytes } = this.hub.options;
    if (!file && data.byteLength > maxMessageBytes) {
      this.hub.metrics.inc("parley_drops_total", { reason: "too_big" });
      this.close(CloseCode.tooBig, `message too big: the limit is ${maxMessageBytes} bytes`);
      return;
    }
    if (file && file.size !== data.byteLength) {
      this.#error(
        "bad_file",
        `file: announced ${file.size} bytes, the binary frame has ${data.byteLength}`,
        file.cid,
      );
      return;
    }
    this.#append({
      from: this.member,
      sender: file ? this.#client : undefined,
      cid: file?.cid,
      data,
      name: file?.name ?? "file",
      mime: file?.mime ?? sniffMime(data),
      replyTo: file?.replyTo,
    }, file?.cid);
  }

  /** An edit or delete of an earlier message, once allowed. */
  #change(change: Change) {
    const { engine } = this.hub.options;
    authorizeChange(engine, this.info.room, change, { member: this.member!, sender: this.#client })
      .then(
        (draft) => this.#append(draft, change.cid),
        (error) => {
          if (this.closed) return;
          if (!(error instanceof ProtocolError)) {
            this.hub.log.error(`${change.kind}_failed`, { conn: this.id, error: String(error) });
            this.#error(
              "unavailable",
              `${change.kind}: the server could not check it; send it again`,
              change.cid,
            );
            return;
          }
          this.hub.metrics.inc("parley_protocol_errors_total", { code: error.code });
          this.#error(error.code, error.message, error.cid);
        },
      );
  }

  /** Answers a scroll-back request with one `history` envelope. */
  #history(before: number, limit: number, cid?: string) {
    this.hub.options.engine.history(this.info.room, before, limit).then(
      (page) =>
        this.#event({
          type: "history",
          epoch: page.epoch,
          before,
          cid,
          // Pages carry no bytes: a file's envelope says `omitted`.
          messages: page.messages.map((m) => messageObject({ ...m, data: undefined })),
          more: page.more,
        }),
      (error) => this.#failed("history", error, cid),
    );
  }

  /** Tells the room this member is typing, at most once per interval. */
  #typing() {
    const now = performance.now();
    if (now - this.#typingAt < TYPING_INTERVAL_MS) return;
    this.#typingAt = now;
    this.hub.options.engine.signal(this.info.room, { type: "typing", member: this.member! })
      .catch((error) => this.hub.log.warn("typing_failed", { error: String(error) }));
  }

  #append(draft: MessageDraft, cid?: string) {
    this.hub.options.engine.append(this.info.room, draft).then(
      ({ message, duplicate }) => {
        if (cid !== undefined) {
          this.#event({ type: "ack", cid, id: message.id, epoch: message.epoch, duplicate });
        }
      },
      (error) => {
        this.hub.log.error("append_failed", { conn: this.id, error: String(error) });
        this.hub.metrics.inc("parley_drops_total", { reason: "engine" });
        if (this.rich) {
          this.#error(
            "unavailable",
            "the server could not confirm it was stored; send it again with the same cid",
            cid,
          );
        }
      },
    );
  }

  #failed(what: string, error: unknown, cid?: string) {
    this.hub.log.error(`${what}_failed`, { conn: this.id, error: String(error) });
    if (this.rich) {
      this.#error("unavailable", `${what}: the server could not do it; try again`, cid);
    }
  }

  /**
   * Raw mode: join at once, with `?history=N` first when asked. Frames wait
   * until the room's subscription is active, so the sender sees its own.
   */
  async start(): Promise<void> {
    if (this.rich) return;
    const history = Math.min(this.info.history ?? 0, this.hub.options.historySize);
    this.#backlog = history > 0 ? [] : null;
    this.#inbox = [];
    try {
      await this.hub.add(this);
      if (history > 0 && !this.closed) {
        const { messages } = await this.hub.options.engine.read(this.info.room, undefined, history);
        // Raw history shows messages as they are now: no edit or delete lines.
        for (const m of messages) if (m.kind === undefined) this.#sendMessage(new Outgoing(m));
      }
    } catch (error) {
      this.hub.log.error("start_failed", { conn: this.id, error: String(error) });
    }
    this.#flushBacklog();
    this.#drainInbox();
  }

  #drainInbox() {
    const inbox = this.#inbox ?? [];
    this.#inbox = null;
    for (const frame of inbox) if (!this.closed) this.#handle(frame);
  }

  #flushBacklog() {
    const backlog = this.#backlog ?? [];
    this.#backlog = null;
    for (const event of backlog) this.deliver(event);
  }

  async #join(hello: Extract<ClientEnvelope, { type: "hello" }>) {
    const { engine, joinHistory } = this.hub.options;
    const room = this.info.room;
    if (hello.last === undefined && this.info.badLast !== undefined) {
      // As a malformed `hello.last` gets: no welcome; `hello` may come again.
      this.#error("bad_last", `${this.info.badLast}; send hello with a valid last, or last: null`);
      return;
    }
    this.#state = "joining";
    this.#inbox = [];
    this.#client = hello.client;
    const id = await memberId(hello.client ?? crypto.randomUUID());
    if (this.closed) return;
    this.member = { id, nick: hello.nick };
    this.#backlog = [];
    await this.hub.add(this);
    if (this.closed) return;
    const members = await engine.join(room, this.id, this.member, this.hub.presenceTtlMs);
    if (this.closed) return;
    // Presence events so far are already in `members`.
    this.#backlog = this.#backlog.filter((e) => e.type === "message");
    const last = hello.last === null ? undefined : hello.last ?? this.info.last;
    const result = await engine.read(room, last, joinHistory);
    if (this.closed) return;
    const outcome = result.recovered === null ? "none" : result.recovered ? "recovered" : "lost";
    this.hub.metrics.inc("parley_resumes_total", { outcome });
    if (last && last.epoch === result.epoch && last.id > result.head) {
      this.#error("bad_last", `last.id: ${last.id} was never issued in epoch ${last.epoch}`);
    }
    this.#event({
      type: "welcome",
      room,
      epoch: result.epoch,
      head: result.head,
      you: this.member,
      members,
      recovered: result.recovered,
      replay: result.messages.length,
      limits: this.#limits(),
    });
    for (const m of result.messages) this.#sendMessage(new Outgoing(m));
    this.#epoch ??= result.epoch;
    this.#state = "live";
    this.#flushBacklog();
    this.hub.log.info("join", { conn: this.id, room, member: id, outcome });
    this.#drainInbox();
  }

  /** Refreshes this connection's presence entry. */
  refresh(): void {
    if (this.#state !== "live" || !this.member) return;
    this.hub.options.engine.refresh(this.info.room, this.id, this.member, this.hub.presenceTtlMs)
      .catch((error) => this.hub.log.warn("presence_failed", { error: String(error) }));
  }

  /**
   * Leaves the room at once and closes the socket. Safe to call any number of
   * times (`onclose` can fire twice; eviction comes before `onclose`).
   */
  close(code?: number, reason?: string): void {
    if (this.#state === "closed") return;
    const wasMember = this.member !== undefined && this.#state !== "greeting";
    this.#state = "closed";
    this.#inbox = null;
    this.#backlog = null;
    this.#pacer?.close();
    this.hub.remove(this);
    if (wasMember) {
      this.hub.options.engine.leave(this.info.room, this.id).catch((error) =>
        this.hub.log.warn("presence_failed", { error: String(error) })
      );
    }
    if (code !== undefined) this.hub.metrics.inc("parley_closes_total", { code });
    this.hub.log.info("close", {
      conn: this.id,
      room: this.info.room,
      by: code === undefined ? "client" : "server",
      code,
      reason,
    });
    try {
      if (this.socket.readyState < 2) this.socket.close(code, reason);
    } catch {
      // Already closing.
    }
  }
}

/** Keeps the connections of every room. */
export class Hub {
  readonly options: HubOptions;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly presenceTtlMs: number;
  /** Counters of the per-frame paths, as plain numbers (see `createMetrics`). */
  readonly traffic = { rawIn: 0, richIn: 0, bytesIn: 0, relays: 0, bytesOut: 0 };
  #rooms = new Map<string, Room>();
  #connections = new Set<Connection>();
  #timer?: ReturnType<typeof setInterval>;
  #encoder = new TextEncoder();

  constructor(options: HubOptions) {
    this.options = options;
    this.log = options.logger ?? silentLogger;
    this.metrics = options.metrics ?? createMetrics(this);
    this.presenceTtlMs = options.presenceTtlMs ?? 60_000;
    if (options.presenceRefreshMs) {
      const timer = setInterval(() => {
        for (const conn of this.#connections) conn.refresh();
      }, options.presenceRefreshMs);
      Deno.unrefTimer(timer);
      this.#timer = timer;
    }
  }

  /** Open connections, joined or not. */
  get connections(): ReadonlySet<Connection> {
    return this.#connections;
  }

  /** Names of rooms with at least one connection here. */
  get rooms(): ReadonlyMap<string, { readonly peers: ReadonlySet<Connection> }> {
    return this.#rooms;
  }

  /** Number of connections in a room. */
  roomSize(room: string): number {
    return this.#rooms.get(room)?.peers.size ?? 0;
  }

  /**
   * Bytes of a frame on the wire. For text, exact only near the cap: UTF-8
   * takes one to three bytes per UTF-16 code unit, so the length in code units
   * is returned when that alone decides.
   */
  frameSize(frame: string | Uint8Array): number {
    if (typeof frame !== "string") return frame.byteLength;
    const max = this.options.maxMessageBytes;
    if (frame.length > max || frame.length * 3 <= max) return frame.length;
    return this.#encoder.encode(frame).length;
  }

  /**
   * Starts handling a socket that just opened. Raw sockets join their room
   * now; rich ones on their `hello`.
   */
  connect(socket: Socket, info: ConnectInfo): Connection {
    const conn = new Connection(this, socket, info);
    this.#connections.add(conn);
    this.metrics.inc("parley_connections_total", { mode: info.rich ? "rich" : "raw" });
    this.log.info("open", { conn: conn.id, room: info.room, rich: info.rich, ip: info.ip });
    conn.start().catch((error) => this.log.error("start_failed", { error: String(error) }));
    return conn;
  }

  /**
   * Puts a connection in its room; subscribes the room to the engine when
   * new. Resolves once the subscription is active.
   */
  add(conn: Connection): Promise<void> {
    let room = this.#rooms.get(conn.info.room);
    if (!room) {
      const created = new Room(conn.info.room);
      room = created;
      this.#rooms.set(created.name, created);
      created.ready = this.options.engine.subscribe(
        created.name,
        (event) => this.#fanOut(created, event),
      ).then(
        (unsubscribe) => {
          if (created.dropped) unsubscribe();
          else created.unsubscribe = unsubscribe;
        },
        (error) => {
          // Without a subscription the room would be deaf here: forget it and
          // close its peers, so they reconnect (and resume) once it works.
          this.log.error("subscribe_failed", { room: created.name, error: String(error) });
          if (this.#rooms.get(created.name) === created) this.#rooms.delete(created.name);
          created.dropped = true;
          for (const peer of [...created.peers]) {
            peer.close(CloseCode.tryAgainLater, "the room is unavailable; reconnect later");
          }
          throw error;
        },
      );
    }
    room.peers.add(conn);
    return room.ready;
  }

  /** Takes a connection out of its room at once; drops the room when empty. */
  remove(conn: Connection): void {
    this.#connections.delete(conn);
    const room = this.#rooms.get(conn.info.room);
    if (!room || !room.peers.delete(conn)) return;
    conn.lagging = false;
    room.lagging.delete(conn);
    if (room.peers.size === 0) {
      room.dropped = true;
      if (room.timer !== undefined) clearTimeout(room.timer);
      room.unsubscribe?.();
      this.#rooms.delete(room.name);
    }
  }

  /**
   * Sends an event to every peer of the room. A peer whose queue is over the
   * low watermark is not written to: it keeps a cursor into the room's buffer
   * and catches up as it drains. Memory holds one copy per event, not one per
   * peer; a peer whose lag passes `maxBufferedBytes` is evicted.
   */
  #fanOut(room: Room, event: EngineEvent) {
    const out = event.type === "message" ? new Outgoing(event.message) : undefined;
    const seq = ++room.seq;
    const before = room.total;
    room.total += costOf(event);
    const low = this.options.lowWatermark ?? 256 * 1024;
    for (const peer of room.peers) {
      if (peer.lagging) continue;
      if (!peer.queueWithin(low)) {
        peer.cursor = seq - 1;
        peer.progressAt = performance.now();
        peer.lagging = true;
        room.lagging.add(peer);
        continue;
      }
      this.#deliver(peer, event, out);
    }
    if (room.lagging.size === 0) {
      room.entries.length = 0;
      room.head = 0;
      return;
    }
    room.entries.push({ seq, event, out, before });
    this.#catchUp(room);
  }

  #deliver(peer: Connection, event: EngineEvent, out?: Outgoing) {
    try {
      peer.deliver(event, out);
    } catch (error) {
      this.log.error("deliver_failed", { conn: peer.id, error: String(error) });
      peer.close(CloseCode.internal, "internal error");
    }
  }

  /**
   * Sends lagging peers what they can take now. A peer more than
   * `maxBufferedBytes` behind is evicted once its queue has not drained for
   * `stallMs`, or at once past eight times that bound: a reader that keeps up
   * is never evicted because the server outran it for a moment.
   */
  #catchUp(room: Room) {
    const low = this.options.lowWatermark ?? 256 * 1024;
    const stallMs = this.options.stallMs ?? 2000;
    const max = this.options.maxBufferedBytes;
    const now = performance.now();
    const first = room.entries[room.head];
    for (const peer of room.lagging) {
      let index = room.head + (peer.cursor + 1 - first.seq);
      if (peer.queueWithin(low)) peer.progressAt = now;
      while (index < room.entries.length && peer.queueWithin(low, false) && !peer.closed) {
        const entry = room.entries[index++];
        peer.cursor = entry.seq;
        this.#deliver(peer, entry.event, entry.out);
      }
      if (peer.closed) continue;
      if (peer.cursor === room.seq) {
        peer.lagging = false;
        room.lagging.delete(peer);
        continue;
      }
      const behind = room.total - room.entries[index].before;
      if (behind > max && (now - peer.progressAt > stallMs || behind > 8 * max)) {
        this.metrics.inc("parley_slow_consumer_evictions_total");
        peer.close(SLOW_CONSUMER, "slow consumer: fell too far behind; reconnect and resume");
      }
    }
    // Drop what every lagging peer already has.
    let min = room.seq;
    for (const peer of room.lagging) min = Math.min(min, peer.cursor);
    while (room.head < room.entries.length && room.entries[room.head].seq <= min) {
      room.entries[room.head++] = undefined as unknown as Entry;
    }
    if (room.head === room.entries.length) {
      room.entries.length = 0;
      room.head = 0;
    } else if (room.head > 1024 && room.head * 2 > room.entries.length) {
      room.entries = room.entries.slice(room.head);
      room.head = 0;
    }
    if (room.lagging.size > 0) {
      room.timer ??= setTimeout(() => {
        room.timer = undefined;
        if (!room.dropped && room.lagging.size > 0) this.#catchUp(room);
      }, 5);
    } else if (room.timer !== undefined) {
      clearTimeout(room.timer);
      room.timer = undefined;
    }
  }

  /** Closes every connection (1001 by default) and stops the presence timer. */
  close(code: number = CloseCode.goingAway, reason = "server shutting down"): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    // Detach every room first: the leaves that follow then reach no local
    // peer, instead of each of n closes announcing itself to the n still open.
    for (const room of this.#rooms.values()) {
      room.dropped = true;
      if (room.timer !== undefined) clearTimeout(room.timer);
      room.unsubscribe?.();
    }
    this.#rooms.clear();
    for (const conn of [...this.#connections]) conn.close(code, reason);
  }
}

/** The metrics of a hub, with gauges read from it. */
export function createMetrics(hub: Hub): Metrics {
  return new Metrics()
    .gauge("parley_connections", "Open WebSocket connections by mode.", () => {
      let rich = 0;
      for (const c of hub.connections) if (c.rich) rich++;
      return [[{ mode: "raw" }, hub.connections.size - rich], [{ mode: "rich" }, rich]];
    })
    .gauge("parley_rooms", "Rooms with at least one connection.", () => [[
      undefined,
      hub.rooms.size,
    ]])
    .counter("parley_connections_total", "Connections accepted, by mode.")
    .counterFrom("parley_messages_in_total", "Frames received from clients, by mode.", () => [
      [{ mode: "raw" }, hub.traffic.rawIn],
      [{ mode: "rich" }, hub.traffic.richIn],
    ])
    .counterFrom(
      "parley_bytes_in_total",
      "Bytes of binary frames and UTF-16 code units of text frames received.",
      () => [[undefined, hub.traffic.bytesIn]],
    )
    .counterFrom(
      "parley_relays_total",
      "Messages sent to peers (one per peer).",
      () => [[undefined, hub.traffic.relays]],
    )
    .counter("parley_drops_total", "Messages dropped, by reason.")
    .counter("parley_closes_total", "Connections closed by the server, by close code.")
    .counterFrom(
      "parley_bytes_out_total",
      "Bytes of binary frames and UTF-16 code units of text frames sent.",
      () => [[undefined, hub.traffic.bytesOut]],
    )
    .counter("parley_slow_consumer_evictions_total", "Peers closed for not reading.")
    .counter("parley_rate_limited_total", "Frames dropped by the rate limit.")
    .counter("parley_protocol_errors_total", "Error envelopes sent, by code.")
    .counter("parley_resumes_total", "Rich joins by resume outcome.")
    .counter("parley_rejected_total", "Upgrades refused before the handshake, by reason.");
}
