/**
 * What edits and deletes do to the stored records they target, in the KV
 * engine. An edit rewrites its target's text and is indexed under the target
 * (`["parley", room, "edits", target, id]`); a delete makes tombstones of its
 * target and of every edit the index lists. Both go into the commit that
 * stores the edit or delete, but for a delete's edits past the first
 * {@linkcode EDITS_PER_WRITE}, which follow in commits of their own.
 *
 * @module
 */

import type { BlobRef, Blobs } from "./_blobs.ts";
import { edited, isText, type MessageRecord, ownBlob, type Tail, tombstone } from "./_records.ts";
import { backoff, busy, commit, getAll, key, type KvContext, MAX_ATTEMPTS } from "./_store.ts";

/**
 * Edit entries a delete turns into tombstones per atomic write: two mutations
 * and about 200 bytes each, far under 1000 mutations and 800 KiB.
 */
export const EDITS_PER_WRITE = 50;

/**
 * The records a plan reads: as stored, or as an atomic write being built
 * will leave them (see `_group.ts`).
 */
export interface RecordView {
  /** Message `id`'s record, or null when there is none. */
  record(id: number): Promise<MessageRecord | null>;
  /** The records of `ids`, in their order. */
  records(ids: number[]): Promise<(MessageRecord | null)[]>;
  /** Ids of the edit entries indexed under message `target`, in id order. */
  edits(target: number): Promise<number[]>;
}

/** The records as the database holds them. */
export function storedView(kv: Deno.Kv, room: string): RecordView {
  return {
    async record(id) {
      return (await kv.get<MessageRecord>(key(room, "msg", id))).value;
    },
    async records(ids) {
      const entries = await getAll<MessageRecord>(kv, ids.map((id) => key(room, "msg", id)));
      return entries.map((entry) => entry.value);
    },
    async edits(target) {
      const ids: number[] = [];
      for await (const entry of kv.list({ prefix: key(room, "edits", target) })) {
        ids.push(entry.key.at(-1) as number);
      }
      return ids;
    },
  };
}

/** An entry of the `"edits"` index: set when `kept`, else deleted. */
export interface IndexEntry {
  target: number;
  edit: number;
  kept: boolean;
}

/** The writes an edit or delete makes beyond its own entry, from one consistent read. */
export interface Rewrite {
  /** Stored records, rewritten. */
  records: MessageRecord[];
  /** History bytes the rewrites take off. */
  freed: number;
  /** Entries of the edit index to set and to delete. */
  index: IndexEntry[];
  /** Blobs nothing points at after the commit. */
  blobs: BlobRef[];
  /** Edit entries of a deleted message left for the writes after the first. */
  rest: number[];
}

function rewrite(): Rewrite {
  return { records: [], freed: 0, index: [], blobs: [], rest: [] };
}

/** Adds the rewrite of `old` into `next` to `plan`. */
function replace(plan: Rewrite, old: MessageRecord, next: MessageRecord) {
  plan.records.push(next);
  plan.freed += old.bytes - next.bytes;
  const blob = ownBlob(old);
  if (blob && blob.id !== next.blob?.id) plan.blobs.push(blob);
}

/** Plans and finishes the rewrites of edits and deletes. */
export class Changes {
  #context: KvContext;
  #blobs: Blobs;

  constructor(context: KvContext, blobs: Blobs) {
    this.#context = context;
    this.#blobs = blobs;
  }

  /**
   * What an edit or delete does to its target, if the target is an ordinary
   * message still in history (from `oldest` to just before the change) and
   * not deleted. An edit is indexed under its target whatever the target is,
   * so a later delete finds it. `view` shows the records as the write that
   * stores the change will find them.
   */
  async plan(
    change: MessageRecord,
    view: RecordView,
    oldest: number,
  ): Promise<Rewrite | undefined> {
    const id = change.target;
    if (typeof id !== "number" || id < oldest || id >= change.id) return;
    const target = await view.record(id);
    if (!target || target.deleted || target.kind !== undefined) return;
    const plan = rewrite();
    if (change.kind === "edit") {
      plan.index.push({ target: id, edit: change.id, kept: true });
      if (isText(target)) replace(plan, target, edited(target, change));
      return plan;
    }
    replace(plan, target, tombstone(target));
    const edits = await view.edits(id);
    await this.#scrubInto(view, id, edits.slice(0, EDITS_PER_WRITE), plan);
    plan.rest = edits.slice(EDITS_PER_WRITE);
    return plan;
  }

  /** Adds tombstones of the edit entries `ids` of message `target` to `plan`. */
  async #scrubInto(view: RecordView, target: number, ids: number[], plan: Rewrite) {
    const records = await view.records(ids);
    records.forEach((record, i) => {
      plan.index.push({ target, edit: ids[i], kept: false });
      if (record && !record.deleted) replace(plan, record, tombstone(record));
    });
  }

  /**
   * Adds `plan` to `op`; a plan that rewrites records checks and rewrites
   * the tail (see {@linkcode Tail}).
   *
   * @returns The tail after `op`.
   */
  add(
    room: string,
    op: Deno.AtomicOperation,
    plan: Rewrite,
    tailEntry: Deno.KvEntryMaybe<Tail>,
  ): Tail | null {
    for (const record of plan.records) op.set(key(room, "msg", record.id), record);
    for (const { target, edit, kept } of plan.index) {
      if (kept) op.set(key(room, "edits", target, edit), true);
      else op.delete(key(room, "edits", target, edit));
    }
    if (plan.records.length === 0) return tailEntry.value;
    const tail = {
      first: tailEntry.value?.first ?? 1,
      bytes: (tailEntry.value?.bytes ?? 0) + plan.freed,
    };
    op.check(tailEntry).set(key(room, "tail"), tail);
    return tail;
  }

  /**
   * After a committed rewrite: tombstones the edit entries that did not fit
   * in the commit (their text is still readable), then frees the blobs it
   * orphaned. Failures are logged: the entry is stored either way.
   */
  async after(room: string, target: number, plan: Rewrite) {
    await this.#scrub(room, target, plan.rest).catch((error) =>
      this.#context.log.warn("kv_scrub_failed", { room, target, error: String(error) })
    );
    await this.#blobs.drop(room, plan.blobs);
  }

  /** Tombstones edit entries of a deleted message, {@linkcode EDITS_PER_WRITE} per commit. */
  async #scrub(room: string, target: number, ids: number[]) {
    const { kv } = this.#context;
    for (let start = 0; start < ids.length; start += EDITS_PER_WRITE) {
      for (let attempt = 1;; attempt++) {
        const tailEntry = await kv.get<Tail>(key(room, "tail"));
        const plan = rewrite();
        const view = storedView(kv, room);
        await this.#scrubInto(view, target, ids.slice(start, start + EDITS_PER_WRITE), plan);
        const op = kv.atomic();
        this.add(room, op, plan, tailEntry);
        if (await commit(op)) {
          await this.#blobs.drop(room, plan.blobs);
          break;
        }
        if (attempt >= MAX_ATTEMPTS) throw busy("scrub the edits of a deleted message", room);
        await backoff(attempt);
      }
    }
  }
}
