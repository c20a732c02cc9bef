/**
 * The Deno KV engine: ids, epochs, history, dedup and presence live in a Deno
 * KV database (a local SQLite file when self-hosted, the managed database on
 * Deno Deploy), so a restarted server keeps every room and a client resuming
 * from before the restart is recovered.
 *
 * Fan-out uses KV's own mechanism: each subscription watches its room's
 * `head` and `presence-head` keys and, on every change, reads what it has not
 * delivered yet from the database. That reaches every instance on Deno Deploy
 * and every handle on one file inside one process, but not two processes on
 * one machine sharing a file: SQLite-backed `kv.watch` only notices commits
 * made by its own process.
 *
 * Keys of a room, all under `["parley", room]`:
 *
 * | key                                 | value                                           |
 * | ----------------------------------- | ----------------------------------------------- |
 * | `"head"`                            | newest id, epoch, bytes ever appended           |
 * | `"tail"`                            | oldest id kept, bytes ever trimmed              |
 * | `"msg", id`                         | the message, without file bytes                 |
 * | `"blob", blobId, index`             | up to {@linkcode CHUNK_BYTES} of a file or text |
 * | `"dedup", sender, cid`              | the id stored under that pair                   |
 * | `"presence", conn`                  | member and expiry of one connection             |
 * | `"presence-head"`                   | number of the last presence event               |
 * | `"presence-event", seq`             | a join, leave or rename, kept for a while       |
 *
 * Deno KV's limits, and how they are kept:
 *
 * - 64 KiB per value: file bytes (and texts too long to inline) are split into
 *   chunks of {@linkcode CHUNK_BYTES}, written before the atomic commit that
 *   publishes the message, so a message is never visible without its bytes.
 * - 800 KiB and 1000 mutations per atomic write: chunks are written ten to a
 *   commit; deletions go in batches.
 * - 10 checks per atomic write (Deno Deploy's limit; local files allow 100):
 *   trimming and presence sweeps work in batches that need at most 10.
 * - 10 keys per watch, 10 keys per `getMany`: a subscription watches two.
 *
 * Known limits:
 *
 * - Two server processes sharing one local file share ids, history and
 *   presence, but a process sees the other's messages only when its own next
 *   change to that room wakes its watch (then in order, none lost).
 * - A process that dies between writing a file's chunks and the commit that
 *   publishes it leaves those chunks behind, unreferenced. Chunks of files
 *   over `historyFileBytes` expire on their own after ten minutes.
 * - `historyBytes` is kept after each append, best-effort; `historySize` is
 *   exact, since reads never look further back.
 * - Each join lists the room's presence entries (as the member list it
 *   returns needs); a periodic refresh writes its own entry only.
 *
 * @module
 */

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
   * Clock for message times and presence expiry.
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
}

/** Bytes of content per chunk key: under the 64 KiB value limit, with room to spare. */
export const CHUNK_BYTES = 60 * 1024;
/** Chunks per atomic write: ten of 60 KiB stay under the 800 KiB mutation size limit. */
const CHUNKS_PER_WRITE = 10;
/** Checks per atomic write allowed everywhere (Deno Deploy; local files allow 100). */
const MAX_CHECKS = 10;
/** Deletions per atomic write, well under the limit of 1000 mutations. */
const DELETES_PER_WRITE = 500;
/** Texts longer than this go to chunks (a UTF-16 code unit takes up to 2 bytes in a value). */
const INLINE_TEXT_LENGTH = 16 * 1024;
/** How long the bytes of a file too big for history stay, for live delivery only. */
const TRANSIENT_MS = 10 * 60_000;
/** How long presence events stay readable by subscribers that lag. */
const EVENT_MS = 10 * 60_000;
/** Tries of one write against concurrent writers before giving up. */
const MAX_ATTEMPTS = 64;
/** Trim batches per append: a history shrunk by a new configuration catches up over appends. */
const TRIM_ROUNDS = 16;

/** The `head` of a room: rewritten by every append, watched by subscribers. */
interface Head {
  /** Id of the newest message; 0 before the first. */
  id: number;
  epoch: string;
  /** History bytes of every message ever appended. */
  bytes: number;
}

/** The `tail` of a room: written by trimming only, so it never conflicts with appends. */
interface Tail {
  /** Oldest id still kept. */
  first: number;
  /** History bytes of every message trimmed. */
  bytes: number;
}

