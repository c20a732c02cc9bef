/**
 * The engine seam: ids, history, dedup, fan-out and presence all go through
 * {@linkcode Engine}. The in-memory engine (`engines/memory.ts`) is the
 * default; durable and multi-instance engines are new files implementing the
 * same interface.
 *
 * @module
 */

import type { Metrics } from "./metrics.ts";
import type { Member, Position, StoredMessage } from "./protocol.ts";

/** A message to store: everything but what the engine assigns. */
export interface MessageDraft {
  from: Member | null;
  /** Private client identity of the sender; with `cid`, the dedup key. */
  sender?: string;
  cid?: string;
  text?: string;
  data?: Uint8Array;
  name?: string;
  mime?: string;
  /**
   * What this entry does to an earlier message of the room: absent for an
   * ordinary message. An edit carries the new `text`; a delete carries none.
   */
  kind?: "edit" | "delete";
  /** Edits and deletes: the id of the message they act on. */
  target?: number;
  /** The id of the message this one answers (ordinary messages only). */
  replyTo?: number;
}

/** What {@linkcode Engine.append} gives back. */
export interface AppendResult {
  /** The stored message; with `duplicate`, the one stored earlier. */
  message: StoredMessage;
  /** True when `sender`+`cid` was already stored: nothing new was stored or published. */
  duplicate: boolean;
}

/** What {@linkcode Engine.read} gives back. */
export interface ReadResult {
  epoch: string;
  /** Id of the newest message of the room, 0 when none. */
  head: number;
  /**
   * True: `messages` are all messages after the asked position, contiguous.
   * False: that was impossible (other epoch, or the gap left history), and
   * `messages` are the most recent ones. Null: no position was asked.
   */
  recovered: boolean | null;
  messages: StoredMessage[];
}

/** What {@linkcode Engine.history} gives back. */
export interface HistoryPage {
  epoch: string;
  /**
   * Up to `limit` ordinary messages (no edit or delete entries) older than
   * `before`, in id order, with every edit and delete applied: an edited one
   * has its current `text` and `edited`; a deleted one is a tombstone
   * (`deleted: true`, no text, no bytes).
   */
  messages: StoredMessage[];
  /** True when history holds older messages than the first one returned. */
  more: boolean;
}

/** Something that happened in a room, delivered to subscribers in room order. */
export type EngineEvent =
  | { type: "message"; message: StoredMessage }
  | { type: "join" | "leave"; member: Member }
  | { type: "rename"; member: Member; old: string }
  | Signal;

/**
 * An event that is published but never stored (see {@linkcode Engine.signal}):
 * a member typing, or a member removed from the room by a moderator or the
 * server API (every instance closes that member's sockets in the room).
 */
export type Signal =
  | { type: "typing"; member: Member }
  | {
    type: "kick";
    member: Member;
    reason: string;
    /** The moderator, or null for the server API. */
    by: Member | null;
    /** End of the ban that came with the kick, in ms since 1970, if any. */
    until?: number;
  };

/**
 * A room's history as it moves from one engine to another (see
 * `migrate.ts`, which reads and writes it as JSONL).
 */
export interface RoomSnapshot {
  epoch: string;
  /** Id of the newest message of the room, 0 when none. */
  head: number;
  /**
   * Every entry history keeps, oldest first, with consecutive ids that end
   * at `head`, edits and deletes applied, as `read()` gives them (their
   * `room` is ignored). The dedup window is their `sender`+`cid` pairs.
   */
  messages: StoredMessage[];
}

/** Stops a subscription. */
export type Unsubscribe = () => void;

