/**
 * What the client has seen of a room, and the order it reports it in: the
 * last position (for resume), repeats skipped (a replay after a gap, or a
 * message stored twice across a server restart that changed the epoch), and
 * events held back while the bytes of an earlier file are on their way, so
 * the events come out exactly in the room's order.
 *
 * @module
 */

import type { FileInfo, Position } from "./wire.ts";

/** Entries remembered by (sender, cid) to catch one stored again in a new epoch. */
const REMEMBERED = 10_000;

interface Held {
  run: () => void;
  /** A file whose binary frame has not come yet. */
  file?: FileInfo;
}

/** The seen position, the repeat filter and the order of reported events. */
export class Inbox {
  #last: Position | null = null;
  #sent = new Set<string>();
  #held: Held[] = [];

  /** The last entry seen, or null before any. */
  get last(): Position | null {
    return this.#last;
  }

  /** Sets the position to resume from (loaded from storage, or after a gap). */
  set last(position: Position | null) {
    this.#last = position;
  }

  /**
   * Whether an entry should be reported: not one seen already (same epoch,
   * id at or before the last), nor one whose sender and cid were seen (a
   * resend the server stored again after losing its history).
   */
  isNew(epoch: string, id: number, fromId?: string, cid?: string): boolean {
    const last = this.#last;
    if (last !== null && last.epoch === epoch && id <= last.id) return false;
    if (fromId === undefined || cid === undefined) return true;
    return !this.#sent.has(`${fromId}\n${cid}`);
  }

  /** Marks an entry seen. */
  seen(epoch: string, id: number, fromId?: string, cid?: string): void {
    const last = this.#last;
    if (last === null || last.epoch !== epoch || id > last.id) this.#last = { epoch, id };
    if (fromId === undefined || cid === undefined) return;
    const key = `${fromId}\n${cid}`;
    this.#sent.add(key);
    if (this.#sent.size > REMEMBERED) {
      const oldest = this.#sent.values().next();
      if (!oldest.done) this.#sent.delete(oldest.value);
    }
  }

  /**
   * Runs `run` now, or after the files before it have their bytes. With
   * `file`, what follows waits until {@linkcode Inbox.bytes} brings them.
   */
  push(run: () => void, file?: FileInfo): void {
    this.#held.push({ run, file });
    this.#drain();
  }

  /** A binary frame came: the first file waiting takes it. Returns false when none waits. */
  bytes(data: Uint8Array): boolean {
    const waiting = this.#held.find((held) => held.file !== undefined);
    if (!waiting?.file) return false;
    waiting.file.data = data;
    waiting.file = undefined;
    this.#drain();
    return true;
  }

  /** The connection ended: files still waiting come out without their bytes. */
  flush(): void {
    for (const held of this.#held) held.file = undefined;
    this.#drain();
  }

  #drain(): void {
    while (this.#held.length > 0) {
      const head = this.#held[0];
      if (head.file !== undefined) {
        // Run it once, when its bytes are in: keep it waiting at the head.
        return;
      }
      this.#held.shift();
      try {
        head.run();
      } catch (error) {
        console.error("Cannot report an event:", error);
      }
    }
  }
}
