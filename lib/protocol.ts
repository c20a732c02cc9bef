/**
 * The `parley.v1` protocol: every envelope a client may send, every envelope
 * the server builds, and their validation. `docs/protocol.md` is the prose
 * version of this module.
 *
 * @module
 */

import { nickProblem } from "./auth/nick.ts";

/** The subprotocol a rich client offers. */
export const SUBPROTOCOL = "parley.v1";

/** Close codes Parley uses besides the standard ones. */
export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  protocolError: 1002,
  policy: 1008,
  tooBig: 1009,
  internal: 1011,
  /** The instance is restarting (a drain): reconnect after a short, random wait. */
  serviceRestart: 1012,
  tryAgainLater: 1013,
  /** A peer that fell too far behind its room (it resumes from its last id). */
  slowConsumer: 4001,
  /** No token, a bad one, or one that expired: reconnect with a fresh token. */
  unauthorized: 4401,
  /** Not allowed in this room, kicked or banned: do not reconnect on your own. */
  forbidden: 4403,
} as const;

/** Longest token accepted, in characters. */
export const MAX_TOKEN_LENGTH = 8192;
/** Longest reason of a kick, in characters. */
export const MAX_REASON_LENGTH = 200;

/** Room names: 1 to 64 characters from `A-Z a-z 0-9 _ -`. */
export const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** The room of `/`. */
export const LOBBY = "lobby";
/** Longest nickname, in characters after trimming. */
export const MAX_NICK_LENGTH = 32;

const CLIENT_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;
const CID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// deno-lint-ignore no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** A member of a room as others see it. */
export interface Member {
  /** Public member id, derived from the private client identity (or the token's `sub`). */
  id: string;
  nick: string;
  /**
   * True when the identity was checked (a signed token, or the server API);
   * false in open mode, where anyone may take any free nickname.
   */
  verified?: boolean;
  /** True for messages posted through the server API. */
  bot?: boolean;
}

/** A position in a room's history. */
export interface Position {
  epoch: string;
  id: number;
}

/** Most messages one scroll-back page holds. */
export const MAX_PAGE = 200;
/** Messages of a scroll-back page when `limit` is not given. */
export const DEFAULT_PAGE = 50;

/** Envelopes a rich client sends. */
export type ClientEnvelope =
  /**
   * `last: null` asks for a fresh join even when the URL names a position.
   * `nick` may be left out when a `token` names the member.
   */
  | {
    type: "hello";
    nick?: string;
    client?: string;
    last?: Position | null;
    token?: string;
    /** The client takes `batch` frames and coalesced `presence` envelopes. */
    batch?: boolean;
  }
  | { type: "message"; cid: string; text: string; replyTo?: number }
  | { type: "file"; cid: string; name: string; mime: string; size: number; replyTo?: number }
  | { type: "edit"; cid: string; id: number; text: string }
  | { type: "delete"; cid: string; id: number }
  /** `cid`, optional here, is echoed in the answer so a client can match it. */
  | { type: "history"; before: number; limit: number; cid?: string }
  | { type: "typing" }
  | { type: "members"; after?: string; limit: number }
  | { type: "kick"; cid?: string; member: string; minutes: number; reason: string }
  | { type: "nick"; nick: string }
  | { type: "ping" };

/** Every `type` a client may send. */
export const CLIENT_TYPES = [
  "hello",
  "message",
  "file",
  "edit",
  "delete",
  "history",
  "typing",
  "members",
  "kick",
  "nick",
  "ping",
] as const;

/** Error codes of the `error` envelope. */
export type ErrorCode =
  | "bad_json"
  | "unknown_type"
  | "bad_envelope"
  | "bad_nick"
  | "nick_taken"
  | "unauthorized"
  | "bad_last"
  | "hello_required"
  | "already_joined"
  | "bad_file"
  | "not_found"
  | "forbidden"
  | "rate_limited"
  | "unavailable";

/**
 * Error codes after which the same envelope may succeed if sent again later,
 * with the same `cid`. Every other code is final: resending cannot help.
 */
export const TRANSIENT_ERRORS: ReadonlySet<ErrorCode> = new Set(["rate_limited", "unavailable"]);

