/**
 * Messages, files, edits and deletes the client sent and the server has not
 * acked yet, in the order they were sent. Each keeps its `cid` for good, so a
 * resend after a reconnect is deduplicated by the server; each has a promise
 * that an ack resolves and a final error rejects.
 *
 * @module
 */

import { isId, isObject, type Position } from "./wire.ts";

/** What an outbox item asks the server to do. */
export type OutgoingKind = "message" | "file" | "edit" | "delete";

/** One unacked envelope. */
export interface OutboxItem {
  /** The client-chosen id, reused on every resend. */
  cid: string;
  /** What it is. */
  kind: OutgoingKind;
  /** Text of a message or an edit. */
  text?: string;
  /** The message a message or file answers (dropped when the epoch changed). */
  replyTo?: Position;
  /** The message an edit or delete changes. */
  target?: Position;
  /** A file's name, type and bytes. Files are kept in memory only, never in storage. */
  file?: { name: string; mime: string; size: number; data: Uint8Array };
  /** When it was queued, ms since 1970. */
  createdAt: number;
  /** Connections that ended while it was in flight. */
  attempts: number;
  /** `queued`: to be sent; `sent`: in flight on the current connection. */
  state: "queued" | "sent";
}

/** The server's ack of an outbox item. */
export interface Delivery {
  /** The item's cid. */
  cid: string;
  /** Its id in the room. */
  id: number;
  /** The room's epoch. */
  epoch: string;
  /** True when the server had it already (a resend of one it stored). */
  duplicate: boolean;
}

/** What a send returns: the cid at once (to show the item as pending), the ack later. */
export interface Pending {
  /** The item's cid. */
  cid: string;
  /** Resolves with the ack; rejects with a {@linkcode SendError} on a final error. */
  delivered: Promise<Delivery>;
}

/** A final refusal of an outbox item: sending it again cannot help. */
export class SendError extends Error {
  /** The item's cid. */
  readonly cid: string;
  /** The server's error code, or `epoch_changed`, `connection_lost` or `closed`. */
  readonly code: string;

  /** Names the item, the error code and what was wrong. */
  constructor(cid: string, code: string, message: string) {
    super(`Cannot send ${cid}: ${message || code}`);
    this.name = "SendError";
    this.cid = cid;
    this.code = code;
  }
}

interface Handle {
  promise: Promise<Delivery>;
  resolve(delivery: Delivery): void;
  reject(error: SendError): void;
}

function handle(): Handle {
  let resolve!: (delivery: Delivery) => void;
  let reject!: (error: SendError) => void;
  const promise = new Promise<Delivery>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A caller that ignores the promise must not get an unhandled rejection.
  promise.catch(() => {});
  return { promise, resolve, reject };
}

function readPosition(value: unknown): Position | undefined {
  if (!isObject(value) || typeof value.epoch !== "string" || !isId(value.id)) return undefined;
  return { epoch: value.epoch, id: value.id };
}

/** Reads one stored item, or null (files and anything malformed are not restored). */
function readItem(value: unknown): OutboxItem | null {
  if (!isObject(value) || typeof value.cid !== "string") return null;
  const kind = value.kind;
  if (kind !== "message" && kind !== "edit" && kind !== "delete") return null;
  const item: OutboxItem = {
    cid: value.cid,
    kind,
    createdAt: typeof value.createdAt === "number" ? value.createdAt : 0,
    attempts: isId(value.attempts) ? value.attempts : 0,
    state: "queued",
  };
  if (typeof value.text === "string") item.text = value.text;
  const replyTo = readPosition(value.replyTo);
  if (replyTo) item.replyTo = replyTo;
  const target = readPosition(value.target);
  if (target) item.target = target;
  if (kind !== "delete" && item.text === undefined) return null;
  if (kind !== "message" && item.target === undefined) return null;
  return item;
}

/** The unacked items, in order, with their promises. */
export class Outbox {
  #items: OutboxItem[] = [];
  #handles = new Map<string, Handle>();

  /** The items, oldest first. */
  get items(): readonly OutboxItem[] {
    return this.#items;
  }

  /** Items not acked yet. */
  get size(): number {
    return this.#items.length;
  }

  /** Adds an item at the end. */
  add(item: OutboxItem): Pending {
    if (this.#handles.has(item.cid)) {
      throw new RangeError(`Cannot queue ${item.cid}: that cid is already in the outbox`);
    }
    const h = handle();
    this.#items.push(item);
    this.#handles.set(item.cid, h);
    return { cid: item.cid, delivered: h.promise };
  }

  /** The item with this cid. */
  get(cid: string): OutboxItem | undefined {
    return this.#items.find((item) => item.cid === cid);
  }

  /** The promise of an item's ack. */
  delivered(cid: string): Promise<Delivery> | undefined {
    return this.#handles.get(cid)?.promise;
  }

  #take(cid: string): [OutboxItem, Handle] | undefined {
    const index = this.#items.findIndex((item) => item.cid === cid);
    const h = this.#handles.get(cid);
    if (index < 0 || !h) return undefined;
    const [item] = this.#items.splice(index, 1);
    this.#handles.delete(cid);
    return [item, h];
  }

  /** The server acked an item: it leaves, its promise resolves. */
  settle(delivery: Delivery): OutboxItem | undefined {
    const taken = this.#take(delivery.cid);
    if (!taken) return undefined;
    taken[1].resolve(delivery);
    return taken[0];
  }

  /** An item failed for good: it leaves, its promise rejects. */
  fail(cid: string, code: string, message: string): [OutboxItem, SendError] | undefined {
    const taken = this.#take(cid);
    if (!taken) return undefined;
    const error = new SendError(cid, code, message);
    taken[1].reject(error);
    return [taken[0], error];
  }

  /** The first item waiting to be sent, unless an earlier one is held back. */
  next(): OutboxItem | undefined {
    return this.#items.find((item) => item.state === "queued");
  }

  /** Items in flight. */
  inFlight(): number {
    let count = 0;
    for (const item of this.#items) if (item.state === "sent") count++;
    return count;
  }

  /**
   * The connection ended: items in flight wait for the next one. Returns
   * those that have now been in flight on `maxAttempts` lost connections.
   */
  requeue(maxAttempts: number): OutboxItem[] {
    const worn: OutboxItem[] = [];
    for (const item of this.#items) {
      if (item.state !== "sent") continue;
      item.state = "queued";
      item.attempts++;
      if (item.attempts >= maxAttempts) worn.push(item);
    }
    return worn;
  }

  /** The items to store: files are left out (their bytes live in memory only). */
  toJSON(): unknown[] {
    return this.#items.filter((item) => item.kind !== "file").map((item) => ({
      cid: item.cid,
      kind: item.kind,
      text: item.text,
      replyTo: item.replyTo,
      target: item.target,
      createdAt: item.createdAt,
      attempts: item.attempts,
    }));
  }

  /** Puts stored items back before the ones queued since; returns how many came back. */
  restore(values: unknown): number {
    if (!Array.isArray(values)) return 0;
    const restored: OutboxItem[] = [];
    for (const value of values) {
      const item = readItem(value);
      if (!item || this.#handles.has(item.cid)) continue;
      restored.push(item);
      this.#handles.set(item.cid, handle());
    }
    this.#items = [...restored, ...this.#items];
    return restored.length;
  }
}