/** Storage and fan-out for rooms. */
export interface Engine {
  /**
   * Assigns the next id of the room, stores the message and publishes it.
   *
   * An edit or delete (`draft.kind`) is stored and published like a message,
   * with its own id, and is also applied to its `target` when the target is
   * still in history: an edit sets the target's `text` and `edited` (the
   * edit's `ts`); a delete makes the target, and every earlier edit entry of
   * it, a tombstone (`deleted: true`, without text or bytes). An edit of a
   * deleted message leaves it deleted. The engine checks no ownership: the
   * hub does, before appending.
   */
  append(room: string, draft: MessageDraft): Promise<AppendResult>;
  /**
   * Reads history: every entry after `after` when that can be done
   * contiguously, else (or without `after`) the last `limit` entries. Entries
   * are returned with edits and deletes applied (see `append`).
   */
  read(room: string, after: Position | undefined, limit: number): Promise<ReadResult>;
  /**
   * A page of scroll-back: the ordinary messages older than `before`, newest
   * `limit` of them, with edits and deletes applied (see {@linkcode HistoryPage}).
   */
  history(room: string, before: number, limit: number): Promise<HistoryPage>;
  /**
   * Publishes an event that is never stored, to every subscriber of the room
   * on every instance, at most once and in no guaranteed order with messages.
   * Best effort: a subscriber whose feed is cut misses it.
   */
  signal(room: string, event: Signal): Promise<void>;
  /**
   * Calls `listener` for every event of the room, in order, until
   * unsubscribed. Resolves once the subscription is active: every message
   * stored after that reaches `listener`, once, in id order, with no gaps
   * (an engine that loses its feed fills the gap from its history).
   */
  subscribe(room: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe>;
  /**
   * Adds or refreshes the presence entry of one connection. Publishes `join`
   * when the member had no live entry. Entries not refreshed within `ttlMs`
   * expire (and publish `leave` when it was the member's last).
   *
   * @param list False when the caller already follows the room's members:
   *   the engine may then skip building the list and resolve an empty one.
   * @returns The members of the room after the change.
   */
  join(
    room: string,
    conn: string,
    member: Member,
    ttlMs: number,
    list?: boolean,
  ): Promise<Member[]>;
  /**
   * Keeps one connection's presence entry alive for another `ttlMs`, in
   * constant time whatever the room's size. Re-adds it (and publishes `join`)
   * when it had expired or was lost, as after a flushed store.
   */
  refresh(room: string, conn: string, member: Member, ttlMs: number): Promise<void>;
  /** Removes one connection's entry; publishes `leave` when it was the member's last. */
  leave(room: string, conn: string): Promise<void>;
  /** Changes a member's nick on all its entries and publishes `rename`. */
  rename(room: string, memberId: string, nick: string): Promise<void>;
  /** Current members of the room. */
  members(room: string): Promise<Member[]>;
  /**
   * Bans a member id from a room until `until` (ms since 1970), on every
   * instance; kept by durable engines across restarts. A later ban replaces
   * an earlier one.
   */
  ban(room: string, memberId: string, until: number): Promise<void>;
  /** The end of the member's active ban in the room, or undefined when none. */
  bannedUntil(room: string, memberId: string): Promise<number | undefined>;
  /** Whether the engine can serve requests now. */
  ready(): Promise<boolean>;
  /** Flushes what must be kept and releases resources. */
  close(): Promise<void>;
  /**
   * The engine's own metrics (up, reconnects, feed gaps, append latency,
   * presence sweeps, batch sizes; see `engines/_metrics.ts`), without room
   * labels. The hub's `/metrics` includes them. Optional: an engine without
   * any reports nothing.
   */
  readonly metrics?: Metrics;
  /**
   * Writes the history of a room that has no messages yet (its `head` is 0)
   * from another engine's {@linkcode RoomSnapshot}: ids, epoch, edits,
   * deletes, file bytes and dedup pairs, so clients resume as if nothing
   * moved. Meant for a room no one is in: it publishes no events, and
   * subscribers already in the room may or may not see the imported entries
   * before they resume. Optional: an engine without it cannot be the target
   * of `deno task import`.
   *
   * @throws {RangeError} When the room has messages, or the snapshot does
   *   not fit this engine's history limits; nothing is written then.
   */
  importRoom?(room: string, snapshot: RoomSnapshot): Promise<void>;
}
