/**
 * One room on this instance: its peers, the buffer that lets lagging peers
 * catch up (one copy per event, a cursor per peer), the batch of events
 * pending for batch peers, and the presence tick.
 *
 * @module
 */

import { PendingBatch } from "./batch.ts";
import { type Connection, Outgoing, TYPING_TTL_MS } from "./connection.ts";
import type { EngineEvent, Unsubscribe } from "./engine.ts";
import type { HubOptions } from "./hub.ts";
import type { Logger } from "./log.ts";
import type { Metrics } from "./metrics.ts";
import { LARGE_ROOM_TICK_MS, PRESENCE_TICK_MS, PresenceChanges } from "./presence.ts";
import { CloseCode, encode } from "./protocol.ts";

/** Close code for a peer that does not read fast enough. */
export const SLOW_CONSUMER = CloseCode.slowConsumer;

/** What a room needs of its hub. */
export interface RoomContext {
  readonly options: HubOptions;
  readonly log: Logger;
  readonly metrics: Metrics;
}

/** One event in a room's buffer, kept while a lagging peer still needs it. */
interface Entry {
  seq: number;
  event: EngineEvent;
  out?: Outgoing;
  /** Bytes of all room events before this one. */
  before: number;
}

/** Bytes an event costs a peer, for the lag bound. */
function costOf(event: EngineEvent): number {
  if (event.type !== "message") return 64;
  const m = event.message;
  return 64 + (m.text?.length ?? 0) + (m.data?.byteLength ?? 0);
}

