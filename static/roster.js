// @ts-check
/**
 * The members of a room, without the DOM: the list as far as the page knows
 * it, the server's member count, `presence` envelopes applied as sets, pages
 * of members asked for on demand, and how the conversation says who came,
 * went or took another name.
 *
 * In a large room the server sends only the count, so the list may hold
 * members who left since: it is then marked stale, and the next listing
 * starts over from the first page.
 *
 * @module
 */

import { isObject, readMember } from "./wire.js";

/** @typedef {import("./wire.js").Member} Member */
/** @typedef {{ member: Member, old: string }} Rename */
/**
 * A `presence` envelope, or one `join`, `leave` or `rename` (whose `count` is
 * then null: the page keeps its own). `listed` is false for a count-only one.
 * @typedef {{ joins: Member[], leaves: Member[], renames: Rename[],
 *   count: number | null, listed: boolean }} Presence
 */
/**
 * The answer to a `members` request: members in id order after the `after`
 * of the request.
 * @typedef {{ members: Member[], more: boolean, count: number | null }} MembersPage
 */
/**
 * What a presence update changed, for the conversation to say.
 * @typedef {{ joined: Member[], left: Member[], renamed: Rename[] }} Changes
 */

/** Members asked for per page. */
export const MEMBERS_PAGE = 100;
/** A page not answered within this long is given up, so it can be asked again. */
export const MEMBERS_TIMEOUT_MS = 15_000;
/** Most renames said one by one in the conversation; more are said as a number. */
const RENAMES_SAID = 3;

/**
 * @param {unknown} value
 * @returns {number | null}
 */
function readCount(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? value : null;
}

/**
 * @param {unknown} value
 * @returns {Member[]}
 */
function readMembers(value) {
  if (!Array.isArray(value)) return [];
  /** @type {Member[]} */
  const members = [];
  for (const item of value) {
    const member = readMember(item);
    if (member) members.push(member);
  }
  return members;
}

/**
 * Reads a `presence` envelope, or a single `join`, `leave` or `rename`, as
 * one presence update.
 *
 * @param {unknown} value
 * @returns {Presence | null} Null when it is none of those.
 */
export function readPresence(value) {
  if (!isObject(value)) return null;
  /** @type {Presence} */
  const presence = { joins: [], leaves: [], renames: [], count: null, listed: true };
  if (value.type === "join" || value.type === "leave" || value.type === "rename") {
    const member = readMember(value.member);
    if (!member) return null;
    if (value.type === "join") presence.joins.push(member);
    else if (value.type === "leave") presence.leaves.push(member);
    else presence.renames.push({ member, old: typeof value.old === "string" ? value.old : "" });
    return presence;
  }
  if (value.type !== "presence") return null;
  presence.joins = readMembers(value.joins);
  presence.leaves = readMembers(value.leaves);
  if (Array.isArray(value.renames)) {
    for (const item of value.renames) {
      const member = isObject(item) ? readMember(item.member) : null;
      if (member && isObject(item)) {
        presence.renames.push({ member, old: typeof item.old === "string" ? item.old : "" });
      }
    }
  }
  presence.count = readCount(value.count);
  presence.listed = "joins" in value || "leaves" in value || "renames" in value;
  return presence;
}

/**
 * Reads the answer to a `members` request.
 *
 * @param {unknown} value
 * @returns {MembersPage | null}
 */
export function readMembersPage(value) {
  if (!isObject(value) || value.type !== "members" || !Array.isArray(value.members)) return null;
  return {
    members: readMembers(value.members),
    more: value.more === true,
    count: readCount(value.count),
  };
}

/**
 * Names a few people: "ann", "ann and bob", "ann, bob and carol",
 * "ann, bob and 3 others".
 *
 * @param {string[]} nicks
 * @returns {string}
 */
export function listNames(nicks) {
  if (nicks.length <= 1) return nicks[0] ?? "";
  if (nicks.length === 2) return `${nicks[0]} and ${nicks[1]}`;
  if (nicks.length === 3) return `${nicks[0]}, ${nicks[1]} and ${nicks[2]}`;
  return `${nicks[0]}, ${nicks[1]} and ${nicks.length - 2} others`;
}

/**
 * Says a presence update as quiet lines of the conversation: who joined, who
 * left, who took another name.
 *
 * @param {Changes} changes
 * @returns {string[]} No line when nothing is worth saying.
 */
export function describePresence(changes) {
  const lines = [];
  if (changes.joined.length > 0) {
    lines.push(`${listNames(changes.joined.map((m) => m.nick))} joined`);
  }
  if (changes.left.length > 0) {
    lines.push(`${listNames(changes.left.map((m) => m.nick))} left`);
  }
  const renamed = changes.renamed.filter((r) => r.old !== "" && r.old !== r.member.nick);
  if (renamed.length > RENAMES_SAID) {
    lines.push(`${renamed.length} members changed their names`);
  } else {
    for (const { member, old } of renamed) lines.push(`${old} is now ${member.nick}`);
  }
  return lines;
}

/** The members of the room the page shows, and how to list the rest. */
export class Roster {
  /** @type {Map<string, Member>} */
  #members = new Map();
  /** @type {string | null} */
  #me = null;
  /** @type {number | null} The server's count, null while it has named none. */
  #count = null;
  /** @type {string | undefined} Last id of the last page, where the next one starts. */
  #after = undefined;
  #more = false;
  /** A page came on this connection. */
  #paged = false;
  /** Count-only updates came: members who left may still be listed. */
  #stale = false;
  /** The page asked for replaces the list (which is stale). */
  #replace = false;
  #askedAt = -Infinity;
  /**
   * @type {Map<string, Member | null>} Joins and renames (the member) and
   * leaves (null) since a page was asked for.
   */
  #since = new Map();
  #now;

