/**
 * The room hub: keeps the sockets of each room and relays what the engine
 * publishes to them, in raw or rich form.
 *
 * The hub only needs {@linkcode Socket}, a small part of `WebSocket`, so tests
 * can hand it plain objects.
 *
 * @module
 */

import type { Verifier } from "./admission.ts";
import { PendingBatch } from "./batch.ts";
import { Connection, Outgoing, TYPING_TTL_MS } from "./connection.ts";
import type { Engine, EngineEvent, Signal, Unsubscribe } from "./engine.ts";
import { authorizeChange } from "./lifecycle.ts";
import { type Logger, silentLogger } from "./log.ts";
import { Metrics } from "./metrics.ts";
import { CloseCode, encode, type Member, type Position, type StoredMessage } from "./protocol.ts";
import { LARGE_ROOM_TICK_MS, PRESENCE_TICK_MS, PresenceChanges } from "./presence.ts";

export {
  Connection,
  FRAME_OVERHEAD,
  REFUSED_FILE_FACTOR,
  sniffMime,
  truncateUtf8,
  TYPING_INTERVAL_MS,
  TYPING_TTL_MS,
} from "./connection.ts";

/** The part of a WebSocket the hub uses. */
export interface Socket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

/** Close code for a peer that does not read fast enough. */
export const SLOW_CONSUMER = CloseCode.slowConsumer;

/** Options of {@linkcode Hub}. */
export interface HubOptions {
  engine: Engine;
  /** Messages a rich client gets on a fresh join. */
  joinHistory: number;
  /** Most messages a raw client may ask for with `?history=N`. */
  historySize: number;
  maxMessageBytes: number;
  maxTextLength: number;
  /**
   * A peer that falls this many bytes behind its room and stops draining is
   * closed with {@linkcode SLOW_CONSUMER} (it resumes from its last id).
   */
  maxBufferedBytes: number;
  /**
   * While a peer's queue is over this, the hub stops writing to it and keeps
   * its place in the room's buffer instead (default 256 KiB). The queue is
   * counted as `bufferedAmount` plus {@linkcode FRAME_OVERHEAD} per queued
   * frame: each pending send costs Deno about that much memory whatever its
   * size, so a queue of short frames must stay short.
   */
  lowWatermark?: number;
  /**
   * A peer over `maxBufferedBytes` behind is evicted once its queue has not
   * drained for this long (default 2000 ms).
   */
  stallMs?: number;
  /** Messages per second a connection may send on average (no limit when unset). */
  rateLimit?: number;
  /** Messages a connection may send at once. */
  rateBurst?: number;
  /**
   * Frames over the burst that wait their turn instead of being dropped
   * (a client resending its backlog after a reconnect). @default 256
   */
  rateQueue?: number;
  /** Bytes of such frames. @default 16 MiB */
  rateQueueBytes?: number;
  /** Token mode: checks the token of every `hello`. Open mode when absent. */
  verifier?: Verifier;
  /** Called with the client address of every failed authentication. */
  onAuthFailure?: (ip: string) => void;
  /**
   * Above this many members, presence goes out as member counts only, at
   * most once a second, instead of every join and leave. @default 1000
   */
  largeRoom?: number;
  /** Presence entries expire this long after their last refresh. */
  presenceTtlMs?: number;
  /** Refresh presence entries this often (no timer when unset). */
  presenceRefreshMs?: number;
  logger?: Logger;
  metrics?: Metrics;
}

/** How a socket joins. */
export interface ConnectInfo {
  room: string;
  /** True for the `parley.v1` subprotocol. */
  rich: boolean;
  /** Raw mode: messages of history to send first. */
  history?: number;
  /** Rich mode: last position seen, from the URL (the `hello` envelope overrides it). */
  last?: Position;
  /**
   * Rich mode: why the URL's resume position (`?epoch=&last=`) did not parse.
   * A `hello` without its own `last` is then answered `bad_last` in band.
   */
  badLast?: string;
  /** Client address, for logs and failed authentications. */
  ip?: string;
  /** Rich mode, token mode: the URL's `?token=`, used when `hello` has none. */
  token?: string;
  /** Raw mode, token mode: what the URL's token allows (checked before the upgrade). */
  access?: "write" | "read";
  /** Raw mode, token mode: when that token expires (ms since 1970). */
  expires?: number;
}

