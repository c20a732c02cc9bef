/**
 * Moving a room between engines: the JSONL format of a room's history, its
 * validation, and the checks every engine's `importRoom` makes.
 *
 * The format (version 1), one JSON object per line:
 *
 * 1. A header: `{"parley":"room","version":1,"room":"team","epoch":"k3j9x0a1b2c3",
 *    "head":42,"messages":3,"dedup":2}` (`messages` and `dedup` count the
 *    lines that follow, so a cut file is refused).
 * 2. One line per entry history keeps, in id order, ids consecutive and the
 *    last one `head`, with edits and deletes applied:
 *    `{"type":"message","id":40,"ts":1764662400000,"from":{"id":"m1","nick":"ann"},
 *    "sender":"c-1","cid":"7","text":"hi","edited":1764662460000}`. Fields as
 *    in the engines' `StoredMessage`: `text`, `edited`, `deleted`, `replyTo`,
 *    `kind` and `target` (edit and delete entries), and for files `name`,
 *    `mime`, `size` and `data` (the bytes, base64; absent when history kept
 *    the file without them).
 * 3. One line per dedup pair: `{"type":"dedup","sender":"c-1","cid":"7","id":40}`,
 *    one for every entry with both a `sender` and a `cid`.
 *
 * `sender` is a client's private identity: an export is as sensitive as the
 * room's history.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import type { Engine, RoomSnapshot } from "./engine.ts";
import { type Member, ROOM_PATTERN, type StoredMessage } from "./protocol.ts";

/** The version of the format this Parley writes and reads. */
export const FORMAT_VERSION = 1;

/** The history limits of an engine an import must fit in. */
export interface ImportLimits {
  historySize: number;
  historyBytes: number;
  historyFileBytes: number;
}

/** A snapshot with the room it came from, as a file holds it. */
export interface RoomExport extends RoomSnapshot {
  room: string;
}

/** What an export or import moved, for the one-line summary. */
export interface MoveSummary {
  messages: number;
  dedup: number;
  /** Bytes of file contents moved. */
  bytes: number;
}

/** Largest `read()` limit every engine takes as "all". */
const ALL = 2 ** 31 - 1;
const EPOCH_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const BASE64_PATTERN = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const HEADER_FIELDS = ["parley", "version", "room", "epoch", "head", "messages", "dedup"];
const MESSAGE_FIELDS = [
  "type",
  "id",
  "ts",
  "from",
  "sender",
  "cid",
  "text",
  "data",
  "name",
  "mime",
  "size",
  "kind",
  "target",
  "replyTo",
  "edited",
  "deleted",
];
const DEDUP_FIELDS = ["type", "sender", "cid", "id"];

/** History bytes an entry counts for, the same in every engine. */
export function entryBytes(m: StoredMessage): number {
  return (m.text?.length ?? 0) * 2 + (m.data?.byteLength ?? 0) + 128;
}

/** The dedup pairs of a snapshot: `sender`+`cid` of every entry that has both. */
export function dedupPairs(messages: readonly StoredMessage[]): StoredMessage[] {
  return messages.filter((m) => m.sender !== undefined && m.cid !== undefined);
}

/** Counts of a snapshot for the summary line. */
export function summarize(snapshot: RoomSnapshot): MoveSummary {
  let bytes = 0;
  for (const m of snapshot.messages) bytes += m.data?.byteLength ?? 0;
  return { messages: snapshot.messages.length, dedup: dedupPairs(snapshot.messages).length, bytes };
}

/**
 * Reads a room's whole history from any engine, as `read()` gives it: a
 * consistent view on memory and redis; on kv, run it while no server writes.
 */
export async function exportRoom(engine: Engine, room: string): Promise<RoomExport> {
  const { epoch, head, messages } = await engine.read(room, undefined, ALL);
  return { room, epoch, head, messages };
}

