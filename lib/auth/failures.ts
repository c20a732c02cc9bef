/**
 * Failed authentications per client address, so that an address guessing
 * tokens or API keys is refused (HTTP 429) for a while.
 *
 * @module
 */

/** Options of {@linkcode AuthFailures}. */
export interface AuthFailuresOptions {
  /**
   * Failures within `windowMs` that block an address.
   * @default 10
   */
  limit?: number;
  /**
   * How long failures are remembered, from an address's first one, in milliseconds.
   * @default 60_000
   */
  windowMs?: number;
  /**
   * How long a blocked address is refused, in milliseconds.
   * @default 300_000
   */
  blockMs?: number;
  /**
   * Most addresses remembered; past it the least recently failed is forgotten.
   * @default 100_000
   */
  maxEntries?: number;
  /**
   * The clock, in milliseconds.
   * @default Date.now
   */
  now?: () => number;
}

interface Entry {
  /** When the first failure of the current window happened. */
  since: number;
  count: number;
  /** Until when the address is refused; 0 when it is not blocked. */
  blockedUntil: number;
}

/**
 * Counts failed authentications per client address: `limit` failures within
 * `windowMs` block the address for `blockMs`.
 *
 * IPv6 addresses count per /64, the block one subscriber usually gets, so
 * that an attacker cannot get a fresh count from each of its addresses.
 * Memory stays bounded: addresses whose window and block have passed are
 * forgotten, at most once per window, and past `maxEntries` the least
 * recently failed address is dropped. No timers.
 *
 * @example
 * ```ts
 * const failures = new AuthFailures();
 * if (failures.retryAfter(ip) > 0) return new Response(null, { status: 429 });
 * // ...on a refused token:
 * failures.fail(ip);
 * ```
 */
export class AuthFailures {
  readonly limit: number;
  readonly windowMs: number;
  readonly blockMs: number;
  readonly maxEntries: number;
  #now: () => number;
  #entries = new Map<string, Entry>();
  #lastSweep: number;

  constructor(options: AuthFailuresOptions = {}) {
    this.limit = positive("limit", options.limit ?? 10);
    this.windowMs = positive("windowMs", options.windowMs ?? 60_000);
    this.blockMs = positive("blockMs", options.blockMs ?? 300_000);
    this.maxEntries = positive("maxEntries", options.maxEntries ?? 100_000);
    this.#now = options.now ?? Date.now;
    this.#lastSweep = this.#now();
  }

  /** How many addresses are remembered now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Counts one failed authentication from `ip`. */
  fail(ip: string): void {
    const now = this.#now();
    if (now - this.#lastSweep >= this.windowMs) this.#sweep(now);
    const key = addressKey(ip);
    let entry = this.#entries.get(key);
    if (entry && expired(entry, now, this.windowMs)) entry = undefined;
    // Delete and set again: the map's order is then the order of last failure.
    this.#entries.delete(key);
    if (!entry) {
      while (this.#entries.size >= this.maxEntries) {
        this.#entries.delete(this.#entries.keys().next().value!);
      }
      entry = { since: now, count: 0, blockedUntil: 0 };
    }
    if (entry.blockedUntil <= now) {
      entry.count++;
      if (entry.count >= this.limit) entry.blockedUntil = now + this.blockMs;
    }
    this.#entries.set(key, entry);
  }

  /**
   * How many more seconds `ip` is refused, rounded up.
   *
   * @returns 0 when the address may try again.
   */
  retryAfter(ip: string): number {
    const entry = this.#entries.get(addressKey(ip));
    if (!entry) return 0;
    const left = entry.blockedUntil - this.#now();
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  #sweep(now: number): void {
    this.#lastSweep = now;
    for (const [key, entry] of this.#entries) {
      if (expired(entry, now, this.windowMs)) this.#entries.delete(key);
    }
  }
}

/** Whether an entry's window has passed and it is not blocked. */
function expired(entry: Entry, now: number, windowMs: number): boolean {
  return entry.blockedUntil <= now && now - entry.since >= windowMs;
}

function positive(name: string, value: number): number {
  if (!Number.isFinite(value) || value <= 0) {
    throw new RangeError(`Cannot count failures: ${name} is ${value}, expected a positive number`);
  }
  return value;
}

/**
 * The key an address is counted under: an IPv4 address as it is (also when
 * written IPv4-mapped, `::ffff:1.2.3.4`), an IPv6 address by its first 64
 * bits (`2001:db8:0:1::/64`), anything else as it is.
 */
export function addressKey(ip: string): string {
  if (!ip.includes(":")) return ip;
  const groups = ipv6Groups(ip.replace(/^\[|\]$/g, "").replace(/%.*$/, ""));
  if (!groups) return ip;
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
    return [groups[6] >> 8, groups[6] & 255, groups[7] >> 8, groups[7] & 255].join(".");
  }
  return `${groups.slice(0, 4).map((group) => group.toString(16)).join(":")}::/64`;
}

/** The eight 16-bit groups of an IPv6 address, or `undefined` when it is not one. */
function ipv6Groups(address: string): number[] | undefined {
  const parts = address.split("::");
  if (parts.length > 2) return undefined;
  const split = (part: string) => (part === "" ? [] : part.split(":"));
  const head = split(parts[0]);
  const tail = parts.length === 2 ? split(parts[1]) : [];
  const last = parts.length === 2 ? tail : head;
  const quad = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(last.at(-1) ?? "");
  if (quad) {
    const bytes = quad.slice(1).map(Number);
    if (bytes.some((byte) => byte > 255)) return undefined;
    last.splice(
      -1,
      1,
      ((bytes[0] << 8) | bytes[1]).toString(16),
      ((bytes[2] << 8) | bytes[3]).toString(16),
    );
  }
  const missing = 8 - head.length - tail.length;
  if (parts.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const groups = [...head, ...Array(parts.length === 2 ? missing : 0).fill("0"), ...tail];
  if (!groups.every((group) => /^[0-9a-fA-F]{1,4}$/.test(group))) return undefined;
  return groups.map((group) => parseInt(group, 16));
}
