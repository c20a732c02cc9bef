/**
 * The Deno KV engine: ids, epochs, history, dedup and presence live in a Deno
 * KV database (a local SQLite file when self-hosted, the managed database on
 * Deno Deploy), so a restarted server keeps every room and a client resuming
 * from before the restart is recovered.
 *
 * Fan-out uses KV's own mechanism: each subscription watches its room's
 * `head`, `presence-head` and `signal-head` keys and, on every change, reads
 * what it has not delivered yet from the database. That reaches every
 * instance on Deno Deploy and every handle on one file inside one process
 * (`deno serve --parallel` workers too), but not two processes on one machine
 * sharing a file: SQLite-backed `kv.watch` only notices commits made by its
 * own process.
 *
 * The parts: `kv/_messages.ts` (history as reads see it), `kv/_appends.ts`
 * (ids, dedup, grouped commits), `kv/_group.ts` (grouped writes, their
 * limits and shared commits), `kv/_trim.ts` (trimming), `kv/_changes.ts` (what edits and
 * deletes rewrite), `kv/_presence.ts` (presence and signals), `kv/_blobs.ts`
 * (chunked bytes), `kv/_records.ts` (stored shapes), `kv/_store.ts` (keys,
 * commits, queues); this file wires them to subscriptions.
 *
 * Keys of a room, all under `["parley", room]`:
 *
 * | key                                 | value                                           |
 * | ----------------------------------- | ----------------------------------------------- |
 * | `"head"`                            | newest id, epoch, bytes ever appended           |
 * | `"tail"`                            | oldest id kept, bytes no longer held            |
 * | `"msg", id`                         | the entry, without file bytes, edits applied    |
 * | `"edits", target, id`               | `true`: edit `id` of message `target`           |
 * | `"blob", blobId, index`             | up to {@linkcode CHUNK_BYTES} of a file or text |
 * | `"dedup", sender, cid`              | the id stored under that pair                   |
 * | `"presence", conn`                  | member and expiry of one connection             |
 * | `"presence-sweep"`                  | when a refresh next sweeps expired entries      |
 * | `"presence-head"`                   | number of the last presence event               |
 * | `"presence-event", seq`             | a join, leave or rename, kept for a while       |
 * | `"signal-head"`                     | number of the last signal                       |
 * | `"signal", seq`                     | a typing signal (kept 10 s) or a kick (1 min)   |
 * | `"ban", memberId`                   | end of the member's ban; expires with it        |
 *
 * Appends to a room are stored in groups: the appends that wait while the
 * room's previous commit is under way go together in the next atomic commit
 * (`kv/_group.ts`), which takes their ids in call order, sets their dedup
 * keys and trims what they push out of history. Each room's write checks
 * the room's `head` and `tail`, so it loses cleanly to another instance's
 * commit and is built again from a fresh read. The writes of rooms that are
 * ready together share one commit, up to five (`SharedWrites`). On a local
 * file a commit costs as much as dozens of small mutations, so grouping is
 * what lets busy rooms keep up (`bench/engines.ts`).
 *
 * Edits and deletes are entries of their own and also rewrite their target's
 * record in the same atomic commit as the entry (the target may be a message
 * of the same group), so `read()` and `history()` need no second lookup. A
 * delete turns the target and its edits (found through the `"edits"` index)
 * into tombstones, fifty edits per commit: the first fifty with the entry,
 * any more in the commits right after.
 *
 * Deno KV's limits, and how they are kept:
 *
 * - 64 KiB per value: file bytes (and texts too long to inline) are split into
 *   chunks of {@linkcode CHUNK_BYTES}, written before the atomic commit that
 *   publishes the message, so a message is never visible without its bytes.
 *   An edit's long text stays in the edit's chunks, which its target borrows.
 * - 800 KiB, 80 KiB of keys and 1000 mutations per atomic write: chunks are
 *   written ten to a commit; a group takes appends while their estimated
 *   size stays within half of each limit, and trims within the rest;
 *   deletions and tombstones go in batches.
 * - 10 checks per atomic write (Deno Deploy's limit; local files allow 100):
 *   a room's write of appends checks two keys, so a commit shares at most
 *   five; trimming that falls behind and presence sweeps work in batches
 *   that need at most 10.
 * - 10 keys per watch, 10 keys per `getMany`: a subscription watches three.
 *
 * Costs of presence: `refresh()` reads two keys (its own entry and the
 * sweep key, one `getMany`) and makes one atomic write of one or two keys,
 * whatever the room's size; once per TTL
 * per room, one refresh also starts a sweep of expired entries in the
 * background. `join()`, `leave()`, `rename()` and `members()` list the room's
 * entries: O(n) reads each, as the member list `join()` returns needs.
 *
 * Known limits:
 *
 * - Two server processes sharing one local file share ids, history and
 *   presence, but a process sees the other's messages only when its own next
 *   change to that room wakes its watch (then in order, none lost).
 * - A process that dies between writing a file's chunks and the commit that
 *   publishes it leaves those chunks behind, unreferenced. Chunks of files
 *   over `historyFileBytes` expire on their own after ten minutes. One that
 *   dies between the commits of a delete of a message edited over fifty
 *   times leaves the later edits with their text.
 * - `historyBytes` is kept after each append, best-effort; `historySize` is
 *   exact, since reads never look further back.
 * - `history()` pages carry files without their bytes (the memory engine's
 *   carry them): a page of 200 files would be a costly read.
 * - A read that got a record just before an edit or delete freed its chunks
 *   (a long text, a file) gets that message without them.
 *
 * @module
 */

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
import type { Member, Position, StoredMessage } from "../protocol.ts";
import { EngineMetrics } from "./_metrics.ts";
import { checkBanEnd, parseSignal } from "./_shapes.ts";
import { MessageLog } from "./kv/_messages.ts";
import { importRoom } from "./kv/_migrate.ts";
import { type LogHead, Presence, type PresenceEvent } from "./kv/_presence.ts";
import type { Head } from "./kv/_records.ts";
import { delay, key, type KvContext, write } from "./kv/_store.ts";