/** Where the chunks of a file (or of a long text) are. */
interface BlobRef {
  id: string;
  chunks: number;
  bytes: number;
}

/** What writing a message's chunks came to: a duplicate found first, or where they are. */
interface Written {
  earlier?: StoredMessage;
  blob?: BlobRef;
}

/** A stored message: a {@linkcode StoredMessage} with its bytes moved to chunks. */
interface MessageRecord {
  epoch: string;
  id: number;
  ts: number;
  from: Member | null;
  sender?: string;
  cid?: string;
  /** The text, when short enough to keep inline. */
  text?: string;
  /** The text is in `blob`, as UTF-8. */
  longText?: boolean;
  name?: string;
  mime?: string;
  size?: number;
  /** A file: whether its bytes are part of history (else they expire soon). */
  kept?: boolean;
  blob?: BlobRef;
  /** What the message counts against `historyBytes`, as the memory engine counts. */
  bytes: number;
}

/** One connection's presence. */
interface PresenceEntry {
  member: Member;
  expires: number;
  /** When the connection first joined: members are listed in that order. */
  since: number;
}

/** Number of the newest presence event of a room; rewritten by every presence change. */
interface PresenceHead {
  seq: number;
}

type PresenceEvent = Exclude<EngineEvent, { type: "message" }>;

interface Subscription {
  room: string;
  listener: (event: EngineEvent) => void;
  reader: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
  /** Newest message id and presence event delivered (or known to be gone). */
  lastId: number;
  lastSeq: number;
  stopped: boolean;
  /** Cuts a backoff short on unsubscribe. */
  abort: AbortController;
  /** Catch-ups run one at a time, in the order asked. */
  chain: Promise<void>;
  /** Settles when the watch loop and every catch-up are over. */
  finished: Promise<void>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function key(room: string, ...parts: Deno.KvKeyPart[]): Deno.KvKey {
  return ["parley", room, ...parts];
}

/** Waits `ms`, or less when `signal` aborts. */
function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** A short random pause that grows with the attempt, so colliding writers spread out. */
function backoff(attempt: number): Promise<void> {
  return delay(Math.random() * Math.min(50, 2 ** attempt));
}

/**
 * Commits `op`. SQLite's "database is locked" (another handle on the same
 * file was writing) counts as a failed check: the caller reads again and
 * retries.
 */
async function commit(op: Deno.AtomicOperation): Promise<boolean> {
  try {
    return (await op.commit()).ok;
  } catch (error) {
    if (error instanceof Error && /database is locked|database is busy/i.test(error.message)) {
      return false;
    }
    throw error;
  }
}

/** The error of a write that lost to concurrent writers every time. */
function busy(what: string, room: string): Error {
  return new Error(
    `Cannot ${what} in room ${JSON.stringify(room)}: concurrent writes won ${MAX_ATTEMPTS} times`,
  );
}

/** How long KV keeps a presence entry on its own: a backstop for instances that died. */
function presenceExpireIn(remainingMs: number): number {
  return Math.ceil(Math.max(0, remainingMs) * 2 + 60_000);
}

/**
 * One presence change in the making: the room's entries as read, edited the
 * way the memory engine edits its map, with the events that follow.
 */
class PresenceEdit {
  readonly entries = new Map<string, PresenceEntry>();
  readonly events: PresenceEvent[] = [];
  /** Connections whose entry was set or deleted. */
  readonly touched = new Set<string>();
  /** Entries deleted because they expired: checked at commit, a late refresh wins. */
  readonly expired: Deno.KvEntry<PresenceEntry>[] = [];

  constructor(readonly now: number, readonly stored: Map<string, Deno.KvEntry<PresenceEntry>>) {
    for (const [conn, entry] of stored) this.entries.set(conn, entry.value);
  }

  /** Whether some entry has expired. */
  get stale(): boolean {
    for (const entry of this.entries.values()) if (entry.expires <= this.now) return true;
    return false;
  }

  members(): Member[] {
    const byId = new Map<string, Member>();
    for (const entry of this.entries.values()) byId.set(entry.member.id, entry.member);
    return [...byId.values()];
  }

  hasMember(id: string): boolean {
    for (const entry of this.entries.values()) if (entry.member.id === id) return true;
    return false;
  }

