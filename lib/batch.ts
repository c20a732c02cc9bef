/**
 * Batched fan-out for rich clients that ask for it (`"batch": true` in
 * `hello`): the room events pending for such peers are sent as one
 * `{"type": "batch", "events": [...]}` frame per flush, built once per room
 * for every peer at the same position, and flushed on the next macrotask so
 * a lone message waits for no timer.
 *
 * @module
 */

/** One room event as batch clients get it. */
export interface BatchEvent {
  /** The room's sequence number of the event. */
  seq: number;
  /** The event's envelope, already serialised. */
  json: string;
  /** The bytes that follow a `file` envelope, if any. */
  data?: Uint8Array;
  /** The message id, for messages (their peers' resume position). */
  id?: number;
  epoch?: string;
}

/** A frame and what follows it, for one range of events. */
export interface BatchFrame {
  frame: string;
  binaries: Uint8Array[];
  /** Events in the frame, and messages among them. */
  events: number;
  messages: number;
  /** The last message of the range, if any. */
  last?: { id: number; epoch: string };
}

/** Builds the frame of a list of serialised events. */
export function batchFrame(events: readonly BatchEvent[]): BatchFrame {
  const binaries: Uint8Array[] = [];
  let messages = 0;
  let last: BatchFrame["last"];
  for (const event of events) {
    if (event.data) binaries.push(event.data);
    if (event.id !== undefined) {
      messages++;
      last = { id: event.id, epoch: event.epoch! };
    }
  }
  const frame = `{"type":"batch","events":[${events.map((e) => e.json).join(",")}]}`;
  return { frame, binaries, events: events.length, messages, last };
}

/**
 * The events pending for a room's batch peers, oldest first. Frames are
 * built at most once per range of sequence numbers per flush: peers at the
 * same position share one string.
 */
export class PendingBatch {
  #events: BatchEvent[] = [];
  #frames = new Map<string, BatchFrame>();
  #timer?: ReturnType<typeof setTimeout>;

  /** @param flush Called on the next macrotask after the first push. */
  constructor(readonly flush: () => void) {}

  get size(): number {
    return this.#events.length;
  }

  /** Sequence number of the newest pending event, or 0. */
  get last(): number {
    return this.#events.at(-1)?.seq ?? 0;
  }

  push(event: BatchEvent): void {
    this.#events.push(event);
    this.#timer ??= setTimeout(() => {
      this.#timer = undefined;
      this.flush();
    }, 0);
  }

  /** The frame of the pending events from `from` to `to` (sequence numbers, inclusive). */
  frame(from: number, to: number): BatchFrame | undefined {
    const key = `${from}-${to}`;
    let built = this.#frames.get(key);
    if (!built) {
      const range = this.#events.filter((e) => e.seq >= from && e.seq <= to);
      if (range.length === 0) return undefined;
      built = batchFrame(range);
      this.#frames.set(key, built);
    }
    return built;
  }

  /** Forgets what was flushed. */
  clear(): void {
    this.#events = [];
    this.#frames.clear();
  }

  /** Stops the timer (the room is gone). */
  cancel(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.clear();
  }
}
