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
import { Connection } from "./connection.ts";
import type { Engine, Signal } from "./engine.ts";
import { drainSpread } from "./drain.ts";
import { authorizeChange } from "./lifecycle.ts";
import { type Logger, silentLogger } from "./log.ts";
import type { MemberIndex } from "./members.ts";
import { Metrics } from "./metrics.ts";
import { CloseCode, type Member, type Position, type StoredMessage } from "./protocol.ts";
import { Room, SLOW_CONSUMER } from "./room.ts";

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

export { SLOW_CONSUMER };

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
      const created = new Room(conn.info.room, this);
      room = created;
      this.#rooms.set(created.name, created);
      created.ready = this.options.engine.subscribe(
        created.name,
        (event) => created.fanOut(event),
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
    room.add(conn);
    return room.ready;
  }

  /** The members of a room as an instance's join returned them, before any event. */
  seedMembers(room: string, members: readonly Member[]): void {
    this.#rooms.get(room)?.seed(members);
  }

  /** The members of a room this instance follows, once seeded; else undefined. */
  membersOf(room: string): MemberIndex | undefined {
    const known = this.#rooms.get(room);
    return known?.seeded ? known.members : undefined;
  }

  /** Takes a connection out of its room at once; drops the room when empty. */
  remove(conn: Connection): void {
    this.#connections.delete(conn);
    const room = this.#rooms.get(conn.info.room);
    if (!room || !room.delete(conn)) return;
    if (room.peers.size === 0) {
      room.dropped = true;
      room.stop();
      room.unsubscribe?.();
      this.#rooms.delete(room.name);
    }
  }

  /**
   * Closes every open connection with 1012 (service restart), in slices
   * spread evenly over `spreadMs`, so their clients reconnect elsewhere as a
   * trickle. The handler refuses new ones meanwhile (`accepting`).
   *
   * @returns Resolves once the last slice is closed.
   */
  async drain(spreadMs: number): Promise<void> {
    const drained = [...this.#connections];
    await drainSpread(drained, { spreadMs });
    // Let the close frames go out: a listener shut down first would close
    // the sockets itself, with 1001.
    const end = performance.now() + CLOSE_WAIT_MS;
    while (drained.some((c) => c.socket.readyState < 3) && performance.now() < end) {
      await new Promise((resolve) => setTimeout(resolve, 20));
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
      room.stop();
      room.unsubscribe?.();
    }
    this.#rooms.clear();
    for (const conn of [...this.#connections]) conn.close(code, reason);
  }
}

/** How long a drain waits for its close handshakes to finish. */
const CLOSE_WAIT_MS = 2000;

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
    .counter("parley_rejected_total", "Upgrades refused before the handshake, by reason.")
    .include(hub.options.engine.metrics);
}