  put(conn: string, entry: PresenceEntry) {
    this.entries.set(conn, entry);
    this.touched.add(conn);
  }

  remove(conn: string) {
    const entry = this.entries.get(conn);
    if (!entry) return;
    this.entries.delete(conn);
    this.touched.add(conn);
    if (!this.hasMember(entry.member.id)) this.events.push({ type: "leave", member: entry.member });
  }

  /**
   * Removes at most `max` expired entries.
   *
   * @returns Whether no expired entry is left.
   */
  expire(max: number): boolean {
    for (const [conn, entry] of this.entries) {
      if (entry.expires > this.now) continue;
      if (this.expired.length >= max) return false;
      const stored = this.stored.get(conn);
      if (stored) this.expired.push(stored);
      this.remove(conn);
    }
    return true;
  }

  /** Adds or refreshes a connection; a new tab under another nick renames the member. */
  join(conn: string, member: Member, expires: number) {
    const known = this.members().find((m) => m.id === member.id);
    const current = this.entries.get(conn);
    const mine = current?.member.id === member.id ? current : undefined;
    if (known && !mine && known.nick !== member.nick) this.rename(member.id, member.nick);
    const copy = { id: member.id, nick: member.nick };
    this.put(conn, { member: mine?.member ?? copy, expires, since: mine?.since ?? this.now });
    if (!known) this.events.push({ type: "join", member: { ...copy } });
  }

  rename(memberId: string, nick: string) {
    let old: string | undefined;
    for (const [conn, entry] of this.entries) {
      if (entry.member.id !== memberId) continue;
      old ??= entry.member.nick;
      if (entry.member.nick !== nick) this.put(conn, { ...entry, member: { id: memberId, nick } });
    }
    if (old !== undefined && old !== nick) {
      this.events.push({ type: "rename", member: { id: memberId, nick }, old });
    }
  }
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
  #options: KvEngineOptions;
  #now: () => number;
  #log: Logger;
  /** Writes of one room from this engine run one at a time (appends, and presence apart). */
  #queues = new Map<string, Promise<unknown>>();
  /** Calls under way, awaited by `close()`. */
  #pending = new Set<Promise<unknown>>();
  /** Live subscriptions by room, for delivering this engine's own presence changes at once. */
  #rooms = new Map<string, Set<Subscription>>();
  /** Subscriptions not finished yet, stopped or not. */
  #subscriptions = new Set<Subscription>();
  #closed = false;

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
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#log = options.logger ?? silentLogger;
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

