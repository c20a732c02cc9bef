// @ts-check
/**
 * Typing indicators, without the DOM: who is typing (each entry expiring on
 * its own), how to say it, and how often to tell the server that we type.
 *
 * @module
 */

/** @typedef {import("./wire.js").Member} Member */
/** @typedef {ReturnType<typeof setTimeout>} Timer */

/** Longest an indicator is kept, whatever `ttl` the server names. */
export const MAX_TYPING_TTL_MS = 30_000;

/** Members who are typing now; each one expires unless renewed. */
export class TypingList {
  /** @type {Map<string, { member: Member, timer: Timer }>} */
  #typists = new Map();
  #onChange;
  #setTimer;
  #clearTimer;

  /**
   * @param {() => void} onChange Called whenever the list changes.
   * @param {{ setTimer?: (fn: () => void, ms: number) => Timer,
   *   clearTimer?: (timer: Timer) => void }} [options] Timers, for tests.
   */
  constructor(onChange, options = {}) {
    this.#onChange = onChange;
    this.#setTimer = options.setTimer ?? ((fn, ms) => setTimeout(fn, ms));
    this.#clearTimer = options.clearTimer ?? ((timer) => clearTimeout(timer));
  }

  /**
   * Adds or renews a typist for `ttl` ms.
   *
   * @param {Member} member
   * @param {number} ttl
   */
  add(member, ttl) {
    const known = this.#typists.get(member.id);
    if (known) this.#clearTimer(known.timer);
    const ms = Number.isFinite(ttl) && ttl > 0 ? Math.min(ttl, MAX_TYPING_TTL_MS) : 0;
    const timer = this.#setTimer(() => this.remove(member.id), ms);
    this.#typists.set(member.id, { member, timer });
    if (!known || known.member.nick !== member.nick) this.#onChange();
  }

  /**
   * Removes a typist (their message arrived, they left, their time is up).
   *
   * @param {string} id
   */
  remove(id) {
    const known = this.#typists.get(id);
    if (!known) return;
    this.#clearTimer(known.timer);
    this.#typists.delete(id);
    this.#onChange();
  }

  /**
   * Follows a member's new nickname.
   *
   * @param {Member} member
   */
  rename(member) {
    const known = this.#typists.get(member.id);
    if (!known || known.member.nick === member.nick) return;
    known.member = member;
    this.#onChange();
  }

  clear() {
    if (this.#typists.size === 0) return;
    for (const { timer } of this.#typists.values()) this.#clearTimer(timer);
    this.#typists.clear();
    this.#onChange();
  }

  /** @returns {Member[]} In the order they started typing. */
  get members() {
    return Array.from(this.#typists.values(), (typist) => typist.member);
  }
}

/**
 * Says who is typing: "ann is typing…", "ann and bob are typing…",
 * "ann, bob and 2 others are typing…", or "" for nobody.
 *
 * @param {Member[]} members
 * @returns {string}
 */
export function describeTyping(members) {
  const nicks = members.map((member) => member.nick);
  if (nicks.length === 0) return "";
  if (nicks.length === 1) return `${nicks[0]} is typing…`;
  if (nicks.length === 2) return `${nicks[0]} and ${nicks[1]} are typing…`;
  if (nicks.length === 3) return `${nicks[0]}, ${nicks[1]} and ${nicks[2]} are typing…`;
  return `${nicks[0]}, ${nicks[1]} and ${nicks.length - 2} others are typing…`;
}
