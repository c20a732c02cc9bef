/**
 * Presence that scales: a room's joins, leaves and renames coalesced over a
 * short tick into one `presence` envelope, and, in large rooms, only the
 * member count. Sending each join to every member costs O(n) per join and
 * O(n²) for n joins; a tick costs O(n) whatever the number of changes in it.
 *
 * @module
 */

import type { Member } from "./protocol.ts";

/** Members a `welcome` lists; the rest come on request (`members`). */
export const WELCOME_MEMBERS = 100;
/** Most members of one `members` page. */
export const MAX_MEMBERS_PAGE = 500;
/** Milliseconds presence changes are gathered before they go out. */
export const PRESENCE_TICK_MS = 100;
/** In a large room, milliseconds between count updates. */
export const LARGE_ROOM_TICK_MS = 1000;

type Change =
  | { kind: "join"; member: Member }
  | { kind: "leave"; member: Member }
  | { kind: "rename"; member: Member; old: string };

/** The `presence` envelope. */
export interface PresenceEnvelope {
  type: "presence";
  joins?: Member[];
  leaves?: Member[];
  renames?: { member: Member; old: string }[];
  /** Members in the room after these changes (as far as this instance knows). */
  count: number;
}

/**
 * The changes of one tick, by member: what a member did last is what the
 * envelope says (joined and left within the tick: nothing).
 */
export class PresenceChanges {
  #changes = new Map<string, Change>();

  get size(): number {
    return this.#changes.size;
  }

  join(member: Member): void {
    const prior = this.#changes.get(member.id);
    if (prior?.kind === "leave") {
      this.#changes.delete(member.id);
      if (prior.member.nick !== member.nick) {
        this.#changes.set(member.id, { kind: "rename", member, old: prior.member.nick });
      }
      return;
    }
    this.#changes.set(member.id, { kind: "join", member });
  }

  leave(member: Member): void {
    const prior = this.#changes.get(member.id);
    if (prior?.kind === "join") {
      this.#changes.delete(member.id);
      return;
    }
    this.#changes.set(member.id, { kind: "leave", member });
  }

  rename(member: Member, old: string): void {
    const prior = this.#changes.get(member.id);
    if (prior?.kind === "join") {
      this.#changes.set(member.id, { kind: "join", member });
      return;
    }
    const first = prior?.kind === "rename" ? prior.old : old;
    if (first === member.nick) this.#changes.delete(member.id);
    else this.#changes.set(member.id, { kind: "rename", member, old: first });
  }

  /**
   * The envelope of the tick, and forgets it. With `countOnly` (a large
   * room), only the count.
   */
  take(count: number, countOnly = false): PresenceEnvelope {
    const envelope: PresenceEnvelope = { type: "presence", count };
    if (!countOnly) {
      const joins: Member[] = [];
      const leaves: Member[] = [];
      const renames: { member: Member; old: string }[] = [];
      for (const change of this.#changes.values()) {
        if (change.kind === "join") joins.push(change.member);
        else if (change.kind === "leave") leaves.push(change.member);
        else renames.push({ member: change.member, old: change.old });
      }
      if (joins.length) envelope.joins = joins;
      if (leaves.length) envelope.leaves = leaves;
      if (renames.length) envelope.renames = renames;
    }
    this.#changes.clear();
    return envelope;
  }
}

/**
 * A page of members in id order after `after`.
 *
 * @returns The page and whether more follow.
 */
export function membersPage(
  members: readonly Member[],
  after: string | undefined,
  limit: number,
): { members: Member[]; more: boolean } {
  const sorted = [...members].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const start = after === undefined ? 0 : sorted.findIndex((m) => m.id > after);
  if (start < 0) return { members: [], more: false };
  const page = sorted.slice(start, start + limit);
  return { members: page, more: start + limit < sorted.length };
}
