/**
 * Presence and signals in the KV engine: one entry per connection, and two
 * event logs (presence events, signals) whose head keys subscribers watch.
 *
 * @module
 */

import type { EngineEvent, Signal } from "../../engine.ts";
import type { Member } from "../../protocol.ts";
import { since } from "../_metrics.ts";
import { copyMember, copySignal } from "../_shapes.ts";
import {
  backoff,
  busy,
  commit,
  key,
  type KvContext,
  MAX_ATTEMPTS,
  MAX_CHECKS,
  Queues,
} from "./_store.ts";

/** How long presence events stay readable by subscribers that lag. */
const EVENT_MS = 10 * 60_000;
/**
 * How long a signal stays readable by subscribers that lag: a typing signal
 * older than this means nothing; a kick still closes sockets a minute late.
 */
const SIGNAL_MS = { typing: 10_000, kick: 60_000 } as const;
/**
 * Tries of one signal against signals of other instances. A typing signal
 * is then dropped; a kick, which is rare and matters, gets as many tries as
 * an append, then fails.
 */
const SIGNAL_ATTEMPTS = { typing: 8, kick: MAX_ATTEMPTS } as const;

/** One connection's presence. */
export interface PresenceEntry {
  member: Member;
  expires: number;
  /** When the connection first joined: members are listed in that order. */
  since: number;
}

/** Number of the newest event of a log; rewritten by every change it records. */
export interface LogHead {
  seq: number;
}

/** When some refresh is next due to sweep the room's expired entries. */
interface SweepDue {
  at: number;
}

/** A join, leave or rename, as stored in the presence event log. */
export type PresenceEvent = Extract<EngineEvent, { type: "join" | "leave" | "rename" }>;

/** Delivers to this engine's subscribers, up to a presence event or signal just stored. */
export type DeliverLocally = (room: string, to: { seq?: number; signal?: number }) => Promise<void>;

/** How long KV keeps a presence entry on its own: a backstop for instances that died. */
function presenceExpireIn(remainingMs: number): number {
  return Math.ceil(Math.max(0, remainingMs) * 2 + 60_000);
}

/**
 * One presence change in the making: the room's entries as read, edited the
 * way the memory engine edits its map, with the events that follow.
 */
class PresenceEdit {
  readonly entries = new Map<string, PresenceEntry>();
  readonly events: PresenceEvent[] = [];
  /** Connections whose entry was set or deleted. */
  readonly touched = new Set<string>();
  /** Entries deleted because they expired: checked at commit, a late refresh wins. */
  readonly expired: Deno.KvEntry<PresenceEntry>[] = [];

  constructor(readonly now: number, readonly stored: Map<string, Deno.KvEntry<PresenceEntry>>) {
    for (const [conn, entry] of stored) this.entries.set(conn, entry.value);
  }

  /** Whether some entry has expired. */
  get stale(): boolean {
    for (const entry of this.entries.values()) if (entry.expires <= this.now) return true;
    return false;
  }

  members(): Member[] {
    const byId = new Map<string, Member>();
    for (const entry of this.entries.values()) byId.set(entry.member.id, entry.member);
    return [...byId.values()];
  }

  hasMember(id: string): boolean {
    for (const entry of this.entries.values()) if (entry.member.id === id) return true;
    return false;
  }

  put(conn: string, entry: PresenceEntry) {
    this.entries.set(conn, entry);
    this.touched.add(conn);
  }

  remove(conn: string) {
    const entry = this.entries.get(conn);
    if (!entry) return;
    this.entries.delete(conn);
    this.touched.add(conn);
    if (!this.hasMember(entry.member.id)) this.events.push({ type: "leave", member: entry.member });
  }

  /**
   * Removes at most `max` expired entries.
   *
   * @returns Whether no expired entry is left.
   */
  expire(max: number): boolean {
    for (const [conn, entry] of this.entries) {
      if (entry.expires > this.now) continue;
      if (this.expired.length >= max) return false;
      const stored = this.stored.get(conn);
      if (stored) this.expired.push(stored);
      this.remove(conn);
    }
    return true;
  }

  /** Adds or refreshes a connection; a new tab under another nick renames the member. */
  join(conn: string, member: Member, expires: number) {
    const known = this.members().find((m) => m.id === member.id);
    const current = this.entries.get(conn);
    const mine = current?.member.id === member.id ? current : undefined;
    if (known && !mine && known.nick !== member.nick) this.rename(member.id, member.nick);
    const copy = copyMember(member);
    this.put(conn, { member: mine?.member ?? copy, expires, since: mine?.since ?? this.now });
    if (!known) this.events.push({ type: "join", member: copyMember(copy) });
  }

