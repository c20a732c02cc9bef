/**
 * `ParleyClient`: one room over `parley.v1`, kept connected. It joins with
 * `hello` (batches on), resumes from the last position it saw, reconnects
 * with backoff as the close codes allow, resends unacked messages with their
 * cids at the pace of the server's limits, and reports what happens as typed
 * events. The parts: {@linkcode Connection} (the socket), {@linkcode Sender}
 * (the outbox), {@linkcode RoomView} (what was seen), {@linkcode SavedState}
 * (storage), {@linkcode Requests} (pages asked for).
 *
 * @module
 */

import { Connection } from "./connection.ts";
import { Emitter } from "./events.ts";
import type { Delivery, OutboxItem, Pending } from "./outbox.ts";
import { Requests } from "./requests.ts";
import { RoomView } from "./room.ts";
import { CLIENT_PATTERN, randomId, SavedState } from "./saved.ts";
import { Sender } from "./sender.ts";
import { MemoryStorage } from "./storage.ts";
import type { ParleyClientOptions, ParleyEvents, SocketLike, Status } from "./types.ts";
import {
  codePoints,
  type HistoryPage,
  isId,
  isObject,
  type Limits,
  type Member,
  type MembersPage,
  type Position,
  readError,
  readHistoryPage,
  readMembersPage,
  readWelcome,
  refusalCode,
  type Welcome,
} from "./wire.ts";

/** The server drops typing signals closer together than this. */
const TYPING_EVERY_MS = 2_000;

/** Turns `http(s)://` into `ws(s)://`; a `ws(s)://` URL is kept as it is. */
function socketUrl(url: string | URL): string {
  const parsed = new URL(url);
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  else if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new TypeError(
      `Cannot connect to ${parsed.href}: expected a ws:, wss:, http: or https: URL`,
    );
  }
  parsed.hash = "";
  return parsed.href;
}

/** The default storage key of a room: its URL without the query (which may hold a token). */
function storageKey(url: string): string {
  const { origin, pathname } = new URL(url);
  return `parley:${origin}${pathname}`;
}

/**
 * A client of one Parley room. Construct it, subscribe with `on`, then
 * `connect()`; `close()` ends it for good.
 *
 * @example
 * ```ts
 * const client = new ParleyClient("ws://127.0.0.1:8000/dev", { nick: "ann" });
 * client.on("message", (m) => console.log(m.from?.nick, m.text));
 * await client.connect();
 * const { delivered } = client.send("hello");
 * await delivered;
 * await client.close();
 * ```
 */
export class ParleyClient extends Emitter<ParleyEvents> {
  readonly #options: ParleyClientOptions;
  readonly #connection: Connection;
  readonly #room: RoomView;
  readonly #sender: Sender;
  readonly #saved: SavedState;
  readonly #requests: Requests;
  readonly #cidPrefix = randomId(8);
  #cidCount = 0;
  #nick: string | undefined;
  #token: string | undefined;
  #status: Status = { state: "connecting", attempt: 0 };
  #welcome: Welcome | null = null;
  #typingSentAt = -Infinity;
  #waiters: { resolve(welcome: Welcome): void; reject(error: Error): void }[] = [];
  #closed: Promise<void> | undefined;

