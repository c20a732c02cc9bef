/**
 * The message log of the KV engine: ids, history, dedup and trimming. What
 * edits and deletes do to the records they target is in `_changes.ts`.
 *
 * @module
 */

import type { AppendResult, HistoryPage, MessageDraft, ReadResult } from "../../engine.ts";
import type { Position, StoredMessage } from "../../protocol.ts";
import { newEpoch } from "../memory.ts";
import { copyMember } from "../_shapes.ts";
import { type BlobRef, Blobs } from "./_blobs.ts";
import { Changes } from "./_changes.ts";
import {
  BASE_BYTES,
  type Head,
  isFile,
  type MessageRecord,
  ownBlob,
  type Tail,
  toMessage,
} from "./_records.ts";
import {
  backoff,
  busy,
  commit,
  key,
  type KvContext,
  MAX_ATTEMPTS,
  MAX_CHECKS,
  Queues,
} from "./_store.ts";

/** Texts longer than this go to chunks (a UTF-16 code unit takes up to 2 bytes in a value). */
const INLINE_TEXT_LENGTH = 16 * 1024;
/** Trim batches per append: a history shrunk by a new configuration catches up over appends. */
const TRIM_ROUNDS = 16;
/** Most messages one history page returns. */
export const HISTORY_PAGE_LIMIT = 200;

/** Which file bytes {@linkcode MessageLog.message} reads. */
export type FileBytes = "none" | "kept" | "live";

/** History limits of a message log. */
export interface MessageLogOptions {
  historySize: number;
  historyBytes: number;
  historyFileBytes: number;
}

/** What writing a message's chunks came to: a duplicate found first, or where they are. */
interface Written {
  earlier?: StoredMessage;
  blob?: BlobRef;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The history of every room, in one KV database. */
export class MessageLog {
  #context: KvContext;
  #options: MessageLogOptions;
  #blobs: Blobs;
  #changes: Changes;
  #queues = new Queues();

  constructor(context: KvContext, options: MessageLogOptions) {
    this.#context = context;
    this.#options = options;
    this.#blobs = new Blobs(context);
    this.#changes = new Changes(context, this.#blobs);
  }

