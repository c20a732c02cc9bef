/**
 * Work sent in batches, one batch (or a few) on its way per key: what is
 * added while a key's batches are on their way waits, and goes together as
 * the next one; what is added while nothing is on its way goes in the same
 * turn. The Redis
 * engine sends a room's appends this way (one script call and one channel
 * message for many: each command costs the client far more than Redis's
 * work for one message), and the KV engine its rooms' writes (one commit
 * for several rooms: each commit costs far more than its mutations).
 *
 * A batch or two at a time also keeps a burst from piling up in Redis
 * longer than the command timeout (each command's clock starts when it is
 * sent).
 * When a batch times out, Redis is not answering: the items waiting behind
 * it fail with it instead of each waiting out a timeout in turn.
 *
 * @module
 */

import { Fifo } from "./_fifo.ts";

/** How big one batch may be. */
export interface BatchLimits {
  /** Most items. */
  items: number;
  /** Most bytes, as `size` counts them; the first item goes whatever its size. */
  bytes: number;
}

/** What {@linkcode Batches} needs. */
export interface BatchesOptions<T, R> {
  /** Sends one batch; resolves with a result per item, in order. */
  send(key: string, items: T[]): Promise<R[]>;
  /** What an item counts against `limits.bytes`. */
  size(item: T): number;
  limits: BatchLimits;
  /**
   * Batches of one key on their way at once: with two, the next batch is
   * on its way while the answer to the last one is being handled.
   *
   * @default {1}
   */
  concurrency?: number;
  /**
   * Whether a batch's error means the items waiting behind it would wait in
   * vain (a timeout): they fail with the same error.
   *
   * @default {() => false}
   */
  hopeless?(error: unknown): boolean;
}

interface Waiting<T, R> {
  item: T;
  resolve(result: R): void;
  reject(error: unknown): void;
}

/** Sends items in batches, in the order added, `concurrency` batches on their way per key. */
export class Batches<T, R> {
  #options: BatchesOptions<T, R>;
  /** Items not sent yet, by key; a key is here while its batches are being sent. */
  #queues = new Map<string, Fifo<Waiting<T, R>>>();

  constructor(options: BatchesOptions<T, R>) {
    this.#options = options;
  }

  /** Queues `item` under `key`; resolves with its result once its batch is answered. */
  add(key: string, item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      let queue = this.#queues.get(key);
      if (queue) {
        queue.push({ item, resolve, reject });
        return;
      }
      const started = queue = new Fifo();
      queue.push({ item, resolve, reject });
      this.#queues.set(key, queue);
      // Items added in the same turn join the first batch.
      queueMicrotask(() => this.#drain(key, started));
    });
  }

  async #drain(key: string, queue: Fifo<Waiting<T, R>>) {
    const { size, limits, concurrency = 1 } = this.#options;
    const flying = new Set<Promise<void>>();
    while (queue.length > 0 || flying.size > 0) {
      if (queue.length === 0 || flying.size >= concurrency) {
        // Items added meanwhile wait for a batch to be answered.
        await Promise.race(flying);
        continue;
      }
      let bytes = size(queue.at(0)!.item);
      let count = 1;
      while (count < queue.length && count < limits.items) {
        bytes += size(queue.at(count)!.item);
        if (bytes > limits.bytes) break;
        count++;
      }
      const sent: Promise<void> = this.#answer(key, queue.take(count), queue)
        .finally(() => flying.delete(sent));
      flying.add(sent);
    }
    this.#queues.delete(key);
  }

  /** Sends a batch and settles its items (and the queue's, when hopeless); never rejects. */
  async #answer(key: string, batch: Waiting<T, R>[], queue: Fifo<Waiting<T, R>>): Promise<void> {
    const { send, hopeless } = this.#options;
    try {
      const results = await send(key, batch.map((waiting) => waiting.item));
      if (results.length !== batch.length) {
        throw new Error(`Expected ${batch.length} results from a batch, got ${results.length}`);
      }
      batch.forEach((waiting, i) => waiting.resolve(results[i]));
    } catch (error) {
      const failed = hopeless?.(error) ? [...batch, ...queue.take(queue.length)] : batch;
      for (const waiting of failed) waiting.reject(error);
    }
  }
}