  /**
   * Creates a client; nothing connects until {@linkcode ParleyClient.connect}.
   *
   * @param url The room's WebSocket URL, such as `ws://host:8000/dev` (`http(s):` is taken as `ws(s):`).
   * @param options Nick or token, client id, storage, WebSocket constructor, timings.
   */
  constructor(url: string | URL, options: ParleyClientOptions = {}) {
    super();
    this.#options = options;
    if (options.clientId !== undefined && !CLIENT_PATTERN.test(options.clientId)) {
      throw new RangeError(
        `Cannot create a ParleyClient: clientId is ${JSON.stringify(options.clientId)}, ` +
          "expected 8 to 64 characters from A-Z a-z 0-9 _ -",
      );
    }
    this.#nick = options.nick;
    const changed = () => this.#saved.persist();
    this.#connection = new Connection(socketUrl(url), options, {
      prepare: () => this.#saved.load(),
      opened: (ws, token) => {
        this.#token = token;
        this.#hello(ws);
      },
      frame: (data) => this.#onFrame(data),
      lost: () => this.#lost(),
      status: (status) => this.#onStatus(status),
    });
    this.#sender = new Sender({
      socket: () => this.#connection.joined,
      sent: (item, delivery) => this.emit("sent", { item, delivery }),
      failed: (item, error) => this.emit("failed", { item, error }),
      changed,
    }, options.retryMs ?? 1_000);
    this.#room = new RoomView({
      me: () => this.me,
      emit: (type, payload) => this.emit(type, payload),
      stored: (delivery) => this.#sender.settle(delivery),
      entry: () => this.#sender.replayed(),
      changed,
    });
    this.#saved = new SavedState(
      options.storage ?? new MemoryStorage(),
      options.storageKey ?? storageKey(socketUrl(url)),
      this.#room.inbox,
      this.#sender.outbox,
      options.clientId,
    );
    this.#requests = new Requests(options.requestTimeoutMs ?? 15_000);
  }

  // ------------------------------------------------------------ state

  /** The connection's state, as the last `status` event said it. */
  get status(): Status {
    return this.#status;
  }

  /** The latest `welcome`, or null before the first. */
  get welcome(): Welcome | null {
    return this.#welcome;
  }

  /** This member, once welcomed. */
  get me(): Member | null {
    return this.#welcome?.you ?? null;
  }

  /** The server's limits, once welcomed. */
  get limits(): Limits | null {
    return this.#welcome?.limits ?? null;
  }

  /** The client identity in use (known once `connect()` has loaded it). */
  get clientId(): string | undefined {
    return this.#saved.clientId;
  }

  /** The last entry seen: where a reconnect resumes from. */
  get position(): Position | null {
    return this.#room.inbox.last;
  }

  /** The members listed, by id. */
  get members(): ReadonlyMap<string, Member> {
    return this.#room.roster.members;
  }

  /** Members in the room (the server's count). */
  get memberCount(): number {
    return this.#room.roster.count;
  }

  /** Whether members exist that are not listed: ask with {@linkcode ParleyClient.loadMembers}. */
  get membersIncomplete(): boolean {
    return this.#room.roster.incomplete;
  }

  /** Items sent and not acked yet, oldest first. */
  get outbox(): readonly OutboxItem[] {
    return this.#sender.outbox.items;
  }

  /** Members whose typing indicator has not run out. */
  get typists(): Member[] {
    return this.#room.typists;
  }

  // ------------------------------------------------------------ lifecycle

  /**
   * Connects (or waits for the connection under way) and resolves with the
   * next `welcome`. Rejects when the client is closed for good first.
   */
  connect(): Promise<Welcome> {
    if (this.#connection.final) {
      return Promise.reject(new Error("Cannot connect: the client is closed"));
    }
    if (this.#connection.joined && this.#welcome) return Promise.resolve(this.#welcome);
    const welcomed = new Promise<Welcome>((resolve, reject) => {
      this.#waiters.push({ resolve, reject });
    });
    if (!this.#connection.busy) void this.#connection.open();
    return welcomed;
  }

  /**
   * Closes for good: no reconnect. Unacked items stay in storage for the next
   * client with the same storage. Resolves once the socket is closed and
   * storage written.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      await this.#connection.close();
      await this.#saved.flush();
    })();
    return this.#closed;
  }

  #hello(ws: SocketLike): void {
    const hello: Record<string, unknown> = {
      type: "hello",
      client: this.#saved.clientId,
      batch: true,
    };
    if (this.#token !== undefined) hello.token = this.#token;
    if (this.#nick !== undefined && this.#welcome?.you.verified !== true) hello.nick = this.#nick;
    const last = this.#room.inbox.last;
    if (last !== null) hello.last = last;
    this.#send(ws, hello);
  }

  /** The socket is gone: what was in flight waits for the next one. */
  #lost(): void {
    this.#room.inbox.flush();
    this.#sender.lost(this.#options.maxAttempts ?? 10);
    this.#requests.abort("the connection ended before the answer came");
  }

  #onStatus(status: Status): void {
    this.#status = status;
    if (status.state === "closed") {
      const { code, reason } = status;
      const error = new Error(`Cannot connect: closed with ${code}${reason ? ` (${reason})` : ""}`);
      for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
    }
    this.emit("status", status);
  }

  // ------------------------------------------------------------ receiving

  #onFrame(data: unknown): void {
    try {
      if (typeof data === "string") {
        const envelope: unknown = JSON.parse(data);
        if (isObject(envelope)) this.#dispatch(envelope);
      } else if (data instanceof ArrayBuffer) {
        const bytes = new Uint8Array(data);
        if (!this.#room.inbox.bytes(bytes)) this.emit("binary", bytes);
      }
    } catch (error) {
      console.error("Cannot handle a frame from the server:", error);
    }
  }

  #dispatch(envelope: Record<string, unknown>): void {
    switch (envelope.type) {
      case "welcome":
        return this.#onWelcome(envelope);
      case "batch":
        if (!Array.isArray(envelope.events)) return;
        for (const event of envelope.events) {
          if (!isObject(event) || event.type === "batch") continue;
          try {
            this.#dispatch(event);
          } catch (error) {
            console.error("Cannot handle an event of a batch:", error);
          }
        }
        return;
      case "message":
      case "file":
        return this.#room.message(envelope);
      case "edit":
      case "delete":
        return this.#room.change(envelope);
      case "typing":
        return this.#room.typing(envelope, this.limits?.typing ?? 6000);
      case "presence":
      case "join":
      case "leave":
      case "rename":
        return this.#room.presence(envelope, (member) => {
          if (this.#welcome) this.#welcome.you = member;
          this.#nick = member.nick;
        });
      case "kick":
        return this.#room.kick(envelope);
      case "ack": {
        const { cid, id, epoch } = envelope;
        if (typeof cid !== "string" || !isId(id) || typeof epoch !== "string") return;
        return this.#sender.settle({ cid, id, epoch, duplicate: envelope.duplicate === true });
      }
      case "error":
        return this.#onError(envelope);
      case "history": {
        const page = readHistoryPage(envelope);
        if (!page) return;
        this.#room.history(page);
        this.emit("history", page);
        const cid = typeof envelope.cid === "string" ? envelope.cid : undefined;
        return this.#requests.answerHistory(cid, page);
      }
      case "members": {
        const page = readMembersPage(envelope);
        if (!page) return;
        const { first, resolve } = this.#requests.answerMembers(page);
        this.#room.roster.page(page, first, this.me);
        this.emit("members", page);
        return resolve();
      }
      default:
        return; // pong, and anything newer than this client
    }
  }

  #onWelcome(envelope: Record<string, unknown>): void {
    const welcome = readWelcome(envelope);
    if (!welcome) return;
    const previous = this.#room.inbox.last;
    this.#welcome = welcome;
    this.#nick = welcome.you.nick;
    this.#room.welcome(welcome);
    this.#connection.welcomed();
    this.emit("welcome", welcome);
    if (welcome.recovered === false) {
      const changed = previous !== null && previous.epoch !== welcome.epoch;
      const reason = changed ? "epoch_changed" : "history_lost";
      this.emit("gap", { reason, previous, epoch: welcome.epoch });
    }
    for (const waiter of this.#waiters.splice(0)) waiter.resolve(welcome);
    this.#sender.start(welcome);
  }

  #onError(envelope: Record<string, unknown>): void {
    const error = readError(envelope);
    if (!error) return;
    const refusal = refusalCode(error);
    if (refusal !== null) {
      // Said in band before the close, which some runtimes lose on the way.
      this.emit("error", error);
      this.#connection.lost(refusal, error.message);
      return;
    }
    const { cid } = error;
    if (cid !== undefined && this.#requests.hasHistory(cid)) {
      return this.#requests.refuseHistory(cid, error.message || error.code);
    }
    const item = cid === undefined ? undefined : this.#sender.outbox.get(cid);
    if (item) {
      // Transient: not stored, or not known to be; resend with the same cid.
      if (error.retry) this.#sender.retryLater(item);
      else this.#sender.fail(item.cid, error.code, error.message);
      return;
    }
    if (!this.#connection.joined && error.code === "bad_last") {
      // The saved position is no good here: join afresh on a new connection.
      const previous = this.#room.inbox.last;
      this.#room.inbox.last = null;
      this.#saved.persist();
      this.emit("gap", { reason: "bad_last", previous, epoch: previous?.epoch ?? "" });
      this.#connection.restart();
      return;
    }
    if (cid === undefined && this.#requests.membersWaiting && /^members\b/.test(error.message)) {
      this.#requests.refuseMembers(error.message);
    }
    this.emit("error", error);
  }

  // ------------------------------------------------------------ sending

  #send(ws: SocketLike, envelope: Record<string, unknown>): boolean {
    if (ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(envelope));
      return true;
    } catch {
      return false;
    }
  }

  #queue(item: Omit<OutboxItem, "cid" | "createdAt" | "attempts" | "state">): Pending {
    if (this.#connection.final) throw new Error("Cannot send: the client is closed");
    this.#cidCount++;
    return this.#sender.queue({
      ...item,
      cid: `${this.#cidPrefix}-${this.#cidCount}`,
      createdAt: Date.now(),
      attempts: 0,
      state: "queued",
    });
  }

  #checkText(text: string, what: string): void {
    if (typeof text !== "string" || text.length === 0) {
      throw new TypeError(`Cannot ${what}: text must be a non-empty string`);
    }
    const max = this.limits?.text;
    const length = codePoints(text);
    if (max !== undefined && length > max) {
      throw new RangeError(`Cannot ${what}: text is ${length} characters, the limit is ${max}`);
    }
  }

  #position(id: number | undefined, what: string): Position | undefined {
    if (id === undefined) return undefined;
    const epoch = this.#welcome?.epoch ?? this.#room.inbox.last?.epoch;
    if (!isId(id) || epoch === undefined) {
      throw new RangeError(`Cannot ${what}: ${id} is not a message id of a known epoch`);
    }
    return { epoch, id };
  }

  /**
   * Sends a text message, now or once connected; resent with the same cid
   * after a reconnect until the server acks it.
   *
   * @param options `replyTo`: the id of the message this one answers.
   * @throws {RangeError} When the text is longer than the server allows.
   */
  send(text: string, options: { replyTo?: number } = {}): Pending {
    this.#checkText(text, "send");
    return this.#queue({
      kind: "message",
      text,
      replyTo: this.#position(options.replyTo, "reply"),
    });
  }

  /**
   * Sends a file: a `file` envelope and its bytes. Kept in memory until acked
   * (never in storage).
   */
  sendFile(
    file: { name: string; mime?: string; data: Uint8Array },
    options: { replyTo?: number } = {},
  ): Pending {
    const max = this.limits?.bytes;
    const size = file.data.byteLength;
    if (max !== undefined && size > max) {
      throw new RangeError(`Cannot send ${file.name}: it is ${size} bytes, the limit is ${max}`);
    }
    const mime = file.mime ?? "application/octet-stream";
    return this.#queue({
      kind: "file",
      file: { name: file.name, mime, size, data: file.data },
      replyTo: this.#position(options.replyTo, "reply"),
    });
  }

  /** Edits one of this member's text messages. */
  edit(id: number, text: string): Pending {
    this.#checkText(text, "edit");
    return this.#queue({ kind: "edit", text, target: this.#position(id, "edit") });
  }

  /** Deletes one of this member's messages (a moderator: anyone's). */
  delete(id: number): Pending {
    return this.#queue({ kind: "delete", target: this.#position(id, "delete") });
  }

  /**
   * Tells the room this member is typing. Call it on every keystroke: it
   * sends at most one signal every 2 seconds. Returns whether it sent one.
   */
  typing(): boolean {
    const ws = this.#connection.joined;
    const now = Date.now();
    if (!ws || now - this.#typingSentAt < TYPING_EVERY_MS) return false;
    if (this.#welcome?.access !== "write") return false;
    if (!this.#send(ws, { type: "typing" })) return false;
    this.#typingSentAt = now;
    return true;
  }

  /**
   * Asks for older messages: `before` defaults to the oldest message seen in
   * this epoch (the head + 1 when none was).
   */
  loadOlder(options: { before?: number; limit?: number } = {}): Promise<HistoryPage> {
    const ws = this.#connection.joined;
    if (!ws || !this.#welcome) {
      return Promise.reject(new Error("Cannot load older messages: not connected"));
    }
    const before = options.before ?? this.#room.oldest ?? this.#welcome.head + 1;
    const limit = Math.min(options.limit ?? 50, this.#welcome.limits.page);
    this.#cidCount++;
    const cid = `${this.#cidPrefix}-h${this.#cidCount}`;
    return this.#requests.history(
      cid,
      () => this.#send(ws, { type: "history", before, limit, cid }),
    );
  }

  /**
   * Asks for the next page of members (`restart`: the first page). The page
   * is added to {@linkcode ParleyClient.members}.
   */
  loadMembers(options: { restart?: boolean; limit?: number } = {}): Promise<MembersPage> {
    const ws = this.#connection.joined;
    if (!ws) return Promise.reject(new Error("Cannot load members: not connected"));
    const first = options.restart === true;
    const envelope: Record<string, unknown> = { type: "members", limit: options.limit ?? 100 };
    const after = this.#room.roster.after;
    if (!first && after !== undefined) envelope.after = after;
    return this.#requests.members(first, () => this.#send(ws, envelope));
  }

  /**
   * Takes another nickname (open mode). Before a welcome (the last one was
   * refused with `nick_taken` or `bad_nick`), says `hello` again with it.
   */
  rename(nick: string): void {
    this.#nick = nick;
    const joined = this.#connection.joined;
    const ws = this.#connection.socket;
    if (joined) this.#send(joined, { type: "nick", nick });
    else if (ws && ws.readyState === 1) this.#hello(ws);
  }

  /**
   * Removes a member (moderators): closes its sockets with 4403 and, with
   * `minutes`, bans it that long. Errors come as `error` events with the cid.
   *
   * @returns The request's cid.
   */
  kick(memberId: string, options: { minutes?: number; reason?: string } = {}): string {
    const ws = this.#connection.joined;
    if (!ws) throw new Error("Cannot remove a member: not connected");
    this.#cidCount++;
    const cid = `${this.#cidPrefix}-k${this.#cidCount}`;
    this.#send(ws, { type: "kick", cid, member: memberId, ...options });
    return cid;
  }

  /** The promise of an outbox item's ack (for items restored from storage, too). */
  delivered(cid: string): Promise<Delivery> | undefined {
    return this.#sender.outbox.delivered(cid);
  }
}
