/**
 * The write side of the KV engine's message log: appends queue per room,
 * and the appends that wait together are stored by one atomic write, which
 * takes their ids, dedups them, applies edits and deletes, and trims what
 * they push out of history.
 *
 * @module
 */

import type { AppendResult, MessageDraft } from "../../engine.ts";
import type { StoredMessage } from "../../protocol.ts";
import { newEpoch } from "../memory.ts";
import { Fifo } from "../_fifo.ts";
import { copyMember } from "../_shapes.ts";
import { type BlobRef, Blobs } from "./_blobs.ts";
import { Changes, type RecordView, type Rewrite, storedView } from "./_changes.ts";
import {
  addCost,
  APPEND_LIMIT,
  Batch,
  costOf,
  fits,
  ROOMS_PER_WRITE,
  SharedWrites,
} from "./_group.ts";
import {
  BASE_BYTES,
  type Head,
  type MessageRecord,
  oldestKept,
  type Tail,
  toMessage,
} from "./_records.ts";
import { backoff, busy, commit, getAll, key, type KvContext, MAX_ATTEMPTS } from "./_store.ts";
import { type HistoryLimits, Trimming } from "./_trim.ts";

/** Texts longer than this go to chunks (a UTF-16 code unit takes up to 2 bytes in a value). */
const INLINE_TEXT_LENGTH = 16 * 1024;
/** Most appends stored by one atomic write. */
const GROUP_LIMIT = 128;

/** Options of {@linkcode Appends}. */
export interface AppendsOptions extends HistoryLimits {
  historyFileBytes: number;
  /**
   * Stores the appends to a room that wait together in one atomic write.
   *
   * @default {true}
   */
  groupCommits?: boolean;
}

/** What {@linkcode Appends.append} gives back. */
export interface Appended extends AppendResult {
  /**
   * Every message the write that stored this one stored, in id order (this
   * one included), with file bytes for live delivery; empty for a duplicate.
   */
  stored: StoredMessage[];
}

/** What writing a message's chunks came to: a duplicate found first, or where they are. */
interface Written {
  earlier?: StoredMessage;
  blob?: BlobRef;
}

/** A call to `append` waiting in its room's queue. */
interface Pending {
  fields: Omit<MessageRecord, "epoch" | "id">;
  text?: string;
  data?: Uint8Array;
  dedup?: Deno.KvKey;
  /** Settles, never rejecting, once the chunks are written, failed, or found stored already. */
  settled: Promise<void>;
  written?: Written;
  failure?: { error: unknown };
  resolve(result: Appended): void;
  reject(error: unknown): void;
}

/** What one append of a group came to, before the write is known to have committed. */
type Outcome =
  | { message: StoredMessage; duplicate: boolean }
  /** A duplicate of the append at this index of the group. */
  | { same: number }
  /** Its chunks could not be written. */
  | { error: unknown };

/** A group's write as built, and what each of its appends comes to once it commits. */
interface Built {
  outcomes: Outcome[];
  /** The new messages, in id order. */
  fresh: StoredMessage[];
  /** Edits and deletes to finish after the commit, by target. */
  plans: [number, Rewrite][];
  /** Stored records the write deletes. */
  trimmed: MessageRecord[];
  /** The room's head and tail once committed. */
  head: Head;
  tail: Tail | null;
  /** The write; absent when every append is a duplicate. */
  commit?: { checks: Deno.AtomicCheck[]; batch: Batch };
}

const encoder = new TextEncoder();

/** A message as its duplicates give it back: a file's bytes only when history keeps them. */
function asKept(message: StoredMessage, fields: Pending["fields"]): StoredMessage {
  if (fields.kept !== false || message.data === undefined) return message;
  const { data: _data, ...rest } = message;
  return rest;
}

/** Stores the messages of every room of one KV database. */
export class Appends {
  #context: KvContext;
  #options: AppendsOptions;
  #blobs: Blobs;
  #changes: Changes;
  #trimming: Trimming;
  /** Commits shared by rooms; absent when not grouping (a commit per append). */
  #writes?: SharedWrites;
  /** Appends not stored yet, by room, in call order. */
  #pending = new Map<string, Fifo<Pending>>();
  #groupLimit: number;

  constructor(context: KvContext, options: AppendsOptions) {
    this.#context = context;
    this.#options = options;
    this.#blobs = new Blobs(context);
    this.#changes = new Changes(context, this.#blobs);
    this.#trimming = new Trimming(context, options, this.#blobs);
    const grouped = options.groupCommits !== false;
    this.#groupLimit = grouped ? GROUP_LIMIT : 1;
    if (grouped) this.#writes = new SharedWrites(context.kv, ROOMS_PER_WRITE);
  }

