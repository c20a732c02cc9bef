/**
 * One atomic write of the KV engine that stores several appends to a room
 * (and trims what they push out of history), as it is being built: every
 * write by key, a later write to a key replacing an earlier one; what they
 * cost against Deno KV's limits; and the records as the write will leave
 * them, so that an edit or delete planned in it sees the messages and
 * rewrites planned before it. The writes of several rooms that are ready
 * together share one commit ({@linkcode SharedWrites}).
 *
 * @module
 */

import { Fifo } from "../_fifo.ts";
import type { RecordView, Rewrite } from "./_changes.ts";
import type { MessageRecord } from "./_records.ts";
import {
  commit,
  getAll,
  key,
  MAX_CHECKS,
  MAX_KEY_BYTES,
  MAX_MUTATION_BYTES,
  MAX_MUTATIONS,
} from "./_store.ts";

/** What writes cost against the limits of one atomic write. */
export interface Cost {
  mutations: number;
  /** Keys and values, estimated from above. */
  bytes: number;
  /** Keys alone, estimated from above. */
  keyBytes: number;
}

/** What an atomic write may hold: Deno KV's limits, less room for the head and the tail. */
export const WRITE_LIMIT: Readonly<Cost> = {
  mutations: MAX_MUTATIONS - 8,
  bytes: MAX_MUTATION_BYTES - 8 * 1024,
  keyBytes: MAX_KEY_BYTES - 2 * 1024,
};

/** What a write's appends may take, so that trimming what they push out still fits. */
export const APPEND_LIMIT: Readonly<Cost> = {
  mutations: MAX_MUTATIONS / 2,
  bytes: MAX_MUTATION_BYTES / 2,
  keyBytes: MAX_KEY_BYTES / 2,
};

/**
 * Bytes of an encoded key, from above: a string part takes at most three
 * bytes per UTF-16 code unit and a terminator, a number nine bytes and a tag.
 */
function keyBytes(key: Deno.KvKey): number {
  let bytes = 0;
  for (const part of key) bytes += typeof part === "string" ? part.length * 3 + 2 : 10;
  return bytes;
}

/**
 * Bytes of a serialised value, from above: V8 spends at most two bytes per
 * character of a string and less than JSON on numbers, names and structure.
 */
function valueBytes(value: unknown): number {
  return value === undefined ? 0 : (JSON.stringify(value) ?? "").length * 2 + 16;
}

/** The cost of writing `value` at `key` (deleting it when `value` is undefined). */
export function costOf(key: Deno.KvKey, value?: unknown): Cost {
  const keys = keyBytes(key);
  return { mutations: 1, bytes: keys + valueBytes(value), keyBytes: keys };
}

/** Adds `more` to `total`, in place. */
export function addCost(total: Cost, more: Cost): Cost {
  total.mutations += more.mutations;
  total.bytes += more.bytes;
  total.keyBytes += more.keyBytes;
  return total;
}

/** Whether `used` and `more` together stay within `limit`. */
export function fits(used: Cost, more: Cost, limit: Cost): boolean {
  return used.mutations + more.mutations <= limit.mutations &&
    used.bytes + more.bytes <= limit.bytes &&
    used.keyBytes + more.keyBytes <= limit.keyBytes;
}

/** A pending write: a value to set, or undefined to delete the key. */
interface Write {
  key: Deno.KvKey;
  value: unknown;
  cost: Cost;
}

/** The writes of one atomic write of a room, and the records as they will stand. */
export class Batch implements RecordView {
  #kv: Deno.Kv;
  #room: string;
  #writes = new Map<string, Write>();
  /** Records this write sets (or deletes: null). */
  #records = new Map<number, MessageRecord | null>();
  /** Edit index entries this write sets (true) or deletes (false), by target and edit. */
  #index = new Map<number, Map<number, boolean>>();
  /** Records read from the database, once each. */
  #read = new Map<number, Promise<MessageRecord | null>>();
  /** What the writes so far cost. */
  readonly used: Cost = { mutations: 0, bytes: 0, keyBytes: 0 };

  constructor(kv: Deno.Kv, room: string) {
    this.#kv = kv;
    this.#room = room;
  }

  /** Sets `key` to `value`, or deletes it when `value` is undefined. */
  put(key: Deno.KvKey, value: unknown) {
    const name = JSON.stringify(key);
    const old = this.#writes.get(name);
    if (old) {
      this.used.mutations -= old.cost.mutations;
      this.used.bytes -= old.cost.bytes;
      this.used.keyBytes -= old.cost.keyBytes;
    }
    const write = { key, value, cost: costOf(key, value) };
    addCost(this.used, write.cost);
    this.#writes.set(name, write);
  }

  /** Whether this write already writes `key`. */
  writes(key: Deno.KvKey): boolean {
    return this.#writes.has(JSON.stringify(key));
  }

