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
  MessageDraft,
  ReadResult,
  Unsubscribe,
} from "../engine.ts";
import type { Member, Position, StoredMessage } from "../protocol.ts";

/** Options of {@linkcode MemoryEngine}. */
export interface MemoryEngineOptions {
  /** Messages kept per room. */
  historySize: number;
  /** Bytes kept per room (text and file contents). */
  historyBytes: number;
  /** Files larger than this are kept without their bytes. */
  historyFileBytes: number;
  /** Clock, for tests. */
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
  presence: Map<string, PresenceEntry>;
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

/** Keeps rooms, history and presence in memory. */
export class MemoryEngine implements Engine {
  #rooms = new Map<string, RoomState>();
  #options: MemoryEngineOptions;
  #now: () => number;

  constructor(options: MemoryEngineOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
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
      };
      this.#rooms.set(name, room);
    }
    return room;
  }

  #publish(room: RoomState, event: EngineEvent) {
    for (const listener of room.listeners) listener(event);
  }

  append(name: string, draft: MessageDraft): Promise<AppendResult> {
    const room = this.#room(name);
    if (draft.sender !== undefined && draft.cid !== undefined) {
      const earlier = room.dedup.get(dedupKey(draft.sender, draft.cid));
      if (earlier) return Promise.resolve({ message: earlier, duplicate: true });
    }
    const message: StoredMessage = {
      room: name,
      epoch: room.epoch,
      id: ++room.head,
      ts: this.#now(),
      from: draft.from,
      sender: draft.sender,
      cid: draft.cid,
    };
    if (draft.text !== undefined) {
      message.text = draft.text;
    } else {
      message.data = draft.data ?? new Uint8Array(0);
      message.name = draft.name ?? "file";
      message.mime = draft.mime ?? "application/octet-stream";
      message.size = message.data.byteLength;
    }
    this.#store(room, message);
    this.#publish(room, { type: "message", message });
    return Promise.resolve({ message, duplicate: false });
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

  subscribe(name: string, listener: (event: EngineEvent) => void): Promise<Unsubscribe> {
    const room = this.#room(name);
    room.listeners.add(listener);
    return Promise.resolve(() => room.listeners.delete(listener));
  }

  #expire(room: RoomState) {
    const now = this.#now();
    for (const [conn, entry] of room.presence) {
      if (entry.expires <= now) this.#remove(room, conn);
    }
  }

  #hasMember(room: RoomState, id: string): boolean {
    for (const entry of room.presence.values()) if (entry.member.id === id) return true;
    return false;
  }

  #remove(room: RoomState, conn: string) {
    const entry = room.presence.get(conn);
    if (!entry) return;
    room.presence.delete(conn);
    if (!this.#hasMember(room, entry.member.id)) {
      this.#publish(room, { type: "leave", member: entry.member });
    }
  }

  #members(room: RoomState): Member[] {
    const byId = new Map<string, Member>();
    for (const entry of room.presence.values()) byId.set(entry.member.id, entry.member);
    return [...byId.values()];
  }

  join(name: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    const room = this.#room(name);
    this.#expire(room);
    const known = this.#members(room).find((m) => m.id === member.id);
    room.presence.set(conn, { member: { ...member }, expires: this.#now() + ttlMs });
    if (!known) this.#publish(room, { type: "join", member: { ...member } });
    // A new tab under another nick renames the member everywhere.
    else if (known.nick !== member.nick) {
      return this.rename(name, member.id, member.nick).then(() => this.#members(room));
    }
    return Promise.resolve(this.#members(room));
  }

  leave(name: string, conn: string): Promise<void> {
    const room = this.#rooms.get(name);
    if (room) this.#remove(room, conn);
    return Promise.resolve();
  }

  rename(name: string, memberId: string, nick: string): Promise<void> {
    const room = this.#room(name);
    let old: string | undefined;
    for (const entry of room.presence.values()) {
      if (entry.member.id !== memberId) continue;
      old ??= entry.member.nick;
      entry.member = { id: memberId, nick };
    }
    if (old !== undefined && old !== nick) {
      this.#publish(room, { type: "rename", member: { id: memberId, nick }, old });
    }
    return Promise.resolve();
  }

  members(name: string): Promise<Member[]> {
    const room = this.#room(name);
    this.#expire(room);
    return Promise.resolve(this.#members(room));
  }

  ready(): Promise<boolean> {
    return Promise.resolve(true);
  }

  close(): Promise<void> {
    for (const room of this.#rooms.values()) room.listeners.clear();
    return Promise.resolve();
  }
}
