/**
 * The message log of the KV engine: history as `read()` and `history()` see
 * it. Appends are stored by `_appends.ts`, trimmed by `_trim.ts`; what edits
 * and deletes do to the records they target is in `_changes.ts`.
 *
 * @module
 */

import type { HistoryPage, MessageDraft, ReadResult } from "../../engine.ts";
import type { Position, StoredMessage } from "../../protocol.ts";
import { newEpoch } from "../memory.ts";
import { type Appended, Appends, type AppendsOptions } from "./_appends.ts";
import { Blobs, type FileBytes } from "./_blobs.ts";
import { type Head, type MessageRecord, oldestKept, type Tail } from "./_records.ts";
import { backoff, busy, commit, key, type KvContext, MAX_ATTEMPTS } from "./_store.ts";

/** Most messages one history page returns. */
export const HISTORY_PAGE_LIMIT = 200;

/** History limits of a message log, and how it commits (see {@linkcode AppendsOptions}). */
export type MessageLogOptions = AppendsOptions;

/** The history of every room, in one KV database. */
export class MessageLog {
  #context: KvContext;
  #options: MessageLogOptions;
  #blobs: Blobs;
  #appends: Appends;

  constructor(context: KvContext, options: MessageLogOptions) {
    this.#context = context;
    this.#options = options;
    this.#blobs = new Blobs(context);
    this.#appends = new Appends(context, options);
  }

  /** Stores a message (see {@linkcode Appends.append}). */
  append(room: string, draft: MessageDraft): Promise<Appended> {
    return this.#appends.append(room, draft);
  }

  /** Reads history, as `Engine.read` says. */
  async read(room: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const { head, tail } = await this.#ends(room);
    const oldest = oldestKept(head, tail, this.#options.historySize);
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
    const oldest = oldestKept(head, tail, this.#options.historySize);
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

  /** Rebuilds a message from its record and chunks (see {@linkcode Blobs.message}). */
  message(room: string, record: MessageRecord, bytes: FileBytes): Promise<StoredMessage> {
    return this.#blobs.message(room, record, bytes);
  }
}
