/**
 * Parley as a library: a WebSocket chat server to mount in your own Deno app.
 *
 * {@linkcode createParley} builds the chat (page, WebSocket relay, health,
 * metrics, server API) and returns a `fetch` function to call from your own
 * `Deno.serve` handler or framework. With `basePath`, Parley answers only
 * under that prefix and leaves every other path to your app.
 *
 * @example Mount the chat at /chat beside your own routes
 * ```ts
 * import { createParley } from "@parley/parley";
 *
 * const parley = await createParley({ basePath: "/chat" });
 * Deno.serve((req, info) => {
 *   const { pathname } = new URL(req.url);
 *   if (pathname === "/chat" || pathname.startsWith("/chat/")) return parley.fetch(req, info);
 *   return new Response("my app");
 * });
 * ```
 *
 * @module
 */

import { type Config, ConfigError, loadConfig } from "./lib/config.ts";
import { createApp } from "./lib/app.ts";
import { nickProblem } from "./lib/auth/nick.ts";
import { createLogger } from "./lib/log.ts";
import { codePoints, MAX_NICK_LENGTH, ROOM_PATTERN } from "./lib/protocol.ts";

/**
 * The chat's settings: the same as the environment variables of
 * `deno task start` (named after each), with the same defaults and checks.
 * The listener's settings (`PORT`, `HOSTNAME`, TLS) are not here: your app
 * listens.
 */
export interface ParleySettings {
  /**
   * Messages kept per room: the resume and dedup window (`HISTORY_SIZE`).
   * @default {1000}
   */
  historySize?: number;
  /**
   * Messages a rich client gets when it joins without a resume position
   * (`JOIN_HISTORY`).
   * @default {50}
   */
  joinHistory?: number;
  /**
   * Bytes of history kept per room; the oldest messages go first (`HISTORY_BYTES`).
   * @default {16777216}
   */
  historyBytes?: number;
  /**
   * Larger files keep their id in history but not their bytes (`HISTORY_FILE_BYTES`).
   * @default {2097152}
   */
  historyFileBytes?: number;
  /**
   * Largest frame, text or binary, in bytes (`MAX_MESSAGE_BYTES`); over it
   * the sender is closed with 1009.
   * @default {2097152}
   */
  maxMessageBytes?: number;
  /**
   * Longest rich-mode message text, in characters (`MAX_TEXT_LENGTH`).
   * @default {4000}
   */
  maxTextLength?: number;
  /**
   * How many bytes a peer may fall behind its room before it is closed with
   * 4001 (`SLOW_CONSUMER_BYTES`).
   * @default {8388608}
   */
  slowConsumerBytes?: number;
  /**
   * Seconds of silence before Deno pings a peer, and drops it without a pong
   * (`IDLE_TIMEOUT`; 0: never).
   * @default {30}
   */
  idleTimeout?: number;
  /**
   * Exact origins allowed to open WebSockets, or `["*"]` (`ALLOWED_ORIGINS`).
   * Empty: only the page's own origin. Requests without `Origin` are allowed.
   * @default {[]}
   */
  allowedOrigins?: string[];
  /**
   * Open WebSockets in this process; more get 503 (`MAX_CONNECTIONS`).
   * @default {10000}
   */
  maxConnections?: number;
  /**
   * Open WebSockets per client address; more get 429 (`MAX_CONNECTIONS_PER_IP`).
   * @default {200}
   */
  maxConnectionsPerIp?: number;
  /**
   * Proxy addresses whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
   * @default {[]}
   */
  trustedProxies?: string[];
  /**
   * Messages per second per connection, on average (`RATE_LIMIT`).
   * @default {5}
   */
  rateLimit?: number;
  /**
   * Messages a connection may send at once (`RATE_BURST`).
   * @default {30}
   */
  rateBurst?: number;
  /**
   * Storage and fan-out (`ENGINE`): `memory` (this process), `kv` (Deno KV,
   * needs `--unstable-kv`) or `redis` (loads `npm:ioredis`).
   * @default {"memory"}
   */
  engine?: "memory" | "kv" | "redis";
  /**
   * Deno KV file for the kv engine (`KV_PATH`); unset: Deno's default, the
   * managed database on Deno Deploy.
   * @default {undefined}
   */
  kvPath?: string;
  /**
   * Redis server for the redis engine (`REDIS_URL`).
   * @default {"redis://127.0.0.1:6379"}
   */
  redisUrl?: string;
  /**
   * Put before every Redis key and pub/sub channel (`REDIS_PREFIX`), so that
   * deployments sharing one Redis stay apart. An empty string is refused.
   * @default {"parley:"}
   */
  redisPrefix?: string;
  /**
   * Sentinels to ask for the Redis primary, as `host:port`
   * (`REDIS_SENTINELS`), with `redisSentinelName`; `redisUrl` then gives only
   * the credentials, database and TLS.
   * @default {undefined}
   */
  redisSentinels?: string[];
  /**
   * The name the sentinels monitor the primary under (`REDIS_SENTINEL_NAME`).
   * @default {undefined}
   */
  redisSentinelName?: string;
  /**
   * Some nodes of a Redis Cluster, as `host:port` (`REDIS_CLUSTER`); not with
   * `redisSentinels`.
   * @default {undefined}
   */
  redisCluster?: string[];
  /**
   * Least level of the JSON log lines (`LOG_LEVEL`).
   * @default {"info"}
   */
  logLevel?: "debug" | "info" | "warn" | "error" | "silent";
  /**
   * Seconds a member stays listed without a refresh from its instance (`PRESENCE_TTL`).
   * @default {60}
   */
  presenceTtl?: number;
  /**
   * Seconds between refreshes of each member's presence, less than
   * `presenceTtl` (`PRESENCE_REFRESH`; unset: a third of a shorter `presenceTtl`).
   * @default {20}
   */
  presenceRefresh?: number;
  /**
   * Seconds between the start of a drain (SIGTERM for `deno task start`) and
   * the first close: `/readyz` is 503 at once, so a proxy stops sending new
   * connections first (`DRAIN_SECONDS`).
   * @default {5}
   */
  drainSeconds?: number;
  /**
   * Seconds over which a drain spreads its closes with 1012, so clients come
   * back to other instances as a trickle (`DRAIN_SPREAD_SECONDS`).
   * @default {10}
   */
  drainSpreadSeconds?: number;
  /**
   * Who may connect (`AUTH`): `open` (any free nickname) or `token` (a
   * signed token each; see docs/auth.md).
   * @default {"open"}
   */
  auth?: "open" | "token";
  /**
   * HS256 secret of at least 32 bytes that verifies tokens and lets the API
   * mint them (`AUTH_SECRET`).
   * @default {undefined}
   */
  authSecret?: string;
  /**
   * PEM public key file (EC P-256 or RSA) that verifies tokens instead of
   * `authSecret` (`AUTH_PUBLIC_KEY_FILE`).
   * @default {undefined}
   */
  authPublicKeyFile?: string;
  /**
   * Key of the server API under `/api/`, at least 16 characters (`API_KEY`);
   * unset: every `/api/` path is 404.
   * @default {undefined}
   */
  apiKey?: string;
  /**
   * Seconds of clock difference allowed for token times (`AUTH_SKEW`).
   * @default {30}
   */
  authSkew?: number;
}