/** The lines of an export, each without its newline. */
export function* encodeRoom(snapshot: RoomExport): Generator<string> {
  const pairs = dedupPairs(snapshot.messages);
  yield JSON.stringify({
    parley: "room",
    version: FORMAT_VERSION,
    room: snapshot.room,
    epoch: snapshot.epoch,
    head: snapshot.head,
    messages: snapshot.messages.length,
    dedup: pairs.length,
  });
  for (const m of snapshot.messages) {
    yield JSON.stringify({
      type: "message",
      id: m.id,
      ts: m.ts,
      from: m.from,
      sender: m.sender,
      cid: m.cid,
      kind: m.kind,
      target: m.target,
      replyTo: m.replyTo,
      text: m.text,
      edited: m.edited,
      deleted: m.deleted,
      name: m.name,
      mime: m.mime,
      size: m.size,
      data: m.data && Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength)
        .toString("base64"),
    });
  }
  for (const m of pairs) {
    yield JSON.stringify({ type: "dedup", sender: m.sender, cid: m.cid, id: m.id });
  }
}

/** Splits a byte stream into lines of UTF-8 text (refusing invalid UTF-8), without newlines. */
export async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let line = 0;
  const decode = (bytes: Uint8Array) => {
    line++;
    try {
      return decoder.decode(bytes).replace(/\r$/, "");
    } catch {
      throw new SyntaxError(`Cannot import line ${line}: it is not valid UTF-8`);
    }
  };
  let pending: Uint8Array[] = [];
  for await (const chunk of stream) {
    let from = 0;
    let at: number;
    while ((at = chunk.indexOf(0x0a, from)) >= 0) {
      pending.push(chunk.subarray(from, at));
      yield decode(concat(pending));
      pending = [];
      from = at + 1;
    }
    if (from < chunk.byteLength) pending.push(chunk.slice(from));
  }
  const rest = concat(pending);
  if (rest.byteLength > 0) yield decode(rest);
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, part) => n + part.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

type Json = Record<string, unknown>;

