/**
 * The engine seam: ids, history, dedup, fan-out and presence all go through
 * {@linkcode Engine}. The in-memory engine (`engines/memory.ts`) is the
 * default; durable and multi-instance engines are new files implementing the
 * same interface.
 *
 * @module
 */

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

/** Something that happened in a room, delivered to subscribers in room order. */
export type EngineEvent =
  | { type: "message"; message: StoredMessage }
  | { type: "join" | "leave"; member: Member }
  | { type: "rename"; member: Member; old: string };

/** Stops a subscription. */
export type Unsubscribe = () => void;

/** Storage and fan-out for rooms. */
export interface Engine {
  /** Assigns the next id of the room, stores the message and publishes it. */
  append(room: string, draft: MessageDraft): Promise<AppendResult>;
  /**
   * Reads history: every message after `after` when that can be done
   * contiguously, else (or without `after`) the last `limit` messages.
   */
  read(room: string, after: Position | undefined, limit: number): Promise<ReadResult>;
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
   * @returns The members of the room after the change.
   */
  join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]>;
  /** Removes one connection's entry; publishes `leave` when it was the member's last. */
  leave(room: string, conn: string): Promise<void>;
  /** Changes a member's nick on all its entries and publishes `rename`. */
  rename(room: string, memberId: string, nick: string): Promise<void>;
  /** Current members of the room. */
  members(room: string): Promise<Member[]>;
  /** Whether the engine can serve requests now. */
  ready(): Promise<boolean>;
  /** Flushes what must be kept and releases resources. */
  close(): Promise<void>;
}