/** What {@linkcode createParley} takes: the settings and where Parley is mounted. */
export interface ParleyOptions extends ParleySettings {
  /**
   * Path prefix Parley answers under, such as `/chat`: the page is
   * `/chat/` (a room is `/chat/<room>`), WebSockets connect to the same
   * paths, and health, metrics and the API move too (`/chat/healthz`,
   * `/chat/readyz`, `/chat/metrics`, `/chat/api/`). A GET of `/chat` is
   * redirected to `/chat/`. Empty or `/`: the root.
   * @default {""}
   */
  basePath?: string;
  /**
   * Answers every request outside `basePath`, so that
   * `Deno.serve(parley.fetch)` can serve your app too.
   * @default {a 404 "not found" response}
   */
  fallback?: (request: Request, info?: Deno.ServeHandlerInfo) => Response | Promise<Response>;
  /**
   * Where the JSON log lines go, one string each.
   * @default {console.error}
   */
  log?: (line: string) => void;
}

/** A message as stored, returned by {@linkcode ParleyHub.post}. */
export interface ParleyMessage {
  /** The room. */
  room: string;
  /** The room's history epoch; ids count within it. */
  epoch: string;
  /** The message id: strictly increasing in the room. */
  id: number;
  /** Server time, in ms since 1970. */
  ts: number;
  /** The text, for a text message. */
  text?: string;
}

