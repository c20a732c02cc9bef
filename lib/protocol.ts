/**
 * The `parley.v1` protocol: every envelope a client may send, every envelope
 * the server builds, and their validation. `docs/protocol.md` is the prose
 * version of this module.
 *
 * @module
 */

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
  tryAgainLater: 1013,
} as const;

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
  /** Public member id, derived from the private client identity. */
  id: string;
  nick: string;
}

/** A position in a room's history. */
export interface Position {
  epoch: string;
  id: number;
}

/** Envelopes a rich client sends. */
export type ClientEnvelope =
  | { type: "hello"; nick: string; client?: string; last?: Position }
  | { type: "message"; cid: string; text: string }
  | { type: "file"; cid: string; name: string; mime: string; size: number }
  | { type: "nick"; nick: string }
  | { type: "ping" };

/** Error codes of the `error` envelope. */
export type ErrorCode =
  | "bad_json"
  | "unknown_type"
  | "bad_envelope"
  | "bad_nick"
  | "bad_last"
  | "hello_required"
  | "already_joined"
  | "bad_file"
  | "rate_limited"
  | "unavailable";

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
  maxTextLength: number;
  maxMessageBytes: number;
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
  if ([...nick].length > MAX_NICK_LENGTH) {
    throw new ProtocolError("bad_nick", `nick: must be at most ${MAX_NICK_LENGTH} characters`);
  }
  if (CONTROL.test(nick)) {
    throw new ProtocolError("bad_nick", "nick: must not contain control characters");
  }
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
  const cid = typeof obj.cid === "string" && CID_PATTERN.test(obj.cid) ? obj.cid : undefined;
  switch (obj.type) {
    case "hello": {
      const nick = validateNick(obj.nick);
      let client: string | undefined;
      if (obj.client !== undefined) {
        client = field(
          obj,
          "client",
          (v): v is string => isString(v) && CLIENT_PATTERN.test(v),
          "8 to 64 characters from A-Z a-z 0-9 _ -",
        );
      }
      let last: Position | undefined;
      if (obj.last !== undefined && obj.last !== null) {
        if (typeof obj.last !== "object") {
          throw new ProtocolError("bad_last", "last: must be an object {epoch, id}");
        }
        const l = obj.last as Record<string, unknown>;
        last = parsePosition(l.epoch, l.id);
      }
      return { type: "hello", nick, client, last };
    }
    case "message": {
      field(obj, "cid", (v): v is string => isString(v) && CID_PATTERN.test(v), CID_RULE);
      const text = field(
        obj,
        "text",
        (v): v is string => isString(v) && v.length > 0 && v.length <= limits.maxTextLength,
        `a string of 1 to ${limits.maxTextLength} characters`,
        cid,
      );
      return { type: "message", cid: cid!, text };
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
      return { type: "file", cid: cid!, name, mime, size };
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
          : `type: ${
            JSON.stringify(obj.type).slice(0, 40)
          } is not one of hello, message, file, nick, ping`,
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
}

/** Builds the wire envelope of a stored message, as sent to rich clients. */
export function messageEnvelope(m: StoredMessage): string {
  const base = { id: m.id, epoch: m.epoch, ts: m.ts, from: m.from, cid: m.cid };
  if (m.text !== undefined) return JSON.stringify({ type: "message", ...base, text: m.text });
  return JSON.stringify({
    type: "file",
    ...base,
    name: m.name,
    mime: m.mime,
    size: m.size,
    omitted: m.data === undefined ? true : undefined,
  });
}

/** The text frame a raw client receives for a stored text message. */
export function rawText(m: StoredMessage): string {
  return m.from ? `${m.from.nick}: ${m.text}` : m.text!;
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
  }
  | { type: "ack"; cid: string; id: number; epoch: string; duplicate: boolean }
  | { type: "join" | "leave"; member: Member }
  | { type: "rename"; member: Member; old: string }
  | { type: "error"; code: ErrorCode; message: string; cid?: string }
  | { type: "pong"; ts: number };

/** The `welcome` envelope. */
export type Welcome = Extract<ServerEvent, { type: "welcome" }>;

/** Serialises a server event. */
export function encode(event: ServerEvent): string {
  return JSON.stringify(event);
}