  /** Runs `work` after every earlier call queued under `name` has settled. */
  #serial<T>(name: string, work: () => Promise<T>): Promise<T> {
    const result = (this.#queues.get(name) ?? Promise.resolve()).then(work);
    const settled = result.then(() => {}, () => {});
    this.#queues.set(name, settled);
    settled.then(() => {
      if (this.#queues.get(name) === settled) this.#queues.delete(name);
    });
    return result;
  }

  // Messages.

  append(room: string, draft: MessageDraft): Promise<AppendResult> {
    return this.#track(() => this.#append(room, draft));
  }

  /**
   * Stores a message. The call takes its place in the room's queue at once,
   * so one caller's messages get ids in call order, while file bytes are
   * written in parallel with the messages ahead. Subscribers of this engine
   * get the message before this resolves, as with the memory engine.
   */
  async #append(room: string, draft: MessageDraft): Promise<AppendResult> {
    const { sender, cid } = draft;
    const dedup = sender !== undefined && cid !== undefined
      ? key(room, "dedup", sender, cid)
      : undefined;
    const fields: Omit<MessageRecord, "epoch" | "id"> = {
      ts: this.#now(),
      from: draft.from,
      sender,
      cid,
      bytes: 128,
    };
    let data: Uint8Array | undefined;
    let content: Uint8Array | undefined;
    if (draft.text !== undefined) {
      fields.bytes += draft.text.length * 2;
      if (draft.text.length > INLINE_TEXT_LENGTH) {
        content = encoder.encode(draft.text);
        fields.longText = true;
      } else {
        fields.text = draft.text;
      }
    } else {
      data = draft.data ?? new Uint8Array(0);
      fields.name = draft.name ?? "file";
      fields.mime = draft.mime ?? "application/octet-stream";
      fields.size = data.byteLength;
      fields.kept = data.byteLength <= this.#options.historyFileBytes;
      if (fields.kept) fields.bytes += data.byteLength;
      if (data.byteLength > 0) content = data;
    }
    // Bytes first: the commit that publishes the message only points at them.
    const written: Promise<Written> = content
      ? this.#writeContent(room, content, dedup, fields.kept === false)
      : Promise.resolve({});
    written.catch(() => {}); // Awaited in the queue; this only marks it handled.
    const result = await this.#serial(`msg:${room}`, async () => {
      const { earlier, blob } = await written;
      if (earlier) return { message: earlier, duplicate: true };
      if (blob) fields.blob = blob;
      let result: AppendResult;
      try {
        result = await this.#commit(room, dedup, (epoch, id) => {
          const record: MessageRecord = { epoch, id, ...fields };
          return { record, message: toMessage(room, record, draft.text, data) };
        });
      } catch (error) {
        if (blob) await this.#dropBlob(room, blob);
        throw error;
      }
      // Another writer stored the same cid first: these bytes belong to nothing.
      if (result.duplicate && blob) await this.#dropBlob(room, blob);
      return result;
    });
    if (!result.duplicate) {
      const { message } = result;
      const subs = [...this.#rooms.get(room) ?? []];
      await Promise.all(subs.map((sub) => this.#catchUp(sub, message.id, 0, message)));
    }
    return result;
  }

  /**
   * Writes the chunks of a message, unless its sender and cid are already
   * stored (a resent file is found before its bytes are written again).
   */
  async #writeContent(
    room: string,
    content: Uint8Array,
    dedup: Deno.KvKey | undefined,
    transient: boolean,
  ): Promise<Written> {
    const earlier = dedup && await this.#earlier(room, dedup);
    if (earlier) return { earlier };
    return { blob: await this.#writeBlob(room, content, transient) };
  }

  /**
   * Takes the next id of the room and stores the message, retrying while
   * other writers get there first; then trims history.
   */
  async #commit(
    room: string,
    dedup: Deno.KvKey | undefined,
    make: (epoch: string, id: number) => { record: MessageRecord; message: StoredMessage },
  ): Promise<AppendResult> {
    for (let attempt = 1;; attempt++) {
      const keys = [key(room, "head"), key(room, "tail")];
      if (dedup) keys.push(dedup);
      const [headEntry, tailEntry, dedupEntry] = await this.#kv.getMany(keys) as [
        Deno.KvEntryMaybe<Head>,
        Deno.KvEntryMaybe<Tail>,
        Deno.KvEntryMaybe<number> | undefined,
      ];
      const head = headEntry.value;
      if (dedupEntry?.value != null) {
        const earlier = await this.#stored(room, dedupEntry.value, head, tailEntry.value);
        if (earlier) return { message: earlier, duplicate: true };
      }
      const epoch = head?.epoch ?? newEpoch();
      const id = (head?.id ?? 0) + 1;
      const { record, message } = make(epoch, id);
      const next: Head = { id, epoch, bytes: (head?.bytes ?? 0) + record.bytes };
      const op = this.#kv.atomic()
        .check(headEntry)
        .set(key(room, "msg", id), record)
        .set(key(room, "head"), next);
      if (dedup && dedupEntry) op.check(dedupEntry).set(dedup, id);
      if (await commit(op)) {
        await this.#trim(room, next, tailEntry.value).catch((error) =>
          this.#log.warn("kv_trim_failed", { room, error: String(error) })
        );
        return { message, duplicate: false };
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("append", room);
      await backoff(attempt);
    }
  }

  /** The message stored earlier under a dedup key, if it is still in history. */
  async #earlier(room: string, dedup: Deno.KvKey): Promise<StoredMessage | undefined> {
    const [head, tail, id] = await this.#kv.getMany<[Head, Tail, number]>([
      key(room, "head"),
      key(room, "tail"),
      dedup,
    ]);
    return id.value == null
      ? undefined
      : await this.#stored(room, id.value, head.value, tail.value);
  }

  /** Message `id` with its kept bytes, if it is still in history. */
  async #stored(
    room: string,
    id: number,
    head: Head | null,
    tail: Tail | null,
  ): Promise<StoredMessage | undefined> {
    if (!head || id > head.id || id < this.#oldest(head, tail)) return undefined;
    const record = (await this.#kv.get<MessageRecord>(key(room, "msg", id))).value;
    return record ? await this.#message(room, record, false) : undefined;
  }

  /** Oldest id of history: what trimming left, and never more than `historySize`. */
  #oldest(head: Head, tail: Tail | null): number {
    return Math.max(tail?.first ?? 1, head.id - this.#options.historySize + 1);
  }

  /**
   * Drops the oldest messages while the room holds more than `historySize`
   * of them or more than `historyBytes` (keeping at least one), with their
   * dedup keys and chunks. Best-effort: a failure leaves it to the next
   * append, and `read()` never shows more than `historySize` anyway.
   */
  async #trim(room: string, head: Head, tail: Tail | null): Promise<void> {
    const { historySize, historyBytes } = this.#options;
    const over = (count: number, bytes: number) =>
      count > historySize || (bytes > historyBytes && count > 1);
    // The common case, decided without reading: nothing to drop.
    if (!over(head.id - (tail?.first ?? 1) + 1, head.bytes - (tail?.bytes ?? 0))) return;
    for (let round = 0; round < TRIM_ROUNDS; round++) {
      const [headEntry, tailEntry] = await this.#kv.getMany<[Head, Tail]>([
        key(room, "head"),
        key(room, "tail"),
      ]);
      const head = headEntry.value;
      if (!head) return;
      const first = tailEntry.value?.first ?? 1;
      let count = head.id - first + 1;
      let bytes = head.bytes - (tailEntry.value?.bytes ?? 0);
      if (!over(count, bytes)) return;
      // One check for the tail and one per dedup key leaves room for nine.
      const dropped: MessageRecord[] = [];
      const records = this.#kv.list<MessageRecord>(
        { start: key(room, "msg", first), end: key(room, "msg", head.id + 1) },
        { limit: MAX_CHECKS - 1 },
      );
      for await (const { value } of records) {
        if (!over(count, bytes)) break;
        dropped.push(value);
        count = head.id - value.id;
        bytes -= value.bytes;
      }
      if (dropped.length === 0) return;
      const withDedup = dropped.filter((r) => r.sender !== undefined && r.cid !== undefined);
      const dedups = withDedup.length === 0 ? [] : await this.#kv.getMany<number[]>(
        withDedup.map((r) => key(room, "dedup", r.sender!, r.cid!)),
      );
      const op = this.#kv.atomic()
        .check(tailEntry)
        .set(key(room, "tail"), { first: dropped.at(-1)!.id + 1, bytes: head.bytes - bytes });
      for (const r of dropped) op.delete(key(room, "msg", r.id));
      dedups.forEach((entry, i) => {
        // A pair stored again since belongs to the newer message.
        if (entry.value === withDedup[i].id) op.check(entry).delete(entry.key);
      });
      if (!(await commit(op))) {
        await backoff(round + 1);
        continue;
      }
      for (const r of dropped) {
        // The bytes of files too big for history expire by themselves.
        if (r.blob && r.kept !== false) await this.#deleteBlob(room, r.blob);
      }
    }
  }

  read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    return this.#track(() => this.#read(room, after, limit));
  }

  async #read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const { head, tail } = await this.#ends(room);
    const oldest = this.#oldest(head, tail);
    const base = { epoch: head.epoch, head: head.id };
    if (after && after.epoch === head.epoch && after.id <= head.id && after.id >= oldest - 1) {
      const records = await this.#records(room, after.id + 1, head.id);
      // Ids are unique and in range, so the count alone proves there is no gap.
      if (records.length === head.id - after.id) {
        return { ...base, recovered: true, messages: await this.#messages(room, records) };
      }
    }
    const count = Math.max(0, Math.min(limit, head.id - oldest + 1));
    const records = count === 0 ? [] : await this.#records(room, oldest, head.id, count);
    return {
      ...base,
      recovered: after ? false : null,
      messages: await this.#messages(room, records),
    };
  }

  /** Head and tail of a room; a room seen for the first time gets its epoch now. */
  async #ends(room: string): Promise<{ head: Head; tail: Tail | null }> {
    for (let attempt = 1;; attempt++) {
      const [headEntry, tailEntry] = await this.#kv.getMany<[Head, Tail]>([
        key(room, "head"),
        key(room, "tail"),
      ]);
      if (headEntry.value) return { head: headEntry.value, tail: tailEntry.value };
      const head: Head = { id: 0, epoch: newEpoch(), bytes: 0 };
      const op = this.#kv.atomic().check(headEntry).set(key(room, "head"), head);
      if (await commit(op)) return { head, tail: tailEntry.value };
      if (attempt >= MAX_ATTEMPTS) throw busy("create the epoch", room);
      await backoff(attempt);
    }
  }

  /** Records with ids from `from` to `to`, in id order; with `last`, only the last ones. */
  async #records(room: string, from: number, to: number, last?: number): Promise<MessageRecord[]> {
    const records: MessageRecord[] = [];
    const selector = { start: key(room, "msg", from), end: key(room, "msg", to + 1) };
    const options = last === undefined ? {} : { reverse: true, limit: last };
    for await (const { value } of this.#kv.list<MessageRecord>(selector, options)) {
      records.push(value);
    }
    return last === undefined ? records : records.reverse();
  }

  async #messages(room: string, records: MessageRecord[]): Promise<StoredMessage[]> {
    const messages: StoredMessage[] = [];
    for (const record of records) messages.push(await this.#message(room, record, false));
    return messages;
  }

  /**
   * Rebuilds a message from its record and chunks. `live`: also the bytes of
   * a file too big for history, while they last.
   */
  async #message(room: string, record: MessageRecord, live: boolean): Promise<StoredMessage> {
    let text = record.text;
    if (record.longText) {
      const bytes = record.blob && await this.#readBlob(room, record.blob);
      text = bytes ? decoder.decode(bytes) : "";
    }
    let data: Uint8Array | undefined;
    if (text === undefined && (record.kept || live)) {
      data = record.blob ? await this.#readBlob(room, record.blob) : new Uint8Array(0);
    }
    return toMessage(room, record, text, data);
  }

  /** Writes bytes as chunks; `transient` ones expire on their own. */
  async #writeBlob(room: string, bytes: Uint8Array, transient: boolean): Promise<BlobRef> {
    const blob: BlobRef = {
      id: crypto.randomUUID(),
      chunks: Math.ceil(bytes.byteLength / CHUNK_BYTES),
      bytes: bytes.byteLength,
    };
    const options = transient ? { expireIn: TRANSIENT_MS } : undefined;
    for (let start = 0; start < blob.chunks; start += CHUNKS_PER_WRITE) {
      await this.#write(() => {
        const op = this.#kv.atomic();
        for (let i = start; i < Math.min(blob.chunks, start + CHUNKS_PER_WRITE); i++) {
          // A copy: a view would carry its whole buffer.
          const chunk = bytes.slice(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES);
          op.set(key(room, "blob", blob.id, i), chunk, options);
        }
        return op;
      });
    }
    return blob;
  }

  /** The bytes of a blob, or undefined when some chunk is gone. */
  async #readBlob(room: string, blob: BlobRef): Promise<Uint8Array | undefined> {
    const bytes = new Uint8Array(blob.bytes);
    let offset = 0;
    let chunks = 0;
    const entries = this.#kv.list<Uint8Array>(
      { prefix: key(room, "blob", blob.id) },
      { batchSize: CHUNKS_PER_WRITE },
    );
    for await (const { value } of entries) {
      if (!(value instanceof Uint8Array) || offset + value.byteLength > blob.bytes) return;
      bytes.set(value, offset);
      offset += value.byteLength;
      chunks++;
    }
    return chunks === blob.chunks && offset === blob.bytes ? bytes : undefined;
  }

  /** Deletes a blob no message points at; a failure only leaves garbage behind. */
  async #dropBlob(room: string, blob: BlobRef): Promise<void> {
    await this.#deleteBlob(room, blob).catch((error) =>
      this.#log.warn("kv_blob_delete_failed", { room, error: String(error) })
    );
  }

  async #deleteBlob(room: string, blob: BlobRef): Promise<void> {
    for (let start = 0; start < blob.chunks; start += DELETES_PER_WRITE) {
      await this.#write(() => {
        const op = this.#kv.atomic();
        for (let i = start; i < Math.min(blob.chunks, start + DELETES_PER_WRITE); i++) {
          op.delete(key(room, "blob", blob.id, i));
        }
        return op;
      });
    }
  }

  /** Commits a write without checks, retrying while the database is locked. */
  async #write(make: () => Deno.AtomicOperation): Promise<void> {
    for (let attempt = 1;; attempt++) {
      if (await commit(make())) return;
      if (attempt >= MAX_ATTEMPTS) {
        throw new Error(`Cannot write to the KV database: locked ${attempt} times in a row`);
      }
      await backoff(attempt);
    }
  }

  // Subscriptions.

  subscribe(room: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe> {
    return this.#track(() => this.#subscribe(room, listener));
  }

  /**
   * Watches the room's two head keys. The first emission is the state when
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
    const [head, presence] = first.value as [
      Deno.KvEntryMaybe<Head>,
      Deno.KvEntryMaybe<PresenceHead>,
    ];
    const sub: Subscription = {
      room,
      listener,
      reader,
      lastId: head.value?.id ?? 0,
      lastSeq: presence.value?.seq ?? 0,
      stopped: false,
      abort: new AbortController(),
      chain: Promise.resolve(),
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
    return this.#kv.watch([key(room, "head"), key(room, "presence-head")]).getReader();
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
        continue;
      }
      failures = 0;
      const [head, presence] = next.value as [
        Deno.KvEntryMaybe<Head>,
        Deno.KvEntryMaybe<PresenceHead>,
      ];
      await this.#catchUp(sub, head.value?.id ?? 0, presence.value?.seq ?? 0);
    }
  }

  /**
   * Delivers messages up to `id` and presence events up to `seq`, after
   * earlier catch-ups. `known`: a message this engine just stored, which
   * need not be read back.
   */
  #catchUp(sub: Subscription, id: number, seq: number, known?: StoredMessage): Promise<void> {
    sub.chain = sub.chain.then(() => this.#deliver(sub, id, seq, known)).catch((error) =>
      this.#log.warn("kv_catch_up_failed", { room: sub.room, error: String(error) })
    );
    return sub.chain;
  }

  async #deliver(
    sub: Subscription,
    id: number,
    seq: number,
    known?: StoredMessage,
  ): Promise<void> {
    if (id > sub.lastId) {
      for (const record of await this.#records(sub.room, sub.lastId + 1, id)) {
        const message = record.id === known?.id
          ? known
          : await this.#message(sub.room, record, true);
        if (sub.stopped) return;
        sub.lastId = record.id;
        this.#emit(sub, { type: "message", message });
      }
      // Ids missing from the list were trimmed before this subscriber got to them.
      sub.lastId = Math.max(sub.lastId, id);
    }
    if (seq > sub.lastSeq) {
      const events = this.#kv.list<PresenceEvent>({
        start: key(sub.room, "presence-event", sub.lastSeq + 1),
        end: key(sub.room, "presence-event", seq + 1),
      });
      for await (const { key: eventKey, value } of events) {
        if (sub.stopped) return;
        sub.lastSeq = eventKey.at(-1) as number;
        this.#emit(sub, value);
      }
      sub.lastSeq = Math.max(sub.lastSeq, seq);
    }
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

  // Presence.

  join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    return this.#track(() =>
      this.#serial(`presence:${room}`, () => this.#join(room, conn, member, ttlMs))
    );
  }

  async #join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#readPresence(room);
      const edit = new PresenceEdit(this.#now(), stored);
      const own = stored.get(conn);
      if (own && own.value.member.id === member.id && own.value.expires > edit.now && !edit.stale) {
        // A refresh changes nobody's view: the entry alone is written, no
        // event. The stored nick stays (renames go through rename()), so a
        // refresh racing a rename cannot undo it.
        const entry = { ...own.value, expires: edit.now + ttlMs };
        const op = this.#kv.atomic().check(own)
          .set(own.key, entry, { expireIn: presenceExpireIn(ttlMs) });
        if (await commit(op)) return edit.members();
      } else if (!edit.expire(MAX_CHECKS - 1)) {
        // More expired entries than one commit may check: a batch goes first.
        if (await this.#commitPresence(room, head, edit)) {
          attempt = 0;
          continue;
        }
      } else {
        edit.join(conn, member, edit.now + ttlMs);
        if (await this.#commitPresence(room, head, edit)) return edit.members();
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("join", room);
      await backoff(attempt);
    }
  }

  leave(room: string, conn: string): Promise<void> {
    return this.#track(() =>
      this.#serial(`presence:${room}`, () =>
        this.#change(room, (edit) => {
          edit.remove(conn);
        }))
    );
  }

  rename(room: string, memberId: string, nick: string): Promise<void> {
    return this.#track(() =>
      this.#serial(`presence:${room}`, () =>
        this.#change(room, (edit) => {
          edit.rename(memberId, nick);
        }))
    );
  }

  members(room: string): Promise<Member[]> {
    return this.#track(() => this.#serial(`presence:${room}`, () => this.#sweep(room)));
  }

  /** Applies `change` and commits it if it changed anything. */
  async #change(room: string, change: (edit: PresenceEdit) => void): Promise<void> {
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#readPresence(room);
      const edit = new PresenceEdit(this.#now(), stored);
      change(edit);
      if (edit.touched.size === 0 || await this.#commitPresence(room, head, edit)) return;
      if (attempt >= MAX_ATTEMPTS) throw busy("change presence", room);
      await backoff(attempt);
    }
  }

  /** Removes expired entries (publishing `leave`s) and returns the members left. */
  async #sweep(room: string): Promise<Member[]> {
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#readPresence(room);
      const edit = new PresenceEdit(this.#now(), stored);
      if (!edit.stale) return edit.members();
      const swept = edit.expire(MAX_CHECKS - 1);
      if (await this.#commitPresence(room, head, edit)) {
        if (swept) return edit.members();
        attempt = 0;
        continue;
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("sweep presence", room);
      await backoff(attempt);
    }
  }

  /**
   * The room's presence-head and entries, in the order members joined. The
   * head is read first: a change committed between the two reads then fails
   * the head check at commit.
   */
  async #readPresence(room: string) {
    const head = await this.#kv.get<PresenceHead>(key(room, "presence-head"));
    const entries: Deno.KvEntry<PresenceEntry>[] = [];
    for await (const entry of this.#kv.list<PresenceEntry>({ prefix: key(room, "presence") })) {
      entries.push(entry);
    }
    entries.sort((a, b) => a.value.since - b.value.since);
    const stored = new Map(entries.map((entry) => [entry.key.at(-1) as string, entry]));
    return { head, stored };
  }

  /**
   * Commits an edit if nobody changed the room's presence since it was read,
   * with its events; then delivers them to this engine's subscribers before
   * returning, as the memory engine does.
   *
   * @returns Whether it was committed.
   */
  async #commitPresence(
    room: string,
    head: Deno.KvEntryMaybe<PresenceHead>,
    edit: PresenceEdit,
  ): Promise<boolean> {
    const seq = head.value?.seq ?? 0;
    // Every change rewrites the head, even without events: it is the lock.
    const op = this.#kv.atomic().check(head, ...edit.expired);
    for (const conn of edit.touched) {
      const entry = edit.entries.get(conn);
      if (entry) {
        op.set(key(room, "presence", conn), entry, {
          expireIn: presenceExpireIn(entry.expires - edit.now),
        });
      } else {
        op.delete(key(room, "presence", conn));
      }
    }
    edit.events.forEach((event, i) => {
      op.set(key(room, "presence-event", seq + i + 1), event, { expireIn: EVENT_MS });
    });
    const last = seq + edit.events.length;
    op.set(key(room, "presence-head"), { seq: last });
    if (!(await commit(op))) return false;
    if (edit.events.length > 0) {
      const subs = [...this.#rooms.get(room) ?? []];
      await Promise.all(subs.map((sub) => this.#catchUp(sub, 0, last)));
    }
    return true;
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
    await Promise.allSettled(this.#pending);
    for (const sub of this.#subscriptions) this.#unsubscribe(sub);
    await Promise.allSettled([...this.#subscriptions].map((sub) => sub.finished));
    this.#kv.close();
  }
}

/** A {@linkcode StoredMessage} from its record, in the shape the memory engine gives. */
function toMessage(
  room: string,
  record: MessageRecord,
  text: string | undefined,
  data: Uint8Array | undefined,
): StoredMessage {
  const message: StoredMessage = {
    room,
    epoch: record.epoch,
    id: record.id,
    ts: record.ts,
    from: record.from,
    sender: record.sender,
    cid: record.cid,
  };
  if (text !== undefined) {
    message.text = text;
  } else {
    message.data = data;
    message.name = record.name;
    message.mime = record.mime;
    message.size = record.size;
  }
  return message;
}
