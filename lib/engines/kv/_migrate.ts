/**
 * Importing a room's history into the KV engine (see `migrate.ts`): chunks
 * first, then the records, dedup keys and edit index in writes that respect
 * Deno KV's limits, and last the room's `head` and `tail` in one write that
 * checks the room is still without messages. Until that last write, readers
 * see nothing of the import (they never look past `head`).
 *
 * @module
 */

import type { RoomSnapshot } from "../../engine.ts";
import { checkImport, editIndex, entryBytes, type ImportLimits } from "../../migrate.ts";
import type { StoredMessage } from "../../protocol.ts";
import { type BlobRef, Blobs } from "./_blobs.ts";
import { addCost, type Cost, costOf, fits, WRITE_LIMIT } from "./_group.ts";
import type { Head, MessageRecord, Tail } from "./_records.ts";
import { commit, key, type KvContext, write } from "./_store.ts";

/** Texts longer than this go to chunks, as `_appends.ts` stores them. */
const INLINE_TEXT_LENGTH = 16 * 1024;

const encoder = new TextEncoder();

/** The record of an imported entry, its long text or file bytes written as chunks. */
async function recordOf(
  blobs: Blobs,
  room: string,
  epoch: string,
  m: StoredMessage,
  written: BlobRef[],
): Promise<MessageRecord> {
  const record: MessageRecord = {
    epoch,
    id: m.id,
    ts: m.ts,
    from: m.from,
    bytes: entryBytes(m),
  };
  if (m.sender !== undefined) record.sender = m.sender;
  if (m.cid !== undefined) record.cid = m.cid;
  if (m.replyTo !== undefined) record.replyTo = m.replyTo;
  if (m.kind !== undefined) {
    record.kind = m.kind;
    record.target = m.target;
  }
  if (m.edited !== undefined) record.edited = m.edited;
  if (m.deleted) {
    record.deleted = true;
  } else if (m.text !== undefined) {
    if (m.text.length > INLINE_TEXT_LENGTH) {
      record.longText = true;
      record.blob = await blobs.write(room, encoder.encode(m.text), false);
      written.push(record.blob);
    } else {
      record.text = m.text;
    }
  } else if (m.kind === undefined) {
    record.name = m.name;
    record.mime = m.mime;
    record.size = m.size;
    record.kept = m.data !== undefined;
    if (m.data && m.data.byteLength > 0) {
      record.blob = await blobs.write(room, m.data, false);
      written.push(record.blob);
    }
  }
  return record;
}

/**
 * Writes a snapshot into a room without messages (see `Engine.importRoom`).
 * A failure leaves no visible trace; chunks it wrote are deleted.
 */
export async function importRoom(
  context: KvContext,
  limits: ImportLimits,
  room: string,
  snapshot: RoomSnapshot,
): Promise<void> {
  const { kv } = context;
  const [headEntry, tailEntry] = await kv.getMany<[Head, Tail]>([
    key(room, "head"),
    key(room, "tail"),
  ]);
  checkImport(room, snapshot, limits, headEntry.value?.id ?? 0);
  const blobs = new Blobs(context);
  const written: BlobRef[] = [];
  try {
    let bytes = 0;
    const sets: [Deno.KvKey, unknown][] = [];
    for (const m of snapshot.messages) {
      const record = await recordOf(blobs, room, snapshot.epoch, m, written);
      bytes += record.bytes;
      sets.push([key(room, "msg", m.id), record]);
      if (m.sender !== undefined && m.cid !== undefined) {
        sets.push([key(room, "dedup", m.sender, m.cid), m.id]);
      }
    }
    for (const [target, edits] of editIndex(snapshot.messages)) {
      for (const edit of edits) sets.push([key(room, "edits", target, edit), true]);
    }
    await writeAll(kv, sets);
    const head: Head = { id: snapshot.head, epoch: snapshot.epoch, bytes };
    const tail: Tail = { first: snapshot.messages[0]?.id ?? snapshot.head + 1, bytes: 0 };
    const op = kv.atomic().check(headEntry).check(tailEntry)
      .set(key(room, "head"), head)
      .set(key(room, "tail"), tail);
    if (!(await commit(op))) {
      throw new Error(
        `Cannot import into room ${JSON.stringify(room)}: it changed during the import; ` +
          "stop every server on this database and try again",
      );
    }
  } catch (error) {
    await blobs.drop(room, written);
    throw error;
  }
}

/** Sets the keys in as few atomic writes as Deno KV's limits allow. */
async function writeAll(kv: Deno.Kv, sets: [Deno.KvKey, unknown][]): Promise<void> {
  let batch: [Deno.KvKey, unknown][] = [];
  let used: Cost = { mutations: 0, bytes: 0, keyBytes: 0 };
  const flush = async () => {
    if (batch.length === 0) return;
    const items = batch;
    await write(() => {
      const op = kv.atomic();
      for (const [k, value] of items) op.set(k, value);
      return op;
    });
    batch = [];
    used = { mutations: 0, bytes: 0, keyBytes: 0 };
  };
  for (const [k, value] of sets) {
    const cost = costOf(k, value);
    if (!fits(used, cost, WRITE_LIMIT)) await flush();
    batch.push([k, value]);
    addCost(used, cost);
  }
  await flush();
}