/** Who the server API acts as. */
const API_MEMBER: Member = { id: "api", nick: "server", verified: true, bot: true };

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
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

class Room {
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
  constructor(readonly name: string, flush: (room: Room) => void) {
    this.batch = new PendingBatch(() => flush(this));
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

/** Keeps the connections of every room. */
export class Hub {
  readonly options: HubOptions;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly presenceTtlMs: number;
  /** Counters of the per-frame paths, as plain numbers (see `createMetrics`). */
  readonly traffic = { rawIn: 0, richIn: 0, bytesIn: 0, relays: 0, bytesOut: 0 };
  #rooms = new Map<string, Room>();
  #connections = new Set<Connection>();
  #timer?: ReturnType<typeof setInterval>;
  #encoder = new TextEncoder();

  constructor(options: HubOptions) {
    this.options = options;
    this.log = options.logger ?? silentLogger;
    this.metrics = options.metrics ?? createMetrics(this);
    this.presenceTtlMs = options.presenceTtlMs ?? 60_000;
    if (options.presenceRefreshMs) {
      const timer = setInterval(() => {
        for (const conn of this.#connections) conn.refresh();
      }, options.presenceRefreshMs);
      Deno.unrefTimer(timer);
      this.#timer = timer;
    }
  }

  /** Open connections, joined or not. */
  get connections(): ReadonlySet<Connection> {
    return this.#connections;
  }

  /** Names of rooms with at least one connection here. */
  get rooms(): ReadonlyMap<string, { readonly peers: ReadonlySet<Connection> }> {
    return this.#rooms;
  }

  /** Number of connections in a room. */
  roomSize(room: string): number {
    return this.#rooms.get(room)?.peers.size ?? 0;
  }

  /**
   * Removes a member from a room: every socket of it, on every instance,
   * closes with 4403 and the reason; with `minutes`, the member is also
   * banned that long, on every instance. Other members see a `kick` event.
   *
   * @returns The event published.
   */
  async kick(
    room: string,
    memberId: string,
    options: { minutes?: number; reason?: string; by?: Member | null } = {},
  ): Promise<Signal> {
    const { engine } = this.options;
    const minutes = options.minutes ?? 0;
    const until = minutes > 0 ? Date.now() + minutes * 60_000 : undefined;
    if (until !== undefined) await engine.ban(room, memberId, until);
    const member = (await engine.members(room)).find((m) => m.id === memberId) ??
      { id: memberId, nick: memberId };
    const event: Signal = {
      type: "kick",
      member,
      reason: options.reason ?? "",
      by: options.by ?? null,
      until,
    };
    await engine.signal(room, event);
    this.logModeration(until ? "ban" : "kick", room, options.by ?? null, {
      member: memberId,
      minutes: minutes || undefined,
    });
    return event;
  }

  /**
   * Posts a message from a backend or bot (the server API): delivered like
   * any other, `from` marked `bot` and `verified`.
   */
  async post(room: string, options: { text: string; name: string }): Promise<StoredMessage> {
    const from: Member = {
      id: `bot-${(await sha256Hex(`bot\0${options.name}`)).slice(0, 12)}`,
      nick: options.name,
      verified: true,
      bot: true,
    };
    const { message } = await this.options.engine.append(room, { from, text: options.text });
    return message;
  }

  /**
   * Deletes any message of a room as a moderator would (the server API):
   * the same delete a member makes of its own.
   *
   * @throws {ProtocolError} `not_found` when it is not in history.
   */
  async deleteMessage(room: string, id: number, by: Member | null = null): Promise<StoredMessage> {
    const { engine } = this.options;
    const draft = await authorizeChange(engine, room, { kind: "delete", target: id }, {
      member: by ?? API_MEMBER,
      moderator: true,
    });
    const { message } = await engine.append(room, draft);
    this.logModeration("delete", room, by, { id });
    return message;
  }

  /** Logs a moderation action as one JSON line, without message contents. */
  logModeration(
    action: "delete" | "kick" | "ban",
    room: string,
    by: Member | null,
    fields: Record<string, unknown>,
  ): void {
    this.log.info("moderation", { action, room, by: by?.id ?? "api", ...fields });
  }

  /**
   * Bytes of a frame on the wire. For text, exact only near the cap: UTF-8
   * takes one to three bytes per UTF-16 code unit, so the length in code units
   * is returned when that alone decides.
   */
  frameSize(frame: string | Uint8Array): number {
    if (typeof frame !== "string") return frame.byteLength;
    const max = this.options.maxMessageBytes;
    if (frame.length > max || frame.length * 3 <= max) return frame.length;
    return this.#encoder.encode(frame).length;
  }

  /**
   * Starts handling a socket that just opened. Raw sockets join their room
   * now; rich ones on their `hello`.
   */
  connect(socket: Socket, info: ConnectInfo): Connection {
    const conn = new Connection(this, socket, info);
    this.#connections.add(conn);
    this.metrics.inc("parley_connections_total", { mode: info.rich ? "rich" : "raw" });
    this.log.info("open", { conn: conn.id, room: info.room, rich: info.rich, ip: info.ip });
    conn.start().catch((error) => this.log.error("start_failed", { error: String(error) }));
    return conn;
  }

  /**
   * Puts a connection in its room; subscribes the room to the engine when
   * new. Resolves once the subscription is active.
   */
  add(conn: Connection): Promise<void> {
    let room = this.#rooms.get(conn.info.room);
    if (!room) {
      const created = new Room(conn.info.room, (r) => this.#flushBatch(r));
      room = created;
      this.#rooms.set(created.name, created);
      created.ready = this.options.engine.subscribe(
        created.name,
        (event) => this.#fanOut(created, event),
      ).then(
        (unsubscribe) => {
          if (created.dropped) unsubscribe();
          else created.unsubscribe = unsubscribe;
        },
        (error) => {
          // Without a subscription the room would be deaf here: forget it and
          // close its peers, so they reconnect (and resume) once it works.
          this.log.error("subscribe_failed", { room: created.name, error: String(error) });
          if (this.#rooms.get(created.name) === created) this.#rooms.delete(created.name);
          created.dropped = true;
          for (const peer of [...created.peers]) {
            peer.close(CloseCode.tryAgainLater, "the room is unavailable; reconnect later");
          }
          throw error;
        },
      );
    }
    if (!room.peers.has(conn) && conn.batch) room.batchPeers++;
    room.peers.add(conn);
    return room.ready;
  }

  /** Takes a connection out of its room at once; drops the room when empty. */
  remove(conn: Connection): void {
    this.#connections.delete(conn);
    const room = this.#rooms.get(conn.info.room);
    if (!room || !room.peers.delete(conn)) return;
    if (conn.batch) room.batchPeers--;
    conn.lagging = false;
    room.lagging.delete(conn);
    if (room.peers.size === 0) {
      room.dropped = true;
      this.#stopRoom(room);
      if (room.timer !== undefined) clearTimeout(room.timer);
      room.unsubscribe?.();
      this.#rooms.delete(room.name);
    }
  }

  /**
   * Sends an event to every peer of the room. A peer whose queue is over the
   * low watermark is not written to: it keeps a cursor into the room's buffer
   * and catches up as it drains. Memory holds one copy per event, not one per
   * peer; a peer whose lag passes `maxBufferedBytes` is evicted.
   */
  #fanOut(room: Room, event: EngineEvent) {
    const out = event.type === "message" ? new Outgoing(event.message) : undefined;
    const seq = ++room.seq;
    const before = room.total;
    room.total += costOf(event);
    const low = this.options.lowWatermark ?? 256 * 1024;
    const presence = event.type === "join" || event.type === "leave" || event.type === "rename";
    if (presence) this.#notePresence(room, event);
    const large = room.members.size > (this.options.largeRoom ?? 1000);
    let batched = false;
    for (const peer of room.peers) {
      if (peer.lagging) continue;
      if (!peer.queueWithin(low)) {
        peer.cursor = seq - 1;
        peer.progressAt = performance.now();
        peer.lagging = true;
        room.lagging.add(peer);
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
      room.batch.push({
        seq,
        json: batchJson(event, out),
        data: m?.data && m.kind === undefined ? m.data : undefined,
        id: m?.id,
        epoch: m?.epoch,
      });
    }
    if (room.lagging.size === 0) {
      room.entries.length = 0;
      room.head = 0;
      return;
    }
    room.entries.push({ seq, event, out, before });
    this.#catchUp(room);
  }

  /** Sends each batch peer the events pending for it, one frame per position. */
  #flushBatch(room: Room) {
    if (room.dropped) return;
    const last = room.batch.last;
    for (const peer of room.peers) {
      if (peer.batchFrom === 0) continue;
      const from = peer.batchFrom;
      peer.batchFrom = 0;
      const frame = room.batch.frame(from, peer.lagging ? peer.cursor : last);
      if (!frame) continue;
      try {
        peer.sendBatch(frame);
      } catch (error) {
        this.log.error("deliver_failed", { conn: peer.id, error: String(error) });
        peer.close(CloseCode.internal, "internal error");
      }
    }
    room.batch.clear();
  }

  /** The members of a room as an instance's join returned them, before any event. */
  seedMembers(name: string, members: readonly Member[]): void {
    const room = this.#rooms.get(name);
    if (!room || room.seeded) return;
    room.seeded = true;
    for (const member of members) room.members.add(member.id);
  }

  /** Notes a presence change for the room's next tick. */
  #notePresence(room: Room, event: Extract<EngineEvent, { type: "join" | "leave" | "rename" }>) {
    if (event.type === "join") {
      room.members.add(event.member.id);
      room.presence.join(event.member);
    } else if (event.type === "leave") {
      room.members.delete(event.member.id);
      room.presence.leave(event.member);
    } else if (event.type === "rename") {
      room.presence.rename(event.member, event.old);
    }
    if (room.presenceTimer !== undefined) return;
    const large = room.members.size > (this.options.largeRoom ?? 1000);
    if (!large && room.batchPeers === 0) {
      // Nobody here takes presence envelopes: each join and leave went out as it came.
      room.presence.take(0);
      return;
    }
    const wait = large
      ? Math.max(PRESENCE_TICK_MS, LARGE_ROOM_TICK_MS - (performance.now() - room.presenceSentAt))
      : PRESENCE_TICK_MS;
    room.presenceTimer = setTimeout(() => this.#flushPresence(room), wait);
  }

  /**
   * Sends the tick's `presence` envelope, built once: to batch peers always,
   * to the others only in a large room (they had each join and leave).
   */
  #flushPresence(room: Room) {
    room.presenceTimer = undefined;
    if (room.dropped) return;
    const large = room.members.size > (this.options.largeRoom ?? 1000);
    const json = JSON.stringify(room.presence.take(room.members.size, large));
    room.presenceSentAt = performance.now();
    for (const peer of room.peers) {
      if (peer.lagging || !peer.rich || !(peer.batched || large)) continue;
      peer.sendJson(json);
    }
  }

  /** Stops a room's timers. */
  #stopRoom(room: Room) {
    room.batch.cancel();
    if (room.presenceTimer !== undefined) clearTimeout(room.presenceTimer);
    room.presenceTimer = undefined;
  }

  #deliver(peer: Connection, event: EngineEvent, out?: Outgoing) {
    try {
      peer.deliver(event, out);
    } catch (error) {
      this.log.error("deliver_failed", { conn: peer.id, error: String(error) });
      peer.close(CloseCode.internal, "internal error");
    }
  }

  /**
   * Sends lagging peers what they can take now. A peer more than
   * `maxBufferedBytes` behind is evicted once its queue has not drained for
   * `stallMs`, or at once past eight times that bound: a reader that keeps up
   * is never evicted because the server outran it for a moment.
   */
  #catchUp(room: Room) {
    const low = this.options.lowWatermark ?? 256 * 1024;
    const stallMs = this.options.stallMs ?? 2000;
    const max = this.options.maxBufferedBytes;
    const now = performance.now();
    const first = room.entries[room.head];
    for (const peer of room.lagging) {
      let index = room.head + (peer.cursor + 1 - first.seq);
      if (peer.queueWithin(low)) peer.progressAt = now;
      while (index < room.entries.length && peer.queueWithin(low, false) && !peer.closed) {
        const entry = room.entries[index++];
        peer.cursor = entry.seq;
        this.#deliver(peer, entry.event, entry.out);
      }
      if (peer.closed) continue;
      if (peer.cursor === room.seq) {
        peer.lagging = false;
        room.lagging.delete(peer);
        continue;
      }
      const behind = room.total - room.entries[index].before;
      if (behind > max && (now - peer.progressAt > stallMs || behind > 8 * max)) {
        this.metrics.inc("parley_slow_consumer_evictions_total");
        peer.close(SLOW_CONSUMER, "slow consumer: fell too far behind; reconnect and resume");
      }
    }
    // Drop what every lagging peer already has.
    let min = room.seq;
    for (const peer of room.lagging) min = Math.min(min, peer.cursor);
    while (room.head < room.entries.length && room.entries[room.head].seq <= min) {
      room.entries[room.head++] = undefined as unknown as Entry;
    }
    if (room.head === room.entries.length) {
      room.entries.length = 0;
      room.head = 0;
    } else if (room.head > 1024 && room.head * 2 > room.entries.length) {
      room.entries = room.entries.slice(room.head);
      room.head = 0;
    }
    if (room.lagging.size > 0) {
      room.timer ??= setTimeout(() => {
        room.timer = undefined;
        if (!room.dropped && room.lagging.size > 0) this.#catchUp(room);
      }, 5);
    } else if (room.timer !== undefined) {
      clearTimeout(room.timer);
      room.timer = undefined;
    }
  }

