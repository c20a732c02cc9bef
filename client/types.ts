/**
 * The client's options, its connection status and the events it emits: the
 * surface a UI is written against.
 *
 * @module
 */

import type { BackoffOptions } from "./backoff.ts";
import type { Delivery, OutboxItem, SendError } from "./outbox.ts";
import type { RosterChanges } from "./presence.ts";
import type { StorageAdapter } from "./storage.ts";
import type {
  Change,
  ChatMessage,
  HistoryPage,
  Kick,
  Member,
  MembersPage,
  Position,
  Presence,
  ServerError,
  Welcome,
} from "./wire.ts";

/** The part of the WebSocket API the client uses. */
export interface SocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Set to `"arraybuffer"` by the client. */
  binaryType: string;
  /** Sends a frame. */
  send(data: string | ArrayBufferLike | ArrayBufferView): void;
  /** Closes the socket. */
  close(code?: number, reason?: string): void;
  /** Handlers the client sets. */
  onopen: ((event: Event) => void) | null;
  /** Handlers the client sets. */
  onmessage: ((event: MessageEvent) => void) | null;
  /** Handlers the client sets. */
  onclose: ((event: CloseEvent) => void) | null;
  /** Handlers the client sets. */
  onerror: ((event: Event) => void) | null;
}

/** A WebSocket constructor: the global one, or a test's. */
export type SocketConstructor = new (url: string, protocols?: string | string[]) => SocketLike;

/** A token, or a function that returns a fresh one (called again after a 4401). */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of `new ParleyClient(url, options)`. */
export interface ParleyClientOptions {
  /** The nickname (open mode). In token mode the token's name is used. */
  nick?: string;
  /** The token (token mode): a string, or a function asked again for a fresh one after 4401. */
  token?: TokenSource;
  /**
   * The stable client identity (8 to 64 of `A-Z a-z 0-9 _ -`); it is what
   * deduplicates resends, so keep it secret.
   * @default {one kept in `storage`, made at random the first time}
   */
  clientId?: string;
  /**
   * Where the client id, the last position and the unacked messages are kept.
   * @default {a new MemoryStorage}
   */
  storage?: StorageAdapter;
  /**
   * The WebSocket constructor.
   * @default {globalThis.WebSocket}
   */
  WebSocket?: SocketConstructor;
  /** Reconnect delays. */
  backoff?: BackoffOptions;
  /**
   * A connection must stay up this long after `welcome` before the backoff starts over.
   * @default {5000}
   */
  stableMs?: number;
  /**
   * An idle connection is pinged this often, in ms.
   * @default {20000}
   */
  pingMs?: number;
  /**
   * A ping unanswered this long means a dead connection, in ms.
   * @default {15000}
   */
  pongTimeoutMs?: number;
  /**
   * Wait before resending an item refused with a transient error, in ms (plus up to as much jitter).
   * @default {1000}
   */
  retryMs?: number;
  /**
   * An item in flight on this many lost connections fails with `connection_lost`.
   * @default {10}
   */
  maxAttempts?: number;
  /**
   * A `history` or `members` request unanswered this long is rejected, in ms.
   * @default {15000}
   */
  requestTimeoutMs?: number;
  /**
   * The key prefix in `storage` of this room's state.
   * @default {"parley:" + the URL without its query}
   */
  storageKey?: string;
}

/** The connection as a person would say it. */
export type Status =
  | { state: "connecting"; attempt: number }
  | { state: "open" }
  | { state: "reconnecting"; delayMs: number; attempt: number; code: number; reason: string }
  | { state: "offline" }
  | { state: "closed"; final: true; code: number; reason: string };

/** Messages may be missing between `previous` and what follows. */
export interface Gap {
  /** Why: the history store is new (`epoch_changed`), or messages left history. */
  reason: "epoch_changed" | "history_lost" | "bad_last";
  /** The position the client tried to resume from. */
  previous: Position | null;
  /** The epoch now. */
  epoch: string;
}

/** A presence update, with what it changed in the client's member list. */
export interface PresenceEvent extends Presence {
  /** Members now listed or no longer listed, and renames of listed ones. */
  changes: RosterChanges;
}

/** Every event of a {@linkcode ParleyClient} and its payload. */
export interface ParleyEvents {
  /** The connection changed state. */
  status: Status;
  /** The server admitted the connection (after every reconnect). */
  welcome: Welcome;
  /** A text or file message, live or replayed, in room order, each once. */
  message: ChatMessage;
  /** An edit of a message. */
  edit: Change;
  /** A delete of a message. */
  delete: Change;
  /** Members came, went or took another name, or the count changed. */
  presence: PresenceEvent;
  /** A page of members came. */
  members: MembersPage;
  /** A member is typing. */
  typing: { member: Member; ttl: number };
  /** A member was removed by a moderator. */
  kick: Kick;
  /** Messages may be missing (`welcome.recovered` was false): mark it, keep going. */
  gap: Gap;
  /** A server error not tied to an outbox item; `retry` false means final. */
  error: ServerError;
  /** An outbox item was stored by the server. */
  sent: { item: OutboxItem; delivery: Delivery };
  /** An outbox item failed for good. */
  failed: { item: OutboxItem; error: SendError };
  /** A scroll-back page came. */
  history: HistoryPage;
  /** A binary frame no `file` envelope announced (a raw client's file). */
  binary: Uint8Array;
}
