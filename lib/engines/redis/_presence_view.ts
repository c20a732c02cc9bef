/**
 * What one room feed has told its listeners about the room's members, kept
 * in step with the presence keys in Redis.
 *
 * Published presence events are stamped with the incarnation of the keys
 * and a version bumped by each event. The view applies them in order and
 * only when they change what listeners know (no second `join` for a member
 * they list, no `leave` for one they do not). A missed event (a version
 * skipped, another incarnation) or a cut feed makes the view stale; the
 * feed then reads a snapshot, and the view emits only the difference.
 *
 * When the keys were lost (a flushed or restarted Redis), the snapshot is
 * briefly wrong: instances are still putting their connections back. Members
 * missing then are kept as suspects until a deadline, and leave only if
 * they are still missing after it.
 *
 * @module
 */

import type { EngineEvent } from "../../engine.ts";
import type { Member } from "../../protocol.ts";
import type { PresenceStamp } from "./_codec.ts";

/** The presence keys at one moment. */
export interface PresenceSnapshot extends PresenceStamp {
  members: Member[];
}

type PresenceEvent = Extract<EngineEvent, { type: "join" | "leave" | "rename" }>;

/** A room's members as its listeners know them. */
export class PresenceView {
  /** Incarnation of the presence keys the view follows; empty when they did not exist. */
  inc: string;
  /** Version of the last event or snapshot taken. */
  ver: number;
  /** Events were missed: read a snapshot before applying more. */
  stale = false;
  /** Member id -> member (nick, `verified`, `bot`), as told to listeners. */
  #members: Map<string, Member>;
  /** Member id -> the time it leaves unless seen again (after lost keys). */
  #suspects = new Map<string, number>();

  /** Starts from a snapshot, announcing nothing: listeners start from the same list. */
  constructor(snapshot: PresenceSnapshot) {
    this.inc = snapshot.inc;
    this.ver = snapshot.ver;
    this.#members = new Map(snapshot.members.map((m) => [m.id, { ...m }]));
  }

  /** How many members listeners know. */
  get size(): number {
    return this.#members.size;
  }

  /** The members as told to listeners. */
  members(): Member[] {
    return Array.from(this.#members.values(), (m) => ({ ...m }));
  }

  /** Whether the view includes the change stamped `stamp`. */
  reached(stamp: PresenceStamp): boolean {
    return !this.stale && stamp.inc === this.inc && this.ver >= stamp.ver;
  }

  /** The earliest time a suspect is due, or Infinity. */
  nextDeadline(): number {
    let next = Infinity;
    for (const deadline of this.#suspects.values()) next = Math.min(next, deadline);
    return next;
  }

  /** Whether `snapshot` shows that the keys the view followed were lost since. */
  lost(snapshot: PresenceStamp): boolean {
    return this.inc !== "" && snapshot.inc !== this.inc;
  }

  /** Keeps every member known now until `deadline`, unless seen again before. */
  suspectAll(deadline: number): void {
    for (const id of this.#members.keys()) {
      if (!this.#suspects.has(id)) this.#suspects.set(id, deadline);
    }
  }

  /**
   * Takes one published event, in channel order. Returns what to tell
   * listeners: an event, or null when it changes nothing they know or was
   * already in a snapshot. When events were missed, marks the view stale and
   * returns null: the snapshot that follows covers this one.
   */
  apply(event: PresenceEvent, stamp?: PresenceStamp): PresenceEvent | null {
    if (stamp) {
      // The first event of new keys follows on from "no keys".
      const first = this.inc === "" && this.ver === 0 && stamp.ver === 1;
      if (!first && (stamp.inc !== this.inc || stamp.ver > this.ver + 1)) {
        this.stale = true;
        return null;
      }
      if (!first && stamp.ver <= this.ver) return null;
      this.inc = stamp.inc;
      this.ver = stamp.ver;
    }
    const { id } = event.member;
    const known = this.#members.get(id);
    this.#suspects.delete(id);
    if (event.type === "leave") {
      if (known === undefined) return null;
      this.#members.delete(id);
      return { type: "leave", member: { ...known } };
    }
    return this.#see(event.member);
  }

  /**
   * A member is in the room as `member` says: what listeners must be told,
   * if anything. Only a new member or a new nick is news; the view keeps
   * the latest `verified` and `bot` either way.
   */
  #see(member: Member): PresenceEvent | null {
    const known = this.#members.get(member.id);
    this.#members.set(member.id, { ...member });
    if (known === undefined) return { type: "join", member: { ...member } };
    if (known.nick !== member.nick) {
      return { type: "rename", member: { ...member }, old: known.nick };
    }
    return null;
  }

  /**
   * Takes a snapshot read after the view went stale (or to check it), and
   * returns the events that bring listeners to it: `join` for new members,
   * `rename` for a changed nick, `leave` for members gone, except suspects
   * before their deadline.
   */
  resync(snapshot: PresenceSnapshot, now: number): PresenceEvent[] {
    const out: PresenceEvent[] = [];
    const present = new Set<string>();
    for (const member of snapshot.members) {
      present.add(member.id);
      this.#suspects.delete(member.id);
      const event = this.#see(member);
      if (event) out.push(event);
    }
    for (const [id, member] of [...this.#members]) {
      if (present.has(id)) continue;
      const deadline = this.#suspects.get(id);
      if (deadline !== undefined && deadline > now) continue;
      this.#suspects.delete(id);
      this.#members.delete(id);
      out.push({ type: "leave", member: { ...member } });
    }
    this.inc = snapshot.inc;
    this.ver = snapshot.ver;
    this.stale = false;
    return out;
  }
}
