/**
 * The members of a room as far as the client knows them: the first ones from
 * `welcome`, presence updates applied as sets, pages of members asked for on
 * demand, and the server's count (which, in a large room, is all that comes).
 *
 * @module
 */

import type { Member, MembersPage, Presence, Rename } from "./wire.ts";

/** What a presence update changed. */
export interface RosterChanges {
  /** Members now listed who were not. */
  joined: Member[];
  /** Members no longer listed. */
  left: Member[];
  /** Listed members who took another name. */
  renamed: Rename[];
}

/** A room's members, by id. */
export class Roster {
  #members = new Map<string, Member>();
  #count = 0;
  #after: string | undefined;
  #more = false;
  #stale = false;

  /** The members listed, by id. */
  get members(): ReadonlyMap<string, Member> {
    return this.#members;
  }

  /**
   * Members in the room: the server's count (at least those listed, unless
   * count-only updates came: those listed may have left since).
   */
  get count(): number {
    return this.#stale ? this.#count : Math.max(this.#count, this.#members.size);
  }

  /**
   * Whether members exist that are not listed (a large room, or a list that
   * count-only updates may have left out of date).
   */
  get incomplete(): boolean {
    return this.#stale || this.#more || this.#members.size < this.#count;
  }

  /** Where the next page starts (undefined: the first page). */
  get after(): string | undefined {
    return this.#after;
  }

  /** Starts over from a `welcome`: its first members and count. */
  welcome(members: Member[], count: number, me: Member): void {
    this.#members.clear();
    for (const member of members) this.#members.set(member.id, member);
    this.#members.set(me.id, me);
    this.#count = count;
    this.#after = members.at(-1)?.id;
    this.#more = members.length < count;
    this.#stale = false;
  }

  /** Applies a presence update as sets; returns what changed. */
  apply(presence: Presence): RosterChanges {
    const changes: RosterChanges = { joined: [], left: [], renamed: [] };
    for (const member of presence.joins) {
      if (!this.#members.has(member.id)) changes.joined.push(member);
      this.#members.set(member.id, member);
    }
    for (const member of presence.leaves) {
      if (this.#members.delete(member.id)) changes.left.push(member);
    }
    for (const rename of presence.renames) {
      if (this.#members.has(rename.member.id)) changes.renamed.push(rename);
      this.#members.set(rename.member.id, rename.member);
    }
    if (presence.count !== null) {
      this.#count = presence.count;
      // Only the count came: whoever left since is still listed.
      if (!presence.listed) this.#stale = true;
    } else {
      this.#count += changes.joined.length - changes.left.length;
    }
    return changes;
  }

  /** Removes a member (a kick). */
  remove(id: string): Member | undefined {
    const member = this.#members.get(id);
    this.#members.delete(id);
    if (member) this.#count = Math.max(0, this.#count - 1);
    return member;
  }

  /** Adds a page of members; `first` when it was asked without `after` (the list starts over). */
  page(page: MembersPage, first: boolean, me: Member | null): void {
    if (first && this.#stale) {
      this.#members.clear();
      if (me) this.#members.set(me.id, me);
      this.#stale = false;
    }
    for (const member of page.members) this.#members.set(member.id, member);
    if (page.count !== null) this.#count = page.count;
    this.#after = page.members.at(-1)?.id ?? this.#after;
    this.#more = page.more;
  }
}
