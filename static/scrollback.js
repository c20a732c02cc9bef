// @ts-check
/**
 * Scroll-back, without the DOM: when to ask the server for an older page of
 * a room's history, what to ask, and when the start has been reached.
 *
 * @module
 */

import { isId, isObject } from "./wire.js";

/**
 * A `history` envelope: ordinary messages (no edit or delete entries), oldest
 * first, with edits and deletes applied and without file bytes.
 * @typedef {{ epoch: string, before: number, more: boolean,
 *   messages: Record<string, unknown>[] }} HistoryPage
 */

/** Messages asked for per page. */
export const PAGE_SIZE = 50;
/** A page not answered within this long is given up, so it can be asked again. */
export const ANSWER_TIMEOUT_MS = 15_000;

/**
 * Reads a `history` envelope.
 *
 * @param {unknown} value
 * @returns {HistoryPage | null}
 */
export function readHistoryPage(value) {
  if (!isObject(value) || typeof value.epoch !== "string" || !Array.isArray(value.messages)) {
    return null;
  }
  /** @type {Record<string, unknown>[]} */
  const messages = [];
  for (const message of value.messages) {
    if (isObject(message) && (message.type === "message" || message.type === "file")) {
      messages.push(message);
    }
  }
  return {
    epoch: value.epoch,
    before: isId(value.before) ? value.before : 0,
    more: value.more === true,
    messages,
  };
}

/** The scroll-back state of one room in one epoch. */
export class ScrollBack {
  /** Nothing older than this id exists; 0 while unknown. */
  #floor = 0;
  #askedAt = -Infinity;
  #now;

  /** @param {() => number} [now] */
  constructor(now = () => performance.now()) {
    this.#now = now;
  }

  /** True while a page has been asked for and neither came nor timed out. */
  get loading() {
    return this.#now() - this.#askedAt < ANSWER_TIMEOUT_MS;
  }

  /**
   * Whether the page already shows the room's first message.
   *
   * @param {number | null} oldest Smallest message id shown, null for none.
   * @param {number} head Newest id of the room.
   * @returns {boolean}
   */
  atStart(oldest, head) {
    if (oldest === null) return head === 0 || this.#floor > 0;
    return oldest <= Math.max(this.#floor, 1);
  }

  /**
   * The request for the page before the oldest message shown, or null when
   * one is on its way or there is nothing older.
   *
   * @param {number | null} oldest
   * @param {number} head
   * @returns {{ type: "history", before: number, limit: number } | null}
   */
  request(oldest, head) {
    if (this.loading || this.atStart(oldest, head)) return null;
    this.#askedAt = this.#now();
    return { type: "history", before: oldest ?? head + 1, limit: PAGE_SIZE };
  }

  /**
   * Takes the answer to the request.
   *
   * @param {HistoryPage} page
   */
  settle(page) {
    this.#askedAt = -Infinity;
    if (page.more) return;
    const ids = page.messages.map((m) => m.id).filter(isId);
    const first = ids.length > 0 ? Math.min(...ids) : page.before;
    if (first > 0) this.#floor = Math.max(this.#floor, first);
  }

  /** Gives up on the request (an error, a new connection). */
  cancel() {
    this.#askedAt = -Infinity;
  }

  /** Forgets everything: the list starts over. */
  reset() {
    this.#askedAt = -Infinity;
    this.#floor = 0;
  }
}