  /**
   * Stores a message. The call takes its place in the room's queue at once,
   * so one caller's messages get ids in call order, while file bytes are
   * written in parallel with the messages ahead. The appends that wait
   * together are stored by one atomic write (up to {@linkcode GROUP_LIMIT},
   * within Deno KV's limits), which also trims what they push out of history.
   */
  append(room: string, draft: MessageDraft): Promise<Appended> {
    const { sender, cid } = draft;
    const fields: Pending["fields"] = {
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
    const dedup = sender !== undefined && cid !== undefined
      ? key(room, "dedup", sender, cid)
      : undefined;
    return new Promise<Appended>((resolve, reject) => {
      const item: Pending = {
        fields,
        text,
        data,
        dedup,
        settled: Promise.resolve(),
        resolve,
        reject,
      };
      if (content) {
        // Bytes first: the write that publishes the message only points at them.
        item.settled = this.#writeContent(room, content, dedup, fields.kept === false).then(
          (written) => {
            item.written = written;
            if (written.blob) fields.blob = written.blob;
          },
          (error) => {
            item.failure = { error };
          },
        );
      } else {
        item.written = {};
      }
      const queue = this.#pending.get(room);
      if (queue) {
        queue.push(item);
      } else {
        const started = new Fifo<Pending>();
        started.push(item);
        this.#pending.set(room, started);
        this.#drain(room);
      }
    });
  }

  /**
   * Stores the room's queued appends, a group at a time, until none is left.
   * A group is the appends at the front whose chunks are written.
   */
  async #drain(room: string) {
    const queue = this.#pending.get(room)!;
    // Appends made in the same turn as the first join its group.
    await Promise.resolve();
    while (queue.length > 0) {
      await queue.at(0)!.settled;
      const group: Pending[] = [];
      while (group.length < this.#groupLimit) {
        const item = queue.at(group.length);
        // One whose chunks are still being written waits, and so do those behind it.
        if (!item || (!item.written && !item.failure)) break;
        group.push(item);
      }
      let taken = group.length;
      try {
        // What does not fit in one write stays at the front, for the next group.
        taken = await this.#store(room, group);
      } catch (error) {
        for (const item of group) {
          if (item.fields.blob) await this.#blobs.drop(room, [item.fields.blob]);
          item.reject(error);
        }
      }
      queue.take(taken);
    }
    this.#pending.delete(room);
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
   * Stores a group of appends (or as many of them, from the front, as one
   * atomic write holds) and settles their calls; returns how many it took.
   * Each takes the next id of the room; one whose sender and cid are stored,
   * or appear earlier in the group, is a duplicate; an edit or delete
   * rewrites its target (and a delete the target's edits), which may be a
   * message of the same group. The write checks the room's head and tail,
   * so it loses cleanly to any other writer's appends, trims or rewrites,
   * and is then built again from a fresh read. Grouping, it shares its
   * commit with the writes of other rooms ready at the same time.
   */
  async #store(room: string, group: Pending[]): Promise<number> {
    for (let attempt = 1;; attempt++) {
      this.#writes?.start();
      let built: Built | undefined;
      try {
        built = await this.#build(room, group);
      } finally {
        if (!built?.commit) this.#writes?.cancel();
      }
      if (built.commit && !(await this.#commit(built.commit))) {
        if (attempt >= MAX_ATTEMPTS) throw busy("append", room);
        await backoff(attempt);
        continue;
      }
      const { outcomes, fresh, plans, trimmed, head, tail } = built;
      for (const [target, plan] of plans) await this.#changes.after(room, target, plan);
      await this.#trimming.dropChunks(room, trimmed);
      if (fresh.length > 0) {
        await this.#trimming.rest(room, head, tail).catch((error) =>
          this.#context.log.warn("kv_trim_failed", { room, error: String(error) })
        );
      }
      await this.#settle(room, group, outcomes, fresh);
      this.#context.metrics?.batch(outcomes.length);
      return outcomes.length;
    }
  }

  /** Commits a write, shared with other rooms' when grouping. */
  #commit({ checks, batch }: { checks: Deno.AtomicCheck[]; batch: Batch }): Promise<boolean> {
    if (this.#writes) return this.#writes.commit(checks, batch);
    const op = this.#context.kv.atomic();
    for (const check of checks) op.check(check);
    batch.addTo(op);
    return commit(op);
  }

