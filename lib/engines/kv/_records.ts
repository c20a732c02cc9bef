/**
 * How the KV engine stores a message (`["parley", room, "msg", id]`) and the
 * two ends of a room's log, and the pure rewrites an edit or delete makes of
 * a stored record.
 *
 * @module
 */

import type { Member, StoredMessage } from "../../protocol.ts";
import type { BlobRef } from "./_blobs.ts";

/** History bytes of an entry without text or file bytes, as the memory engine counts it. */
export const BASE_BYTES = 128;

/** The `head` of a room: rewritten by every append, watched by subscribers. */
export interface Head {
  /** Id of the newest message; 0 before the first. */
  id: number;
  epoch: string;
  /** History bytes of every message ever appended. */
  bytes: number;
}

/**
 * The `tail` of a room: written by trimming and by rewrites of stored
 * records, never by plain appends, so the two seldom conflict. Every write
 * that changes or deletes a stored record checks and rewrites it: that is
 * what keeps a rewrite from bringing back a record trimming just deleted.
 */
export interface Tail {
  /** Oldest id still kept. */
  first: number;
  /**
   * History bytes no longer held: of every message trimmed, and what edits
   * and deletes took off the records they rewrote (less when an edit grew).
   */
  bytes: number;
}

/** A stored message: a {@linkcode StoredMessage} with its bytes moved to chunks. */
export interface MessageRecord {
  epoch: string;
  id: number;
  ts: number;
  from: Member | null;
  sender?: string;
  cid?: string;
  /** Edit and delete entries: what they do, and to which id. */
  kind?: "edit" | "delete";
  target?: number;
  replyTo?: number;
  /** The text, when short enough to keep inline. */
  text?: string;
  /** The text is in `blob`, as UTF-8. */
  longText?: boolean;
  name?: string;
  mime?: string;
  size?: number;
  /** A file: whether its bytes are part of history (else they expire soon). */
  kept?: boolean;
  blob?: BlobRef;
  /**
   * `blob` belongs to a newer entry (the edit whose long text this is), which
   * deletes it: the edit is trimmed after this record, never before.
   */
  borrowed?: boolean;
  /** Set by an edit: its time. */
  edited?: number;
  /** A tombstone: what a delete left of the entry. */
  deleted?: boolean;
  /**
   * Its sender and cid were stored again, by a newer message, after it left
   * history: trimming it leaves their dedup key alone.
   */
  dedupMoved?: boolean;
  /** What the entry counts against `historyBytes`, as the memory engine counts. */
  bytes: number;
}

/** Oldest id of history: what trimming left, and never more than `historySize`. */
export function oldestKept(head: Head, tail: Tail | null, historySize: number): number {
  return Math.max(tail?.first ?? 1, head.id - historySize + 1);
}

/** Whether the record is a file that still has its bytes somewhere. */
export function isFile(record: MessageRecord): boolean {
  return record.kind === undefined && !record.deleted && record.text === undefined &&
    !record.longText;
}

/** Whether the record is an ordinary text message (edits apply to those only). */
export function isText(record: MessageRecord): boolean {
  return record.kind === undefined && !record.deleted &&
    (record.text !== undefined || !!record.longText);
}

/** The blob a record owns (deleting the record must delete it), if any. */
export function ownBlob(record: MessageRecord): BlobRef | undefined {
  return record.borrowed ? undefined : record.blob;
}

/** What is left of a deleted message or edit: its place, sender and time. */
export function tombstone(record: MessageRecord): MessageRecord {
  const {
    text: _text,
    longText: _longText,
    name: _name,
    mime: _mime,
    size: _size,
    kept: _kept,
    blob: _blob,
    borrowed: _borrowed,
    ...rest
  } = record;
  return { ...rest, deleted: true, bytes: BASE_BYTES };
}

/** A text message rewritten with the text of `edit` (which owns any blob of it). */
export function edited(target: MessageRecord, edit: MessageRecord): MessageRecord {
  const { text: _text, longText: _longText, blob: _blob, borrowed: _borrowed, ...rest } = target;
  const next: MessageRecord = {
    ...rest,
    edited: edit.ts,
    // The same text, so the same count.
    bytes: edit.bytes,
  };
  if (edit.longText) {
    next.longText = true;
    next.blob = edit.blob;
    next.borrowed = true;
  } else {
    next.text = edit.text ?? "";
  }
  return next;
}

/** A {@linkcode StoredMessage} from its record, in the shape the memory engine gives. */
export function toMessage(
  room: string,
  record: MessageRecord,
  text: string | undefined,
  data: Uint8Array | undefined,
): StoredMessage {
  const message: StoredMessage = {
    room,
    epoch: record.epoch,
    id: record.id,
    ts: record.ts,
    from: record.from,
    sender: record.sender,
    cid: record.cid,
  };
  if (record.replyTo !== undefined) message.replyTo = record.replyTo;
  if (record.kind !== undefined) {
    message.kind = record.kind;
    message.target = record.target;
  }
  if (record.edited !== undefined) message.edited = record.edited;
  if (record.deleted) {
    message.deleted = true;
  } else if (text !== undefined) {
    message.text = text;
  } else if (record.kind === undefined) {
    message.data = data;
    message.name = record.name;
    message.mime = record.mime;
    message.size = record.size;
  }
  return message;
}
