/**
 * The `parley.v1` envelopes as the client SDK reads them: typed shapes, and
 * guards that turn untrusted JSON into them (or null). Pure functions, no
 * sockets, no DOM.
 *
 * @module
 */

/** The subprotocol a rich client offers. */
export const SUBPROTOCOL = "parley.v1";

/**
 * Error codes after which the same envelope may succeed later, with the same
 * `cid` (as `TRANSIENT_ERRORS` in the server's `lib/protocol.ts`). The server
 * also marks them with `retry: true`.
 */
export const TRANSIENT_ERRORS: ReadonlySet<string> = new Set(["rate_limited", "unavailable"]);

/** A member of a room as the server names it. */
export interface Member {
  /** Public member id. */
  id: string;
  /** Display name. */
  nick: string;
  /** True when a signed token (or the server API) vouches for the name. */
  verified?: boolean;
  /** True for messages posted through the server API. */
  bot?: boolean;
}

/** A position in a room's history: an id means nothing without its epoch. */
export interface Position {
  /** The history store's epoch, an opaque string. */
  epoch: string;
  /** A message id within that epoch (0: before the first message). */
  id: number;
}

/** The limits `welcome` states; `rate`, `burst` and `queue` are null without a rate limit. */
export interface Limits {
  /** Longest text, in Unicode code points. */
  text: number;
  /** Largest frame, in bytes. */
  bytes: number;
  /** Messages a second on average. */
  rate: number | null;
  /** Messages at once. */
  burst: number | null;
  /** Messages the server queues beyond the burst. */
  queue: number | null;
  /** Largest scroll-back page. */
  page: number;
  /** Milliseconds a typing indicator lasts. */
  typing: number;
}

/** The contents of a file message. */
export interface FileInfo {
  /** File name as the sender gave it. */
  name: string;
  /** Media type. */
  mime: string;
  /** Size in bytes. */
  size: number;
  /** The bytes; absent when `omitted` or when the connection ended before they came. */
  data?: Uint8Array;
  /** True when history no longer holds the bytes (too big to keep). */
  omitted?: boolean;
}

/** A text or file message of a room, live, replayed or from a scroll-back page. */
export interface ChatMessage {
  /** Id within `epoch`. */
  id: number;
  /** The room's epoch. */
  epoch: string;
  /** Server time, ms since 1970. */
  ts: number;
  /** The sender; null for a raw client. */
  from: Member | null;
  /** The sender's client id for this message, when it gave one. */
  cid?: string;
  /** Text of a text message (absent for files and deleted messages). */
  text?: string;
  /** The file of a file message. */
  file?: FileInfo;
  /** The id of the message this one answers. */
  replyTo?: number;
  /** Server time of the latest edit. */
  edited?: number;
  /** True for a tombstone: the message was deleted. */
  deleted?: boolean;
}

/** An `edit` or `delete` entry: it changes the message `target` of the same epoch. */
export interface Change {
  /** What the entry does. */
  kind: "edit" | "delete";
  /** The entry's own id in the room's order. */
  id: number;
  /** The room's epoch. */
  epoch: string;
  /** Server time, ms since 1970. */
  ts: number;
  /** Who made the change. */
  from: Member | null;
  /** The author's client id for this change. */
  cid?: string;
  /** The id of the message changed. */
  target: number;
  /** The new text of an edit. */
  text?: string;
  /** On a replayed edit: the target was deleted since (the edit then has no text). */
  deleted?: boolean;
}

/** A member who took another name. */
export interface Rename {
  /** The member, with the new name. */
  member: Member;
  /** The old name. */
  old: string;
}

/**
 * A `presence` envelope, or a single `join`, `leave` or `rename`. `count` is
 * null when the server did not say it; `listed` is false for a count-only
 * update (large rooms).
 */
export interface Presence {
  /** Members who came. */
  joins: Member[];
  /** Members who went. */
  leaves: Member[];
  /** Members who took another name. */
  renames: Rename[];
  /** Members in the room, when the server said. */
  count: number | null;
  /** False when only the count came. */
  listed: boolean;
}

/** A page of members, in member-id order. */
export interface MembersPage {
  /** The members of this page. */
  members: Member[];
  /** More members follow. */
  more: boolean;
  /** Members in the room. */
  count: number | null;
}

/** A scroll-back page: messages older than `before`, oldest first. */
export interface HistoryPage {
  /** The epoch the ids belong to. */
  epoch: string;
  /** The id asked before. */
  before: number;
  /** Messages and files (files without bytes), with edits and deletes applied. */
  messages: ChatMessage[];
  /** History holds older messages. */
  more: boolean;
}

