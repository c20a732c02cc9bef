/**
 * The default engine: everything in this process's memory. History is a
 * bounded log per room (by count and bytes); a new process starts new epochs.
 *
 * @module
 */

import type {
  AppendResult,
  Engine,
  EngineEvent,
  HistoryPage,
  MessageDraft,
  ReadResult,
  RoomSnapshot,
  Signal,
  Unsubscribe,
} from "../engine.ts";
import type { Metrics } from "../metrics.ts";
import type { Member, Position, StoredMessage } from "../protocol.ts";
import { checkImport } from "../migrate.ts";
import { EngineMetrics, since } from "./_metrics.ts";
import { checkBanEnd, copyMember, copySignal } from "./_shapes.ts";

/** Options of {@linkcode MemoryEngine}. */
export interface MemoryEngineOptions {
  /** Messages kept per room. */
  historySize: number;
  /** Bytes kept per room (text and file contents). */
  historyBytes: number;
  /** Files larger than this are kept without their bytes. */
  historyFileBytes: number;
  /**
   * Clock for message times, presence expiry and the end of bans.
   *
   * @default {Date.now}
   */
  now?: () => number;
}

interface PresenceEntry {
  member: Member;
  expires: number;
}

interface RoomState {
  epoch: string;
  head: number;
  /** Stored messages, oldest first; `start` is the index of the oldest live one. */
  log: StoredMessage[];
  start: number;
  bytes: number;
  /** `sender \0 cid` of every message in `log` that has both. */
  dedup: Map<string, StoredMessage>;
  listeners: Set<(event: EngineEvent) => void>;
  /** Presence entries by connection, and how many each member has. */
  presence: Map<string, PresenceEntry>;
  members: Map<string, { member: Member; conns: number }>;
  /** No entry expires before this time, so no sweep is needed until then. */
  nextExpiry: number;
}

/** Makes a new random epoch. */
export function newEpoch(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}

function sizeOf(m: StoredMessage): number {
  return (m.text?.length ?? 0) * 2 + (m.data?.byteLength ?? 0) + 128;
}

function dedupKey(sender: string, cid: string): string {
  return `${sender}\0${cid}`;
}

/** What is left of a deleted message or edit: its place, sender and time. */
function tombstone(m: StoredMessage): StoredMessage {
  const { text: _t, data: _d, name: _n, mime: _m, size: _s, ...rest } = m;
  return { ...rest, deleted: true };
}

/** Keeps rooms, history and presence in memory. */
export class MemoryEngine implements Engine {
  #rooms = new Map<string, RoomState>();
  /** End of each ban, by room and member id; an ended one goes when next seen. */
  #bans = new Map<string, Map<string, number>>();
  #options: MemoryEngineOptions;
  #now: () => number;
  #closed = false;
  #stats = new EngineMetrics("memory", () => !this.#closed);

  constructor(options: MemoryEngineOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Up until closed; append latency and presence sweeps (no batches, gaps or reconnects). */
  get metrics(): Metrics {
    return this.#stats.registry;
  }

  #room(name: string): RoomState {
    let room = this.#rooms.get(name);
    if (!room) {
      room = {
        epoch: newEpoch(),
        head: 0,
        log: [],
        start: 0,
        bytes: 0,
        dedup: new Map(),
        listeners: new Set(),
        presence: new Map(),
        members: new Map(),
        nextExpiry: Infinity,
      };
      this.#rooms.set(name, room);
    }
    return room;
  }

