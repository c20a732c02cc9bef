/**
 * The Parley client SDK: one typed ES module for browsers and Deno (no DOM,
 * no Deno-only APIs) that speaks `parley.v1` to one room and keeps it
 * connected: resume from the last position, backoff, an outbox of unacked
 * messages resent with their cids, presence, edits, deletes, replies,
 * typing, scroll-back, member pages, files, and typed events for a UI.
 *
 * @example
 * ```ts
 * import { ParleyClient, WebStorage } from "./client/mod.ts";
 *
 * const client = new ParleyClient("ws://127.0.0.1:8000/dev", {
 *   nick: "ann",
 *   storage: new WebStorage(),
 * });
 * client.on("status", (s) => console.log(s.state));
 * client.on("message", (m) => console.log(`${m.from?.nick ?? "raw"}: ${m.text}`));
 * client.on("failed", ({ error }) => console.warn(error.message));
 * await client.connect();
 * await client.send("hello").delivered;
 * await client.close();
 * ```
 *
 * @module
 */

export { ParleyClient } from "./client.ts";
export type {
  Gap,
  ParleyClientOptions,
  ParleyEvents,
  PresenceEvent,
  SocketConstructor,
  SocketLike,
  Status,
  TokenSource,
} from "./types.ts";
export { Backoff, type BackoffOptions } from "./backoff.ts";
export { Emitter, type Listener } from "./events.ts";
export {
  type Delivery,
  type OutboxItem,
  type OutgoingKind,
  type Pending,
  SendError,
} from "./outbox.ts";
export type { RosterChanges } from "./presence.ts";
export {
  IndexedDBStorage,
  MemoryStorage,
  type StorageAdapter,
  WebStorage,
  type WebStorageLike,
} from "./storage.ts";
export {
  type Change,
  type ChatMessage,
  type FileInfo,
  type HistoryPage,
  type Kick,
  type Limits,
  type Member,
  type MembersPage,
  type Position,
  type Presence,
  type Rename,
  type ServerError,
  SUBPROTOCOL,
  TRANSIENT_ERRORS,
  type Welcome,
} from "./wire.ts";