  /**
   * Stores a message. The call takes its place in the room's queue at once,
   * so one caller's messages get ids in call order, while file bytes are
   * written in parallel with the messages ahead.
   */
  async append(room: string, draft: MessageDraft): Promise<AppendResult> {
    const { sender, cid } = draft;
    const dedup = sender !== undefined && cid !== undefined
      ? key(room, "dedup", sender, cid)
      : undefined;
    const fields: Omit<MessageRecord, "epoch" | "id"> = {
      ts: this.#context.now(),
      from: draft.from && copyMember(draft.from),
      sender,
      cid,
      bytes: BASE_BYTES,
    };
    if (draft.replyTo !== undefined) fields.replyTo = draft.replyTo;
    let text = draft.text;
    if (draft.kind !== undefined) {
      fields.kind = draft.kind;
      fields.target = draft.target;
      text = draft.kind === "edit" ? draft.text ?? "" : undefined;
    }
    let data: Uint8Array | undefined;
    let content: Uint8Array | undefined;
    if (text !== undefined) {
      fields.bytes += text.length * 2;
      if (text.length > INLINE_TEXT_LENGTH) {
        content = encoder.encode(text);
        fields.longText = true;
      } else {
        fields.text = text;
      }
    } else if (draft.kind === undefined) {
      data = draft.data ?? new Uint8Array(0);
      fields.name = draft.name ?? "file";
      fields.mime = draft.mime ?? "application/octet-stream";
      fields.size = data.byteLength;
      fields.kept = data.byteLength <= this.#options.historyFileBytes;
      if (fields.kept) fields.bytes += data.byteLength;
      if (data.byteLength > 0) content = data;
    }
    // Bytes first: the commit that publishes the message only points at them.
    const written: Promise<Written> = content
      ? this.#writeContent(room, content, dedup, fields.kept === false)
      : Promise.resolve({});
    written.catch(() => {}); // Awaited in the queue; this only marks it handled.
    return await this.#queues.run(room, async () => {
      const { earlier, blob } = await written;
      if (earlier) return { message: earlier, duplicate: true };
      if (blob) fields.blob = blob;
      let result: AppendResult;
      try {
        result = await this.#commit(room, dedup, (epoch, id) => {
          const record: MessageRecord = { epoch, id, ...fields };
          return { record, message: toMessage(room, record, text, data) };
        });
      } catch (error) {
        if (blob) await this.#blobs.drop(room, [blob]);
        throw error;
      }
      // Another writer stored the same cid first: these bytes belong to nothing.
      if (result.duplicate && blob) await this.#blobs.drop(room, [blob]);
      return result;
    });
  }

  /**
   * Writes the chunks of a message, unless its sender and cid are already
   * stored (a resent file is found before its bytes are written again).
   */
  async #writeContent(
    room: string,
    content: Uint8Array,
    dedup: Deno.KvKey | undefined,
    transient: boolean,
  ): Promise<Written> {
    const earlier = dedup && await this.#earlier(room, dedup);
    if (earlier) return { earlier };
    return { blob: await this.#blobs.write(room, content, transient) };
  }

  /**
   * Takes the next id of the room and stores the message, retrying while
   * other writers get there first. An edit or delete rewrites its target
   * (and a delete the target's edits) in the same commit. Then trims history.
   */
  async #commit(
    room: string,
    dedup: Deno.KvKey | undefined,
    make: (epoch: string, id: number) => { record: MessageRecord; message: StoredMessage },
  ): Promise<AppendResult> {
    const { kv, log } = this.#context;
    for (let attempt = 1;; attempt++) {
      const keys = [key(room, "head"), key(room, "tail")];
      if (dedup) keys.push(dedup);
      const [headEntry, tailEntry, dedupEntry] = await kv.getMany(keys) as [
        Deno.KvEntryMaybe<Head>,
        Deno.KvEntryMaybe<Tail>,
        Deno.KvEntryMaybe<number> | undefined,
      ];
      const head = headEntry.value;
      if (dedupEntry?.value != null) {
        const earlier = await this.#stored(room, dedupEntry.value, head, tailEntry.value);
        if (earlier) return { message: earlier, duplicate: true };
      }
      const epoch = head?.epoch ?? newEpoch();
      const id = (head?.id ?? 0) + 1;
      const { record, message } = make(epoch, id);
      const next: Head = { id, epoch, bytes: (head?.bytes ?? 0) + record.bytes };
      const op = kv.atomic()
        .check(headEntry)
        .set(key(room, "msg", id), record)
        .set(key(room, "head"), next);
      if (dedup && dedupEntry) op.check(dedupEntry).set(dedup, id);
      const plan = record.kind && head
        ? await this.#changes.plan(room, record, head, this.#oldest(head, tailEntry.value))
        : undefined;
      const tail = plan ? this.#changes.add(room, op, plan, tailEntry) : tailEntry.value;
      if (await commit(op)) {
        if (plan) await this.#changes.after(room, record.target!, plan);
        await this.#trim(room, next, tail).catch((error) =>
          log.warn("kv_trim_failed", { room, error: String(error) })
        );
        return { message, duplicate: false };
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("append", room);
      await backoff(attempt);
    }
  }

  /** The message stored earlier under a dedup key, if it is still in history. */
  async #earlier(room: string, dedup: Deno.KvKey): Promise<StoredMessage | undefined> {
    const [head, tail, id] = await this.#context.kv.getMany<[Head, Tail, number]>([
      key(room, "head"),
      key(room, "tail"),
      dedup,
    ]);
    return id.value == null
      ? undefined
      : await this.#stored(room, id.value, head.value, tail.value);
  }

  /** Message `id` with its kept bytes, if it is still in history. */
  async #stored(
    room: string,
    id: number,
    head: Head | null,
    tail: Tail | null,
  ): Promise<StoredMessage | undefined> {
    if (!head || id > head.id || id < this.#oldest(head, tail)) return undefined;
    const record = (await this.#context.kv.get<MessageRecord>(key(room, "msg", id))).value;
    return record ? await this.message(room, record, "kept") : undefined;
  }

  /** Oldest id of history: what trimming left, and never more than `historySize`. */
  #oldest(head: Head, tail: Tail | null): number {
    return Math.max(tail?.first ?? 1, head.id - this.#options.historySize + 1);
  }

  /**
   * Drops the oldest messages while the room holds more than `historySize`
   * of them or more than `historyBytes` (keeping at least one), with their
   * dedup keys, edit index keys and chunks. Best-effort: a failure leaves it
   * to the next append, and `read()` never shows more than `historySize`
   * anyway.
   */
  async #trim(room: string, head: Head, tail: Tail | null): Promise<void> {
    const { kv } = this.#context;
    const { historySize, historyBytes } = this.#options;
    const over = (count: number, bytes: number) =>
      count > historySize || (bytes > historyBytes && count > 1);
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

  /** Reads history, as `Engine.read` says. */
  async read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const { head, tail } = await this.#ends(room);
    const oldest = this.#oldest(head, tail);
    const base = { epoch: head.epoch, head: head.id };
    if (after && after.epoch === head.epoch && after.id <= head.id && after.id >= oldest - 1) {
      const records = await this.records(room, after.id + 1, head.id);
      // Ids are unique and in range, so the count alone proves there is no gap.
      if (records.length === head.id - after.id) {
        const messages = await this.#messages(room, records, "kept");
        return { ...base, recovered: true, messages };
      }
    }
    const count = Math.max(0, Math.min(limit, head.id - oldest + 1));
    const records = count === 0 ? [] : await this.records(room, oldest, head.id, count);
    return {
      ...base,
      recovered: after ? false : null,
      messages: await this.#messages(room, records, "kept"),
    };
  }

  /**
   * A page of scroll-back, as `Engine.history` says: one reverse range
   * list from `before` down, skipping edit and delete entries, that stops at
   * the first ordinary message past the page. `limit` is capped at
   * {@linkcode HISTORY_PAGE_LIMIT}. Files come without their bytes (as files
   * over `historyFileBytes` do): a page is for showing what was said, and
   * 200 files' bytes would be a costly read to ask for in one small frame.
   */
  async history(room: string, before: number, limit: number): Promise<HistoryPage> {
    const { head, tail } = await this.#ends(room);
    const wanted = Math.max(0, Math.min(limit, HISTORY_PAGE_LIMIT));
    const oldest = this.#oldest(head, tail);
    const end = Math.min(before, head.id + 1);
    const records: MessageRecord[] = [];
    let more = false;
    if (end > oldest) {
      const list = this.#context.kv.list<MessageRecord>(
        { start: key(room, "msg", oldest), end: key(room, "msg", end) },
        { reverse: true, batchSize: Math.min(wanted + 1, 100) },
      );
      for await (const { value } of list) {
        if (value.kind !== undefined) continue;
        if (records.length === wanted) {
          more = true;
          break;
        }
        records.push(value);
      }
    }
    const messages = await this.#messages(room, records.reverse(), "none");
    return { epoch: head.epoch, messages, more };
  }

  /** Head and tail of a room; a room seen for the first time gets its epoch now. */
  async #ends(room: string): Promise<{ head: Head; tail: Tail | null }> {
    const { kv } = this.#context;
    for (let attempt = 1;; attempt++) {
      const [headEntry, tailEntry] = await kv.getMany<[Head, Tail]>([
        key(room, "head"),
        key(room, "tail"),
      ]);
      if (headEntry.value) return { head: headEntry.value, tail: tailEntry.value };
      const head: Head = { id: 0, epoch: newEpoch(), bytes: 0 };
      const op = kv.atomic().check(headEntry).set(key(room, "head"), head);
      if (await commit(op)) return { head, tail: tailEntry.value };
      if (attempt >= MAX_ATTEMPTS) throw busy("create the epoch", room);
      await backoff(attempt);
    }
  }

  /** Records with ids from `from` to `to`, in id order; with `last`, only the last ones. */
  async records(room: string, from: number, to: number, last?: number): Promise<MessageRecord[]> {
    const records: MessageRecord[] = [];
    const selector = { start: key(room, "msg", from), end: key(room, "msg", to + 1) };
    const options = last === undefined ? {} : { reverse: true, limit: last };
    for await (const { value } of this.#context.kv.list<MessageRecord>(selector, options)) {
      records.push(value);
    }
    return last === undefined ? records : records.reverse();
  }

  async #messages(
    room: string,
    records: MessageRecord[],
    bytes: FileBytes,
  ): Promise<StoredMessage[]> {
    const messages: StoredMessage[] = [];
    for (const record of records) messages.push(await this.message(room, record, bytes));
    return messages;
  }

  /**
   * Rebuilds a message from its record and chunks, with the bytes of a file
   * as `bytes` says: `"kept"` when part of history, `"live"` also those of a
   * file too big for history while they last, `"none"` never.
   */
  async message(room: string, record: MessageRecord, bytes: FileBytes): Promise<StoredMessage> {
    let text = record.text;
    if (record.longText) {
      const content = record.blob && await this.#blobs.read(room, record.blob);
      text = content ? decoder.decode(content) : "";
    }
    let data: Uint8Array | undefined;
    if (isFile(record) && (bytes === "live" || (bytes === "kept" && record.kept))) {
      data = record.blob ? await this.#blobs.read(room, record.blob) : new Uint8Array(0);
    }
    return toMessage(room, record, text, data);
  }
}
