/**
 * A first-in, first-out queue whose front is taken in constant time, for
 * the appends that pile up behind a room's write: taking a batch from the
 * front of a plain array moves everything behind it, which a backlog of
 * thousands of appends turns into most of the work.
 *
 * @module
 */

/** Items in the order they were put in; taken from the front. */
export class Fifo<T> {
  #items: T[] = [];
  /** Index of the first item still queued. */
  #head = 0;

  /** How many items are queued. */
  get length(): number {
    return this.#items.length - this.#head;
  }

  /** Puts an item at the back. */
  push(item: T): void {
    this.#items.push(item);
  }

  /** The item `index` places from the front, or undefined past the back. */
  at(index: number): T | undefined {
    return index < 0 ? undefined : this.#items[this.#head + index];
  }

  /** Takes up to `count` items from the front, in order. */
  take(count: number): T[] {
    const end = Math.min(this.#items.length, this.#head + Math.max(0, count));
    const taken = this.#items.slice(this.#head, end);
    this.#head = end;
    // Drops the taken slots once they are most of the array: amortised constant time.
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    } else if (this.#head === this.#items.length) {
      this.#items = [];
      this.#head = 0;
    }
    return taken;
  }
}
