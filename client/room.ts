/**
 * What the client knows of its room and reports of it: stored entries
 * (messages, files, edits, deletes) each once and in order, the members,
 * who is typing, and the oldest id seen (where scroll-back starts).
 *
 * @module
 */

import { Inbox } from "./inbox.ts";
import type { Delivery } from "./outbox.ts";
import { Roster } from "./presence.ts";
import type { ParleyEvents } from "./types.ts";
import {
  type HistoryPage,
  isId,
  type Member,
  readChange,
  readKick,
  readMember,
  readMessage,
  readPresence,
  type Welcome,
} from "./wire.ts";

/** What the room view needs from the client. */
export interface RoomHost {
  /** This member, once welcomed. */
  me(): Member | null;
  /** Emits an event of the client. */
  emit<K extends keyof ParleyEvents>(type: K, payload: ParleyEvents[K]): void;
  /** The broadcast of one of our own entries: it is stored. */
  stored(delivery: Delivery): void;
  /** A stored entry came (counts down the replay). */
  entry(): void;
  /** The position changed: save it. */
  changed(): void;
}

/** One room as the client sees it. */
export class RoomView {
  /** The position and the order of reported events. */
  readonly inbox: Inbox = new Inbox();
  /** The members. */
  readonly roster: Roster = new Roster();
  #host: RoomHost;
  #epoch: string | undefined;
  #oldest: number | undefined;
  #typists = new Map<string, { member: Member; until: number }>();

  /** @param host The client. */
  constructor(host: RoomHost) {
    this.#host = host;
  }

  /** The oldest message id seen in this epoch. */
  get oldest(): number | undefined {
    return this.#oldest;
  }

  /** Members whose typing indicator has not run out. */
  get typists(): Member[] {
    const now = Date.now();
    const typing: Member[] = [];
    for (const [id, { member, until }] of this.#typists) {
      if (until > now) typing.push(member);
      else this.#typists.delete(id);
    }
    return typing;
  }

  /** A connection was welcomed: new members, maybe a new epoch. */
  welcome(welcome: Welcome): void {
    const previous = this.inbox.last;
    this.#epoch = welcome.epoch;
    this.roster.welcome(welcome.members, welcome.count, welcome.you);
    this.#typists.clear();
    if (previous !== null && previous.epoch !== welcome.epoch) {
      // Ids of the old epoch name nothing now.
      this.inbox.last = { epoch: welcome.epoch, id: 0 };
      this.#oldest = undefined;
    }
    if (welcome.recovered !== true && welcome.replay === 0) {
      this.inbox.last = { epoch: welcome.epoch, id: welcome.head };
    }
    this.#host.changed();
  }

  /** A `message` or `file` envelope, live or replayed. */
  message(envelope: Record<string, unknown>): void {
    const message = readMessage(envelope);
    if (!message) return this.#host.entry();
    const { epoch, id, from, cid } = message;
    // The broadcast of our own message says it is stored, as the ack would.
    if (cid !== undefined && from !== null && from.id === this.#host.me()?.id) {
      this.#host.stored({ cid, id, epoch, duplicate: false });
    }
    // Counted after the settling above, so the end of a replay resends only what it lacked.
    this.#host.entry();
    const file = message.file && !message.file.omitted ? message.file : undefined;
    if (!this.inbox.isNew(epoch, id, from?.id, cid)) {
      // Seen already; its bytes, if any, still come and must be taken.
      if (file) this.inbox.push(() => {}, file);
      return;
    }
    this.inbox.seen(epoch, id, from?.id, cid);
    if (epoch === this.#epoch && (this.#oldest === undefined || id < this.#oldest)) {
      this.#oldest = id;
    }
    this.#host.changed();
    this.inbox.push(() => {
      if (from) this.#typists.delete(from.id);
      this.#host.emit("message", message);
    }, file);
  }

  /** An `edit` or `delete` entry. */
  change(envelope: Record<string, unknown>): void {
    const change = readChange(envelope);
    if (!change) return this.#host.entry();
    const { epoch, id, from, cid } = change;
    if (cid !== undefined && from !== null && from.id === this.#host.me()?.id) {
      this.#host.stored({ cid, id, epoch, duplicate: false });
    }
    this.#host.entry();
    if (!this.inbox.isNew(epoch, id, from?.id, cid)) return;
    this.inbox.seen(epoch, id, from?.id, cid);
    this.#host.changed();
    this.inbox.push(() => this.#host.emit(change.kind, change));
  }

  /** A `typing` envelope; our own (in a batch) is ignored. */
  typing(envelope: Record<string, unknown>, defaultTtl: number): void {
    const member = readMember(envelope.member);
    if (!member || member.id === this.#host.me()?.id) return;
    const ttl = isId(envelope.ttl) ? envelope.ttl : defaultTtl;
    this.inbox.push(() => {
      this.#typists.set(member.id, { member, until: Date.now() + ttl });
      this.#host.emit("typing", { member, ttl });
    });
  }

  /**
   * A `presence` envelope or a `join`, `leave` or `rename`; `renamed` is
   * called with our own member when it took another name.
   */
  presence(envelope: Record<string, unknown>, renamed: (member: Member) => void): void {
    const presence = readPresence(envelope);
    if (!presence) return;
    this.inbox.push(() => {
      const changes = this.roster.apply(presence);
      for (const member of presence.leaves) this.#typists.delete(member.id);
      for (const { member } of presence.renames) {
        if (member.id === this.#host.me()?.id) renamed(member);
      }
      this.#host.emit("presence", { ...presence, changes });
    });
  }

  /** A `kick` of another member. */
  kick(envelope: Record<string, unknown>): void {
    const kick = readKick(envelope);
    if (!kick) return;
    this.inbox.push(() => {
      this.roster.remove(kick.member.id);
      this.#typists.delete(kick.member.id);
      this.#host.emit("kick", kick);
    });
  }

  /** A scroll-back page: moves the oldest id seen. */
  history(page: HistoryPage): void {
    if (page.epoch !== this.#epoch || page.messages.length === 0) return;
    const first = page.messages[0].id;
    if (this.#oldest === undefined || first < this.#oldest) this.#oldest = first;
  }
}
