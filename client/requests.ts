/**
 * Requests that get one answer: scroll-back pages (matched by the cid the
 * server echoes) and member pages (answered in order). Each is rejected when
 * no answer comes in time or the connection ends first.
 *
 * @module
 */

import type { HistoryPage, MembersPage } from "./wire.ts";

interface Request<T> {
  resolve(value: T): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** The requests waiting for their answer. */
export class Requests {
  #timeoutMs: number;
  #history = new Map<string, Request<HistoryPage>>();
  #members: (Request<MembersPage> & { first: boolean })[] = [];

  /** @param timeoutMs How long an answer may take. */
  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /**
   * Sends a `history` request with `cid` (`send` returns false when it could
   * not) and resolves with its page.
   */
  history(cid: string, send: () => boolean): Promise<HistoryPage> {
    return new Promise<HistoryPage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#history.delete(cid);
        reject(new Error("Cannot load older messages: no answer"));
      }, this.#timeoutMs);
      this.#history.set(cid, { resolve, reject, timer });
      if (!send()) this.#settleHistory(cid, new Error("Cannot load older messages: not connected"));
    });
  }

  /** Whether a history request with this cid waits. */
  hasHistory(cid: string): boolean {
    return this.#history.has(cid);
  }

  /** Answers (or, with an error, rejects) the history request `cid`. */
  #settleHistory(cid: string, answer: HistoryPage | Error): void {
    const request = this.#history.get(cid);
    if (!request) return;
    this.#history.delete(cid);
    clearTimeout(request.timer);
    if (answer instanceof Error) request.reject(answer);
    else request.resolve(answer);
  }

  /** A page came for `cid`. */
  answerHistory(cid: string | undefined, page: HistoryPage): void {
    if (cid !== undefined) this.#settleHistory(cid, page);
  }

  /** The server refused the history request `cid`. */
  refuseHistory(cid: string, message: string): void {
    this.#settleHistory(cid, new Error(`Cannot load older messages: ${message}`));
  }

  /**
   * Sends a `members` request (`first`: without `after`) and resolves with
   * its page.
   */
  members(first: boolean, send: () => boolean): Promise<MembersPage> {
    return new Promise<MembersPage>((resolve, reject) => {
      const request = {
        resolve,
        reject,
        first,
        timer: setTimeout(() => {
          this.#members = this.#members.filter((r) => r !== request);
          reject(new Error("Cannot load members: no answer"));
        }, this.#timeoutMs),
      };
      this.#members.push(request);
      if (!send()) {
        clearTimeout(request.timer);
        this.#members = this.#members.filter((r) => r !== request);
        reject(new Error("Cannot load members: not connected"));
      }
    });
  }

  /** Whether a members request waits. */
  get membersWaiting(): boolean {
    return this.#members.length > 0;
  }

  /**
   * A members page came: it answers the oldest request. Returns whether that
   * request asked for the first page, and a function that resolves it (call
   * it once the page is applied).
   */
  answerMembers(page: MembersPage): { first: boolean; resolve: () => void } {
    const request = this.#members.shift();
    if (request) clearTimeout(request.timer);
    return { first: request?.first ?? false, resolve: () => request?.resolve(page) };
  }

  /** The server refused the oldest members request. */
  refuseMembers(message: string): void {
    const request = this.#members.shift();
    if (!request) return;
    clearTimeout(request.timer);
    request.reject(new Error(`Cannot load members: ${message}`));
  }

  /** The connection ended: no answer will come. */
  abort(why: string): void {
    for (const cid of [...this.#history.keys()]) {
      this.#settleHistory(cid, new Error(`Cannot load older messages: ${why}`));
    }
    for (const request of this.#members.splice(0)) {
      clearTimeout(request.timer);
      request.reject(new Error(`Cannot load members: ${why}`));
    }
  }
}