function fail(line: number, why: string): never {
  throw new SyntaxError(`Cannot import line ${line}: ${why}`);
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 64 ? `${text.slice(0, 64)}...` : text;
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function onlyFields(line: number, object: Json, known: readonly string[]) {
  for (const name of Object.keys(object)) {
    if (!known.includes(name)) fail(line, `unknown field ${show(name)}`);
  }
}

function optional<T>(
  line: number,
  object: Json,
  name: string,
  check: (value: unknown) => boolean,
  what: string,
): T | undefined {
  const value = object[name];
  if (value === undefined) return undefined;
  if (!check(value)) fail(line, `${name} must be ${what}, not ${show(value)}`);
  return value as T;
}

const isString = (v: unknown) => typeof v === "string";
const isId = (v: unknown) => isCount(v) && v >= 1;
const isTime = (v: unknown) => typeof v === "number" && Number.isFinite(v);

function parseFrom(line: number, raw: unknown): Member | null {
  if (raw === null) return null;
  const m = raw as Json;
  if (
    typeof raw !== "object" || Array.isArray(raw) || typeof m.id !== "string" ||
    typeof m.nick !== "string" ||
    (m.verified !== undefined && typeof m.verified !== "boolean") ||
    (m.bot !== undefined && typeof m.bot !== "boolean") ||
    Object.keys(m).some((k) => !["id", "nick", "verified", "bot"].includes(k))
  ) {
    fail(line, `from must be null or {id, nick, verified?, bot?}, not ${show(raw)}`);
  }
  const member: Member = { id: m.id as string, nick: m.nick as string };
  if (m.verified !== undefined) member.verified = m.verified as boolean;
  if (m.bot !== undefined) member.bot = m.bot as boolean;
  return member;
}

/** Checks one message line and builds its entry. */
function parseMessage(line: number, o: Json, room: string, epoch: string): StoredMessage {
  onlyFields(line, o, MESSAGE_FIELDS);
  if (!isId(o.id)) fail(line, `id must be a positive integer, not ${show(o.id)}`);
  if (!isTime(o.ts)) fail(line, `ts must be a time in ms, not ${show(o.ts)}`);
  if (!("from" in o)) fail(line, "from is missing (null for a raw client)");
  const m: StoredMessage = {
    room,
    epoch,
    id: o.id as number,
    ts: o.ts as number,
    from: parseFrom(line, o.from),
    sender: optional(line, o, "sender", isString, "a string"),
    cid: optional(line, o, "cid", isString, "a string"),
  };
  const kind = optional<"edit" | "delete">(
    line,
    o,
    "kind",
    (v) => v === "edit" || v === "delete",
    `"edit" or "delete"`,
  );
  const target = optional<number>(line, o, "target", isId, "a message id");
  const replyTo = optional<number>(line, o, "replyTo", isId, "a message id");
  const text = optional<string>(line, o, "text", isString, "a string");
  const edited = optional<number>(line, o, "edited", isTime, "a time in ms");
  const deleted = optional<true>(line, o, "deleted", (v) => v === true, "true");
  const name = optional<string>(line, o, "name", isString, "a string");
  const mime = optional<string>(line, o, "mime", isString, "a string");
  const size = optional<number>(line, o, "size", isCount, "a byte count");
  const data = optional<string>(
    line,
    o,
    "data",
    (v) => typeof v === "string" && BASE64_PATTERN.test(v),
    "base64",
  );
  if (replyTo !== undefined) m.replyTo = replyTo;
  if (edited !== undefined) m.edited = edited;
  const file = name !== undefined || mime !== undefined || size !== undefined ||
    data !== undefined;
  if (kind !== undefined) {
    if (target === undefined) fail(line, `an ${kind} entry needs target, the id it acts on`);
    if (file) fail(line, `an ${kind} entry has no name, mime, size or data`);
    m.kind = kind;
    m.target = target;
  } else if (target !== undefined) {
    fail(line, "target belongs to edit and delete entries (kind)");
  }
  if (deleted) {
    if (text !== undefined || file) fail(line, "a deleted entry keeps no text or file");
    m.deleted = true;
    return m;
  }
  if (kind === "delete") {
    if (text !== undefined) fail(line, "a delete entry has no text");
    return m;
  }
  if (kind === "edit" || text !== undefined) {
    if (text === undefined) fail(line, "an edit entry needs its text");
    if (file) fail(line, "a text message has no name, mime, size or data");
    m.text = text;
    return m;
  }
  if (name === undefined || mime === undefined || size === undefined) {
    fail(line, "a message needs text, or a file's name, mime and size");
  }
  m.name = name;
  m.mime = mime;
  m.size = size;
  if (data !== undefined) {
    const bytes = new Uint8Array(Buffer.from(data, "base64"));
    if (bytes.byteLength !== size) {
      fail(line, `data holds ${bytes.byteLength} bytes but size says ${size}`);
    }
    m.data = bytes;
  }
  return m;
}

/**
 * Reads and checks a whole export, line by line: the header, then entries
 * with consecutive ids ending at `head`, then exactly their dedup pairs.
 *
 * @throws {SyntaxError} Naming the line number and what is wrong with it.
 */
export async function parseRoom(lines: AsyncIterable<string> | Iterable<string>): Promise<
  RoomExport
> {
  let number = 0;
  let header: Json | undefined;
  const messages: StoredMessage[] = [];
  const pairs = new Map<string, number>();
  let dedupLines = 0;
  for await (const text of lines) {
    number++;
    if (text.trim() === "") fail(number, "it is empty");
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      fail(number, `it is not JSON (${(error as Error).message})`);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      fail(number, "it is not a JSON object");
    }
    const o = value as Json;
    if (!header) {
      if (o.parley !== "room") {
        fail(number, `the first line must be the header {"parley":"room",...}`);
      }
      onlyFields(number, o, HEADER_FIELDS);
      if (o.version !== FORMAT_VERSION) {
        fail(
          number,
          `version ${show(o.version)} cannot be read; this Parley reads version ${FORMAT_VERSION}`,
        );
      }
      if (typeof o.room !== "string" || !ROOM_PATTERN.test(o.room)) {
        fail(number, `room must be 1 to 64 characters from A-Z a-z 0-9 _ -, not ${show(o.room)}`);
      }
      if (typeof o.epoch !== "string" || !EPOCH_PATTERN.test(o.epoch)) {
        fail(number, `epoch must be 1 to 64 characters from A-Z a-z 0-9 _ -, not ${show(o.epoch)}`);
      }
      for (const name of ["head", "messages", "dedup"]) {
        if (!isCount(o[name])) fail(number, `${name} must be a count, not ${show(o[name])}`);
      }
      header = o;
      continue;
    }
    if (o.type === "message") {
      if (dedupLines > 0) fail(number, "message lines come before the dedup lines");
      const m = parseMessage(number, o, header.room as string, header.epoch as string);
      const previous = messages.at(-1);
      if (previous && m.id !== previous.id + 1) {
        fail(number, `id must be ${previous.id + 1} (ids are consecutive), not ${m.id}`);
      }
      if (m.id > (header.head as number)) {
        fail(number, `id ${m.id} is past the header's head ${header.head}`);
      }
      if (m.kind !== undefined && m.target! >= m.id) {
        fail(number, `target ${m.target} must be older than the entry (${m.id})`);
      }
      if (m.sender !== undefined && m.cid !== undefined) {
        const key = `${m.sender}\0${m.cid}`;
        if (pairs.has(key)) {
          fail(number, `sender and cid are those of message ${pairs.get(key)} too`);
        }
        pairs.set(key, m.id);
      }
      messages.push(m);
    } else if (o.type === "dedup") {
      onlyFields(number, o, DEDUP_FIELDS);
      if (typeof o.sender !== "string" || typeof o.cid !== "string" || !isId(o.id)) {
        fail(number, "a dedup line needs sender and cid (strings) and id (a message id)");
      }
      const id = pairs.get(`${o.sender}\0${o.cid}`);
      if (id !== o.id) {
        fail(
          number,
          id === undefined
            ? `no message line has this sender and cid (id ${o.id})`
            : `this sender and cid are message ${id}'s, not ${o.id}'s`,
        );
      }
      dedupLines++;
    } else {
      fail(number, `type must be "message" or "dedup", not ${show(o.type)}`);
    }
  }
  if (!header) throw new SyntaxError("Cannot import: the input is empty; expected a room export");
  const head = header.head as number;
  if (messages.length !== header.messages) {
    throw new SyntaxError(
      `Cannot import: the header announces ${header.messages} messages, ${messages.length} came (is the file cut?)`,
    );
  }
  if (dedupLines !== header.dedup || dedupLines !== pairs.size) {
    throw new SyntaxError(
      `Cannot import: the header announces ${header.dedup} dedup lines, ${dedupLines} came for ${pairs.size} messages with sender and cid`,
    );
  }
  if (messages.length > 0 && messages.at(-1)!.id !== head) {
    throw new SyntaxError(
      `Cannot import: the last message is ${messages.at(-1)!.id}, but head is ${head}`,
    );
  }
  return { room: header.room as string, epoch: header.epoch as string, head, messages };
}