/** A member removed from the room by a moderator or the server API. */
export interface Kick {
  /** Who was removed. */
  member: Member;
  /** The moderator, or null for the server API. */
  by: Member | null;
  /** Why, possibly empty. */
  reason: string;
  /** End of the ban, ms since 1970, when there is one. */
  until?: number;
}

/** What `welcome` says about the connection that was just admitted. */
export interface Welcome {
  /** The room's name. */
  room: string;
  /** The room's epoch. */
  epoch: string;
  /** Id of the newest message, 0 when none. */
  head: number;
  /** This member. */
  you: Member;
  /** The first members of the room. */
  members: Member[];
  /** Members in the room. */
  count: number;
  /** true: resumed without loss; false: a gap; null: a fresh join. */
  recovered: boolean | null;
  /** Stored entries that follow before live traffic. */
  replay: number;
  /** `write`, or `read` when the token allows only reading. */
  access: "write" | "read";
  /** True when this member moderates the room. */
  moderator: boolean;
  /** The server's limits. */
  limits: Limits;
}

/** An `error` envelope. */
export interface ServerError {
  /** The error code, such as `rate_limited` or `bad_envelope`. */
  code: string;
  /** What was wrong, in words. */
  message: string;
  /** The refused envelope's cid, when it had one. */
  cid?: string;
  /** True when the same envelope may succeed later (transient). */
  retry: boolean;
}

