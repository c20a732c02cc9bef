/**
 * One socket in one room: its protocol state (greeting, joining, live), what
 * it may do, its rate limit, and delivery of room events to it in raw or
 * rich form. The hub (`hub.ts`) keeps the rooms and fans out to these.
 *
 * @module
 */

import { admit, checkNickFree } from "./admission.ts";
import type { BatchFrame } from "./batch.ts";
import { membersPage, WELCOME_MEMBERS } from "./presence.ts";
import type { EngineEvent, MessageDraft } from "./engine.ts";
import type { ConnectInfo, Hub, Socket } from "./hub.ts";
import { type Actor, authorizeChange, type Change } from "./lifecycle.ts";
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
  ProtocolError,
  rawText,
  type ServerEvent,
  type StoredMessage,
  TRANSIENT_ERRORS,
} from "./protocol.ts";
import { DEFAULT_QUEUE, Pacer } from "./rate_limit.ts";

const OPEN = 1;

/**
 * Memory, in bytes, that one queued frame costs Deno beyond its payload (an
 * async write op and its buffers), as measured with short frames on Deno 2.9.
 */
export const FRAME_OVERHEAD = 1024;

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

/** Envelopes a member with read-only access may not send. */
const WRITES: ReadonlySet<string> = new Set(["message", "file", "edit", "delete", "typing"]);

