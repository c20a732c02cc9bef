/**
 * The HTTP handler: a function from `Request` to `Response` that serves the
 * page and assets, the health and metrics endpoints, and upgrades WebSocket
 * requests into the hub.
 *
 * @module
 */

import { identify, memberIdOfSub, type Verifier } from "./admission.ts";
import type { AuthFailures } from "./auth/failures.ts";
import { createFileRoute, isFilePath } from "./files.ts";
import type { ConnectInfo, Connection, Hub } from "./hub.ts";
import {
  CloseCode,
  LOBBY,
  parsePosition,
  type Position,
  ProtocolError,
  ROOM_PATTERN,
  SUBPROTOCOL,
} from "./protocol.ts";
import { type Assets, serveAsset } from "./static.ts";

/** What upgrades a request; `Deno.upgradeWebSocket` unless a test swaps it. */
export type Upgrade = (
  req: Request,
  options: Deno.UpgradeWebSocketOptions,
) => { socket: WebSocket; response: Response };

/** Options of {@linkcode createHandler}. */
export interface HandlerOptions {
  hub: Hub;
  assets: Assets;
  /** Seconds without a pong before a peer is dropped (Deno's `idleTimeout`). */
  idleTimeout?: number;
  upgrade?: Upgrade;
  /** False once shutdown began: `/readyz` fails and upgrades get 503. */
  accepting?: () => boolean;
  /** Exact origins allowed to connect, or `*`; empty means the page's own origin. */
  allowedOrigins?: string[];
  /** Most open WebSockets; more get 503. */
  maxConnections?: number;
  /** Most open WebSockets per client address; more get 429. */
  maxConnectionsPerIp?: number;
  /** Proxies whose `X-Forwarded-For` is believed. */
  trustedProxies?: string[];
  /**
   * Token mode: every WebSocket presents a signed token. Raw clients are
   * checked before the upgrade (401, 403); rich ones in their `hello`.
   */
  verifier?: Verifier;
  /** Failed authentications per client address; past the limit, 429. */
  failures?: AuthFailures;
  /** The server API for `/api/` paths; every `/api/` path is 404 without it. */
  api?: (req: Request, url: URL) => Promise<Response>;
  /**
   * Path prefix the handler is mounted under, without a trailing slash
   * (`/chat`); `""` is the root. Only paths under it are Parley's, seen
   * without it: `/chat/` is the lobby, `/chat/healthz` the health check.
   */
  basePath?: string;
  /** Answers requests outside `basePath`; they get 404 without it. */
  fallback?: Handler;
}

/** The request handler of `Deno.serve`. */
export type Handler = (req: Request, info?: Deno.ServeHandlerInfo) => Response | Promise<Response>;

/** Security headers of every page and asset. */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; " +
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; " +
    "form-action 'self'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};

function text(status: number, body: string, headers?: HeadersInit): Response {
  const h = new Headers(headers);
  h.set("content-type", "text/plain; charset=utf-8");
  return new Response(body + "\n", { status, headers: h });
}

function methodNotAllowed(): Response {
  return text(405, "method not allowed: use GET or HEAD", { allow: "GET, HEAD" });
}

function hasToken(header: string | null, token: string): boolean {
  return header?.split(",").some((t) => t.trim().toLowerCase() === token) ?? false;
}

/**
 * Whether a `Sec-WebSocket-Protocol` header offers `parley.v1`, in any
 * position of its comma-separated list, with or without spaces. Tokens are
 * compared exactly: a browser fails a handshake whose answer differs in case
 * from what it offered.
 */
export function offersSubprotocol(header: string | null): boolean {
  return header?.split(",").some((t) => t.trim() === SUBPROTOCOL) ?? false;
}

const KEY_PATTERN = /^[A-Za-z0-9+/]{22}==$/;

/**
 * Checks the handshake headers. Deno's upgrade throws on bad ones, and the
 * request's headers cannot be read after that, so this runs first.
 *
 * @returns A 400/405/426 response, or null when the handshake is valid.
 */
