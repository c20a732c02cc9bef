/**
 * Keeping one WebSocket to the room: opening it with `parley.v1` (and a
 * fresh token when one is needed), pinging it when idle, and when it ends,
 * deciding from the close code whether to reconnect (with backoff and
 * jitter, or when the browser is back online) or to stop for good.
 *
 * @module
 */

import { Backoff } from "./backoff.ts";
import type { ParleyClientOptions, SocketConstructor, SocketLike, Status } from "./types.ts";
import { SUBPROTOCOL } from "./wire.ts";

/** Close codes after which reconnecting on its own cannot help. */
const FINAL_CLOSES = new Set([1000, 1002, 1003, 1007, 1008, 1009, 1010, 4403]);

/** What the connection needs from the client. */
export interface ConnectionHost {
  /** Before each attempt: load saved state, say. */
  prepare(): Promise<void>;
  /** The socket opened: say `hello` on it. */
  opened(ws: SocketLike, token: string | undefined): void;
  /** A frame came on the current socket. */
  frame(data: unknown): void;
  /** The current socket is gone: what was in flight waits. */
  lost(): void;
  /** The connection's state changed. */
  status(status: Status): void;
}

/** One socket at a time, reconnected as the close codes allow. */
export class Connection {
  #url: string;
  #options: ParleyClientOptions;
  #host: ConnectionHost;
  #Socket: SocketConstructor;
  #backoff: Backoff;
  #ws: SocketLike | null = null;
  #joined = false;
  #closing = false;
  #opening = false;
  #final = false;
  #token: string | undefined;
  #freshToken = true;
  #refusals = 0;
  #lastFrameAt = 0;
  #pingSentAt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #stableTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #onOnline: (() => void) | undefined;