export { CHUNK_BYTES } from "./kv/_blobs.ts";

/** Options of {@linkcode KvEngine}. */
export interface KvEngineOptions {
  /** Messages kept per room. */
  historySize: number;
  /**
   * Bytes kept per room (text and file contents). Trimming follows each
   * append, so a room can be over this for a moment.
   */
  historyBytes: number;
  /** Files larger than this are kept without their bytes (live delivery still gets them). */
  historyFileBytes: number;
  /**
   * Database file.
   *
   * @default {undefined} Deno's default database: the managed one on Deno Deploy.
   */
  kvPath?: string;
  /**
   * Clock for message times, presence expiry and the end of bans.
   *
   * @default {Date.now}
   */
  now?: () => number;
  /**
   * Where warnings go (a lost watch, a failed trim).
   *
   * @default {silentLogger}
   */
  logger?: Logger;
  /**
   * Stores the appends to one room that are waiting together in one atomic
   * commit. False commits each append on its own, as before grouping
   * existed: kept to measure what grouping gains (`bench/engines.ts`).
   *
   * @default {true}
   */
  groupCommits?: boolean;
}

/** How far a subscription has delivered, in each of a room's three logs. */
interface Cursor {
  /** Newest message id. */
  id: number;
  /** Newest presence event. */
  seq: number;
  /** Newest signal. */
  signal: number;
}

interface Subscription {
  room: string;
  listener: (event: EngineEvent) => void;
  reader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  /** What was delivered (or is known to be gone). */
  last: Cursor;
  stopped: boolean;
  /** Cuts a backoff short on unsubscribe. */
  abort: AbortController;
  /** Catch-ups run one at a time, in the order asked. */
  chain: Promise<void>;
  /** The watch was lost and made again: its first catch-up fills a gap. */
  refill: boolean;
  /** Settles when the watch loop and every catch-up are over. */
  finished: Promise<void>;
}

/**
 * Keeps rooms in a Deno KV database and fans out through `kv.watch`.
 *
 * @example
 * ```ts
 * const engine = await KvEngine.open({
 *   historySize: 1000,
 *   historyBytes: 16 << 20,
 *   historyFileBytes: 2 << 20,
 *   kvPath: "./parley.sqlite",
 * });
 * const stop = await engine.subscribe("lobby", (event) => console.log(event));
 * await engine.append("lobby", { from: null, text: "hi" });
 * stop();
 * await engine.close();
 * ```
 */
export class KvEngine implements Engine {
  #kv: Deno.Kv;
  #log: Logger;
  #now: () => number;
  #messages: MessageLog;
  #presence: Presence;
  /** Writes an imported room (see `kv/_migrate.ts`). */
  #import: (room: string, snapshot: RoomSnapshot) => Promise<void>;
  /** Calls under way (and background work), awaited by `close()`. */
  #pending = new Set<Promise<unknown>>();
  /** Live subscriptions by room, for delivering this engine's own changes at once. */
  #rooms = new Map<string, Set<Subscription>>();
  /** Subscriptions not finished yet, stopped or not. */
  #subscriptions = new Set<Subscription>();
  #closed = false;
  #stats = new EngineMetrics("kv", () => !this.#closed);