  /** Stores a record, new or rewritten. */
  setRecord(record: MessageRecord) {
    this.#records.set(record.id, record);
    this.put(key(this.#room, "msg", record.id), record);
  }

  /** Deletes a record. */
  deleteRecord(id: number) {
    this.#records.set(id, null);
    this.put(key(this.#room, "msg", id), undefined);
  }

  /** Sets or deletes an entry of the edit index. */
  index(target: number, edit: number, kept: boolean) {
    let edits = this.#index.get(target);
    if (!edits) this.#index.set(target, edits = new Map());
    edits.set(edit, kept);
    this.put(key(this.#room, "edits", target, edit), kept ? true : undefined);
  }

  /** Adds what an edit or delete rewrites. */
  rewrite(plan: Rewrite) {
    for (const record of plan.records) this.setRecord(record);
    for (const { target, edit, kept } of plan.index) this.index(target, edit, kept);
  }

  /** What adding `plan` would cost, from above (a key written twice counts twice). */
  costOfRewrite(plan: Rewrite): Cost {
    const cost: Cost = { mutations: 0, bytes: 0, keyBytes: 0 };
    for (const record of plan.records) {
      addCost(cost, costOf(key(this.#room, "msg", record.id), record));
    }
    for (const { target, edit, kept } of plan.index) {
      addCost(cost, costOf(key(this.#room, "edits", target, edit), kept ? true : undefined));
    }
    return cost;
  }

  /** The record this write sets for message `id`, if it sets one. */
  written(id: number): MessageRecord | undefined {
    return this.#records.get(id) ?? undefined;
  }

  async record(id: number): Promise<MessageRecord | null> {
    if (this.#records.has(id)) return this.#records.get(id)!;
    let read = this.#read.get(id);
    if (!read) {
      read = this.#kv.get<MessageRecord>(key(this.#room, "msg", id)).then((e) => e.value);
      this.#read.set(id, read);
    }
    return await read;
  }

  async records(ids: number[]): Promise<(MessageRecord | null)[]> {
    const missing = ids.filter((id) => !this.#records.has(id) && !this.#read.has(id));
    if (missing.length > 0) {
      const entries = getAll<MessageRecord>(
        this.#kv,
        missing.map((id) => key(this.#room, "msg", id)),
      );
      missing.forEach((id, i) => this.#read.set(id, entries.then((all) => all[i].value)));
    }
    return await Promise.all(ids.map((id) => this.record(id)));
  }

  async edits(target: number): Promise<number[]> {
    const ids = new Set<number>();
    for await (const entry of this.#kv.list({ prefix: key(this.#room, "edits", target) })) {
      ids.add(entry.key.at(-1) as number);
    }
    for (const [edit, kept] of this.#index.get(target) ?? []) {
      if (kept) ids.add(edit);
      else ids.delete(edit);
    }
    return [...ids].sort((a, b) => a - b);
  }

  /** Adds every write to `op`. */
  addTo(op: Deno.AtomicOperation) {
    for (const { key, value } of this.#writes.values()) {
      if (value === undefined) op.delete(key);
      else op.set(key, value);
    }
  }
}

/** One room's write, checked against what it read. */
interface Part {
  checks: Deno.AtomicCheck[];
  batch: Batch;
  resolve(committed: boolean): void;
  reject(error: unknown): void;
}

/**
 * Commits the writes of several rooms together. Rooms announce that they
 * are building a write ({@linkcode SharedWrites.start}); a commit waits
 * until every room that is building has handed in its write, or until it
 * holds as many rooms as its checks allow, and then takes the writes that
 * fit Deno KV's limits together. One commit is under way at a time: the
 * writes handed in meanwhile share the next. When a shared commit fails,
 * each write is committed again on its own, so that a room that lost to
 * another instance does not make the others lose too.
 */
export class SharedWrites {
  #kv: Deno.Kv;
  #rooms: number;
  /** Rooms building a write. */
  #building = 0;
  #ready = new Fifo<Part>();
  #busy = false;

  /** @param rooms Most rooms per commit. */
  constructor(kv: Deno.Kv, rooms: number) {
    this.#kv = kv;
    this.#rooms = rooms;
  }

  /** A room starts building a write; it must then `commit` it or `cancel`. */
  start(): void {
    this.#building++;
  }

  /** A room that started building has nothing to commit after all. */
  cancel(): void {
    this.#building--;
    this.#next();
  }

  /**
   * Commits a write built since `start()` if every check still holds.
   *
   * @param checks At most two: what the write read and relies on.
   * @returns Whether it was committed.
   */
  commit(checks: Deno.AtomicCheck[], batch: Batch): Promise<boolean> {
    this.#building--;
    const committed = new Promise<boolean>((resolve, reject) => {
      this.#ready.push({ checks, batch, resolve, reject });
    });
    this.#next();
    return committed;
  }

  #next() {
    if (this.#busy || this.#ready.length === 0) return;
    if (this.#building > 0 && this.#ready.length < this.#rooms) return;
    this.#busy = true;
    this.#run().finally(() => {
      this.#busy = false;
      this.#next();
    });
  }

  async #run() {
    const used: Cost = { mutations: 0, bytes: 0, keyBytes: 0 };
    let count = 0;
    while (count < Math.min(this.#rooms, this.#ready.length)) {
      const { batch } = this.#ready.at(count)!;
      if (count > 0 && !fits(used, batch.used, WRITE_LIMIT)) break;
      addCost(used, batch.used);
      count++;
    }
    const parts = this.#ready.take(count);
    try {
      if (await commit(this.#op(parts))) {
        for (const part of parts) part.resolve(true);
        return;
      }
      for (const part of parts) part.resolve(parts.length > 1 && await commit(this.#op([part])));
    } catch (error) {
      for (const part of parts) part.reject(error);
    }
  }

  #op(parts: Part[]): Deno.AtomicOperation {
    const op = this.#kv.atomic();
    for (const { checks, batch } of parts) {
      for (const check of checks) op.check(check);
      batch.addTo(op);
    }
    return op;
  }
}

/** Most rooms one shared commit holds: each checks its head and tail. */
export const ROOMS_PER_WRITE = MAX_CHECKS / 2;
