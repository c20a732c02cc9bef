/**
 * Reconnect delays: capped exponential backoff with full jitter (a uniform
 * delay up to a ceiling that doubles with each attempt), so that a thousand
 * clients dropped at once do not come back at once.
 *
 * @module
 */

/** Options of {@linkcode Backoff}. */
export interface BackoffOptions {
  /**
   * Ceiling of the first delay, in ms.
   * @default {500}
   */
  baseMs?: number;
  /**
   * Largest ceiling, in ms.
   * @default {15000}
   */
  capMs?: number;
  /**
   * A number in [0, 1).
   * @default {Math.random}
   */
  random?: () => number;
}

/** Counts failed attempts and says how long to wait before the next. */
export class Backoff {
  #attempt = 0;
  #baseMs: number;
  #capMs: number;
  #random: () => number;

  /** Starts at attempt 0; throws a RangeError for delays that make no sense. */
  constructor(options: BackoffOptions = {}) {
    this.#baseMs = options.baseMs ?? 500;
    this.#capMs = options.capMs ?? 15_000;
    this.#random = options.random ?? (() => Math.random());
    if (!(this.#baseMs > 0) || !(this.#capMs >= this.#baseMs)) {
      throw new RangeError(
        `Cannot back off: baseMs is ${this.#baseMs} and capMs ${this.#capMs}, expected 0 < baseMs <= capMs`,
      );
    }
  }

  /** Attempts since the last {@linkcode Backoff.reset}. */
  get attempt(): number {
    return this.#attempt;
  }

  /** The delay before the next attempt, in ms; counts the attempt. */
  next(): number {
    const ceiling = Math.min(this.#capMs, this.#baseMs * 2 ** this.#attempt);
    this.#attempt = Math.min(this.#attempt + 1, 30);
    return Math.floor(this.#random() * ceiling);
  }

  /** Starts over: the connection stayed up long enough. */
  reset(): void {
    this.#attempt = 0;
  }
}