  /** Changes the nick of every entry of a member; `verified` and `bot` stay. */
  rename(memberId: string, nick: string) {
    let found: Member | undefined;
    for (const [conn, entry] of this.entries) {
      if (entry.member.id !== memberId) continue;
      found ??= entry.member;
      if (entry.member.nick !== nick) {
        this.put(conn, { ...entry, member: { ...entry.member, nick } });
      }
    }
    if (found !== undefined && found.nick !== nick) {
      this.events.push({ type: "rename", member: { ...found, nick }, old: found.nick });
    }
  }
}

/**
 * The presence entries and the presence and signal logs of every room. Each
 * room's changes from one engine run one at a time; changes from several
 * engines meet at the `presence-head` check.
 */
export class Presence {
  #context: KvContext;
  #deliver: DeliverLocally;
  #background: (work: () => Promise<unknown>) => void;
  #queues = new Queues();

  /**
   * @param deliver Called after a commit that stored events, so this engine's
   *   subscribers have them before the call resolves.
   * @param background Runs work the caller does not wait for (a sweep), so
   *   that closing the engine waits for it.
   */
  constructor(
    context: KvContext,
    deliver: DeliverLocally,
    background: (work: () => Promise<unknown>) => void,
  ) {
    this.#context = context;
    this.#deliver = deliver;
    this.#background = background;
  }