/** A client envelope that does not validate, and why. */
export class ProtocolError extends Error {
  /** The envelope's `type`, when it had a string one. */
  type?: string;
  constructor(readonly code: ErrorCode, message: string, readonly cid?: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** Limits that parsing enforces. */
export interface ParseLimits {
  /** Longest text, in Unicode code points. */
  maxTextLength: number;
  maxMessageBytes: number;
}

/** Length of a string in Unicode code points, what a person calls characters. */
export function codePoints(text: string): number {
  let count = 0;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    // A high surrogate followed by a low one is one code point.
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}

/** Whether a text is 1 to `max` code points long (cheap when clearly within). */
function textWithin(text: string, max: number): boolean {
  if (text.length === 0) return false;
  return text.length <= max || (text.length <= 2 * max && codePoints(text) <= max);
}

/**
 * Checks a nickname.
 *
 * @returns The trimmed nickname.
 * @throws {ProtocolError} `bad_nick` when empty, too long or holding control characters.
 */
export function validateNick(value: unknown): string {
  if (typeof value !== "string") throw new ProtocolError("bad_nick", "nick: must be a string");
  const nick = value.trim();
  if (nick.length === 0) throw new ProtocolError("bad_nick", "nick: must not be empty");
  if (codePoints(nick) > MAX_NICK_LENGTH) {
    throw new ProtocolError("bad_nick", `nick: must be at most ${MAX_NICK_LENGTH} characters`);
  }
  if (CONTROL.test(nick)) {
    throw new ProtocolError("bad_nick", "nick: must not contain control characters");
  }
  const problem = nickProblem(nick);
  if (problem !== undefined) throw new ProtocolError("bad_nick", `nick: ${problem}`);
  return nick;
}

/**
 * Parses a claimed position, from an envelope or from URL parameters.
 *
 * @throws {ProtocolError} `bad_last` when malformed.
 */
export function parsePosition(epoch: unknown, id: unknown): Position {
  const num = typeof id === "string" && /^\d{1,15}$/.test(id) ? Number(id) : id;
  if (typeof epoch !== "string" || !EPOCH_PATTERN.test(epoch)) {
    throw new ProtocolError("bad_last", "last.epoch: must be an epoch string from the server");
  }
  if (typeof num !== "number" || !Number.isSafeInteger(num) || num < 0) {
    throw new ProtocolError("bad_last", "last.id: must be a non-negative integer");
  }
  return { epoch, id: num };
}

function field<T>(
  obj: Record<string, unknown>,
  name: string,
  check: (v: unknown) => v is T,
  what: string,
  cid?: string,
): T {
  const value = obj[name];
  if (!check(value)) throw new ProtocolError("bad_envelope", `${name}: must be ${what}`, cid);
  return value;
}

const isString = (v: unknown): v is string => typeof v === "string";
const isId = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 1;

/** The optional `reply_to` of a message or file. */
function replyTo(obj: Record<string, unknown>, cid?: string): { replyTo?: number } {
  if (obj.reply_to === undefined || obj.reply_to === null) return {};
  return { replyTo: field(obj, "reply_to", isId, "the id of an earlier message", cid) };
}

/** The `cid` of an envelope, when it has a well-formed one. */
export function cidOf(obj: Record<string, unknown>): string | undefined {
  return typeof obj.cid === "string" && CID_PATTERN.test(obj.cid) ? obj.cid : undefined;
}

/**
 * Parses and validates one text frame from a rich client.
 *
 * @throws {ProtocolError} With the code and a message saying what was wrong.
 */
export function parseClientEnvelope(text: string, limits: ParseLimits): ClientEnvelope {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ProtocolError("bad_json", "the frame is not valid JSON");
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ProtocolError("bad_json", "the frame must be a JSON object");
  }
  const obj = value as Record<string, unknown>;
  try {
    return parseObject(obj, limits);
  } catch (error) {
    if (error instanceof ProtocolError && typeof obj.type === "string") error.type = obj.type;
    throw error;
  }
}

function parseObject(obj: Record<string, unknown>, limits: ParseLimits): ClientEnvelope {
  const cid = cidOf(obj);
  const text = (cid?: string) =>
    field(
      obj,
      "text",
      (v): v is string => isString(v) && textWithin(v, limits.maxTextLength),
      `a string of 1 to ${limits.maxTextLength} characters`,
      cid,
    );
  switch (obj.type) {
    case "hello": {
      let token: string | undefined;
      if (obj.token !== undefined && obj.token !== null) {
        token = field(
          obj,
          "token",
          (v): v is string => isString(v) && v.length > 0 && v.length <= MAX_TOKEN_LENGTH,
          `a token of 1 to ${MAX_TOKEN_LENGTH} characters`,
        );
      }
      // Without a nick, a token must name the member (checked on admission).
      const nick = obj.nick === undefined ? undefined : validateNick(obj.nick);
      let client: string | undefined;
      if (obj.client !== undefined) {
        client = field(
          obj,
          "client",
          (v): v is string => isString(v) && CLIENT_PATTERN.test(v),
          "8 to 64 characters from A-Z a-z 0-9 _ -",
        );
      }
      let last: Position | null | undefined = obj.last === null ? null : undefined;
      if (obj.last !== undefined && obj.last !== null) {
        if (typeof obj.last !== "object") {
          throw new ProtocolError("bad_last", "last: must be an object {epoch, id}");
        }
        const l = obj.last as Record<string, unknown>;
        last = parsePosition(l.epoch, l.id);
      }
      if (obj.batch !== undefined && typeof obj.batch !== "boolean") {
        throw new ProtocolError("bad_envelope", "batch: must be true or false");
      }
      const hello: Extract<ClientEnvelope, { type: "hello" }> = {
        type: "hello",
        nick,
        client,
        last,
      };
      if (token !== undefined) hello.token = token;
      if (obj.batch === true) hello.batch = true;
      return hello;
    }
    case "message": {
      field(obj, "cid", (v): v is string => isString(v) && CID_PATTERN.test(v), CID_RULE);
      return { type: "message", cid: cid!, text: text(cid), ...replyTo(obj, cid) };
    }
    case "edit":
    case "delete": {
      field(obj, "cid", (v): v is string => isString(v) && CID_PATTERN.test(v), CID_RULE);
      const id = field(obj, "id", isId, "the id of one of your messages", cid);
      if (obj.type === "delete") return { type: "delete", cid: cid!, id };
      return { type: "edit", cid: cid!, id, text: text(cid) };
    }
    case "history": {
      const before = field(obj, "before", isId, "a message id: the page ends before it");
      let limit = DEFAULT_PAGE;
      if (obj.limit !== undefined) {
        limit = field(
          obj,
          "limit",
          (v): v is number =>
            typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= MAX_PAGE,
          `an integer from 1 to ${MAX_PAGE}`,
        );
      }
      return cid === undefined ? { type: "history", before, limit } : {
        type: "history",
        before,
        limit,
        cid,
      };
    }
    case "typing":
      return { type: "typing" };
    case "members": {
      let after: string | undefined;
      if (obj.after !== undefined && obj.after !== null) {
        after = field(
          obj,
          "after",
          (v): v is string => isString(v) && v.length <= 64,
          "the id of the last member of the previous page",
        );
      }
      let limit = 100;
      if (obj.limit !== undefined) {
        limit = field(
          obj,
          "limit",
          (v): v is number => typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= 500,
          "an integer from 1 to 500",
        );
      }
      return after === undefined ? { type: "members", limit } : { type: "members", after, limit };
    }
    case "kick": {
      const member = field(
        obj,
        "member",
        (v): v is string => isString(v) && /^[A-Za-z0-9_:-]{1,64}$/.test(v),
        "the id of a member of the room",
        cid,
      );
      let minutes = 0;
      if (obj.minutes !== undefined) {
        minutes = field(
          obj,
          "minutes",
          (v): v is number =>
            typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 525_600,
          "whole minutes of ban from 0 (none) to 525600 (a year)",
          cid,
        );
      }
      let reason = "";
      if (obj.reason !== undefined) {
        reason = field(
          obj,
          "reason",
          (v): v is string => isString(v) && codePoints(v) <= MAX_REASON_LENGTH && !CONTROL.test(v),
          `at most ${MAX_REASON_LENGTH} characters without control characters`,
          cid,
        ).trim();
      }
      return { type: "kick", cid, member, minutes, reason };
    }
    case "file": {
      field(obj, "cid", (v): v is string => isString(v) && CID_PATTERN.test(v), CID_RULE);
      const name = field(
        obj,
        "name",
        (v): v is string => isString(v) && v.length > 0 && v.length <= 255 && !CONTROL.test(v),
        "a file name of 1 to 255 characters without control characters",
        cid,
      );
      const mime = field(
        obj,
        "mime",
        (v): v is string => isString(v) && /^[\w.+-]+\/[\w.+-]+$/.test(v) && v.length <= 127,
        "a media type such as image/png",
        cid,
      );
      const size = field(
        obj,
        "size",
        (v): v is number =>
          typeof v === "number" && Number.isSafeInteger(v) && v >= 0 &&
          v <= limits.maxMessageBytes,
        `an integer byte count from 0 to ${limits.maxMessageBytes}`,
        cid,
      );
      return { type: "file", cid: cid!, name, mime, size, ...replyTo(obj, cid) };
    }
    case "nick":
      return { type: "nick", nick: validateNick(obj.nick) };
    case "ping":
      return { type: "ping" };
    default:
      throw new ProtocolError(
        "unknown_type",
        obj.type === undefined
          ? "type: missing"
          : `type: ${JSON.stringify(obj.type).slice(0, 40)} is not one of ${
            CLIENT_TYPES.join(", ")
          }`,
        cid,
      );
  }
}

const CID_RULE = "1 to 64 characters from A-Z a-z 0-9 _ - . :";

/** One stored message of a room, text or file. */
export interface StoredMessage {
  room: string;
  epoch: string;
  id: number;
  /** Server time in ms since 1970. */
  ts: number;
  /** The sender, or null for a raw client. */
  from: Member | null;
  /** The sender's private client identity, for dedup; never sent. */
  sender?: string;
  cid?: string;
  /** Text of a text message. */
  text?: string;
  /** Contents of a file; absent when the file was too big to keep in history. */
  data?: Uint8Array;
  /** File name and type (files only). */
  name?: string;
  mime?: string;
  /** File size in bytes (files only). */
  size?: number;
  /** Edit and delete entries: what they do, and to which message id. */
  kind?: "edit" | "delete";
  target?: number;
  /** The message this one answers. */
  replyTo?: number;
  /** Set once edited: server time of the latest edit. */
  edited?: number;
  /** Set once deleted: the entry is a tombstone, without text or bytes. */
  deleted?: boolean;
}

/** The wire object of a stored entry, as sent to rich clients and in history pages. */
export function messageObject(m: StoredMessage): Record<string, unknown> {
  const base = {
    id: m.id,
    epoch: m.epoch,
    ts: m.ts,
    from: m.from,
    cid: m.cid,
    reply_to: m.replyTo,
  };
  if (m.kind !== undefined) {
    return {
      type: m.kind,
      ...base,
      target: m.target,
      text: m.text,
      deleted: m.deleted || undefined,
    };
  }
  if (m.deleted) return { type: "message", ...base, deleted: true };
  if (m.text !== undefined) {
    return { type: "message", ...base, text: m.text, edited: m.edited };
  }
  return {
    type: "file",
    ...base,
    name: m.name,
    mime: m.mime,
    size: m.size,
    omitted: m.data === undefined ? true : undefined,
  };
}

/** Builds the wire envelope of a stored entry, as sent to rich clients. */
export function messageEnvelope(m: StoredMessage): string {
  return JSON.stringify(messageObject(m));
}

/**
 * The text frame a raw client receives for a stored entry, or undefined when
 * it gets none (a tombstone). An edit or delete becomes a readable line.
 */
export function rawText(m: StoredMessage): string | undefined {
  const who = m.from?.nick ?? "someone";
  if (m.kind === "edit") return m.deleted ? undefined : `* ${who} edited a message: ${m.text}`;
  if (m.kind === "delete") return `* ${who} deleted a message`;
  if (m.deleted || m.text === undefined) return undefined;
  return m.from ? `${m.from.nick}: ${m.text}` : m.text;
}

/** The limits a client must respect, as `welcome` states them. */
export interface Limits {
  /** Longest text of a message or edit, in Unicode code points. */
  text: number;
  /** Largest frame, text or binary, in bytes. */
  bytes: number;
  /** Messages a second on average, or null for no limit. */
  rate: number | null;
  /** Messages at once, or null for no limit. */
  burst: number | null;
  /** Frames the server queues and paces beyond the burst, or null for no limit. */
  queue: number | null;
  /** Most messages of one scroll-back page. */
  page: number;
  /** Milliseconds a typing indicator lasts unless renewed. */
  typing: number;
}

/** Server envelopes that carry no stored message. */
export type ServerEvent =
  | {
    type: "welcome";
    room: string;
    epoch: string;
    head: number;
    you: Member;
    members: Member[];
    recovered: boolean | null;
    replay: number;
    limits: Limits;
    /** What this member may do here: `write`, or `read` only. */
    access: "write" | "read";
    /** True when this member moderates the room (deletes any message, kicks, bans). */
    moderator: boolean;
    /** Members in the room; `members` lists at most the first 100 of them. */
    count: number;
  }
  | {
    type: "members";
    members: Member[];
    /** More members follow: ask again with `after` set to the last id of this page. */
    more: boolean;
    count: number;
    after?: string;
  }
  | { type: "ack"; cid: string; id: number; epoch: string; duplicate: boolean }
  | { type: "join" | "leave"; member: Member }
  | { type: "rename"; member: Member; old: string }
  | { type: "typing"; member: Member; ttl: number }
  | {
    type: "kick";
    member: Member;
    reason: string;
    /** The moderator, or null for the server API. */
    by: Member | null;
    /** End of the ban, in ms since 1970, when the kick came with one. */
    until?: number;
  }
  | {
    type: "history";
    epoch: string;
    before: number;
    /** The request's `cid`, when it had one. */
    cid?: string;
    /** Objects as {@linkcode messageObject} builds them. */
    messages: Record<string, unknown>[];
    more: boolean;
  }
  | {
    type: "error";
    code: ErrorCode;
    message: string;
    cid?: string;
    /** True for {@linkcode TRANSIENT_ERRORS}: resend later with the same `cid`. */
    retry?: true;
  }
  | { type: "pong"; ts: number };

/** The `welcome` envelope. */
export type Welcome = Extract<ServerEvent, { type: "welcome" }>;

/** Serialises a server event. */
export function encode(event: ServerEvent): string {
  return JSON.stringify(event);
}