/** What an app may do with the chat's rooms from the server side. */
export interface ParleyHub {
  /** Open WebSocket connections of this instance, joined or not. */
  readonly connectionCount: number;
  /** Connections of this instance in a room. */
  roomSize(room: string): number;
  /**
   * Posts a message as a bot named `name`, delivered to every member of the
   * room on every instance like any other.
   *
   * @throws {RangeError} When the room, text or name is not acceptable.
   */
  post(room: string, message: { text: string; name: string }): Promise<ParleyMessage>;
  /**
   * Removes a member (by the id member lists show) from a room on every
   * instance: its sockets close with 4403; with `minutes`, it is also banned
   * that long.
   *
   * @throws {RangeError} When the room or `minutes` is not acceptable.
   */
  kick(
    room: string,
    memberId: string,
    options?: { minutes?: number; reason?: string },
  ): Promise<void>;
  /**
   * Deletes a message of a room, as a moderator would.
   *
   * @throws {Error} When the message is not in the room's history.
   */
  deleteMessage(room: string, id: number): Promise<void>;
}

/** A running chat, made by {@linkcode createParley}. */
export interface Parley {
  /**
   * Answers one request: the page, its files, WebSocket upgrades, health,
   * metrics and the API. Pass `info` from `Deno.serve` so per-address
   * limits see the client's address. A bound function: pass it as it is.
   */
  fetch(request: Request, info?: Deno.ServeHandlerInfo): Promise<Response>;
  /** Posting, kicking and deleting from the server side. */
  hub: ParleyHub;
  /** The normalised path prefix: `""` or `/chat`. */
  basePath: string;
  /**
   * Stops accepting WebSockets, closes every socket with 1001 (clients
   * resume elsewhere) and closes the engine. Shut your listener down after.
   */
  close(): Promise<void>;
  /**
   * Stops for a rolling deploy: `readyz` and new WebSockets answer 503 at
   * once, so a proxy sends new clients elsewhere; after `drainSeconds` every
   * socket closes with 1012 (service restart), spread evenly over
   * `drainSpreadSeconds`, so clients come back to the other instances as a
   * trickle; then the engine closes. Shut your listener down after.
   *
   * @param options Override the settings' `drainSeconds` and `drainSpreadSeconds`.
   */
  drain(options?: { drainSeconds?: number; drainSpreadSeconds?: number }): Promise<void>;
}

/** The configuration's fields that belong to the listener, not to the chat. */
type ListenerKey = "port" | "hostname" | "certFile" | "keyFile";

/**
 * Every setting and the variable it stands for. Typed from `Config`, so that
 * `deno check` fails when lib/config.ts gains a setting this table lacks, and
 * indexed with the options' keys, so it fails when an option is not a setting.
 */
const VARIABLES: Readonly<Record<Exclude<keyof Config, ListenerKey>, string>> = {
  historySize: "HISTORY_SIZE",
  joinHistory: "JOIN_HISTORY",
  historyBytes: "HISTORY_BYTES",
  historyFileBytes: "HISTORY_FILE_BYTES",
  maxMessageBytes: "MAX_MESSAGE_BYTES",
  maxTextLength: "MAX_TEXT_LENGTH",
  slowConsumerBytes: "SLOW_CONSUMER_BYTES",
  idleTimeout: "IDLE_TIMEOUT",
  allowedOrigins: "ALLOWED_ORIGINS",
  maxConnections: "MAX_CONNECTIONS",
  maxConnectionsPerIp: "MAX_CONNECTIONS_PER_IP",
  trustedProxies: "TRUSTED_PROXIES",
  rateLimit: "RATE_LIMIT",
  rateBurst: "RATE_BURST",
  engine: "ENGINE",
  kvPath: "KV_PATH",
  redisUrl: "REDIS_URL",
  redisPrefix: "REDIS_PREFIX",
  redisSentinels: "REDIS_SENTINELS",
  redisSentinelName: "REDIS_SENTINEL_NAME",
  redisCluster: "REDIS_CLUSTER",
  logLevel: "LOG_LEVEL",
  presenceTtl: "PRESENCE_TTL",
  presenceRefresh: "PRESENCE_REFRESH",
  drainSeconds: "DRAIN_SECONDS",
  drainSpreadSeconds: "DRAIN_SPREAD_SECONDS",
  auth: "AUTH",
  authSecret: "AUTH_SECRET",
  authPublicKeyFile: "AUTH_PUBLIC_KEY_FILE",
  apiKey: "API_KEY",
  authSkew: "AUTH_SKEW",
};

const MOUNT_KEYS = new Set(["basePath", "fallback", "log"]);

/**
 * Checks the options by the rules of the environment variables, in
 * `lib/config.ts`, and names the option in the error.
 */