/** Whether a value is a plain JSON object. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Whether a value is a message id: a safe integer from 1. */
export function isId(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 1;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** Length of a text in Unicode code points, as the server counts its text limit. */
export function codePoints(text: string): number {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

/** Reads a member object, or null. */
export function readMember(value: unknown): Member | null {
  if (!isObject(value) || typeof value.id !== "string" || typeof value.nick !== "string") {
    return null;
  }
  const member: Member = { id: value.id, nick: value.nick };
  if (typeof value.verified === "boolean") member.verified = value.verified;
  if (value.bot === true) member.bot = true;
  return member;
}

function readMembers(value: unknown): Member[] {
  const members: Member[] = [];
  if (!Array.isArray(value)) return members;
  for (const item of value) {
    const member = readMember(item);
    if (member) members.push(member);
  }
  return members;
}

/** Reads a `message` or `file` envelope (live, replayed or in a page), or null. */
export function readMessage(value: unknown): ChatMessage | null {
  if (!isObject(value) || (value.type !== "message" && value.type !== "file")) return null;
  const { id, epoch } = value;
  if (!isId(id) || typeof epoch !== "string") return null;
  const message: ChatMessage = {
    id,
    epoch,
    ts: typeof value.ts === "number" ? value.ts : 0,
    from: readMember(value.from),
  };
  if (typeof value.cid === "string") message.cid = value.cid;
  if (isId(value.reply_to)) message.replyTo = value.reply_to;
  if (value.deleted === true) {
    message.deleted = true;
    return message;
  }
  if (value.type === "file") {
    if (typeof value.name !== "string" || !isCount(value.size)) return null;
    message.file = {
      name: value.name,
      mime: typeof value.mime === "string" ? value.mime : "application/octet-stream",
      size: value.size,
    };
    if (value.omitted === true) message.file.omitted = true;
    return message;
  }
  if (typeof value.text !== "string") return null;
  message.text = value.text;
  if (typeof value.edited === "number") message.edited = value.edited;
  return message;
}

/** Reads an `edit` or `delete` envelope, or null. */
export function readChange(value: unknown): Change | null {
  if (!isObject(value) || (value.type !== "edit" && value.type !== "delete")) return null;
  const { id, epoch, target } = value;
  if (!isId(id) || !isId(target) || typeof epoch !== "string") return null;
  const change: Change = {
    kind: value.type,
    id,
    epoch,
    ts: typeof value.ts === "number" ? value.ts : 0,
    from: readMember(value.from),
    target,
  };
  if (typeof value.cid === "string") change.cid = value.cid;
  if (typeof value.text === "string") change.text = value.text;
  if (value.deleted === true) change.deleted = true;
  return change;
}

/** Reads a `presence` envelope, or one `join`, `leave` or `rename`, or null. */
export function readPresence(value: unknown): Presence | null {
  if (!isObject(value)) return null;
  const presence: Presence = { joins: [], leaves: [], renames: [], count: null, listed: true };
  if (value.type === "join" || value.type === "leave" || value.type === "rename") {
    const member = readMember(value.member);
    if (!member) return null;
    if (value.type === "join") presence.joins.push(member);
    else if (value.type === "leave") presence.leaves.push(member);
    else presence.renames.push({ member, old: typeof value.old === "string" ? value.old : "" });
    return presence;
  }
  if (value.type !== "presence") return null;
  presence.joins = readMembers(value.joins);
  presence.leaves = readMembers(value.leaves);
  if (Array.isArray(value.renames)) {
    for (const item of value.renames) {
      const member = isObject(item) ? readMember(item.member) : null;
      if (member && isObject(item)) {
        presence.renames.push({ member, old: typeof item.old === "string" ? item.old : "" });
      }
    }
  }
  presence.count = isCount(value.count) ? value.count : null;
  presence.listed = "joins" in value || "leaves" in value || "renames" in value;
  return presence;
}

/** Reads the answer to a `members` request, or null. */
export function readMembersPage(value: unknown): MembersPage | null {
  if (!isObject(value) || value.type !== "members" || !Array.isArray(value.members)) return null;
  return {
    members: readMembers(value.members),
    more: value.more === true,
    count: isCount(value.count) ? value.count : null,
  };
}

/** Reads the answer to a `history` request, or null. */
export function readHistoryPage(value: unknown): HistoryPage | null {
  if (!isObject(value) || value.type !== "history" || typeof value.epoch !== "string") return null;
  if (!Array.isArray(value.messages)) return null;
  const messages: ChatMessage[] = [];
  for (const item of value.messages) {
    const message = readMessage(item);
    if (message) messages.push(message);
  }
  return {
    epoch: value.epoch,
    before: isCount(value.before) ? value.before : 0,
    messages,
    more: value.more === true,
  };
}

/** Reads a `kick` envelope, or null. */
export function readKick(value: unknown): Kick | null {
  if (!isObject(value) || value.type !== "kick") return null;
  const member = readMember(value.member);
  if (!member) return null;
  const kick: Kick = {
    member,
    by: readMember(value.by),
    reason: typeof value.reason === "string" ? value.reason : "",
  };
  if (typeof value.until === "number" && Number.isFinite(value.until)) kick.until = value.until;
  return kick;
}

function readLimits(value: unknown): Limits {
  const limits = isObject(value) ? value : {};
  const orNull = (v: unknown) => (isId(v) ? v : null);
  return {
    text: isId(limits.text) ? limits.text : 4000,
    bytes: isId(limits.bytes) ? limits.bytes : 2 * 1024 * 1024,
    rate: typeof limits.rate === "number" && limits.rate > 0 ? limits.rate : null,
    burst: orNull(limits.burst),
    queue: orNull(limits.queue),
    page: isId(limits.page) ? limits.page : 200,
    typing: isId(limits.typing) ? limits.typing : 6000,
  };
}

/** Reads a `welcome` envelope, or null. */
export function readWelcome(value: unknown): Welcome | null {
  if (!isObject(value) || value.type !== "welcome" || typeof value.epoch !== "string") return null;
  const you = readMember(value.you);
  if (!you) return null;
  const members = readMembers(value.members);
  return {
    room: typeof value.room === "string" ? value.room : "",
    epoch: value.epoch,
    head: isCount(value.head) ? value.head : 0,
    you,
    members,
    count: isCount(value.count) ? value.count : members.length,
    recovered: typeof value.recovered === "boolean" ? value.recovered : null,
    replay: isCount(value.replay) ? value.replay : 0,
    access: value.access === "read" ? "read" : "write",
    moderator: value.moderator === true,
    limits: readLimits(value.limits),
  };
}

/** Reads an `error` envelope, or null. */
export function readError(value: unknown): ServerError | null {
  if (!isObject(value) || value.type !== "error") return null;
  const code = typeof value.code === "string" ? value.code : "error";
  const error: ServerError = {
    code,
    message: typeof value.message === "string" ? value.message : "",
    retry: value.retry === true || TRANSIENT_ERRORS.has(code),
  };
  if (typeof value.cid === "string") error.cid = value.cid;
  return error;
}

// The server starts the message of an error about one envelope with its type
// ("nick: your name comes from your token", "typing: this room is read-only").
const ABOUT_ONE_ENVELOPE = /^[a-z_]+:/;

/**
 * The close code an in-band `error` without a cid stands for, when it refuses
 * the connection itself (the server says so before closing with 4401 or 4403,
 * because some runtimes lose that close frame and report 1006); else null.
 */
export function refusalCode(error: ServerError): 4401 | 4403 | null {
  if (error.cid !== undefined) return null;
  if (error.code === "unauthorized") return 4401;
  if (error.code === "forbidden" && !ABOUT_ONE_ENVELOPE.test(error.message)) return 4403;
  return null;
}