  /**
   * Opens the database at `options.kvPath`, or Deno's default one.
   *
   * @param options History limits and the path; a whole `Config` fits.
   * @param logger Where warnings go; defaults to `options.logger`, else nowhere.
   */
  static async open(options: KvEngineOptions, logger?: Logger): Promise<KvEngine> {
    let kv: Deno.Kv;
    try {
      kv = await Deno.openKv(options.kvPath);
    } catch (error) {
      const where = options.kvPath === undefined
        ? "Deno's default"
        : JSON.stringify(options.kvPath);
      throw new Error(`Cannot open the KV database at ${where} (KV_PATH): ${error}`, {
        cause: error,
      });
    }
    const log = logger ?? options.logger ?? silentLogger;
    log.info("kv_open", { path: options.kvPath ?? "default" });
    return new KvEngine(kv, { ...options, logger: log });
  }

  /**
   * Wraps a database that is already open; {@linkcode KvEngine.open} is the
   * usual way. The engine closes `kv` in {@linkcode KvEngine.close}.
   */
  constructor(kv: Deno.Kv, options: KvEngineOptions) {
    this.#kv = kv;
    this.#log = options.logger ?? silentLogger;
    this.#now = options.now ?? Date.now;
    const context: KvContext = { kv, now: this.#now, log: this.#log, metrics: this.#stats };
    this.#messages = new MessageLog(context, options);
    this.#import = (room, snapshot) => importRoom(context, options, room, snapshot);
    this.#presence = new Presence(
      context,
      (room, to) => this.#deliverLocally(room, to),
      (work) => this.#background(work),
    );
  }

  /**
   * Up until closed; append latency, batch sizes (appends per atomic write of
   * a room), presence sweeps, and watches lost and the messages read to fill
   * their gap.
   */
  get metrics(): Metrics {
    return this.#stats.registry;
  }