export function checkHandshake(req: Request): Response | null {
  if (req.method !== "GET") return text(400, "bad handshake: a WebSocket upgrade must use GET");
  if (!hasToken(req.headers.get("connection"), "upgrade")) {
    return text(400, "bad handshake: the Connection header must include Upgrade");
  }
  const version = req.headers.get("sec-websocket-version");
  if (version?.trim() !== "13") {
    return text(426, "bad handshake: Sec-WebSocket-Version must be 13", {
      "sec-websocket-version": "13",
      upgrade: "websocket",
    });
  }
  const key = req.headers.get("sec-websocket-key")?.trim();
  if (!key || !KEY_PATTERN.test(key)) {
    return text(400, "bad handshake: Sec-WebSocket-Key must be 16 bytes in base64");
  }
  return null;
}

/**
 * Whether a WebSocket request's `Origin` may connect (the defence against
 * Cross-Site WebSocket Hijacking). No `Origin` (a tool, not a browser) passes.
 */
export function originAllowed(req: Request, allowed: readonly string[]): boolean {
  const origin = req.headers.get("origin");
  if (origin === null) return true;
  if (allowed.length > 0) return allowed.includes("*") || allowed.includes(origin);
  try {
    return new URL(origin).host === req.headers.get("host");
  } catch {
    return false;
  }
}

/**
 * The client's address: the peer's, or, when the peer is a trusted proxy, the
 * nearest address in `X-Forwarded-For` that is not a trusted proxy.
 */
export function clientIp(
  req: Request,
  info: Deno.ServeHandlerInfo | undefined,
  trusted: readonly string[],
): string {
  const peer = info && "hostname" in info.remoteAddr ? info.remoteAddr.hostname : "unknown";
  if (!trusted.includes(peer)) return peer;
  const hops = (req.headers.get("x-forwarded-for") ?? "").split(",").map((h) => h.trim())
    .filter(Boolean);
  for (let i = hops.length - 1; i >= 0; i--) {
    if (!trusted.includes(hops[i])) return hops[i];
  }
  return hops[0] ?? peer;
}

/** Resolves a path to a room name, or an error response. */
function roomOf(path: string): string | Response {
  if (path === "/") return LOBBY;
  const name = path.slice(1);
  if (name.includes("/") || name.includes(".")) return text(404, "not found");
  if (!ROOM_PATTERN.test(name)) {
    return text(400, "bad room name: use 1 to 64 characters from A-Z a-z 0-9 _ -");
  }
  return name;
}

/** Upgraded sockets not yet closed, in all and by client address. */
class Slots {
  open = 0;
  #perIp = new Map<string, number>();

  of(ip: string): number {
    return this.#perIp.get(ip) ?? 0;
  }

  take(ip: string): void {
    this.open++;
    this.#perIp.set(ip, this.of(ip) + 1);
  }

  release(ip: string): void {
    this.open--;
    const left = this.of(ip) - 1;
    if (left > 0) this.#perIp.set(ip, left);
    else this.#perIp.delete(ip);
  }
}

/**
 * Carries one socket's events to its connection. One listener object per
 * socket, not a closure per event: idle connections are most of a chat
 * server's memory. No exception escapes it, since one escaping a WebSocket
 * event handler ends the process.
 */
class SocketEvents implements EventListenerObject {
  #conn?: Connection;
  #counted = true;

  constructor(
    readonly hub: Hub,
    readonly socket: WebSocket,
    readonly info: ConnectInfo & { ip: string },
    readonly slots: Slots,
  ) {}

