/**
 * Trimming in the KV engine: dropping the oldest messages of a room, with
 * their dedup keys, edit index keys and chunks, while the room holds more
 * than `historySize` of them or more than `historyBytes` (keeping at least
 * one). A group of appends trims what it pushes out in its own atomic write
 * ({@linkcode Trimming.into}); what is left over, as after a configuration
 * shrank history, is trimmed in small writes of its own
 * ({@linkcode Trimming.rest}).
 *
 * @module
 */

import type { Blobs } from "./_blobs.ts";
import { addCost, type Batch, type Cost, costOf, fits, WRITE_LIMIT } from "./_group.ts";
import { type Head, type MessageRecord, ownBlob, type Tail } from "./_records.ts";
import { backoff, commit, key, type KvContext, MAX_CHECKS } from "./_store.ts";

/** Trim batches per append: a history shrunk by a new configuration catches up over appends. */
const TRIM_ROUNDS = 16;
/** Most stored messages one atomic write of appends trims. */
const TRIM_LIMIT = 256;

/** How much history a room keeps. */
export interface HistoryLimits {
  historySize: number;
  historyBytes: number;
}

/** Whether a room holding `count` messages of `bytes` in all is over its limits. */
export function overLimits(limits: HistoryLimits, count: number, bytes: number): boolean {
  return count > limits.historySize || (bytes > limits.historyBytes && count > 1);
}

/** Trims the rooms of one KV database. */
export class Trimming {
  #context: KvContext;
  #limits: HistoryLimits;
  #blobs: Blobs;

  constructor(context: KvContext, limits: HistoryLimits, blobs: Blobs) {
    this.#context = context;
    this.#limits = limits;
    this.#blobs = blobs;
  }

  /**
   * Adds to `batch` the deletion of the oldest stored messages (older than
   * `newest`, the first id the batch stores) while the room is over its
   * limits, as far as one write holds; updates `tail`. The rest, if any, is
   * left to {@linkcode Trimming.rest}. A trimmed message's dedup key is
   * deleted without reading it: a newer message that stored the same sender
   * and cid again marked it `dedupMoved` (see `Appends`).
   *
   * @returns The records deleted.
   */
  async into(
    room: string,
    batch: Batch,
    head: Head,
    tail: Tail,
    newest: number,
  ): Promise<MessageRecord[]> {
    let count = head.id - tail.first + 1;
    let bytes = head.bytes - tail.bytes;
    if (!overLimits(this.#limits, count, bytes) || tail.first >= newest) return [];
    const limit = Math.min(
      TRIM_LIMIT,
      Math.max(count - this.#limits.historySize, head.id - newest + 1),
    );
    const dropped: MessageRecord[] = [];
    const cost: Cost = { mutations: 0, bytes: 0, keyBytes: 0 };
    const list = this.#context.kv.list<MessageRecord>(
      { start: key(room, "msg", tail.first), end: key(room, "msg", newest) },
      { limit },
    );
    for await (const { value } of list) {
      if (!overLimits(this.#limits, count, bytes)) break;
      // What the batch made of it, if it rewrote it.
      const record = batch.written(value.id) ?? value;
      const more = costOf(key(room, "msg", record.id));
      addCost(more, costOf(key(room, "edits", record.id, record.id)));
      if (record.sender !== undefined && record.cid !== undefined) {
        addCost(more, costOf(key(room, "dedup", record.sender, record.cid)));
      }
      if (!fits(addCost({ ...cost }, batch.used), more, WRITE_LIMIT)) break;
      addCost(cost, more);
      dropped.push(record);
      count = head.id - record.id;
      bytes -= record.bytes;
    }
    if (dropped.length === 0) return [];
    for (const r of dropped) {
      if (r.sender !== undefined && r.cid !== undefined && !r.dedupMoved) {
        const dedup = key(room, "dedup", r.sender, r.cid);
        // Unless this write stores the pair again, for a newer message.
        if (!batch.writes(dedup)) batch.put(dedup, undefined);
      }
      batch.deleteRecord(r.id);
      if (r.kind === "edit" && typeof r.target === "number") batch.index(r.target, r.id, false);
    }
    tail.first = dropped.at(-1)!.id + 1;
    tail.bytes = head.bytes - bytes;
    return dropped;
  }

  /**
   * Deletes the chunks of records a committed write trimmed (the bytes of
   * files too big for history expire by themselves).
   */
  async dropChunks(room: string, trimmed: MessageRecord[]): Promise<void> {
    const blobs = trimmed.filter((r) => r.kept !== false).map(ownBlob);
    await this.#blobs.drop(room, blobs.filter((blob) => blob !== undefined));
  }

  /**
   * Drops the oldest messages while the room holds more than `historySize`
   * of them or more than `historyBytes` (keeping at least one), with their
   * dedup keys, edit index keys and chunks. Best-effort: a failure leaves it
   * to the next append, and `read()` never shows more than `historySize`
   * anyway.
   */
  async rest(room: string, head: Head, tail: Tail | null): Promise<void> {
    const { kv } = this.#context;
    const over = (count: number, bytes: number) => overLimits(this.#limits, count, bytes);
    // The common case, decided without reading: nothing to drop.
    if (!over(head.id - (tail?.first ?? 1) + 1, head.bytes - (tail?.bytes ?? 0))) return;
    for (let round = 0; round < TRIM_ROUNDS; round++) {
      const [headEntry, tailEntry] = await kv.getMany<[Head, Tail]>([
        key(room, "head"),
        key(room, "tail"),
      ]);
      const head = headEntry.value;
      if (!head) return;
      const first = tailEntry.value?.first ?? 1;
      let count = head.id - first + 1;
      let bytes = head.bytes - (tailEntry.value?.bytes ?? 0);
      if (!over(count, bytes)) return;
      // One check for the tail and one per dedup key leaves room for nine.
      const dropped: MessageRecord[] = [];
      const records = kv.list<MessageRecord>(
        { start: key(room, "msg", first), end: key(room, "msg", head.id + 1) },
        { limit: MAX_CHECKS - 1 },
      );
      for await (const { value } of records) {
        if (!over(count, bytes)) break;
        dropped.push(value);
        count = head.id - value.id;
        bytes -= value.bytes;
      }
      if (dropped.length === 0) return;
      const withDedup = dropped.filter((r) => r.sender !== undefined && r.cid !== undefined);
      const dedups = withDedup.length === 0 ? [] : await kv.getMany<number[]>(
        withDedup.map((r) => key(room, "dedup", r.sender!, r.cid!)),
      );
      const op = kv.atomic()
        .check(tailEntry)
        .set(key(room, "tail"), { first: dropped.at(-1)!.id + 1, bytes: head.bytes - bytes });
      for (const r of dropped) {
        op.delete(key(room, "msg", r.id));
        if (r.kind === "edit" && typeof r.target === "number") {
          op.delete(key(room, "edits", r.target, r.id));
        }
      }
      dedups.forEach((entry, i) => {
        // A pair stored again since belongs to the newer message.
        if (entry.value === withDedup[i].id) op.check(entry).delete(entry.key);
      });
      if (!(await commit(op))) {
        await backoff(round + 1);
        continue;
      }
      // The bytes of files too big for history expire by themselves.
      const blobs = dropped.filter((r) => r.kept !== false).map(ownBlob);
      await this.#blobs.drop(room, blobs.filter((blob) => blob !== undefined));
    }
  }
}