  /** Closes every connection (1001 by default) and stops the presence timer. */
  close(code: number = CloseCode.goingAway, reason = "server shutting down"): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    // Detach every room first: the leaves that follow then reach no local
    // peer, instead of each of n closes announcing itself to the n still open.
    for (const room of this.#rooms.values()) {
      room.dropped = true;
      this.#stopRoom(room);
      if (room.timer !== undefined) clearTimeout(room.timer);
      room.unsubscribe?.();
    }
    this.#rooms.clear();
    for (const conn of [...this.#connections]) conn.close(code, reason);
  }
}

/** The metrics of a hub, with gauges read from it. */
export function createMetrics(hub: Hub): Metrics {
  return new Metrics()
    .gauge("parley_connections", "Open WebSocket connections by mode.", () => {
      let rich = 0;
      for (const c of hub.connections) if (c.rich) rich++;
      return [[{ mode: "raw" }, hub.connections.size - rich], [{ mode: "rich" }, rich]];
    })
    .gauge("parley_rooms", "Rooms with at least one connection.", () => [[
      undefined,
      hub.rooms.size,
    ]])
    .counter("parley_connections_total", "Connections accepted, by mode.")
    .counterFrom("parley_messages_in_total", "Frames received from clients, by mode.", () => [
      [{ mode: "raw" }, hub.traffic.rawIn],
      [{ mode: "rich" }, hub.traffic.richIn],
    ])
    .counterFrom(
      "parley_bytes_in_total",
      "Bytes of binary frames and UTF-16 code units of text frames received.",
      () => [[undefined, hub.traffic.bytesIn]],
    )
    .counterFrom(
      "parley_relays_total",
      "Messages sent to peers (one per peer).",
      () => [[undefined, hub.traffic.relays]],
    )
    .counter("parley_drops_total", "Messages dropped, by reason.")
    .counter("parley_closes_total", "Connections closed by the server, by close code.")
    .counterFrom(
      "parley_bytes_out_total",
      "Bytes of binary frames and UTF-16 code units of text frames sent.",
      () => [[undefined, hub.traffic.bytesOut]],
    )
    .counter("parley_slow_consumer_evictions_total", "Peers closed for not reading.")
    .counter("parley_rate_limited_total", "Frames dropped by the rate limit.")
    .counter("parley_protocol_errors_total", "Error envelopes sent, by code.")
    .counter("parley_resumes_total", "Rich joins by resume outcome.")
    .counter("parley_rejected_total", "Upgrades refused before the handshake, by reason.");
}