  /**
   * Reads the room and builds the write of a group (see
   * {@linkcode Appends.#store}): what each append comes to, and the write,
   * unless every one is a duplicate.
   */
  async #build(room: string, group: Pending[]): Promise<Built> {
    const { kv } = this.#context;
    const dedups = group.flatMap((item) => item.dedup ? [item.dedup] : []);
    // The head first: a dedup key set after it was read fails the check of the head.
    const [headEntry, tailEntry, ...found] = await getAll<unknown>(kv, [
      key(room, "head"),
      key(room, "tail"),
      ...dedups,
    ]) as [Deno.KvEntryMaybe<Head>, Deno.KvEntryMaybe<Tail>, ...Deno.KvEntryMaybe<number>[]];
    const stored = new Map(found.map((entry) => [JSON.stringify(entry.key), entry.value]));
    const head = headEntry.value;
    const tail = tailEntry.value;
    const epoch = head?.epoch ?? newEpoch();
    const batch = new Batch(kv, room);
    const outcomes: Outcome[] = [];
    const fresh: StoredMessage[] = [];
    const plans: [number, Rewrite][] = [];
    const byDedup = new Map<string, number>();
    let id = head?.id ?? 0;
    let bytes = head?.bytes ?? 0;
    let freed = 0;
    /** Whether a stored record is rewritten: the tail is then rewritten too (see `Tail`). */
    let rewrites = false;
    for (const item of group) {
      let moved: MessageRecord | undefined;
      if (item.failure) {
        outcomes.push({ error: item.failure.error });
        continue;
      }
      const dedup = item.dedup && JSON.stringify(item.dedup);
      if (dedup !== undefined) {
        const same = byDedup.get(dedup);
        if (same !== undefined) {
          outcomes.push({ same });
          continue;
        }
        const earlierId = stored.get(dedup);
        const earlier = item.written?.earlier ??
          (earlierId == null ? undefined : await this.#stored(room, earlierId, head, tail, batch));
        if (earlier) {
          byDedup.set(dedup, outcomes.length);
          outcomes.push({ message: earlier, duplicate: true });
          continue;
        }
        if (earlierId != null) moved = await this.#left(earlierId, head, tail, batch);
      }
      const record: MessageRecord = { epoch, id: id + 1, ...item.fields };
      const oldest = Math.max(tail?.first ?? 1, record.id - this.#options.historySize);
      const plan = record.kind ? await this.#changes.plan(record, batch, oldest) : undefined;
      const cost = costOf(key(room, "msg", record.id), record);
      if (item.dedup) addCost(cost, costOf(item.dedup, record.id));
      if (plan) addCost(cost, batch.costOfRewrite(plan));
      if (moved) addCost(cost, costOf(key(room, "msg", moved.id), moved));
      if (fresh.length > 0 && !fits(batch.used, cost, APPEND_LIMIT)) break;
      id = record.id;
      bytes += record.bytes;
      if (moved) batch.setRecord(moved);
      rewrites ||= moved !== undefined || (plan?.records.length ?? 0) > 0;
      batch.setRecord(record);
      if (item.dedup) batch.put(item.dedup, id);
      if (plan) {
        batch.rewrite(plan);
        freed += plan.freed;
        plans.push([record.target!, plan]);
      }
      const message = toMessage(room, record, item.text, item.data);
      fresh.push(message);
      if (dedup !== undefined) byDedup.set(dedup, outcomes.length);
      outcomes.push({ message, duplicate: false });
    }
    const next: Head = { id, epoch, bytes };
    if (fresh.length === 0) return { outcomes, fresh, plans, trimmed: [], head: next, tail };
    const after: Tail = { first: tail?.first ?? 1, bytes: (tail?.bytes ?? 0) + freed };
    const trimmed = await this.#trimming.into(room, batch, next, after, fresh[0].id);
    batch.put(key(room, "head"), next);
    if (rewrites || trimmed.length > 0) batch.put(key(room, "tail"), after);
    const commit = { checks: [headEntry, tailEntry], batch };
    return { outcomes, fresh, plans, trimmed, head: next, tail: after, commit };
  }

  /** Settles the calls of a group's appends once their write committed. */
  async #settle(room: string, group: Pending[], outcomes: Outcome[], fresh: StoredMessage[]) {
    for (const [i, outcome] of outcomes.entries()) {
      const item = group[i];
      if ("error" in outcome) {
        item.reject(outcome.error);
        continue;
      }
      if ("same" in outcome || outcome.duplicate) {
        // Another append stored the same cid first: these bytes belong to nothing.
        if (item.fields.blob) await this.#blobs.drop(room, [item.fields.blob]);
      }
      if ("same" in outcome) {
        const first = outcomes[outcome.same] as { message: StoredMessage };
        const message = asKept(first.message, group[outcome.same].fields);
        item.resolve({ message, duplicate: true, stored: [] });
      } else {
        item.resolve({ ...outcome, stored: outcome.duplicate ? [] : fresh });
      }
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
    view: RecordView = storedView(this.#context.kv, room),
  ): Promise<StoredMessage | undefined> {
    if (!head || id > head.id || id < oldestKept(head, tail, this.#options.historySize)) {
      return undefined;
    }
    const record = await view.record(id);
    return record ? await this.#blobs.message(room, record, "kept") : undefined;
  }

  /**
   * The record of message `id`, marked `dedupMoved`, when its sender and cid
   * are about to be stored again for a newer message: it left history
   * (`id` is older than the oldest one kept) but is not trimmed yet.
   * Records from before the mark existed are trimmed by the same rule; at
   * worst, a cid resent long after could then be stored twice.
   */
  async #left(
    id: number,
    head: Head | null,
    tail: Tail | null,
    view: RecordView,
  ): Promise<MessageRecord | undefined> {
    if (!head || id > head.id || id < (tail?.first ?? 1)) return;
    const record = await view.record(id);
    return record && !record.dedupMoved ? { ...record, dedupMoved: true } : undefined;
  }
}