function configOf(options: ParleyOptions): Config {
  const values = new Map<string, string>();
  for (const [key, value] of Object.entries(options)) {
    if (MOUNT_KEYS.has(key) || value === undefined) continue;
    const variable = Object.hasOwn(VARIABLES, key)
      ? VARIABLES[key as keyof ParleySettings]
      : undefined;
    if (variable === undefined) {
      throw new TypeError(
        `Cannot create Parley: unknown option ${JSON.stringify(key)}` +
          (["port", "hostname"].includes(key) ? " (your app listens: pass it to Deno.serve)" : ""),
      );
    }
    values.set(variable, Array.isArray(value) ? value.join(",") : String(value));
  }
  try {
    return loadConfig((name) => values.get(name));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    const option = Object.entries(VARIABLES).find(([, name]) => name === error.variable)?.[0];
    const what = `${option ?? error.variable} is ${error.value}`;
    throw new RangeError(`Cannot create Parley: ${what}; expected ${error.expected}`, {
      cause: error,
    });
  }
}

/** `/chat/` and `/chat` become `/chat`; `/` and `""` the root, `""`. */
function normalBasePath(basePath: string): string {
  const trimmed = basePath.replace(/\/+$/, "");
  if (trimmed === "") return "";
  const segments = trimmed.split("/").slice(1);
  if (
    !trimmed.startsWith("/") ||
    segments.some((s) => !/^[A-Za-z0-9._~-]+$/.test(s) || s === "." || s === "..")
  ) {
    throw new RangeError(
      `Cannot create Parley: basePath is ${JSON.stringify(basePath)}; expected a path such as ` +
        '"/chat": segments of A-Z a-z 0-9 . _ ~ - after a leading /',
    );
  }
  return trimmed;
}

function checkRoom(room: string): void {
  if (!ROOM_PATTERN.test(room)) {
    throw new RangeError(
      `Cannot use room ${JSON.stringify(room)}: use 1 to 64 characters from A-Z a-z 0-9 _ -`,
    );
  }
}

/**
 * Builds the chat: checks the options, opens the engine (a KV database, a
 * Redis connection) and loads the page. It is async so that an engine that
 * cannot open fails here, before your app serves anything.
 *
 * @param options The settings, the mount path and the fallback.
 * @returns The running chat; call {@linkcode Parley.close} to stop it.
 * @throws {RangeError} When an option has a value its variable would refuse.
 * @throws {TypeError} When an option is unknown.
 */
export async function createParley(options: ParleyOptions = {}): Promise<Parley> {
  const basePath = normalBasePath(options.basePath ?? "");
  const config = configOf(options);
  const log = createLogger(config.logLevel, options.log);
  const app = await createApp(config, log, { basePath, fallback: options.fallback });
  const { hub } = app;
  const handler = app.handler;
  return {
    fetch: async (request, info) => await handler(request, info),
    basePath,
    close: () => app.close(),
    drain: ({
      drainSeconds = config.drainSeconds,
      drainSpreadSeconds = config.drainSpreadSeconds,
    } = {}) => app.drain({ delayMs: drainSeconds * 1000, spreadMs: drainSpreadSeconds * 1000 }),
    hub: {
      get connectionCount() {
        return hub.connections.size;
      },
      roomSize: (room) => hub.roomSize(room),
      async post(room, { text, name }) {
        checkRoom(room);
        const length = typeof text === "string" ? codePoints(text) : 0;
        if (length === 0 || length > config.maxTextLength) {
          throw new RangeError(
            `Cannot post: text must be 1 to ${config.maxTextLength} characters, not ${length}`,
          );
        }
        const nick = typeof name === "string" ? name.trim() : "";
        const problem = codePoints(nick) < 1 || codePoints(nick) > MAX_NICK_LENGTH
          ? `must be 1 to ${MAX_NICK_LENGTH} characters`
          : nickProblem(nick);
        if (problem !== undefined) {
          throw new RangeError(`Cannot post: name ${JSON.stringify(name)} ${problem}`);
        }
        const { room: stored, epoch, id, ts } = await hub.post(room, { text, name: nick });
        return { room: stored, epoch, id, ts, text };
      },
      async kick(room, memberId, { minutes = 0, reason = "" } = {}) {
        checkRoom(room);
        if (!Number.isInteger(minutes) || minutes < 0) {
          throw new RangeError(`Cannot kick: minutes must be a whole number >= 0, not ${minutes}`);
        }
        await hub.kick(room, memberId, { minutes, reason, by: null });
      },
      async deleteMessage(room, id) {
        checkRoom(room);
        await hub.deleteMessage(room, id);
      },
    },
  };
}
