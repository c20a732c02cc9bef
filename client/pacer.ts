/**
 * The client's side of the server's rate limit: a token bucket with the
 * `rate` and `burst` of `welcome.limits`, so a backlog resent after a
 * reconnect goes out no faster than the server takes it.
 *
 * @module
 */

/** A token bucket. Time comes in as `now` (ms), so it can be tested without a clock. */
export class TokenBucket {
  #rate: number | null;
  #burst: number;
  #tokens: number;
  #at: number;
  #now: () => number;

  /**
   * @param rate Tokens a second; null for no limit.
   * @param burst Most tokens held, and the tokens at the start.
   * @param now The clock, in ms.
   */
  constructor(rate: number | null, burst: number | null, now: () => number = Date.now) {
    this.#rate = rate;
    this.#burst = Math.max(1, burst ?? 1);
    this.#tokens = this.#burst;
    this.#now = now;
    this.#at = now();
  }

  #refill(): void {
    if (this.#rate === null) return;
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) * this.#rate) / 1000);
    this.#at = now;
  }

  /** Takes a token if one is there. */
  take(): boolean {
    if (this.#rate === null) return true;
    this.#refill();
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }

  /** Milliseconds until a token is there (0 when one is). */
  wait(): number {
    if (this.#rate === null) return 0;
    this.#refill();
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.#rate);
  }
}
