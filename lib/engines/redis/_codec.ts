/**
 * How the Redis engine writes messages into stream entries and channel
 * payloads, and reads them back.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import type { EngineEvent } from "../../engine.ts";
import type { Member, StoredMessage } from "../../protocol.ts";
import { parseMember, parseSignal } from "../_shapes.ts";

/** What a message keeps in its stream entry besides id, epoch and bytes. */
export interface Header {
  ts: number;
  from: Member | null;
  sender?: string;
  cid?: string;
  text?: string;
  name?: string;
  mime?: string;
  size?: number;
  kind?: "edit" | "delete";
  target?: number;
  replyTo?: number;
}

/** Incarnation and version of the presence keys after a presence event. */
export interface PresenceStamp {
  inc: string;
  ver: number;
}

/** A channel message, parsed. */
export interface Incoming {
  event: EngineEvent;
  /** Presence events: where they put the room's presence (absent from older senders). */
  stamp?: PresenceStamp;
}

const decoder = new TextDecoder();

/** Bytes a message counts for in the history budget, as in the in-memory engine. */
export function sizeOf(text: string | undefined, kept: number): number {
  return (text?.length ?? 0) * 2 + kept + 128;
}

/** The same bytes as a Node buffer, without a copy. */
export function toBuffer(data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** Builds a stored message, as the in-memory engine would, from its header. */
export function message(room: string, epoch: string, id: number, header: Header): StoredMessage {
  const m: StoredMessage = {
    room,
    epoch,
    id,
    ts: header.ts,
    from: header.from ?? null,
    sender: header.sender,
    cid: header.cid,
  };
  if (header.replyTo !== undefined) m.replyTo = header.replyTo;
  if (header.kind !== undefined) {
    m.kind = header.kind;
    m.target = header.target;
    if (header.kind === "edit") m.text = header.text ?? "";
  } else if (header.text !== undefined) {
    m.text = header.text;
  } else {
    m.name = header.name;
    m.mime = header.mime;
    m.size = header.size;
  }
  return m;
}

/** What is left of a deleted message or edit: its place, sender and time. */
function tombstone(m: StoredMessage): StoredMessage {
  const { text: _t, data: _d, name: _n, mime: _m, size: _s, ...rest } = m;
  return { ...rest, deleted: true };
}

/**
 * Applies what later edits and deletes did to an entry: `patch` is empty
 * (nothing), `D` (a tombstone) or `E<size> <JSON {text, edited}>`.
 */
export function applyPatch(m: StoredMessage, patch: string): StoredMessage {
  if (patch === "") return m;
  if (patch === "D") return tombstone(m);
  const space = patch.indexOf(" ");
  if (patch[0] !== "E" || space < 0) {
    throw new SyntaxError(`Cannot apply the patch of message ${m.id}: it starts with ${patch[0]}`);
  }
  const { text, edited } = JSON.parse(patch.slice(space + 1));
  return { ...m, text, edited };
}

/** Parses a stream entry, `[id, [field, value, ...]]` read as buffers, with its patch. */
export function parseEntry(
  room: string,
  epoch: string,
  entry: unknown,
  patch: string,
): StoredMessage {
  const [rawId, fields] = entry as [Buffer, Buffer[]];
  let header: Header | undefined;
  let data: Uint8Array | undefined;
  for (let i = 0; i < fields.length; i += 2) {
    const name = fields[i].toString();
    if (name === "h") header = JSON.parse(decoder.decode(fields[i + 1]));
    else if (name === "d") data = new Uint8Array(fields[i + 1]);
  }
  if (!header) throw new TypeError(`Cannot read stream entry ${rawId}: it has no header`);
  const m = message(room, epoch, parseInt(rawId.toString(), 10), header);
  if (data && m.text === undefined && m.kind === undefined) m.data = data;
  return applyPatch(m, patch);
}

/** Parses entries and their patches as the read and history scripts return them. */
export function parseEntries(
  room: string,
  epoch: string,
  entries: unknown[],
  patches: unknown[],
): StoredMessage[] {
  return entries.map((entry, i) => parseEntry(room, epoch, entry, String(patches[i] ?? "")));
}

/**
 * Parses a channel message: `M<id> <epoch>\n<header>\n<bytes>` (a stored
 * message), `P<JSON>` (presence, with its stamp) or `T<JSON>` (a signal: any
 * `Signal` of `engine.ts`, its shape checked).
 *
 * @throws {SyntaxError} When the payload does not parse.
 * @throws {TypeError} When an event has the wrong shape.
 */
export function parseEvent(room: string, payload: Buffer): Incoming {
  const head = payload[0];
  if (head === 0x50 /* P */) {
    const raw = JSON.parse(decoder.decode(payload.subarray(1)));
    const stamp = typeof raw.i === "string" && typeof raw.v === "number"
      ? { inc: raw.i, ver: raw.v }
      : undefined;
    if (raw.type === "rename") {
      const event = {
        type: "rename" as const,
        member: parseMember(raw.member),
        old: String(raw.old),
      };
      return { event, stamp };
    }
    if (raw.type !== "join" && raw.type !== "leave") {
      throw new SyntaxError(`Cannot parse presence event: unknown type ${raw.type}`);
    }
    return { event: { type: raw.type, member: parseMember(raw.member) }, stamp };
  }
  if (head === 0x54 /* T */) {
    return { event: parseSignal(JSON.parse(decoder.decode(payload.subarray(1)))) };
  }
  if (head !== 0x4d /* M */) {
    throw new SyntaxError(`Cannot parse channel message: it starts with byte ${head}`);
  }
  const first = payload.indexOf(0x0a);
  const second = payload.indexOf(0x0a, first + 1);
  if (first < 0 || second < 0) throw new SyntaxError("Cannot parse channel message: no header");
  const [id, epoch] = decoder.decode(payload.subarray(1, first)).split(" ");
  const header: Header = JSON.parse(decoder.decode(payload.subarray(first + 1, second)));
  const m = message(room, epoch, parseInt(id, 10), header);
  if (m.text === undefined && m.kind === undefined) {
    m.data = new Uint8Array(payload.subarray(second + 1));
  }
  return { event: { type: "message", message: m } };
}

/**
 * Parses a channel message that may carry several events: `N<first id>
 * <epoch> <length>\n`, a JSON array of the headers of messages with
 * consecutive ids that takes `length` bytes, then the bytes of each file
 * among them, each as long as its header's `size` (see `APPEND_LUA`); any
 * other payload is one event (see {@linkcode parseEvent}).
 *
 * @throws {SyntaxError} When the payload does not parse.
 * @throws {TypeError} When an event has the wrong shape.
 */
export function parseEvents(room: string, payload: Buffer): Incoming[] {
  if (payload[0] !== 0x4e /* N */) return [parseEvent(room, payload)];
  const end = payload.indexOf(0x0a);
  const [first, epoch, length] = decoder.decode(payload.subarray(1, Math.max(1, end))).split(" ");
  const id = Number(first);
  const json = Number(length);
  if (end < 0 || !Number.isSafeInteger(id) || !Number.isSafeInteger(json) || !epoch) {
    throw new SyntaxError("Cannot parse channel message: no first id, epoch and length");
  }
  let at = end + 1 + json;
  const headers: unknown = JSON.parse(decoder.decode(payload.subarray(end + 1, at)));
  if (!Array.isArray(headers)) {
    throw new SyntaxError("Cannot parse channel message: the headers are not a list");
  }
  const events = headers.map((header: Header, i): Incoming => {
    const m = message(room, epoch, id + i, header);
    if (m.text === undefined && m.kind === undefined) {
      const size = Number(header.size ?? 0);
      if (!(size >= 0 && at + size <= payload.length)) {
        throw new SyntaxError(`Cannot parse channel message: message ${m.id} lacks bytes`);
      }
      m.data = new Uint8Array(payload.subarray(at, at + size));
      at += size;
    }
    return { event: { type: "message", message: m } };
  });
  if (at !== payload.length) {
    throw new SyntaxError(`Cannot parse channel message: ${payload.length - at} bytes left over`);
  }
  return events;
}

/**
 * The `traits` a member's presence keeps besides its nick (see
 * `_scripts.ts`): JSON of `verified` and `bot`, or empty when it has neither.
 */
export function traitsOf(member: Member): string {
  if (member.verified === undefined && member.bot === undefined) return "";
  return JSON.stringify({ verified: member.verified, bot: member.bot });
}

/**
 * Members from a flat `id, nick, ...` list, with the traits of a flat
 * `id, JSON, ...` list. A trait that is not a boolean is left out.
 */
export function pairs(flat: unknown, traits?: unknown): Member[] {
  const flags = new Map<string, string>();
  const raw = (traits ?? []) as string[];
  for (let i = 0; i + 1 < raw.length; i += 2) flags.set(raw[i], raw[i + 1]);
  const list = (flat ?? []) as string[];
  const members: Member[] = [];
  for (let i = 0; i + 1 < list.length; i += 2) {
    const member: Member = { id: list[i], nick: list[i + 1] };
    const json = flags.get(member.id);
    if (json !== undefined) Object.assign(member, traitsFrom(json));
    members.push(member);
  }
  return members;
}

function traitsFrom(json: string): Pick<Member, "verified" | "bot"> {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return {};
  }
  const traits: Pick<Member, "verified" | "bot"> = {};
  if (typeof value !== "object" || value === null) return traits;
  const { verified, bot } = value as Record<string, unknown>;
  if (typeof verified === "boolean") traits.verified = verified;
  if (typeof bot === "boolean") traits.bot = bot;
  return traits;
}