/** The peers of one room here, and what is on its way to them. */
export class Room {
  readonly peers = new Set<Connection>();
  /**
   * Events not yet sent to every lagging peer, oldest first, from index
   * `head`. One copy per event, whatever the number of peers.
   */
  entries: Entry[] = [];
  head = 0;
  /** Sequence number of the newest event, and buffer bytes up to it. */
  seq = 0;
  total = 0;
  /** Peers whose place (`cursor`) is behind `seq`. */
  readonly lagging = new Set<Connection>();
  timer?: ReturnType<typeof setTimeout>;
  /** Resolves once the engine subscription is active. */
  ready!: Promise<void>;
  unsubscribe?: Unsubscribe;
  /** Set when the room emptied: an unsubscribe still to come must run at once. */
  dropped = false;
  /** Events waiting for the room's batch peers. */
  batch: PendingBatch;
  /** Presence changes waiting for the next tick, and the members known here. */
  readonly presence = new PresenceChanges();
  readonly members = new Set<string>();
  seeded = false;
  /** Peers that asked for batches (and coalesced presence). */
  batchPeers = 0;
  presenceTimer?: ReturnType<typeof setTimeout>;
  presenceSentAt = 0;
  readonly #context: RoomContext;
  constructor(readonly name: string, context: RoomContext) {
    this.#context = context;
    this.batch = new PendingBatch(() => this.#flushBatch());
  }

  /** Puts a peer in the room. */
  add(conn: Connection): void {
    if (this.peers.has(conn)) return;
    if (conn.batch) this.batchPeers++;
    this.peers.add(conn);
  }

  /**
   * Takes a peer out of the room.
   *
   * @returns False when it was not in it.
   */
  delete(conn: Connection): boolean {
    if (!this.peers.delete(conn)) return false;
    if (conn.batch) this.batchPeers--;
    conn.lagging = false;
    this.lagging.delete(conn);
    return true;
  }

  /**
   * Sends an event to every peer of the this. A peer whose queue is over the
   * low watermark is not written to: it keeps a cursor into the room's buffer
   * and catches up as it drains. Memory holds one copy per event, not one per
   * peer; a peer whose lag passes `maxBufferedBytes` is evicted.
   */
  fanOut(event: EngineEvent) {
    const out = event.type === "message" ? new Outgoing(event.message) : undefined;
    const seq = ++this.seq;
    const before = this.total;
    this.total += costOf(event);
    const low = this.#context.options.lowWatermark ?? 256 * 1024;
    const presence = event.type === "join" || event.type === "leave" || event.type === "rename";
    if (presence) this.#notePresence(event);
    const large = this.members.size > (this.#context.options.largeRoom ?? 1000);
    let batched = false;
    for (const peer of this.peers) {
      if (peer.lagging) continue;
      if (!peer.queueWithin(low)) {
        peer.cursor = seq - 1;
        peer.progressAt = performance.now();
        peer.lagging = true;
        this.lagging.add(peer);
        continue;
      }
      if (peer.batched) {
        // Built once for the room at the flush; presence goes by its tick.
        if (!peer.prepare(event) || presence) continue;
        if (peer.batchFrom === 0) peer.batchFrom = seq;
        batched = true;
        continue;
      }
      // In a large room, the tick's member count replaces joins and leaves.
      if (presence && large && event.type !== "rename") continue;
      this.#deliver(peer, event, out);
    }
    if (batched) {
      const m = out?.message;
      this.batch.push({
        seq,
        json: batchJson(event, out),
        data: m?.data && m.kind === undefined ? m.data : undefined,
        id: m?.id,
        epoch: m?.epoch,
      });
    }
    if (this.lagging.size === 0) {
      this.entries.length = 0;
      this.head = 0;
      return;
    }
    this.entries.push({ seq, event, out, before });
    this.#catchUp();
  }

  /** Sends each batch peer the events pending for it, one frame per position. */
  #flushBatch() {
    if (this.dropped) return;
    const last = this.batch.last;
    for (const peer of this.peers) {
      if (peer.batchFrom === 0) continue;
      const from = peer.batchFrom;
      peer.batchFrom = 0;
      const frame = this.batch.frame(from, peer.lagging ? peer.cursor : last);
      if (!frame) continue;
      try {
        peer.sendBatch(frame);
      } catch (error) {
        this.#context.log.error("deliver_failed", { conn: peer.id, error: String(error) });
        peer.close(CloseCode.internal, "internal error");
      }
    }
    this.batch.clear();
  }

  /** The members as an instance's join returned them, before any event. */
  seed(members: readonly { id: string }[]): void {
    if (this.seeded) return;
    this.seeded = true;
    for (const member of members) this.members.add(member.id);
  }

  /** Notes a presence change for the room's next tick. */
  #notePresence(event: Extract<EngineEvent, { type: "join" | "leave" | "rename" }>) {
    if (event.type === "join") {
      this.members.add(event.member.id);
      this.presence.join(event.member);
    } else if (event.type === "leave") {
      this.members.delete(event.member.id);
      this.presence.leave(event.member);
    } else if (event.type === "rename") {
      this.presence.rename(event.member, event.old);
    }
    if (this.presenceTimer !== undefined) return;
    const large = this.members.size > (this.#context.options.largeRoom ?? 1000);
    if (!large && this.batchPeers === 0) {
      // Nobody here takes presence envelopes: each join and leave went out as it came.
      this.presence.take(0);
      return;
    }
    const wait = large
      ? Math.max(PRESENCE_TICK_MS, LARGE_ROOM_TICK_MS - (performance.now() - this.presenceSentAt))
      : PRESENCE_TICK_MS;
    this.presenceTimer = setTimeout(() => this.#flushPresence(), wait);
  }

  /**
   * Sends the tick's `presence` envelope, built once: to batch peers always,
   * to the others only in a large room (they had each join and leave).
   */
  #flushPresence() {
    this.presenceTimer = undefined;
    if (this.dropped) return;
    const large = this.members.size > (this.#context.options.largeRoom ?? 1000);
    const json = JSON.stringify(this.presence.take(this.members.size, large));
    this.presenceSentAt = performance.now();
    for (const peer of this.peers) {
      if (peer.lagging || !peer.rich || !(peer.batched || large)) continue;
      peer.sendJson(json);
    }
  }

  /** Stops a room's timers. */
  stop(): void {
    this.batch.cancel();
    if (this.presenceTimer !== undefined) clearTimeout(this.presenceTimer);
    this.presenceTimer = undefined;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  #deliver(peer: Connection, event: EngineEvent, out?: Outgoing) {
    try {
      peer.deliver(event, out);
    } catch (error) {
      this.#context.log.error("deliver_failed", { conn: peer.id, error: String(error) });
      peer.close(CloseCode.internal, "internal error");
    }
  }

  /**
   * Sends lagging peers what they can take now. A peer more than
   * `maxBufferedBytes` behind is evicted once its queue has not drained for
   * `stallMs`, or at once past eight times that bound: a reader that keeps up
   * is never evicted because the server outran it for a moment.
   */
  #catchUp() {
    const low = this.#context.options.lowWatermark ?? 256 * 1024;
    const stallMs = this.#context.options.stallMs ?? 2000;
    const max = this.#context.options.maxBufferedBytes;
    const now = performance.now();
    const first = this.entries[this.head];
    for (const peer of this.lagging) {
      let index = this.head + (peer.cursor + 1 - first.seq);
      if (peer.queueWithin(low)) peer.progressAt = now;
      while (index < this.entries.length && peer.queueWithin(low, false) && !peer.closed) {
        const entry = this.entries[index++];
        peer.cursor = entry.seq;
        this.#deliver(peer, entry.event, entry.out);
      }
      if (peer.closed) continue;
      if (peer.cursor === this.seq) {
        peer.lagging = false;
        this.lagging.delete(peer);
        continue;
      }
      const behind = this.total - this.entries[index].before;
      if (behind > max && (now - peer.progressAt > stallMs || behind > 8 * max)) {
        this.#context.metrics.inc("parley_slow_consumer_evictions_total");
        peer.close(SLOW_CONSUMER, "slow consumer: fell too far behind; reconnect and resume");
      }
    }
    // Drop what every lagging peer already has.
    let min = this.seq;
    for (const peer of this.lagging) min = Math.min(min, peer.cursor);
    while (this.head < this.entries.length && this.entries[this.head].seq <= min) {
      this.entries[this.head++] = undefined as unknown as Entry;
    }
    if (this.head === this.entries.length) {
      this.entries.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
    if (this.lagging.size > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        if (!this.dropped && this.lagging.size > 0) this.#catchUp();
      }, 5);
    } else if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }
}

/** The envelope of an event for batch peers. */
function batchJson(event: EngineEvent, out?: Outgoing): string {
  if (out) return out.envelope;
  if (event.type === "typing") {
    return encode({ type: "typing", member: event.member, ttl: TYPING_TTL_MS });
  }
  return JSON.stringify(event);
}
