/**
 * One room on this instance: its peers, the buffer that lets lagging peers
 * catch up (one copy per event, a cursor per peer), the batch of events
 * pending for batch peers, and the presence tick.
 *
 * @module
 */

import { type BatchEvent, type BatchFrame, batchFrame, PendingBatch } from "./batch.ts";
import { type Connection, Outgoing, TYPING_TTL_MS } from "./connection.ts";
import type { EngineEvent, Unsubscribe } from "./engine.ts";
import type { HubOptions } from "./hub.ts";
import type { Logger } from "./log.ts";
import { MemberIndex } from "./members.ts";
import type { Metrics } from "./metrics.ts";
import { LARGE_ROOM_TICK_MS, PRESENCE_TICK_MS, PresenceChanges } from "./presence.ts";
import { CloseCode, encode, type Member } from "./protocol.ts";

/** About how many bytes of events a lagging batch peer is sent in one frame. */
const CATCH_UP_BYTES = 64 * 1024;

/** Whether an event is a presence change (batch peers learn those by tick). */
function isPresence(event: EngineEvent): boolean {
  return event.type === "join" || event.type === "leave" || event.type === "rename";
}

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
  readonly members = new MemberIndex();
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
    if (
      presence && event.type !== "rename" && (large || this.batchPeers === this.peers.size) &&
      this.lagging.size === 0
    ) {
      // No peer takes this join or leave on its own: the tick's presence
      // envelope says it. Skipping the walk keeps a join O(1) in a big room.
      this.entries.length = 0;
      this.head = 0;
      return;
    }
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
    if (batched) this.batch.push(batchEventOf(seq, event, out));
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
  seed(members: readonly Member[]): void {
    if (this.seeded) return;
    this.seeded = true;
    for (const member of members) this.members.add(member);
  }

  /** Notes a presence change for the room's next tick. */
  #notePresence(event: Extract<EngineEvent, { type: "join" | "leave" | "rename" }>) {
    if (event.type === "join") {
      this.members.add(event.member);
      this.presence.join(event.member);
    } else if (event.type === "leave") {
      this.members.delete(event.member.id);
      this.presence.leave(event.member);
    } else if (event.type === "rename") {
      if (this.members.has(event.member.id)) this.members.add(event.member);
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
    /** Catch-up frames of batch peers by first index: peers at one place share one. */
    const chunks = new Map<number, { frame: BatchFrame; end: number }>();
    for (const peer of this.lagging) {
      let index = this.head + (peer.cursor + 1 - first.seq);
      if (peer.queueWithin(low)) peer.progressAt = now;
      while (index < this.entries.length && peer.queueWithin(low, false) && !peer.closed) {
        if (peer.batched) {
          // Events before it fell behind are in the pending batch: those first.
          if (peer.batchFrom !== 0) break;
          index = this.#catchUpBatch(peer, index, chunks);
          continue;
        }
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

  /**
   * Sends a lagging batch peer the buffered events from `index` in one batch
   * frame of about {@linkcode CATCH_UP_BYTES}, shared with every other peer
   * that is at the same place, instead of one frame per event.
   *
   * @returns The index after the last event sent.
   */
  #catchUpBatch(
    peer: Connection,
    index: number,
    chunks: Map<number, { frame: BatchFrame; end: number }>,
  ): number {
    let chunk = chunks.get(index);
    if (!chunk) {
      const events: BatchEvent[] = [];
      const start = this.entries[index].before;
      let end = index;
      while (end < this.entries.length && this.entries[end].before - start < CATCH_UP_BYTES) {
        const entry = this.entries[end++];
        if (!isPresence(entry.event)) events.push(batchEventOf(entry.seq, entry.event, entry.out));
      }
      chunk = { frame: batchFrame(events), end };
      chunks.set(index, chunk);
    }
    // What each event means for the peer itself (a kick of it closes it).
    for (let i = index; i < chunk.end; i++) {
      if (!peer.prepare(this.entries[i].event)) return chunk.end;
    }
    peer.cursor = this.entries[chunk.end - 1].seq;
    if (chunk.frame.events === 0) return chunk.end;
    try {
      peer.sendBatch(chunk.frame);
    } catch (error) {
      this.#context.log.error("deliver_failed", { conn: peer.id, error: String(error) });
      peer.close(CloseCode.internal, "internal error");
    }
    return chunk.end;
  }
}

/** An event as the batch frames of batch peers carry it. */
function batchEventOf(seq: number, event: EngineEvent, out?: Outgoing): BatchEvent {
  const m = out?.message;
  return {
    seq,
    json: batchJson(event, out),
    data: m?.data && m.kind === undefined ? m.data : undefined,
    id: m?.id,
    epoch: m?.epoch,
  };
}

/** The envelope of an event for batch peers. */
function batchJson(event: EngineEvent, out?: Outgoing): string {
  if (out) return out.envelope;
  if (event.type === "typing") {
    return encode({ type: "typing", member: event.member, ttl: TYPING_TTL_MS });
  }
  return JSON.stringify(event);
}
