/**
 * Who a token says a connection is, and what it may do in a room. Pure logic
 * without jose, so the open-mode path can use these types and checks without
 * loading `token.ts`.
 *
 * @module
 */

/** A verified identity, read from a token. */
export interface Identity {
  /** The token's `sub`: stable account id, 1 to 64 characters. */
  sub: string;
  /** Display name: the token's `name` (trimmed), or its `sub` when absent. */
  name: string;
  /** Room patterns the identity may read and write. */
  rooms: string[];
  /** Room patterns the identity may only read. */
  read: string[];
  /** Room patterns the identity moderates (and so may read and write). */
  mod: string[];
  /** When the token expires, in milliseconds since 1970. */
  exp: number;
}

/**
 * A refused identity: `unauthorized` when the token is missing, malformed,
 * forged or expired (close code 4401, HTTP 401), `forbidden` when a valid
 * identity may not do what it asked (close code 4403, HTTP 403).
 */
export class AuthError extends Error {
  /**
   * @param code Which kind of refusal.
   * @param message What was wrong; never the token itself.
   */
  constructor(readonly code: "unauthorized" | "forbidden", message: string) {
    super(message);
    this.name = "AuthError";
  }
}

/** What an identity may do in one room. */
export type Access = { access: "write" | "read" | "none"; moderator: boolean };

/**
 * A room pattern: a room name (1 to 64 characters from `A-Z a-z 0-9 _ -`),
 * optionally followed by `*` to match every room starting with it, or `*` alone.
 */
export const ROOM_PATTERN_SYNTAX = /^(?:[A-Za-z0-9_-]{1,64}\*?|\*)$/;

/** Most patterns one claim (`rooms`, `read` or `mod`) may hold. */
export const MAX_PATTERNS = 256;

/** Whether `pattern` is a well-formed room pattern. */
export function isRoomPattern(pattern: unknown): pattern is string {
  return typeof pattern === "string" && ROOM_PATTERN_SYNTAX.test(pattern);
}

/**
 * Whether a room pattern matches a room: exactly, or, when the pattern ends
 * with `*`, by prefix (`team-*` matches `team-a`; `*` matches every room).
 *
 * @example
 * ```ts
 * matchRoom("team-*", "team-a"); // true
 * matchRoom("team", "team-a"); // false
 * ```
 */
export function matchRoom(pattern: string, room: string): boolean {
  if (pattern.endsWith("*")) return room.startsWith(pattern.slice(0, -1));
  return pattern === room;
}

function matchesAny(patterns: readonly string[], room: string): boolean {
  return patterns.some((pattern) => matchRoom(pattern, room));
}

/**
 * What `identity` may do in `room`: write when a `rooms` pattern matches,
 * else read when a `read` pattern matches. A moderator of a room (a `mod`
 * pattern matches) may also read and write it.
 */
export function accessTo(identity: Identity, room: string): Access {
  const moderator = matchesAny(identity.mod, room);
  if (moderator || matchesAny(identity.rooms, room)) return { access: "write", moderator };
  if (matchesAny(identity.read, room)) return { access: "read", moderator };
  return { access: "none", moderator };
}