  /** Runs a public call, so that `close()` can wait for it. */
  #track<T>(work: () => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(new Error("Cannot use the KV engine: it is closed"));
    const promise = work();
    this.#pending.add(promise);
    const forget = () => this.#pending.delete(promise);
    promise.then(forget, forget);
    return promise;
  }

  /** Runs work nobody waits for, unless closing; `close()` waits for it. */
  #background(work: () => Promise<unknown>) {
    if (this.#closed) return;
    this.#track(work).catch((error) =>
      this.#log.warn("kv_background_failed", { error: String(error) })
    );
  }

  /** Catches this engine's subscribers of `room` up to what was just stored. */
  async #deliverLocally(
    room: string,
    to: Partial<Cursor>,
    known?: StoredMessage[],
  ): Promise<void> {
    const subs = [...this.#rooms.get(room) ?? []];
    await Promise.all(subs.map((sub) => this.#catchUp(sub, to, known)));
  }

  // Messages.

  /**
   * Stores a message (see `MessageLog.append`). Subscribers of this engine
   * get it before this resolves, as with the memory engine: from the
   * messages its write stored, without reading them back.
   */
  append(room: string, draft: MessageDraft): Promise<AppendResult> {
    const start = performance.now();
    return this.#stats.timeAppend(
      start,
      this.#track(async () => {
        const { message, duplicate, stored } = await this.#messages.append(room, draft);
        if (!duplicate) await this.#deliverLocally(room, { id: message.id }, stored);
        return { message, duplicate };
      }),
    );
  }

  read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    return this.#track(() => this.#messages.read(room, after, limit));
  }

  history(room: string, before: number, limit: number): Promise<HistoryPage> {
    return this.#track(() => this.#messages.history(room, before, limit));
  }

  /** Takes a room's history from another engine (see `Engine.importRoom`). */
  importRoom(room: string, snapshot: RoomSnapshot): Promise<void> {
    return this.#track(() => this.#import(room, snapshot));
  }

  // Presence and signals.

  join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    return this.#track(() => this.#presence.join(room, conn, member, ttlMs));
  }

  refresh(room: string, conn: string, member: Member, ttlMs: number): Promise<void> {
    return this.#track(() => this.#presence.refresh(room, conn, member, ttlMs));
  }

  leave(room: string, conn: string): Promise<void> {
    return this.#track(() => this.#presence.leave(room, conn));
  }

  rename(room: string, memberId: string, nick: string): Promise<void> {
    return this.#track(() => this.#presence.rename(room, memberId, nick));
  }

  members(room: string): Promise<Member[]> {
    return this.#track(() => this.#presence.members(room));
  }

  signal(room: string, event: Signal): Promise<void> {
    return this.#track(() => this.#presence.signal(room, event));
  }

  // Bans.

  /**
   * Stores the end of the ban under the room, expiring with it (KV's clock
   * is the real one: a test clock only decides what `bannedUntil` reports).
   * An end already past deletes the ban.
   */
  ban(room: string, memberId: string, until: number): Promise<void> {
    return this.#track(async () => {
      checkBanEnd(until);
      const banKey = key(room, "ban", memberId);
      const left = until - this.#now();
      await write(() =>
        left > 0
          ? this.#kv.atomic().set(banKey, until, { expireIn: Math.ceil(left) })
          : this.#kv.atomic().delete(banKey)
      );
    });
  }

  /** The stored end of the member's ban, while it is still ahead (KV expires keys late). */
  bannedUntil(room: string, memberId: string): Promise<number | undefined> {
    return this.#track(async () => {
      const { value } = await this.#kv.get<number>(key(room, "ban", memberId));
      return typeof value === "number" && value > this.#now() ? value : undefined;
    });
  }

  // Subscriptions.

  subscribe(room: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe> {
    return this.#track(() => this.#subscribe(room, listener));
  }

  /**
   * Watches the room's three head keys. The first emission is the state when
   * the watch began: everything after it is delivered, read from the
   * database on each change, so coalesced or lost emissions lose nothing.
   */
  async #subscribe(room: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe> {
    const reader = this.#watch(room);
    let first;
    try {
      first = await reader.read();
    } catch (error) {
      await reader.cancel().catch(() => {});
      throw error;
    }
    if (first.done) throw new Error(`Cannot watch room ${JSON.stringify(room)}: the watch ended`);
    const sub: Subscription = {
      room,
      listener,
      reader,
      last: cursor(first.value),
      stopped: false,
      abort: new AbortController(),
      chain: Promise.resolve(),
      refill: false,
      finished: Promise.resolve(),
    };
    let subs = this.#rooms.get(room);
    if (!subs) this.#rooms.set(room, subs = new Set());
    subs.add(sub);
    this.#subscriptions.add(sub);
    sub.finished = this.#pump(sub)
      .then(() => sub.chain)
      .catch((error) => this.#log.warn("kv_watch_failed", { room, error: String(error) }))
      .finally(() => this.#subscriptions.delete(sub));
    return () => this.#unsubscribe(sub);
  }

  #watch(room: string): ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]> {
    const heads = [key(room, "head"), key(room, "presence-head"), key(room, "signal-head")];
    return this.#kv.watch(heads).getReader();
  }

  /** Follows the watch until unsubscribed; watches again when the feed is lost. */
  async #pump(sub: Subscription): Promise<void> {
    let failures = 0;
    while (!sub.stopped) {
      let next: ReadableStreamReadResult<Deno.KvEntryMaybe<unknown>[]>;
      try {
        next = await sub.reader.read();
      } catch (error) {
        this.#log.warn("kv_watch_failed", { room: sub.room, error: String(error) });
        next = { done: true, value: undefined };
      }
      if (sub.stopped) return;
      if (next.done) {
        await sub.reader.cancel().catch(() => {});
        await delay(Math.min(5000, 100 * 2 ** failures++), sub.abort.signal);
        if (sub.stopped) return;
        // The first emission of the new watch makes the catch-up fill the gap.
        sub.reader = this.#watch(sub.room);
        sub.refill = true;
        this.#stats.feedGap();
        continue;
      }
      failures = 0;
      const refill = sub.refill;
      sub.refill = false;
      await this.#catchUp(sub, cursor(next.value), undefined, refill);
    }
  }

  /**
   * Delivers what `to` says is stored, after earlier catch-ups. `known`:
   * messages with consecutive ids this engine just stored, which need not
   * be read back.
   */
  #catchUp(
    sub: Subscription,
    to: Partial<Cursor>,
    known?: StoredMessage[],
    refill = false,
  ): Promise<void> {
    sub.chain = sub.chain.then(() => this.#deliver(sub, to, known, refill)).catch((error) =>
      this.#log.warn("kv_catch_up_failed", { room: sub.room, error: String(error) })
    );
    return sub.chain;
  }

  /** `refill`: the first catch-up of a new watch, whose messages fill a gap. */
  async #deliver(
    sub: Subscription,
    to: Partial<Cursor>,
    known?: StoredMessage[],
    refill = false,
  ): Promise<void> {
    const { room, last } = sub;
    const first = known?.[0]?.id ?? 0;
    const knownAt = (id: number) => known?.[id - first];
    if (to.id !== undefined && to.id > last.id && first > 0 && first <= last.id + 1) {
      // All known: nothing to read.
      const end = Math.min(to.id, first + known!.length - 1);
      while (last.id < end && !sub.stopped) {
        const message = knownAt(last.id + 1)!;
        last.id = message.id;
        this.#emit(sub, { type: "message", message });
      }
      if (sub.stopped) return;
    }
    if (to.id !== undefined && to.id > last.id) {
      for (const record of await this.#messages.records(room, last.id + 1, to.id)) {
        const message = knownAt(record.id) ??
          await this.#messages.message(room, record, "live");
        if (sub.stopped) return;
        last.id = record.id;
        this.#emit(sub, { type: "message", message });
        if (refill) this.#stats.gapFilled(1);
      }
      // Ids missing from the list were trimmed before this subscriber got to them.
      last.id = Math.max(last.id, to.id);
    }
    if (to.seq !== undefined && to.seq > last.seq) {
      last.seq = await this.#replay(
        sub,
        "presence-event",
        last.seq,
        to.seq,
        (value) => value as PresenceEvent,
      );
    }
    if (to.signal !== undefined && to.signal > last.signal) {
      last.signal = await this.#replay(sub, "signal", last.signal, to.signal, parseSignal);
    }
  }

  /**
   * Emits the events of a log after `from` up to `to`; those that expired are
   * skipped, and so are those `parse` rejects (logged). Returns how far it got.
   */
  async #replay(
    sub: Subscription,
    log: "presence-event" | "signal",
    from: number,
    to: number,
    parse: (value: unknown) => EngineEvent,
  ): Promise<number> {
    const events = this.#kv.list({
      start: key(sub.room, log, from + 1),
      end: key(sub.room, log, to + 1),
    });
    let reached = from;
    for await (const { key: eventKey, value } of events) {
      if (sub.stopped) return reached;
      reached = eventKey.at(-1) as number;
      let event: EngineEvent;
      try {
        event = parse(value);
      } catch (error) {
        this.#log.error("kv_bad_event", { room: sub.room, log, error: String(error) });
        continue;
      }
      this.#emit(sub, event);
    }
    return to;
  }

  #emit(sub: Subscription, event: EngineEvent) {
    if (sub.stopped) return;
    try {
      sub.listener(event);
    } catch (error) {
      this.#log.error("kv_listener_failed", { room: sub.room, error: String(error) });
    }
  }

  #unsubscribe(sub: Subscription) {
    if (sub.stopped) return;
    sub.stopped = true;
    sub.abort.abort();
    const subs = this.#rooms.get(sub.room);
    subs?.delete(sub);
    if (subs?.size === 0) this.#rooms.delete(sub.room);
    sub.reader.cancel().catch(() => {});
  }

  // Lifecycle.

  async ready(): Promise<boolean> {
    if (this.#closed) return false;
    try {
      await this.#kv.get(["parley"]);
      return true;
    } catch (error) {
      this.#log.warn("kv_not_ready", { error: String(error) });
      return false;
    }
  }

  /** Waits for calls under way, stops every watch and closes the database. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Calls under way may start background work: wait until none is left.
    while (this.#pending.size > 0) await Promise.allSettled([...this.#pending]);
    for (const sub of this.#subscriptions) this.#unsubscribe(sub);
    await Promise.allSettled([...this.#subscriptions].map((sub) => sub.finished));
    this.#kv.close();
  }
}

/** Where a watch emission of `[head, presence-head, signal-head]` says the logs are. */
function cursor(heads: Deno.KvEntryMaybe<unknown>[]): Cursor {
  const [head, presence, signal] = heads as [
    Deno.KvEntryMaybe<Head>,
    Deno.KvEntryMaybe<LogHead>,
    Deno.KvEntryMaybe<LogHead>,
  ];
  return {
    id: head.value?.id ?? 0,
    seq: presence.value?.seq ?? 0,
    signal: signal.value?.seq ?? 0,
  };
}