/** Cuts a text to at most `max` UTF-8 bytes, on a code point boundary. */
export function truncateUtf8(text: string, max: number): string {
  const encoder = new TextEncoder();
  if (encoder.encode(text).length <= max) return text;
  let out = "";
  let size = 0;
  for (const char of text) {
    const bytes = encoder.encode(char).length;
    if (size + bytes > max - 3) break;
    out += char;
    size += bytes;
  }
  return out + "...";
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
export class Outgoing {
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
  /** The client takes `batch` frames and `presence` envelopes (`"batch": true`). */
  batch = false;
  /** Sequence number of the first room event waiting in the room's batch for it, or 0. */
  batchFrom = 0;
  /** The rate limit, when there is one. */
  #pacer?: Pacer<string | Uint8Array>;
  /** What this connection may do in its room. */
  #access: "write" | "read";
  #moderator = false;
  /** Closes the connection when its token expires. */
  #expiry?: ReturnType<typeof setTimeout>;

  constructor(
    readonly hub: Hub,
    readonly socket: Socket,
    readonly info: ConnectInfo,
  ) {
    this.#state = info.rich ? "greeting" : "live";
    this.#access = info.access ?? "write";
    if (info.expires !== undefined) this.#expireAt(info.expires);
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

  /** Whether room events reach this peer through the room's batch now. */
  get batched(): boolean {
    return this.batch && this.#state === "live" && this.#backlog === null;
  }

  /**
   * What an event means for this connection itself, whether it is delivered
   * one by one or in a batch: a kick of this member closes it, a rename of
   * it changes its nick.
   *
   * @returns False when the connection closed.
   */
  prepare(event: EngineEvent): boolean {
    if (event.type === "kick" && event.member.id === this.member?.id) {
      const reason = event.reason ? `kicked: ${event.reason}` : "kicked by a moderator";
      // Said in band too: a close reason holds at most 123 bytes, and some
      // runtimes (Deno 2.5) lose the close frame on its way to a browser.
      if (this.rich) this.#error("forbidden", `you were removed from this room: ${reason}`);
      this.close(CloseCode.forbidden, truncateUtf8(reason, 123));
      return false;
    }
    if (event.type === "rename" && event.member.id === this.member?.id) {
      this.member = { ...this.member, nick: event.member.nick };
    }
    return true;
  }

  /** Sends a batch frame and the bytes of its files. */
  sendBatch(batch: BatchFrame): void {
    if (batch.last) {
      this.#epoch = batch.last.epoch;
      this.#lastId = Math.max(this.#lastId, batch.last.id);
    }
    this.hub.traffic.relays += batch.messages;
    if (!this.#send(batch.frame)) return;
    for (const data of batch.binaries) this.#send(data);
  }

  /** Sends an envelope already serialised (presence updates). */
  sendJson(json: string): void {
    if (this.#state === "live" && this.rich && this.member) this.#send(json);
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
    if (!this.prepare(event)) return;
    if (!this.rich || !this.member) return;
    // Batch clients learn presence from `presence` envelopes.
    if (
      this.batch && (event.type === "join" || event.type === "leave" || event.type === "rename")
    ) {
      return;
    }
    if (event.type === "typing") {
      if (event.member.id !== this.member.id) {
        this.#event({ type: "typing", member: event.member, ttl: TYPING_TTL_MS });
      }
      return;
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
    if (!this.rich) {
      if (this.#access === "read") {
        this.hub.metrics.inc("parley_drops_total", { reason: "read_only" });
        return;
      }
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
    if (this.#access === "read" && WRITES.has(envelope.type)) {
      if (envelope.type === "file") this.#dropNextBinary = true;
      if (envelope.type === "typing") return;
      this.#error(
        "forbidden",
        `${envelope.type}: this room is read-only for you`,
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
      case "kick":
        this.#kick(envelope);
        break;
      case "members":
        this.#members(envelope.after, envelope.limit);
        break;
      case "nick":
        this.#rename(envelope.nick);
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

  /** A new nickname: refused in token mode, where the token names the member. */
  #rename(nick: string) {
    const { engine, verifier } = this.hub.options;
    if (verifier) {
      this.#error("forbidden", "nick: your name comes from your token and cannot be changed here");
      return;
    }
    const id = this.member!.id;
    checkNickFree(engine, this.info.room, nick, id, this.hub.membersOf(this.info.room))
      .then(() => engine.rename(this.info.room, id, nick))
      .catch((error) => {
        if (!(error instanceof ProtocolError)) return this.#failed("rename", error);
        this.#error(error.code, error.message);
      });
  }

  /** Answers a request for a page of the room's members, in id order. */
  #members(after: string | undefined, limit: number) {
    this.hub.options.engine.members(this.info.room).then(
      (members) => {
        const page = membersPage(members, after, limit);
        this.#event({ type: "members", ...page, count: members.length, after });
      },
      (error) => this.#failed("members", error),
    );
  }

  /** A moderator removes a member from the room, on every instance. */
  #kick(kick: Extract<ClientEnvelope, { type: "kick" }>) {
    if (!this.#moderator) {
      this.#error("forbidden", "kick: only a moderator of this room may remove members", kick.cid);
      return;
    }
    this.hub.kick(this.info.room, kick.member, {
      minutes: kick.minutes,
      reason: kick.reason,
      by: this.member!,
    }).catch((error) => this.#failed("kick", error, kick.cid));
  }

  /** An edit or delete of an earlier message, once allowed. */
  #change(change: Change) {
    const { engine } = this.hub.options;
    const actor: Actor = {
      member: this.member!,
      sender: this.#client,
      moderator: this.#moderator,
    };
    authorizeChange(engine, this.info.room, change, actor)
      .then(
        (draft) => {
          if (draft.target !== undefined && actor.moderator) {
            this.hub.logModeration("delete", this.info.room, actor.member, { id: draft.target });
          }
          this.#append(draft, change.cid);
        },
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
    const { engine, joinHistory, verifier } = this.hub.options;
    const room = this.info.room;
    if (hello.last === undefined && this.info.badLast !== undefined) {
      // As a malformed `hello.last` gets: no welcome; `hello` may come again.
      this.#error("bad_last", `${this.info.badLast}; send hello with a valid last, or last: null`);
      return;
    }
    this.#state = "joining";
    this.#inbox = [];
    let admission;
    try {
      admission = await admit({
        engine,
        room,
        hello,
        verifier,
        urlToken: this.info.token,
        members: this.hub.membersOf(room),
      });
    } catch (error) {
      if (this.closed || !(error instanceof ProtocolError)) throw error;
      this.#refused(error);
      return;
    }
    if (this.closed) return;
    this.#client = admission.client;
    this.batch = hello.batch === true;
    this.#access = admission.access;
    this.#moderator = admission.moderator;
    if (admission.expires !== undefined) this.#expireAt(admission.expires);
    this.member = admission.member;
    const id = this.member.id;
    this.#backlog = [];
    await this.hub.add(this);
    if (this.closed) return;
    // A room this instance already follows needs no list from the engine.
    const following = this.hub.membersOf(room) !== undefined;
    const list = await engine.join(room, this.id, this.member, this.hub.presenceTtlMs, !following);
    if (this.closed) return;
    this.hub.seedMembers(room, list);
    const members = this.hub.membersOf(room)!;
    // Its own join may still be on its way from the engine (redis, kv).
    if (!members.has(id)) members.add(this.member);
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
      members: members.first(WELCOME_MEMBERS),
      count: members.size,
      recovered: result.recovered,
      replay: result.messages.length,
      limits: this.#limits(),
      access: this.#access,
      moderator: this.#moderator,
    });
    for (const m of result.messages) this.#sendMessage(new Outgoing(m));
    this.#epoch ??= result.epoch;
    this.#state = "live";
    this.#flushBacklog();
    this.hub.log.info("join", { conn: this.id, room, member: id, outcome });
    this.#drainInbox();
  }

  /**
   * A `hello` that was not admitted. Without the right to be here the client
   * is closed (4401, 4403); a taken or bad nickname may say `hello` again.
   */
  #refused(error: ProtocolError) {
    this.hub.metrics.inc("parley_protocol_errors_total", { code: error.code });
    this.#error(error.code, error.message);
    if (error.code === "unauthorized" || error.code === "forbidden") {
      if (error.code === "unauthorized") {
        this.hub.options.onAuthFailure?.(this.info.ip ?? "unknown");
      }
      const code = error.code === "unauthorized" ? CloseCode.unauthorized : CloseCode.forbidden;
      this.close(code, truncateUtf8(error.message, 123));
      return;
    }
    this.#state = "greeting";
    this.#drainInbox();
  }

  /** Closes the connection with 4401 once its token expires. */
  #expireAt(expires: number) {
    if (this.#expiry !== undefined) clearTimeout(this.#expiry);
    // Timers hold at most 2^31 - 1 ms (24.8 days); a longer token is checked again then.
    const wait = Math.max(0, Math.min(expires - Date.now(), 2 ** 31 - 1));
    this.#expiry = setTimeout(() => {
      this.#expiry = undefined;
      if (Date.now() < expires) return this.#expireAt(expires);
      if (this.rich && this.member) this.#error("unauthorized", "token expired");
      this.close(CloseCode.unauthorized, "token expired");
    }, wait);
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
    if (this.#expiry !== undefined) clearTimeout(this.#expiry);
    this.#expiry = undefined;
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