  #serial<T>(room: string, work: () => Promise<T>): Promise<T> {
    return this.#queues.run(`presence:${room}`, work);
  }

  join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    return this.#serial(room, () => this.#join(room, conn, member, ttlMs));
  }

  async #join(room: string, conn: string, member: Member, ttlMs: number): Promise<Member[]> {
    const { kv, now } = this.#context;
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#read(room);
      const edit = new PresenceEdit(now(), stored);
      const own = stored.get(conn);
      if (own && own.value.member.id === member.id && own.value.expires > edit.now && !edit.stale) {
        // A refresh changes nobody's view: the entry alone is written, no
        // event. The stored nick stays (renames go through rename()), so a
        // refresh racing a rename cannot undo it.
        const entry = { ...own.value, expires: edit.now + ttlMs };
        const op = kv.atomic().check(own)
          .set(own.key, entry, { expireIn: presenceExpireIn(ttlMs) });
        if (await commit(op)) return edit.members();
      } else if (!edit.expire(MAX_CHECKS - 1)) {
        // More expired entries than one commit may check: a batch goes first.
        if (await this.#commit(room, head, edit)) {
          attempt = 0;
          continue;
        }
      } else {
        edit.join(conn, member, edit.now + ttlMs);
        if (await this.#commit(room, head, edit)) return edit.members();
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("join", room);
      await backoff(attempt);
    }
  }

  /**
   * Extends one entry without reading the others: one `getMany` of two keys
   * and one write checking one or two. Once per `ttlMs` per room, the refresh
   * that finds the sweep due also starts a sweep of expired entries (entries
   * of instances that died), in the background.
   */
  refresh(room: string, conn: string, member: Member, ttlMs: number): Promise<void> {
    return this.#serial(room, () => this.#refresh(room, conn, member, ttlMs));
  }

  async #refresh(room: string, conn: string, member: Member, ttlMs: number): Promise<void> {
    const { kv } = this.#context;
    for (let attempt = 1;; attempt++) {
      const [own, sweep] = await kv.getMany<[PresenceEntry, SweepDue]>([
        key(room, "presence", conn),
        key(room, "presence-sweep"),
      ]);
      const now = this.#context.now();
      if (!own.value || own.value.member.id !== member.id || own.value.expires <= now) {
        // Expired or lost: the join path sweeps, re-adds and announces it.
        await this.#join(room, conn, member, ttlMs);
        return;
      }
      const op = kv.atomic().check(own)
        .set(own.key, { ...own.value, expires: now + ttlMs }, {
          expireIn: presenceExpireIn(ttlMs),
        });
      const due = sweep.value === null || sweep.value.at <= now;
      if (due) {
        op.check(sweep).set(sweep.key, { at: now + ttlMs }, { expireIn: presenceExpireIn(ttlMs) });
      }
      if (await commit(op)) {
        // A room without a sweep key was just joined, and joins sweep.
        if (due && sweep.value !== null) {
          this.#background(() => this.#serial(room, () => this.#sweep(room)));
        }
        return;
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("refresh presence", room);
      await backoff(attempt);
    }
  }

  leave(room: string, conn: string): Promise<void> {
    return this.#serial(room, () =>
      this.#change(room, (edit) => {
        edit.remove(conn);
      }));
  }

  rename(room: string, memberId: string, nick: string): Promise<void> {
    return this.#serial(room, () =>
      this.#change(room, (edit) => {
        edit.rename(memberId, nick);
      }));
  }

  members(room: string): Promise<Member[]> {
    return this.#serial(room, () => this.#sweep(room));
  }

  /**
   * Stores a signal in the room's signal log, which expires soon, and
   * delivers it to this engine's subscribers. Best effort: a typing signal
   * that loses to other instances' signals {@linkcode SIGNAL_ATTEMPTS} times
   * is dropped; a kick that loses as often fails. Signals have their own log,
   * so typing never delays a join.
   */
  signal(room: string, event: Signal): Promise<void> {
    return this.#queues.run(`signal:${room}`, () => this.#signal(room, event));
  }

  async #signal(room: string, event: Signal): Promise<void> {
    const { kv, log } = this.#context;
    const value = copySignal(event);
    for (let attempt = 1;; attempt++) {
      const head = await kv.get<LogHead>(key(room, "signal-head"));
      const seq = (head.value?.seq ?? 0) + 1;
      const op = kv.atomic().check(head)
        .set(key(room, "signal", seq), value, { expireIn: SIGNAL_MS[value.type] })
        .set(key(room, "signal-head"), { seq });
      if (await commit(op)) return await this.#deliver(room, { signal: seq });
      if (attempt >= SIGNAL_ATTEMPTS[value.type]) {
        if (value.type === "kick") throw busy("send a kick signal", room);
        log.warn("kv_signal_dropped", { room, type: value.type, attempts: attempt });
        return;
      }
      await backoff(attempt);
    }
  }

  /** Applies `change` and commits it if it changed anything. */
  async #change(room: string, change: (edit: PresenceEdit) => void): Promise<void> {
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#read(room);
      const edit = new PresenceEdit(this.#context.now(), stored);
      change(edit);
      if (edit.touched.size === 0 || await this.#commit(room, head, edit)) return;
      if (attempt >= MAX_ATTEMPTS) throw busy("change presence", room);
      await backoff(attempt);
    }
  }

  /** Removes expired entries (publishing `leave`s) and returns the members left. */
  async #sweep(room: string): Promise<Member[]> {
    const start = performance.now();
    const members = await this.#expireAll(room);
    this.#context.metrics?.swept(since(start));
    return members;
  }

  async #expireAll(room: string): Promise<Member[]> {
    for (let attempt = 1;; attempt++) {
      const { head, stored } = await this.#read(room);
      const edit = new PresenceEdit(this.#context.now(), stored);
      if (!edit.stale) return edit.members();
      const swept = edit.expire(MAX_CHECKS - 1);
      if (await this.#commit(room, head, edit)) {
        if (swept) return edit.members();
        attempt = 0;
        continue;
      }
      if (attempt >= MAX_ATTEMPTS) throw busy("sweep presence", room);
      await backoff(attempt);
    }
  }

  /**
   * The room's presence-head and entries, in the order members joined. The
   * head is read first: a change committed between the two reads then fails
   * the head check at commit.
   */
  async #read(room: string) {
    const { kv } = this.#context;
    const head = await kv.get<LogHead>(key(room, "presence-head"));
    const entries: Deno.KvEntry<PresenceEntry>[] = [];
    for await (const entry of kv.list<PresenceEntry>({ prefix: key(room, "presence") })) {
      entries.push(entry);
    }
    entries.sort((a, b) => a.value.since - b.value.since);
    const stored = new Map(entries.map((entry) => [entry.key.at(-1) as string, entry]));
    return { head, stored };
  }

  /**
   * Commits an edit if nobody changed the room's presence since it was read,
   * with its events; then delivers them to this engine's subscribers before
   * returning, as the memory engine does.
   *
   * @returns Whether it was committed.
   */
  async #commit(
    room: string,
    head: Deno.KvEntryMaybe<LogHead>,
    edit: PresenceEdit,
  ): Promise<boolean> {
    const seq = head.value?.seq ?? 0;
    // Every change rewrites the head, even without events: it is the lock.
    const op = this.#context.kv.atomic().check(head, ...edit.expired);
    for (const conn of edit.touched) {
      const entry = edit.entries.get(conn);
      if (entry) {
        op.set(key(room, "presence", conn), entry, {
          expireIn: presenceExpireIn(entry.expires - edit.now),
        });
      } else {
        op.delete(key(room, "presence", conn));
      }
    }
    edit.events.forEach((event, i) => {
      op.set(key(room, "presence-event", seq + i + 1), event, { expireIn: EVENT_MS });
    });
    const last = seq + edit.events.length;
    op.set(key(room, "presence-head"), { seq: last });
    if (!(await commit(op))) return false;
    if (edit.events.length > 0) await this.#deliver(room, { seq: last });
    return true;
  }
}
