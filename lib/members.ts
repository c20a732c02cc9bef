/**
 * The members of one room as this instance knows them: seeded once from the
 * engine's list, then kept by the room's presence events. Lookups by id and
 * by nickname key are constant time, so a join in a room of 10,000 does not
 * walk the list to check a nickname or to build its `welcome`.
 *
 * @module
 */

import { nickKey } from "./auth/nick.ts";
import type { Member } from "./protocol.ts";

/** Members by id, with an index of their nickname keys. */
export class MemberIndex {
  readonly #byId = new Map<string, Member>();
  /** Nickname key → ids of the members holding it (two only after a race). */
  readonly #byNick = new Map<string, Set<string>>();

  /** How many members. */
  get size(): number {
    return this.#byId.size;
  }

  /** Whether a member with this id is present. */
  has(id: string): boolean {
    return this.#byId.has(id);
  }

  /** Adds a member, or replaces what is known of it (a rename on join). */
  add(member: Member): void {
    const known = this.#byId.get(member.id);
    if (known) this.#unindex(known);
    this.#byId.set(member.id, member);
    const key = nickKey(member.nick);
    const ids = this.#byNick.get(key);
    if (ids) ids.add(member.id);
    else this.#byNick.set(key, new Set([member.id]));
  }

  /** Removes a member; absent ones are ignored. */
  delete(id: string): void {
    const known = this.#byId.get(id);
    if (!known) return;
    this.#byId.delete(id);
    this.#unindex(known);
  }

  /** A member other than `self` whose nickname has the same key as `nick`. */
  holderOf(nick: string, self: string): Member | undefined {
    const ids = this.#byNick.get(nickKey(nick));
    if (!ids) return undefined;
    for (const id of ids) if (id !== self) return this.#byId.get(id);
    return undefined;
  }

  /** At most `limit` members, in the order they were first known. */
  first(limit: number): Member[] {
    const out: Member[] = [];
    if (limit <= 0) return out;
    for (const member of this.#byId.values()) {
      out.push(member);
      if (out.length >= limit) break;
    }
    return out;
  }

  #unindex(member: Member) {
    const key = nickKey(member.nick);
    const ids = this.#byNick.get(key);
    if (!ids) return;
    ids.delete(member.id);
    if (ids.size === 0) this.#byNick.delete(key);
  }
}