  /** @param {() => number} [now] */
  constructor(now = () => performance.now()) {
    this.#now = now;
  }

  /** Members listed. */
  get size() {
    return this.#members.size;
  }

  /** Members in the room: the server's count, or those listed when it gave none. */
  get count() {
    return this.#count ?? this.#members.size;
  }

  /** True while a page has been asked for and neither came nor timed out. */
  get loading() {
    return this.#now() - this.#askedAt < MEMBERS_TIMEOUT_MS;
  }

  /** Whether there are members to list that the page does not list. */
  get incomplete() {
    if (this.#stale) return true;
    if (this.#paged) return this.#more;
    return this.#count !== null && this.#members.size < this.#count;
  }

  /**
   * @param {string} id
   * @returns {boolean}
   */
  has(id) {
    return this.#members.has(id);
  }

  /**
   * @param {string} id
   * @returns {Member | undefined}
   */
  get(id) {
    return this.#members.get(id);
  }

  /** @returns {IterableIterator<Member>} */
  values() {
    return this.#members.values();
  }

  /**
   * Starts over from a `welcome`: the members it lists, its count, and us.
   *
   * @param {Member[]} members
   * @param {number | null} count
   * @param {Member | null} me
   */
  welcome(members, count, me) {
    this.clear();
    for (const member of members) this.#members.set(member.id, member);
    if (me) this.#members.set(me.id, me);
    this.#me = me?.id ?? null;
    this.#count = count === null ? null : Math.max(count, this.#members.size);
  }

  /** Forgets everything (another room, a refusal). */
  clear() {
    this.#members.clear();
    this.#me = null;
    this.#count = null;
    this.#after = undefined;
    this.#more = false;
    this.#paged = false;
    this.#stale = false;
    this.#replace = false;
    this.#askedAt = -Infinity;
    this.#since.clear();
  }

  /**
   * Applies a presence update as sets: a join of a member listed already
   * changes nothing.
   *
   * @param {Presence} presence
   * @returns {Changes} What changed, us excluded.
   */
  apply(presence) {
    /** @type {Changes} */
    const changes = { joined: [], left: [], renamed: [] };
    const tracking = this.loading;
    for (const member of presence.leaves) {
      if (member.id === this.#me) continue; // another tab of ours; we are still here
      this.#members.delete(member.id);
      if (tracking) this.#since.set(member.id, null);
      changes.left.push(member);
    }
    for (const member of presence.joins) {
      if (!this.#members.has(member.id) && member.id !== this.#me) changes.joined.push(member);
      this.#members.set(member.id, member);
      if (tracking) this.#since.set(member.id, member);
    }
    for (const rename of presence.renames) {
      this.#members.set(rename.member.id, rename.member);
      if (tracking) this.#since.set(rename.member.id, rename.member);
      if (rename.member.id !== this.#me) changes.renamed.push(rename);
    }
    if (presence.count !== null) {
      this.#count = presence.count;
    } else if (this.#count !== null) {
      // A lone join or leave: the count follows it.
      const moved = changes.joined.length - changes.left.length;
      this.#count = Math.max(this.#count + moved, this.#members.size);
    }
    if (!presence.listed && presence.count !== this.#members.size) this.#stale = true;
    return changes;
  }

  /**
   * Takes a member off the list (removed by a moderator). The count waits for
   * the leave that follows.
   *
   * @param {string} id
   */
  remove(id) {
    if (id === this.#me) return;
    this.#members.delete(id);
    if (this.loading) this.#since.set(id, null);
  }

  /**
   * The request for the next page of members, or null when one is on its way
   * or the page lists everyone.
   *
   * @param {boolean} [restart] The list was just opened: a stale list starts
   *   over from the first page.
   * @returns {{ type: "members", limit: number, after?: string } | null}
   */
  request(restart = false) {
    if (this.loading || !this.incomplete) return null;
    const fresh = !this.#paged || !this.#more || (restart && this.#stale);
    if (fresh) this.#after = undefined;
    this.#replace = fresh && this.#stale;
    this.#since.clear();
    this.#askedAt = this.#now();
    /** @type {{ type: "members", limit: number, after?: string }} */
    const envelope = { type: "members", limit: MEMBERS_PAGE };
    if (this.#after !== undefined) envelope.after = this.#after;
    return envelope;
  }

  /**
   * Takes a page of members. What changed since it was asked for is newer
   * than the page and stays.
   *
   * @param {MembersPage} page
   */
  settle(page) {
    this.#askedAt = -Infinity;
    if (this.#replace) {
      const me = this.#me === null ? undefined : this.#members.get(this.#me);
      this.#members.clear();
      if (me) this.#members.set(me.id, me);
      this.#replace = false;
      this.#stale = false;
    }
    for (const member of page.members) this.#members.set(member.id, member);
    for (const [id, member] of this.#since) {
      if (member) this.#members.set(id, member);
      else if (id !== this.#me) this.#members.delete(id);
    }
    this.#since.clear();
    const last = page.members.at(-1);
    if (last) this.#after = last.id;
    this.#more = page.more && last !== undefined;
    this.#paged = true;
    if (page.count !== null) this.#count = page.count;
  }

  /** Gives up on the page asked for (an error, a new connection). */
  cancel() {
    this.#askedAt = -Infinity;
    this.#replace = false;
    this.#since.clear();
  }
}