/**
 * What every engine's `importRoom` checks first: the room has no messages,
 * and the snapshot fits the engine's history limits (nothing would be
 * trimmed or dropped on the way in).
 *
 * @param head The room's newest id now, 0 when it has none.
 * @throws {RangeError} Saying why, with the values and the setting to change.
 */
export function checkImport(
  room: string,
  snapshot: RoomSnapshot,
  limits: ImportLimits,
  head: number,
): void {
  const where = `Cannot import into room ${JSON.stringify(room)}`;
  if (head > 0) {
    throw new RangeError(
      `${where}: it already has messages (newest id ${head}); import only into a room without any`,
    );
  }
  const count = snapshot.messages.length;
  if (count > limits.historySize) {
    throw new RangeError(
      `${where}: the export holds ${count} messages, HISTORY_SIZE here is ${limits.historySize}`,
    );
  }
  let bytes = 0;
  for (const m of snapshot.messages) {
    bytes += entryBytes(m);
    const size = m.data?.byteLength ?? 0;
    if (size > limits.historyFileBytes) {
      throw new RangeError(
        `${where}: message ${m.id} is a file of ${size} bytes, HISTORY_FILE_BYTES here is ${limits.historyFileBytes}`,
      );
    }
  }
  if (count > 1 && bytes > limits.historyBytes) {
    throw new RangeError(
      `${where}: the export counts ${bytes} history bytes, HISTORY_BYTES here is ${limits.historyBytes}`,
    );
  }
}

/**
 * The edit entries each message's edit index lists: every edit entry that
 * is not deleted, of an ordinary message in the snapshot that is not deleted
 * (what the kv and redis engines index, so a later delete finds them).
 */
export function editIndex(messages: readonly StoredMessage[]): Map<number, number[]> {
  const byId = new Map(messages.map((m) => [m.id, m]));
  const index = new Map<number, number[]>();
  for (const m of messages) {
    if (m.kind !== "edit" || m.deleted) continue;
    const target = byId.get(m.target!);
    if (!target || target.deleted || target.kind !== undefined) continue;
    const list = index.get(target.id);
    if (list) list.push(m.id);
    else index.set(target.id, [m.id]);
  }
  return index;
}