  #publish(room: RoomState, event: EngineEvent) {
    for (const listener of room.listeners) listener(event);
  }

  append(name: string, draft: MessageDraft): Promise<AppendResult> {
    const start = performance.now();
    let result: AppendResult;
    try {
      result = this.#append(name, draft);
    } catch (error) {
      this.#stats.appendFailed();
      throw error;
    }
    this.#stats.appended(since(start));
    return Promise.resolve(result);
  }

  #append(name: string, draft: MessageDraft): AppendResult {
    const room = this.#room(name);
    if (draft.sender !== undefined && draft.cid !== undefined) {
      const earlier = room.dedup.get(dedupKey(draft.sender, draft.cid));
      if (earlier) return { message: earlier, duplicate: true };
    }
    const message: StoredMessage = {
      room: name,
      epoch: room.epoch,
      id: ++room.head,
      ts: this.#now(),
      from: draft.from && copyMember(draft.from),
      sender: draft.sender,
      cid: draft.cid,
    };
    if (draft.replyTo !== undefined) message.replyTo = draft.replyTo;
    if (draft.kind !== undefined) {
      message.kind = draft.kind;
      message.target = draft.target;
      if (draft.kind === "edit") message.text = draft.text ?? "";
    } else if (draft.text !== undefined) {
      message.text = draft.text;
    } else {
      message.data = draft.data ?? new Uint8Array(0);
      message.name = draft.name ?? "file";
      message.mime = draft.mime ?? "application/octet-stream";
      message.size = message.data.byteLength;
    }
    this.#store(room, message);
    if (message.kind !== undefined) this.#apply(room, message);
    this.#publish(room, { type: "message", message });
    return { message, duplicate: false };
  }

  /** Index in `room.log` of a live entry, or -1. */
  #indexOf(room: RoomState, id: number): number {
    if (room.log.length === room.start) return -1;
    const index = room.start + id - room.log[room.start].id;
    return index >= room.start && index < room.log.length ? index : -1;
  }

  /** Replaces a live entry (stored entries are shared with deliveries: never mutated). */
  #replace(room: RoomState, index: number, next: StoredMessage) {
    room.bytes += sizeOf(next) - sizeOf(room.log[index]);
    room.log[index] = next;
  }

  /** Applies an edit or delete entry to its target. */
  #apply(room: RoomState, change: StoredMessage) {
    const index = this.#indexOf(room, change.target!);
    if (index < 0) return;
    const target = room.log[index];
    if (target.deleted || target.kind !== undefined) return;
    if (change.kind === "edit") {
      if (target.text === undefined) return;
      this.#replace(room, index, { ...target, text: change.text, edited: change.ts });
      return;
    }
    this.#replace(room, index, tombstone(target));
    for (let i = index + 1; i < room.log.length; i++) {
      const entry = room.log[i];
      if (entry.kind === "edit" && entry.target === target.id && !entry.deleted) {
        this.#replace(room, i, tombstone(entry));
      }
    }
  }

  #store(room: RoomState, message: StoredMessage) {
    const { historySize, historyBytes, historyFileBytes } = this.#options;
    const kept = message.data && message.data.byteLength > historyFileBytes
      ? { ...message, data: undefined }
      : message;
    room.log.push(kept);
    room.bytes += sizeOf(kept);
    if (kept.sender !== undefined && kept.cid !== undefined) {
      room.dedup.set(dedupKey(kept.sender, kept.cid), kept);
    }
    while (
      room.log.length - room.start > historySize ||
      (room.bytes > historyBytes && room.log.length - room.start > 1)
    ) {
      const old = room.log[room.start];
      room.log[room.start++] = undefined as unknown as StoredMessage;
      room.bytes -= sizeOf(old);
      if (old.sender !== undefined && old.cid !== undefined) {
        room.dedup.delete(dedupKey(old.sender, old.cid));
      }
    }
    // Compact once the dead prefix outgrows the live part.
    if (room.start > 1024 && room.start > room.log.length / 2) {
      room.log = room.log.slice(room.start);
      room.start = 0;
    }
  }

  read(name: string, after: Position | undefined, limit: number): Promise<ReadResult> {
    const room = this.#room(name);
    const live = room.log.length - room.start;
    const oldest = live > 0 ? room.log[room.start].id : room.head + 1;
    const base = { epoch: room.epoch, head: room.head };
    if (after && after.epoch === room.epoch && after.id <= room.head && after.id >= oldest - 1) {
      const from = room.start + (after.id - oldest + 1);
      return Promise.resolve({ ...base, recovered: true, messages: room.log.slice(from) });
    }
    const count = Math.min(limit, live);
    const messages = room.log.slice(room.log.length - count);
    return Promise.resolve({ ...base, recovered: after ? false : null, messages });
  }

  history(name: string, before: number, limit: number): Promise<HistoryPage> {
    const room = this.#rooms.get(name);
    // Reading a room that never was creates nothing (a file URL with a made-up room).
    if (!room) return Promise.resolve({ epoch: newEpoch(), messages: [], more: false });
    const messages: StoredMessage[] = [];
    let i = room.log.length - 1;
    for (; i >= room.start && messages.length < limit; i--) {
      const m = room.log[i];
      if (m.id < before && m.kind === undefined) messages.push(m);
    }
    let more = false;
    for (; i >= room.start && !more; i--) {
      more = room.log[i].kind === undefined && room.log[i].id < before;
    }
    return Promise.resolve({ epoch: room.epoch, messages: messages.reverse(), more });
  }

  signal(name: string, event: Signal): Promise<void> {
    const room = this.#rooms.get(name);
    if (room) this.#publish(room, copySignal(event));
    return Promise.resolve();
  }

  subscribe(name: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe> {
    const room = this.#room(name);
    room.listeners.add(listener);
    return Promise.resolve(() => room.listeners.delete(listener));
  }

  #expire(room: RoomState, force = false) {
    const now = this.#now();
    if (!force && now < room.nextExpiry) return;
    const start = performance.now();
    room.nextExpiry = Infinity;
    for (const [conn, entry] of room.presence) {
      if (entry.expires <= now) this.#remove(room, conn);
      else room.nextExpiry = Math.min(room.nextExpiry, entry.expires);
    }
    this.#stats.swept(since(start));
  }

  #remove(room: RoomState, conn: string) {
    const entry = room.presence.get(conn);
    if (!entry) return;
    room.presence.delete(conn);
    const held = room.members.get(entry.member.id);
    if (held && --held.conns > 0) return;
    room.members.delete(entry.member.id);
    this.#publish(room, { type: "leave", member: held?.member ?? entry.member });
  }

  #members(room: RoomState): Member[] {
    return Array.from(room.members.values(), (held) => held.member);
  }

  /** Adds or extends an entry; publishes `join` for a new member. */
  #put(room: RoomState, conn: string, member: Member, ttlMs: number): Member | undefined {
    this.#expire(room);
    const expires = this.#now() + ttlMs;
    room.nextExpiry = Math.min(room.nextExpiry, expires);
    const entry = room.presence.get(conn);
    if (entry) {
      entry.expires = expires;
      return room.members.get(member.id)?.member;
    }
    room.presence.set(conn, { member: copyMember(member), expires });
    const held = room.members.get(member.id);
    if (held) {
      held.conns++;
      return held.member;
    }
    room.members.set(member.id, { member: copyMember(member), conns: 1 });
    this.#publish(room, { type: "join", member: copyMember(member) });
    return undefined;
  }

  join(
    name: string,
    conn: string,
    member: Member,
    ttlMs: number,
    list = true,
  ): Promise<Member[]> {
    const room = this.#room(name);
    const known = this.#put(room, conn, member, ttlMs);
    const members = () => list ? this.#members(room) : [];
    // A new tab under another nick renames the member everywhere.
    if (known && known.nick !== member.nick) {
      return this.rename(name, member.id, member.nick).then(members);
    }
    return Promise.resolve(members());
  }

  refresh(name: string, conn: string, member: Member, ttlMs: number): Promise<void> {
    this.#put(this.#room(name), conn, member, ttlMs);
    return Promise.resolve();
  }

  leave(name: string, conn: string): Promise<void> {
    const room = this.#rooms.get(name);
    if (room) this.#remove(room, conn);
    return Promise.resolve();
  }

  rename(name: string, memberId: string, nick: string): Promise<void> {
    const room = this.#room(name);
    const held = room.members.get(memberId);
    const old = held?.member.nick;
    // A rename changes the nick only: `verified` and `bot` stay.
    if (held) held.member = { ...held.member, nick };
    for (const entry of room.presence.values()) {
      if (entry.member.id === memberId) entry.member = { ...entry.member, nick };
    }
    if (held && old !== nick) {
      this.#publish(room, { type: "rename", member: { ...held.member }, old: old! });
    }
    return Promise.resolve();
  }

  members(name: string): Promise<Member[]> {
    const room = this.#room(name);
    this.#expire(room, true);
    return Promise.resolve(this.#members(room));
  }

  ban(name: string, memberId: string, until: number): Promise<void> {
    try {
      checkBanEnd(until);
    } catch (error) {
      return Promise.reject(error);
    }
    let bans = this.#bans.get(name);
    if (!bans) this.#bans.set(name, bans = new Map());
    const now = this.#now();
    // Bans are few: dropping the room's ended ones here keeps the map bounded.
    for (const [id, end] of bans) if (end <= now) bans.delete(id);
    if (until > now) bans.set(memberId, until);
    else bans.delete(memberId);
    if (bans.size === 0) this.#bans.delete(name);
    return Promise.resolve();
  }

  bannedUntil(name: string, memberId: string): Promise<number | undefined> {
    const until = this.#bans.get(name)?.get(memberId);
    return Promise.resolve(until !== undefined && until > this.#now() ? until : undefined);
  }

  /**
   * Takes a room's history from another engine (see `Engine.importRoom`);
   * the room keeps its subscribers and presence.
   */
  importRoom(name: string, snapshot: RoomSnapshot): Promise<void> {
    try {
      checkImport(name, snapshot, this.#options, this.#rooms.get(name)?.head ?? 0);
    } catch (error) {
      return Promise.reject(error);
    }
    const room = this.#room(name);
    room.epoch = snapshot.epoch;
    room.head = snapshot.head;
    room.log = snapshot.messages.map((m) => ({ ...m, room: name, epoch: snapshot.epoch }));
    room.start = 0;
    room.bytes = 0;
    room.dedup.clear();
    for (const m of room.log) {
      room.bytes += sizeOf(m);
      if (m.sender !== undefined && m.cid !== undefined) {
        room.dedup.set(dedupKey(m.sender, m.cid), m);
      }
    }
    return Promise.resolve();
  }

  ready(): Promise<boolean> {
    return Promise.resolve(true);
  }

  close(): Promise<void> {
    this.#closed = true;
    for (const room of this.#rooms.values()) room.listeners.clear();
    return Promise.resolve();
  }
}