  /**
   * @param url The room's WebSocket URL.
   * @param options The client's options (token, WebSocket, backoff, timings).
   * @param host The client.
   */
  constructor(url: string, options: ParleyClientOptions, host: ConnectionHost) {
    this.#url = url;
    this.#options = options;
    this.#host = host;
    const Socket = options.WebSocket ??
      (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (!Socket) throw new TypeError("Cannot create a ParleyClient: no WebSocket here");
    this.#Socket = Socket;
    this.#backoff = new Backoff(options.backoff);
  }

  /** The socket, when the server has welcomed it and it is open; else null. */
  get joined(): SocketLike | null {
    return this.#joined && this.#ws?.readyState === 1 ? this.#ws : null;
  }

  /** The current socket, open or not. */
  get socket(): SocketLike | null {
    return this.#ws;
  }

  /** True once closed for good. */
  get final(): boolean {
    return this.#final;
  }

  /** True while a socket is open or opening, or a reconnect is scheduled. */
  get busy(): boolean {
    return this.#ws !== null || this.#opening || this.#reconnectTimer !== undefined;
  }

  /** Opens a socket, unless one is open or opening, or the client is closed. */
  async open(): Promise<void> {
    if (this.#final || this.#ws || this.#opening) return;
    this.#opening = true;
    try {
      await this.#open();
    } finally {
      this.#opening = false;
    }
  }

  async #open(): Promise<void> {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#host.status({ state: "connecting", attempt: this.#backoff.attempt });
    await this.#host.prepare();
    const source = this.#options.token;
    if (typeof source === "function" && (this.#freshToken || this.#token === undefined)) {
      try {
        this.#token = await source();
        this.#freshToken = false;
      } catch (error) {
        this.#retry(1006, `cannot get a token: ${String(error)}`);
        return;
      }
    } else if (typeof source === "string") {
      this.#token = source;
    }
    if (this.#final || this.#ws) return;
    let ws: SocketLike;
    try {
      ws = new this.#Socket(this.#url, SUBPROTOCOL);
    } catch (error) {
      this.#retry(1006, `cannot open a WebSocket: ${String(error)}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    this.#ws = ws;
    this.#joined = false;
    ws.onopen = () => {
      if (ws !== this.#ws) return;
      this.#lastFrameAt = Date.now();
      this.#pingSentAt = 0;
      this.#host.opened(ws, this.#token);
      const every = this.#options.pingMs ?? 20_000;
      this.#pingTimer = setInterval(() => this.#heartbeat(ws), Math.min(every, 5_000));
    };
    ws.onmessage = (event) => {
      if (ws !== this.#ws) return;
      this.#lastFrameAt = Date.now();
      this.#host.frame(event.data);
    };
    ws.onclose = (event) => {
      // Deno says 0 for a connection dropped without a close frame; browsers say 1006.
      if (ws === this.#ws) this.lost(event.code || 1006, event.reason);
    };
    ws.onerror = () => {};
  }

  /** The server welcomed the socket: the backoff starts over once it stays up a while. */
  welcomed(): void {
    this.#joined = true;
    this.#refusals = 0;
    clearTimeout(this.#stableTimer);
    this.#stableTimer = setTimeout(() => {
      this.#stableTimer = undefined;
      this.#backoff.reset();
    }, this.#options.stableMs ?? 5_000);
    this.#host.status({ state: "open" });
  }

  /** Pings an idle connection; gives up on one whose ping went unanswered. */
  #heartbeat(ws: SocketLike): void {
    if (ws !== this.#ws || ws.readyState !== 1) return;
    const now = Date.now();
    const every = this.#options.pingMs ?? 20_000;
    const timeout = this.#options.pongTimeoutMs ?? 15_000;
    if (this.#pingSentAt > this.#lastFrameAt && now - this.#pingSentAt > timeout) {
      this.lost(1006, "no answer to ping");
      return;
    }
    if (now - this.#lastFrameAt >= every && this.#pingSentAt <= this.#lastFrameAt) {
      this.#pingSentAt = now;
      try {
        ws.send(JSON.stringify({ type: "ping" }));
      } catch {
        // Closing: the close handler takes over.
      }
    }
  }

  /** Forgets the current socket (closing it if still open) and stops its timers. */
  #drop(): void {
    const ws = this.#ws;
    this.#ws = null;
    this.#joined = false;
    clearTimeout(this.#stableTimer);
    clearInterval(this.#pingTimer);
    this.#stableTimer = this.#pingTimer = undefined;
    if (ws && ws.readyState < 2) {
      try {
        ws.close(1000, "leaving");
      } catch {
        // Closing already.
      }
    }
  }

  /** Drops the socket and opens another at once (to join afresh). */
  restart(): void {
    this.#drop();
    void this.open();
  }

  /**
   * The connection is gone (closed, dropped, refused in band, or given up
   * on): the close code decides whether there is a next one.
   */
  lost(code: number, reason: string): void {
    this.#drop();
    this.#host.lost();
    if (this.#closing) return this.#finish(code, reason);
    if (code === 4401) return this.#unauthorized(reason);
    if (FINAL_CLOSES.has(code)) return this.#finish(code, reason);
    this.#retry(code, reason);
  }

  /** A token was refused: with a token function, try once more with a fresh token. */
  #unauthorized(reason: string): void {
    this.#refusals++;
    if (typeof this.#options.token === "function" && this.#refusals <= 1) {
      this.#freshToken = true;
      this.#retry(4401, reason);
      return;
    }
    this.#finish(4401, reason);
  }

  #retry(code: number, reason: string): void {
    if (this.#final || this.#reconnectTimer !== undefined) return;
    const delayMs = this.#backoff.next();
    const navigator = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    const target = globalThis as { addEventListener?: typeof addEventListener };
    if (navigator?.onLine === false && typeof target.addEventListener === "function") {
      // No network: come back when the browser says it is back (or after the delay).
      this.#host.status({ state: "offline" });
      this.#onOnline ??= () => {
        if (this.#reconnectTimer !== undefined) void this.open();
      };
      target.addEventListener("online", this.#onOnline, { once: true });
    } else {
      const attempt = this.#backoff.attempt;
      this.#host.status({ state: "reconnecting", delayMs, attempt, code, reason });
    }
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      void this.open();
    }, delayMs);
  }

  /** Closed for good: a refusal, a final close code, or `close()`. */
  #finish(code: number, reason: string): void {
    if (this.#final) return;
    this.#final = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    if (this.#onOnline) {
      (globalThis as { removeEventListener?: typeof removeEventListener })
        .removeEventListener?.("online", this.#onOnline);
    }
    this.#host.status({ state: "closed", final: true, code, reason });
  }

  /** Closes for good, and resolves once the socket is closed. */
  async close(): Promise<void> {
    this.#closing = true;
    const ws = this.#ws;
    const ended = ws && ws.readyState < 3
      ? new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 3000);
        const previous = ws.onclose;
        ws.onclose = (event) => {
          clearTimeout(timer);
          previous?.(event);
          resolve();
        };
      })
      : Promise.resolve();
    this.lost(1000, "closed by the client");
    await ended;
  }
}
