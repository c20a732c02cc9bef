/**
 * The per-connection rate limit: a token bucket with a bounded queue. Frames
 * over the burst wait their turn and are paced out at the allowed rate, so a
 * client that resends its backlog after a reconnect is served, not dropped;
 * only frames past the queue's bound are dropped, and a sender that keeps
 * overflowing it is a flood.
 *
 * @module
 */

/** Options of {@linkcode Pacer}. */
export interface PacerOptions {
  /** Frames a second on average. */
  rate: number;
  /** Frames at once. */
  burst: number;
  /**
   * Frames held beyond the burst, paced out at `rate`.
   * @default 256
   */
  queue?: number;
  /**
   * Bytes held beyond the burst.
   * @default 16 MiB
   */
  queueBytes?: number;
  /** Clock in milliseconds, for tests. @default performance.now */
  now?: () => number;
}

/** What happened to a frame given to {@linkcode Pacer.push}. */
export type Fate = "passed" | "queued" | "dropped";

/** Callbacks of {@linkcode Pacer}. */
export interface PacerTarget<T> {
  /** Handles a frame whose turn has come, in the order pushed. */
  pass(frame: T): void;
  /**
   * A frame was dropped because the queue is full. `flood` is true once the
   * sender has kept overflowing it (more drops than the burst, decaying at
   * the allowed rate).
   */
  drop(frame: T, flood: boolean): void;
}

/** Default bound of queued frames. */
export const DEFAULT_QUEUE = 256;
/** Default bound of queued bytes. */
export const DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024;

interface Held<T> {
  frame: T;
  size: number;
  rider: boolean;
}

/**
 * A token bucket with a bounded, paced queue for one connection.
 *
 * A "rider" is a frame that belongs to the frame before it (the binary frame
 * of a `file` envelope): it costs no token and shares that frame's fate, so
 * an envelope and its bytes pass, wait or are dropped together.
 */
export class Pacer<T> {
  readonly #rate: number;
  readonly #burst: number;
  readonly #queueMax: number;
  readonly #bytesMax: number;
  readonly #now: () => number;
  readonly #target: PacerTarget<T>;
  #tokens: number;
  #refilled: number;
  #excess = 0;
  #queue: Held<T>[] = [];
  #bytes = 0;
  #last: Fate = "passed";
  #timer?: ReturnType<typeof setTimeout>;
  #closed = false;

  constructor(options: PacerOptions, target: PacerTarget<T>) {
    this.#rate = options.rate;
    this.#burst = options.burst;
    this.#queueMax = options.queue ?? DEFAULT_QUEUE;
    this.#bytesMax = options.queueBytes ?? DEFAULT_QUEUE_BYTES;
    this.#now = options.now ?? (() => performance.now());
    this.#target = target;
    this.#tokens = options.burst;
    this.#refilled = this.#now();
  }

  /** Frames waiting. */
  get queued(): number {
    return this.#queue.length;
  }

  #refill() {
    const now = this.#now();
    const refill = ((now - this.#refilled) / 1000) * this.#rate;
    this.#refilled = now;
    this.#tokens = Math.min(this.#burst, this.#tokens + refill);
    this.#excess = Math.max(0, this.#excess - refill);
  }

  /**
   * Takes one frame. A rider follows the fate of the frame before it.
   *
   * @returns What happened to it.
   */
  push(frame: T, size: number, rider = false): Fate {
    if (this.#closed) return "dropped";
    if (rider) {
      if (this.#last === "passed") this.#target.pass(frame);
      else if (this.#last === "queued") this.#hold({ frame, size, rider });
      return this.#last;
    }
    this.#refill();
    if (this.#queue.length === 0 && this.#tokens >= 1) {
      this.#tokens -= 1;
      this.#target.pass(frame);
      return this.#last = "passed";
    }
    if (this.#queue.length < this.#queueMax && this.#bytes + size <= this.#bytesMax) {
      this.#hold({ frame, size, rider });
      return this.#last = "queued";
    }
    this.#last = "dropped";
    this.#target.drop(frame, ++this.#excess > this.#burst);
    return "dropped";
  }

  #hold(held: Held<T>) {
    this.#queue.push(held);
    this.#bytes += held.size;
    this.#schedule();
  }

  #schedule() {
    if (this.#timer !== undefined || this.#queue.length === 0 || this.#closed) return;
    const wait = Math.max(1, Math.ceil(((1 - this.#tokens) / this.#rate) * 1000));
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#release();
    }, wait);
  }

  /** Passes what the refilled bucket allows, riders with their frame. */
  #release() {
    this.#refill();
    while (this.#queue.length > 0 && !this.#closed) {
      if (!this.#queue[0].rider) {
        if (this.#tokens < 1) break;
        this.#tokens -= 1;
      }
      const held = this.#queue.shift()!;
      this.#bytes -= held.size;
      this.#target.pass(held.frame);
    }
    if (this.#queue.length === 0 && this.#last === "queued") this.#last = "passed";
    this.#schedule();
  }

  /** Drops whatever waits and stops the timer. */
  close(): void {
    this.#closed = true;
    this.#queue = [];
    this.#bytes = 0;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}