  handleEvent(event: Event): void {
    try {
      switch (event.type) {
        case "open":
          this.#conn = this.hub.connect(this.socket, this.info);
          break;
        case "message":
          this.#conn?.receive((event as MessageEvent).data);
          break;
        case "close":
          // It can fire twice.
          if (this.#counted) this.slots.release(this.info.ip);
          this.#counted = false;
          this.#conn?.close();
          break;
      }
    } catch (error) {
      this.hub.log.error("socket_handler_failed", { error: String(error) });
      try {
        this.#conn?.close(CloseCode.internal, "internal error");
      } catch {
        // Nothing more to do.
      }
    }
  }
}

/** Creates the handler. */
export function createHandler(options: HandlerOptions): Handler {
  const { hub, assets } = options;
  const upgrade: Upgrade = options.upgrade ?? Deno.upgradeWebSocket;
  const accepting = options.accepting ?? (() => true);
  const page = assets.get("/index.html");
  const { historySize } = hub.options;
  const allowedOrigins = options.allowedOrigins ?? [];
  const maxConnections = options.maxConnections ?? Infinity;
  const maxPerIp = options.maxConnectionsPerIp ?? Infinity;
  const trustedProxies = options.trustedProxies ?? [];
  const slots = new Slots();
  const files = createFileRoute({
    engine: hub.options.engine,
    verifier: options.verifier,
    failures: options.failures,
    countRejection: (reason) => hub.metrics.inc("parley_rejected_total", { reason }),
  });

  /** A raw client's URL token, checked before the upgrade; a Response refuses it. */
  async function rawAccess(
    token: string | null,
    room: string,
    ip: string,
  ): Promise<Pick<ConnectInfo, "access" | "expires"> | Response> {
    try {
      const { identity, access } = await identify(options.verifier!, token ?? undefined, room);
      const until = await hub.options.engine.bannedUntil(room, await memberIdOfSub(identity.sub));
      if (until !== undefined) {
        return text(403, `forbidden: banned from this room until ${new Date(until).toISOString()}`);
      }
      return { access: access === "read" ? "read" : "write", expires: identity.exp };
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      hub.metrics.inc("parley_rejected_total", { reason: error.code });
      if (error.code !== "unauthorized") return text(403, `forbidden: ${error.message}`);
      options.failures?.fail(ip);
      return text(401, `unauthorized: ${error.message}`, { "www-authenticate": "Bearer" });
    }
  }

  function websocket(
    req: Request,
    url: URL,
    room: string,
    info?: Deno.ServeHandlerInfo,
  ): Response | Promise<Response> {
    const bad = checkHandshake(req);
    if (bad) return bad;
    if (!accepting()) return text(503, "shutting down: connect to another instance");
    if (!originAllowed(req, allowedOrigins)) {
      hub.metrics.inc("parley_rejected_total", { reason: "origin" });
      return text(403, "forbidden: this Origin may not connect (see ALLOWED_ORIGINS)");
    }
    const ip = clientIp(req, info, trustedProxies);
    if (slots.open >= maxConnections) {
      hub.metrics.inc("parley_rejected_total", { reason: "capacity" });
      return text(503, "server full: too many connections; try again later", {
        "retry-after": "10",
      });
    }
    if (slots.of(ip) >= maxPerIp) {
      hub.metrics.inc("parley_rejected_total", { reason: "per_ip" });
      return text(429, "too many connections from your address", { "retry-after": "10" });
    }
    const retryAfter = options.failures?.retryAfter(ip) ?? 0;
    if (retryAfter > 0) {
      hub.metrics.inc("parley_rejected_total", { reason: "auth_failures" });
      return text(429, "too many failed authentications from your address; try again later", {
        "retry-after": String(retryAfter),
      });
    }
    const rich = offersSubprotocol(req.headers.get("sec-websocket-protocol"));
    let history: number | undefined;
    const historyParam = url.searchParams.get("history");
    if (historyParam !== null) {
      if (!/^\d+$/.test(historyParam)) {
        const value = JSON.stringify(historyParam);
        return text(400, `bad history: ${value} is not a non-negative integer; use ?history=N`);
      }
      // A raw client cannot know HISTORY_SIZE: more than there is means all of it.
      history = Math.min(Number(historyParam), historySize);
    }
    // Only rich clients resume; a raw client's resume parameters mean nothing.
    let last: Position | undefined;
    let badLast: string | undefined;
    const lastParam = rich ? url.searchParams.get("last") : null;
    const epochParam = rich ? url.searchParams.get("epoch") : null;
    if (lastParam !== null || epochParam !== null) {
      try {
        last = parsePosition(epochParam, lastParam);
      } catch (error) {
        if (!(error instanceof ProtocolError)) throw error;
        // Answered in band (`bad_last`): a browser sees only 1006 for an HTTP error.
        badLast = `bad resume position: ${error.message}; use ?epoch=E&last=N`;
      }
    }
    const connectInfo: ConnectInfo & { ip: string } = { room, rich, history, last, badLast, ip };
    const token = url.searchParams.get("token");
    if (options.verifier && !rich) {
      // Read what the upgrade needs now: the request cannot be read after it.
      return rawAccess(token, room, ip).then((access) =>
        access instanceof Response
          ? access
          : accept(req, { ...connectInfo, ...access }, options.idleTimeout)
      );
    }
    if (options.verifier && token !== null) connectInfo.token = token;
    return accept(req, connectInfo, options.idleTimeout);
  }

  /** Upgrades the request and hands the socket to the hub. */
  function accept(
    req: Request,
    connectInfo: ConnectInfo & { ip: string },
    idleTimeout?: number,
  ): Response {
    const { rich, ip } = connectInfo;
    // Neither the request nor its info can be read after the upgrade. Deno's
    // own subprotocol check splits the header on ", " exactly and throws on
    // `parley.v1,chat`, so the answer's header is set here instead.
    let upgraded: { socket: WebSocket; response: Response };
    try {
      upgraded = upgrade(req, { idleTimeout });
      if (rich) upgraded.response.headers.set("sec-websocket-protocol", SUBPROTOCOL);
    } catch (error) {
      hub.metrics.inc("parley_rejected_total", { reason: "handshake" });
      const reason = error instanceof Error ? error.message : String(error);
      hub.log.warn("upgrade_failed", { ip, error: reason });
      return text(400, `bad handshake: ${reason.replace(/\s+/g, " ")}`);
    }
    const { socket, response } = upgraded;
    socket.binaryType = "arraybuffer";
    slots.take(ip);
    const events = new SocketEvents(hub, socket, connectInfo, slots);
    socket.addEventListener("open", events);
    socket.addEventListener("message", events);
    // Deno follows every "error" with "close", which frees the slot.
    socket.addEventListener("close", events);
    return response;
  }

  const basePath = options.basePath ?? "";

  return async (req, info) => {
    let url = new URL(req.url);
    let path = url.pathname;
    const isRead = req.method === "GET" || req.method === "HEAD";
    if (basePath !== "") {
      if (path === basePath) {
        // The page's URLs are relative to the folder: `/chat` must become `/chat/`.
        if (isRead && req.headers.get("upgrade") === null) {
          return new Response(null, {
            status: 308,
            headers: { location: `${basePath}/${url.search}` },
          });
        }
        path = "/";
      } else if (path.startsWith(`${basePath}/`)) {
        path = path.slice(basePath.length);
      } else {
        return options.fallback ? options.fallback(req, info) : text(404, "not found");
      }
      url = new URL(url);
      url.pathname = path;
    }
    switch (path) {
      case "/healthz":
        return isRead ? text(200, "ok") : methodNotAllowed();
      case "/readyz": {
        if (!isRead) return methodNotAllowed();
        if (!accepting()) return text(503, "not ready: shutting down");
        const ready = await hub.options.engine.ready().catch(() => false);
        return ready ? text(200, "ready") : text(503, "not ready: engine unreachable");
      }
      case "/metrics":
        if (!isRead) return methodNotAllowed();
        return new Response(req.method === "HEAD" ? null : hub.metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        });
    }
    if (path.startsWith("/api/")) {
      return options.api ? options.api(req, url) : text(404, "not found");
    }
    const asset = assets.get(path);
    if (asset) return isRead ? serveAsset(req, asset, SECURITY_HEADERS) : methodNotAllowed();
    if (isFilePath(path)) return files(req, path, clientIp(req, info, trustedProxies));
    const room = roomOf(path);
    if (room instanceof Response) return room;
    // `get`, not `has`: on Deno, `has` copies every header into the request,
    // which an upgraded socket keeps alive (about 1 KiB per connection).
    const upgradeHeader = req.headers.get("upgrade");
    if (upgradeHeader !== null) {
      if (!hasToken(upgradeHeader, "websocket")) {
        return text(400, "bad handshake: the Upgrade header must be websocket");
      }
      return websocket(req, url, room, info);
    }
    if (!isRead) return methodNotAllowed();
    if (!page) return text(404, "not found: static/index.html is missing");
    return serveAsset(req, page, SECURITY_HEADERS);
  };
}
